// The local encrypted store (IndexedDB): history, outbox, sessions and keys, each record sealed
// with AES-GCM under a non-extractable WebCrypto key that never leaves this browser profile.

const DB_NAME = "enigmo";
const DB_VERSION = 1;

function promisify(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, DB_VERSION);
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
  constructor(db, key) {
    this.db = db;
    this.key = key;
  }

  static async open() {
    const db = await openDb();
    let key = await promisify(db.transaction("meta").objectStore("meta").get("vault-key"));
    if (!key) {
      key = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
      await promisify(db.transaction("meta", "readwrite").objectStore("meta").put(key, "vault-key"));
    }
    return new Vault(db, key);
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
    await promisify(this.db.transaction("sealed", "readwrite").objectStore("sealed").put({ k, g: group, iv, ct }));
  }

  async get(k) {
    const row = await promisify(this.db.transaction("sealed").objectStore("sealed").get(k));
    return row ? this.open(k, row) : null;
  }

  async delete(k) {
    await promisify(this.db.transaction("sealed", "readwrite").objectStore("sealed").delete(k));
  }

  // Every record whose key starts with `prefix`, decrypted, in key order.
  async list(prefix) {
    const range = IDBKeyRange.bound(prefix, prefix + "\uffff");
    const rows = await promisify(this.db.transaction("sealed").objectStore("sealed").getAll(range));
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

  async getMeta(name) {
    return promisify(this.db.transaction("meta").objectStore("meta").get(name));
  }

  async setMeta(name, value) {
    await promisify(this.db.transaction("meta", "readwrite").objectStore("meta").put(value, name));
  }

  static async wipe() {
    await promisify(indexedDB.deleteDatabase(DB_NAME));
  }
}
