// engine.js sessions as the app runs them: fan-out encryption saved before it returns, one lock
// over every session and prekey read-modify-write (across engines sharing a vault, i.e. tabs),
// decryption committed only on success.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as C from "../../static/js/crypto.js";
import { Engine } from "../../static/js/engine.js";
import { bundleOf, device, text } from "./support.mjs";

await C.ready();

const counter = (wire) => {
  const bytes = C.b64d(wire);
  const message = bytes[0] === 0x02 ? C.decodePrekeyMessage(bytes).message : bytes;
  return C.decodeHeader(message.slice(0, 41)).n;
};

async function decryptAll(bob, wires) {
  const out = [];
  for (const w of wires) out.push((await bob.decrypt("alice", 1, w)).content.body);
  return out;
}

test("concurrent sends in one tab each advance the stored chain once", async () => {
  const alice = await device("alice");
  const bob = await device("bob");
  await alice.sessionsFromBundle(bundleOf(bob), [1]);
  const target = [{ userId: "bob", deviceId: 1 }];
  const sent = await Promise.all(Array.from({ length: 20 }, (_, i) => alice.encryptFor(target, text(`m${i}`))));
  const wires = sent.map((r) => r[0].ciphertext);
  assert.equal((await alice.sessionLoad("bob.1")).active.ns, 20, "saved before the ciphertext was returned");
  assert.deepEqual(wires.map(counter).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i));
  const got = await decryptAll(bob, wires.reverse());
  assert.deepEqual(got.sort(), Array.from({ length: 20 }, (_, i) => `m${i}`).sort());
});

test("two tabs on one vault never fork a session", async () => {
  const tab1 = await device("alice");
  const tab2 = await Engine.create(tab1.vault);
  const bob = await device("bob");
  // Both tabs find no session and start one from their own bundle answer at the same moment.
  await Promise.all([tab1.sessionsFromBundle(bundleOf(bob, bob.uploaded, 0), [1]),
    tab2.sessionsFromBundle(bundleOf(bob, bob.uploaded, 1), [1])]);
  const target = [{ userId: "bob", deviceId: 1 }];
  const sends = [];
  for (let i = 0; i < 10; i++) {
    sends.push(tab1.encryptFor(target, text(`t1-${i}`)), tab2.encryptFor(target, text(`t2-${i}`)));
  }
  const wires = (await Promise.all(sends)).map((r) => r[0].ciphertext);
  assert.equal(new Set(wires.map(counter)).size, 20, "no two messages share a message key");
  assert.equal((await decryptAll(bob, wires)).length, 20);
});

test("a tab decrypts with one-time prekeys another tab generated after it loaded", async () => {
  const tab1 = await device("bob");
  const tab2 = await Engine.create(tab1.vault); // loaded now, before the next batch
  const fresh = await tab1.prekeyUpload(0);
  const alice = await device("alice");
  await alice.sessionsFromBundle(bundleOf(tab1, fresh, 0), [1]);
  const [r] = await alice.encryptFor([{ userId: "bob", deviceId: 1 }], text("hello"));
  assert.equal((await tab2.decrypt("alice", 1, r.ciphertext)).content.body, "hello");
  // The used key is gone for both tabs, and tab2 did not drop the batch tab1 stored.
  const stored = await tab1.vault.get("self");
  assert.equal(stored.oneTime[fresh.one_time_prekeys[0].key_id], undefined);
  assert.ok(stored.oneTime[fresh.one_time_prekeys[1].key_id]);
  assert.equal(Object.keys(stored.oneTime).length, 2 * C.ONE_TIME_PREKEY_BATCH - 1);
});

test("a failed decrypt leaves the stored session unchanged", async () => {
  const alice = await device("alice");
  const bob = await device("bob");
  await alice.sessionsFromBundle(bundleOf(bob), [1]);
  const target = [{ userId: "bob", deviceId: 1 }];
  const [w1] = await alice.encryptFor(target, text("one"));
  await bob.decrypt("alice", 1, w1.ciphertext);
  const before = C.canonicalJson(C.recordToDict(await bob.sessionLoad("alice.1")));
  const [w2] = await alice.encryptFor(target, text("two"));
  const bad = C.b64d(w2.ciphertext);
  bad[bad.length - 1] ^= 1;
  await assert.rejects(bob.decrypt("alice", 1, C.b64e(bad)), (e) => e.code === "decrypt_failed");
  assert.equal(C.canonicalJson(C.recordToDict(await bob.sessionLoad("alice.1"))), before);
  assert.equal((await bob.decrypt("alice", 1, w2.ciphertext)).content.body, "two");
});

test("with navigator.locks every session operation takes the same exclusive lock", async () => {
  const seen = [];
  const locks = { request: (name, opts, fn) => { seen.push(`${name}/${opts.mode}`); return fn(); } };
  const alice = await device("alice", 1, { locks });
  const bob = await device("bob");
  await alice.sessionsFromBundle(bundleOf(bob), [1]);
  await alice.encryptFor([{ userId: "bob", deviceId: 1 }], text("x"));
  assert.deepEqual(seen, Array(3).fill("enigmo-sessions/exclusive")); // prekeys, bundle, encrypt
});
