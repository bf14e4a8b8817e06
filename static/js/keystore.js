// IndexedDB key storage: secrets wrapped with AES-GCM under a non-extractable WebCrypto key kept in IndexedDB.
import { signingKeyPairFromSeed, dhKeyPairFromSecret, utf8 } from "./crypto.js";

const WRAP_KEY_ID = "wrapping-key";

// Minimal async key-value backend over IndexedDB (object stores "meta" and "secrets").
export function indexedDbBackend(name = "enigmo-keys", idb = globalThis.indexedDB) {
  const opened = new Promise((resolve, reject) => {
    const req = idb.open(name, 1);
    req.onupgradeneeded = () => {
      req.result.createObjectStore("meta");
      req.result.createObjectStore("secrets");
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const run = (store, mode, fn) => opened.then((db) => new Promise((resolve, reject) => {
    const req = fn(db.transaction(store, mode).objectStore(store));
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  }));
  return {
    get: (store, key) => run(store, "readonly", (s) => s.get(key)),
    put: (store, key, value) => run(store, "readwrite", (s) => s.put(value, key)),
    delete: (store, key) => run(store, "readwrite", (s) => s.delete(key)),
    keys: (store) => run(store, "readonly", (s) => s.getAllKeys()),
  };
}

// Same interface in memory, for node --test; values are kept as-is (CryptoKey objects included).
export function memoryBackend() {
  const stores = { meta: new Map(), secrets: new Map() };
  return {
    stores,
    get: async (store, key) => stores[store].get(key),
    put: async (store, key, value) => { stores[store].set(key, value); },
    delete: async (store, key) => { stores[store].delete(key); },
    keys: async (store) => [...stores[store].keys()],
  };
}

export function createKeyStore({ backend = indexedDbBackend(), subtle = globalThis.crypto.subtle,
  getRandomValues = (b) => globalThis.crypto.getRandomValues(b) } = {}) {
  let wrapKeyPromise = null;

  function wrappingKey() {
    wrapKeyPromise ??= (async () => {
      let key = await backend.get("meta", WRAP_KEY_ID);
      if (!key) {
        // extractable: false — script can use the key but never read its bytes, so it cannot be exfiltrated raw.
        key = await subtle.generateKey({ name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
        await backend.put("meta", WRAP_KEY_ID, key);
      }
      return key;
    })();
    return wrapKeyPromise;
  }

  async function putSecret(name, bytes) {
    const iv = getRandomValues(new Uint8Array(12));
    const ct = await subtle.encrypt({ name: "AES-GCM", iv, additionalData: utf8(name) }, await wrappingKey(), bytes);
    await backend.put("secrets", name, { v: 1, iv, ct: new Uint8Array(ct) });
  }

  async function getSecret(name) {
    const rec = await backend.get("secrets", name);
    if (!rec) return null;
    const pt = await subtle.decrypt({ name: "AES-GCM", iv: rec.iv, additionalData: utf8(name) }, await wrappingKey(),
      rec.ct);
    return new Uint8Array(pt);
  }

  return {
    putSecret,
    getSecret,
    deleteSecret: (name) => backend.delete("secrets", name),
    listSecrets: () => backend.keys("secrets"),
    async putSigningKey(name, pair) { await putSecret(name, pair.secret.slice(0, 32)); },
    async getSigningKey(name) {
      const seed = await getSecret(name);
      return seed && signingKeyPairFromSeed(seed);
    },
    async putDhKey(name, pair) { await putSecret(name, pair.secret); },
    async getDhKey(name) {
      const secret = await getSecret(name);
      return secret && dhKeyPairFromSecret(secret);
    },
  };
}
