// The local encrypted store (IndexedDB): history, outbox, sessions, keys and queued attachment
// blobs, each record sealed with AES-GCM under a non-extractable WebCrypto key that never leaves
// this browser profile. No secret is ever kept in localStorage or sent anywhere.

const DB_NAME = "enigmo";
const DB_VERSION = 1;
const WRAP_KEY = "vault-key";

function promisify(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb(idb) {
  return new Promise((resolve, reject) => {
    const req = idb.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains("meta")) db.createObjectStore("meta");
      if (!db.objectStoreNames.contains("sealed")) {
        const sealed = db.createObjectStore("sealed", { keyPath: "k" });
        sealed.createIndex("group", "g");
      }
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
    req.onblocked = () => reject(new Error("database blocked by another tab"));
  });
}

// The storage the Vault seals into: IndexedDB in the browser. Rows are {k, g, iv, ct}; meta holds
// the wrapping CryptoKey itself (structured clone keeps it non-extractable).
export async function indexedDbBackend(idb = globalThis.indexedDB) {
  const db = await openDb(idb);
  const store = (name, mode) => db.transaction(name, mode).objectStore(name);
  const backend = {
    // Set by the app: this connection was closed because another tab erases or upgrades the store.
    onClosedElsewhere: null,
    getMeta: (name) => promisify(store("meta").get(name)),
    // Get, or store `value` if absent, in one readwrite transaction: two tabs opening a fresh
    // vault at once end up with the same key.
    metaInit: (name, value) => new Promise((resolve, reject) => {
      const tx = db.transaction("meta", "readwrite");
      const meta = tx.objectStore("meta");
      let result = value;
      meta.get(name).onsuccess = (event) => {
        if (event.target.result) result = event.target.result;
        else meta.put(value, name);
      };
      tx.oncomplete = () => resolve(result);
      tx.onerror = () => reject(tx.error);
    }),
    getRow: (k) => promisify(store("sealed").get(k)),
    putRow: (row) => promisify(store("sealed", "readwrite").put(row)),
    deleteRow: (k) => promisify(store("sealed", "readwrite").delete(k)),
    rowsWithPrefix: (prefix) => promisify(store("sealed").getAll(IDBKeyRange.bound(prefix, prefix + "\uffff"))),
    close: () => db.close(),
  };
  // An open connection blocks deleteDatabase (a logout in another tab) for as long as it stays
  // open: let go at once.
  db.onversionchange = () => {
    db.close();
    backend.onClosedElsewhere?.();
  };
  return backend;
}

// JSON with Uint8Array kept as tagged base64.
function bytesToB64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
function b64ToBytes(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
export const encodeJson = (value) =>
  JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? { $b: bytesToB64(v) } : v));
export const decodeJson = (text) =>
  JSON.parse(text, (_k, v) => (v && typeof v === "object" && typeof v.$b === "string" && Object.keys(v).length === 1 ? b64ToBytes(v.$b) : v));

export class Vault {
  constructor(backend, key) {
    this.backend = backend;
    this.key = key;
  }

  static async open({ backend } = {}) {
    const store = backend || (await indexedDbBackend());
    let key = await store.getMeta(WRAP_KEY);
    if (!key) {
      // extractable: false: script can use the key but never read its bytes, so a copy of the
      // database (or script that dumps it) yields only ciphertext.
      const fresh = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
      key = await store.metaInit(WRAP_KEY, fresh);
    }
    return new Vault(store, key);
  }

  async seal(k, value) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const data = new TextEncoder().encode(encodeJson(value));
    // The record key is the AAD: a sealed value cannot be moved under another key.
    const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: new TextEncoder().encode(k) }, this.key, data);
    return { iv, ct: new Uint8Array(ct) };
  }

  async open(k, row) {
    const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv: row.iv, additionalData: new TextEncoder().encode(k) }, this.key, row.ct);
    return decodeJson(new TextDecoder().decode(pt));
  }

  async put(k, value, group = "") {
    const { iv, ct } = await this.seal(k, value);
    await this.backend.putRow({ k, g: group, iv, ct });
  }

  async get(k) {
    const row = await this.backend.getRow(k);
    return row ? this.open(k, row) : null;
  }

  async delete(k) {
    await this.backend.deleteRow(k);
  }

  // Every record whose key starts with `prefix`, decrypted, in key order.
  async list(prefix) {
    const rows = await this.backend.rowsWithPrefix(prefix);
    const out = [];
    for (const row of rows) {
      try {
        out.push(await this.open(row.k, row));
      } catch {
        // A record that fails authentication is ignored, never trusted.
      }
    }
    return out;
  }

  close() {
    this.backend.close();
  }

  set onClosedElsewhere(handler) {
    this.backend.onClosedElsewhere = handler;
  }

  // Close this page's connection first (Vault.close): an open one would block the deletion. If an
  // old tab still holds the store open, the deletion is queued and completes when it lets go;
  // nothing waits for that here.
  static wipe() {
    return new Promise((resolve, reject) => {
      const request = indexedDB.deleteDatabase(DB_NAME);
      request.onsuccess = () => resolve(true);
      request.onerror = () => reject(request.error);
      request.onblocked = () => resolve(false);
    });
  }
}
