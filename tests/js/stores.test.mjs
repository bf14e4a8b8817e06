// keystore.js and sessionstore.js against an in-memory backend and Node's WebCrypto.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as C from "../../static/js/crypto.js";
import { createKeyStore, memoryBackend } from "../../static/js/keystore.js";
import { createSessionStore, lockManager } from "../../static/js/sessionstore.js";

await C.ready();

function parties() {
  const mk = (name, userId, deviceId) => {
    const rng = C.deterministicRng(C.primitives.sha256(C.utf8(`stores/${name}`)));
    const account = C.signingKeyPairGenerate(rng);
    const identity = C.signingKeyPairGenerate(rng);
    const spk = C.signedPrekeyGenerate(identity, { keyId: 1, createdMs: 0, rng });
    const opks = C.oneTimePrekeysGenerate({ startId: 1, count: 5, rng });
    const cert = C.deviceCertificateSign(account, { userId, deviceId, deviceKey: identity.publicKey, issuedMs: 1 });
    const store = C.memoryPrekeyStore([[1, spk.pair]], opks.map((k) => [k.keyId, k.pair]));
    const bundle = (i) => ({ userId, deviceId, identityKey: identity.publicKey, certificate: cert, signedPrekeyId: 1,
      signedPrekey: spk.pair.publicKey, signedPrekeySignature: spk.signature, oneTimePrekeyId: opks[i].keyId,
      oneTimePrekey: opks[i].pair.publicKey });
    return { account, identity, store, bundle, rng };
  };
  return [mk("alice", "1", 1), mk("bob", "2", 1)];
}

test("keystore wraps secrets with a non-extractable AES-GCM key", async () => {
  const backend = memoryBackend();
  const ks = createKeyStore({ backend });
  const pair = C.signingKeyPairGenerate(C.systemRng);
  await ks.putSigningKey("identity", pair);
  const rec = backend.stores.secrets.get("identity");
  assert.ok(!C.hex(rec.ct).includes(C.hex(pair.secret.slice(0, 32))), "stored ciphertext, not the seed");
  const wrap = backend.stores.meta.get("wrapping-key");
  assert.equal(wrap.extractable, false);
  await assert.rejects(globalThis.crypto.subtle.exportKey("raw", wrap));
  const back = await createKeyStore({ backend }).getSigningKey("identity");
  assert.deepEqual(back.publicKey, pair.publicKey);
  rec.ct[0] ^= 1;
  await assert.rejects(ks.getSecret("identity"));
  // A blob moved under another name fails: the name is the AES-GCM additional data.
  await ks.putSecret("a", new Uint8Array([1, 2, 3]));
  backend.stores.secrets.set("b", backend.stores.secrets.get("a"));
  await assert.rejects(ks.getSecret("b"));
  assert.equal(await ks.getSecret("missing"), null);
});

test("key objects never show secrets in logs or JSON", () => {
  const pair = C.signingKeyPairGenerate(C.systemRng);
  const shown = JSON.stringify(pair) + String(Object.keys(pair));
  assert.ok(!shown.includes("secret"));
  for (const src of ["keystore.js", "sessionstore.js", "crypto.js"]) {
    const text = readFileSync(new URL(`../../static/js/${src}`, import.meta.url), "utf8");
    assert.ok(!text.includes("localStorage.") && !text.includes("console."), src);
  }
});

test("session store saves before returning and serialises concurrent encrypts", async () => {
  const [alice, bob] = parties();
  const aStore = createSessionStore({ keystore: createKeyStore({ backend: memoryBackend() }) });
  const bStore = createSessionStore({ keystore: createKeyStore({ backend: memoryBackend() }) });
  await aStore.update("2.1", (r) => [C.sessionInitiate(r, alice.identity, bob.bundle(0), bob.account.publicKey,
    C.systemRng), null]);
  const wires = await Promise.all(Array.from({ length: 20 }, (_, i) =>
    aStore.encrypt("2.1", C.utf8(`m${i}`), C.systemRng)));
  const saved = await aStore.load("2.1");
  assert.equal(saved.active.ns, 20, "every encrypt advanced the stored chain once");
  const counters = wires.map((w) => C.decodePrekeyMessage(w).message).map((m) => C.decodeHeader(m.slice(0, 41)).n);
  assert.deepEqual([...counters].sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => i));
  const got = await Promise.all(wires.reverse().map((w) =>
    bStore.decrypt("1.1", w, bob.identity, bob.store, C.systemRng)));
  assert.deepEqual(got.map((r) => C.fromUtf8(r.plaintext)).sort(), Array.from({ length: 20 }, (_, i) => `m${i}`).sort());
});

test("a failed decrypt leaves the stored session unchanged", async () => {
  const [alice, bob] = parties();
  const aStore = createSessionStore({ keystore: createKeyStore({ backend: memoryBackend() }) });
  const bStore = createSessionStore({ keystore: createKeyStore({ backend: memoryBackend() }) });
  await aStore.update("2.1", (r) => [C.sessionInitiate(r, alice.identity, bob.bundle(1), bob.account.publicKey,
    C.systemRng), null]);
  const w1 = await aStore.encrypt("2.1", C.utf8("one"), C.systemRng);
  await bStore.decrypt("1.1", w1, bob.identity, bob.store, C.systemRng);
  const before = C.canonicalJson(C.recordToDict(await bStore.load("1.1")));
  const w2 = await aStore.encrypt("2.1", C.utf8("two"), C.systemRng);
  w2[w2.length - 1] ^= 1;
  await assert.rejects(bStore.decrypt("1.1", w2, bob.identity, bob.store, C.systemRng),
    (e) => e.code === "decrypt_failed");
  assert.equal(C.canonicalJson(C.recordToDict(await bStore.load("1.1"))), before);
});

test("lock manager uses navigator.locks when present", async () => {
  const seen = [];
  const fake = { request: (name, opts, fn) => { seen.push([name, opts.mode]); return fn(); } };
  assert.equal(await lockManager(fake)("x", async () => 42), 42);
  assert.deepEqual(seen, [["x", "exclusive"]]);
  const withLock = lockManager(undefined);
  const order = [];
  await Promise.all([
    withLock("k", async () => { order.push("a1"); await new Promise((r) => setTimeout(r, 5)); order.push("a2"); }),
    withLock("k", async () => { order.push("b1"); }),
  ]);
  assert.deepEqual(order, ["a1", "a2", "b1"]);
});

test("envelope fan-out and device-set diff", () => {
  const [alice, bob] = parties();
  const rec = C.sessionInitiate(C.emptyRecord(), alice.identity, bob.bundle(2), bob.account.publicKey, C.systemRng);
  const { ciphertexts, records } = C.envelopeEncrypt(C.utf8("hi"), [{ userId: "2", deviceId: 1, record: rec }],
    C.systemRng);
  assert.deepEqual(Object.keys(ciphertexts), ["2.1"]);
  assert.equal(records["2.1"].active.ns, 1);
  const r = C.sessionDecrypt(C.emptyRecord(), C.b64d(ciphertexts["2.1"]), bob.identity, bob.store, C.systemRng);
  assert.equal(C.fromUtf8(r.plaintext), "hi");
  assert.deepEqual(C.deviceSetDiff(["2.1", "2.9"], ["2.1", "2.4"]), { missing: ["2.4"], extra: ["2.9"] });
});
