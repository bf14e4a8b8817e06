// Per-message Double Ratchet encrypt/decrypt cost of the browser implementation (wasm) for 1 KB messages.
import * as C from "../static/js/crypto.js";

await C.ready();
const n = Number(process.argv[2] ?? 5000);
const rng = C.systemRng;
const mk = (userId) => {
  const account = C.signingKeyPairGenerate(rng);
  const identity = C.signingKeyPairGenerate(rng);
  const spk = C.signedPrekeyGenerate(identity, { keyId: 1, createdMs: 0, rng });
  const cert = C.deviceCertificateSign(account, { userId, deviceId: 1, deviceKey: identity.publicKey, issuedMs: 0 });
  const bundle = { userId, deviceId: 1, identityKey: identity.publicKey, certificate: cert, signedPrekeyId: 1,
    signedPrekey: spk.pair.publicKey, signedPrekeySignature: spk.signature, oneTimePrekeyId: null, oneTimePrekey: null };
  return { account, identity, bundle, store: C.memoryPrekeyStore([[1, spk.pair]], []) };
};
const alice = mk("1");
const bob = mk("2");
let a = C.sessionInitiate(C.emptyRecord(), alice.identity, bob.bundle, bob.account.publicKey, rng);
let w;
[a, w] = C.sessionEncrypt(a, C.utf8("hi"), rng);
let b = C.sessionDecrypt(C.emptyRecord(), w, bob.identity, bob.store, rng).record;
[b, w] = C.sessionEncrypt(b, C.utf8("ok"), rng);
a = C.sessionDecrypt(a, w, alice.identity, alice.store, rng).record;
const payload = new Uint8Array(1024).fill(120);
const wires = [];
const t0 = performance.now();
for (let i = 0; i < n; i++) {
  [a, w] = C.sessionEncrypt(a, payload, rng);
  wires.push(w);
}
const t1 = performance.now();
for (const x of wires) b = C.sessionDecrypt(b, x, bob.identity, bob.store, rng).record;
const t2 = performance.now();
const us = (ms) => ((ms * 1000) / n).toFixed(1).padStart(6);
process.stdout.write(`js/wasm 1 KB  encrypt ${us(t1 - t0)} µs/msg  decrypt ${us(t2 - t1)} µs/msg  (n=${n})\n`);
