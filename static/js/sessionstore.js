// Session store: one record per remote device, encrypted at rest via the keystore, advanced under a cross-tab lock.
import { canonicalJson, fromUtf8, recordFromDict, recordToDict, emptyRecord, sessionDecrypt, sessionEncrypt,
  utf8 } from "./crypto.js";

const localLocks = new Map();

// navigator.locks serialises across tabs; the fallback serialises within one JS realm (Node tests, old browsers).
export function lockManager(locks = globalThis.navigator?.locks) {
  if (locks?.request) return (name, fn) => locks.request(name, { mode: "exclusive" }, fn);
  return (name, fn) => {
    const prev = localLocks.get(name) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => {});
    localLocks.set(name, tail);
    tail.then(() => { if (localLocks.get(name) === tail) localLocks.delete(name); });
    return run;
  };
}

export function createSessionStore({ keystore, withLock = lockManager() }) {
  const secretName = (address) => `session:${address}`;

  async function load(address) {
    const raw = await keystore.getSecret(secretName(address));
    return raw === null ? emptyRecord() : recordFromDict(JSON.parse(fromUtf8(raw)));
  }

  const save = (address, record) => keystore.putSecret(secretName(address), utf8(canonicalJson(recordToDict(record))));

  return {
    load,
    // fn(record) -> [newRecord, result]; the new record is saved before the result is released.
    update(address, fn) {
      return withLock(`enigmo-session:${address}`, async () => {
        const [next, result] = await fn(await load(address));
        await save(address, next);
        return result;
      });
    },
    // The ciphertext is returned only after the advanced ratchet is on disk: a crash cannot reuse a key.
    encrypt(address, plaintext, rng) {
      return this.update(address, (record) => sessionEncrypt(record, plaintext, rng));
    },
    // Decrypt works on a copy; a failure throws before anything is saved.
    decrypt(address, wire, identity, prekeys, rng) {
      return this.update(address, (record) => {
        const r = sessionDecrypt(record, wire, identity, prekeys, rng);
        return [r.record, r];
      });
    },
    remove: (address) => keystore.deleteSecret(secretName(address)),
  };
}
