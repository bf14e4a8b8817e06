// Test support (not a test file): an in-memory stand-in for vault.js's IndexedDB backend and two
// engines (alice, bob) with registered keys, to drive engine.js and vault.js under node --test.
import * as C from "../../static/js/crypto.js";
import { Engine, certificateMessage } from "../../static/js/engine.js";
import { Vault } from "../../static/js/vault.js";

// Rows are copied in and out, as IndexedDB's structured clone does; meta keeps the CryptoKey as is.
export function memoryBackend() {
  const meta = new Map();
  const rows = new Map();
  return {
    meta,
    rows,
    getMeta: async (name) => meta.get(name),
    metaInit: async (name, value) => {
      if (!meta.has(name)) meta.set(name, value);
      return meta.get(name);
    },
    getRow: async (k) => (rows.has(k) ? structuredClone(rows.get(k)) : undefined),
    putRow: async (row) => { rows.set(row.k, structuredClone(row)); },
    deleteRow: async (k) => { rows.delete(k); },
    rowsWithPrefix: async (prefix) => [...rows.keys()].filter((k) => k.startsWith(prefix)).sort()
      .map((k) => structuredClone(rows.get(k))),
    close: () => {},
  };
}

// A registered device: self stored in its vault, prekeys generated (not uploaded anywhere).
export async function device(username, deviceId = 1, { vault, locks } = {}) {
  const store = vault || (await Vault.open({ backend: memoryBackend() }));
  const engine = await Engine.create(store, { locks });
  const accountSeed = C.systemRng(32);
  engine.self = { username, deviceId, accountSeed, deviceSeed: C.systemRng(32),
    accountPublic: C.signingKeyPairFromSeed(accountSeed).publicKey, signedPrekeys: [], oneTime: {}, nextOneTimeId: 1 };
  await engine.save();
  engine.uploaded = await engine.prekeyUpload(null);
  return engine;
}

// What GET /keys/prekeys/{user} answers for `engine`'s device, with the one-time prekey `opkIndex`
// of the given upload.
export function bundleOf(engine, upload = engine.uploaded, opkIndex = 0) {
  const identityKey = engine.identity.publicKey;
  const certificate = C.sign(engine.account, certificateMessage(engine.username, engine.deviceId, identityKey, 1));
  const spk = engine.uploaded.signed_prekey;
  return {
    user_id: engine.username,
    account_key: C.b64e(engine.account.publicKey),
    devices: [{ device_id: engine.deviceId, identity_key: C.b64e(identityKey), certificate: C.b64e(certificate),
      issued_ms: 1, signed_prekey: spk, one_time_prekey: upload.one_time_prekeys[opkIndex] }],
  };
}

export const text = (body) => ({ type: "text", id: crypto.randomUUID(), sent_ms: 0, body });
