// Replays every Python-generated vector file through the browser implementation, byte for byte.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as C from "../../static/js/crypto.js";

await C.ready();
const load = (n) => JSON.parse(readFileSync(new URL(`../vectors/${n}`, import.meta.url), "utf8"));
const PRIM = load("primitives.json");
const PROTO = load("protocol.json");
const TRANS = load("transcripts.json");
const NEG = load("negative.json");
const P = C.primitives;
const H = C.unhex;
const hx = C.hex;
const pattern = (n) => Uint8Array.from({ length: n }, (_, i) => i % 251);

function party(d) {
  const account = C.signingKeyPairFromSeed(H(d.account_seed));
  const identity = C.signingKeyPairFromSeed(H(d.identity_seed));
  const spk = C.dhKeyPairFromSecret(H(d.spk_secret));
  const opks = new Map(Object.entries(d.opks).map(([k, v]) => [Number(k), C.dhKeyPairFromSecret(H(v))]));
  return { d, account, identity, spk, opks, store: C.memoryPrekeyStore([[d.spk_id, spk]], opks),
    rng: C.deterministicRng(H(d.rng_seed)) };
}

function bundleFrom(b) {
  const c = b.certificate;
  return { userId: b.user_id, deviceId: b.device_id, identityKey: H(b.identity_key),
    certificate: { userId: c.user_id, deviceId: c.device_id, deviceKey: H(c.device_key), issuedMs: c.issued_ms,
      signature: H(c.signature) },
    signedPrekeyId: b.signed_prekey_id, signedPrekey: H(b.signed_prekey),
    signedPrekeySignature: H(b.signed_prekey_signature), oneTimePrekeyId: b.one_time_prekey_id,
    oneTimePrekey: b.one_time_prekey === null ? null : H(b.one_time_prekey) };
}

function bundleOf(p, opkId) {
  const d = p.d;
  const certificate = C.deviceCertificateSign(p.account, { userId: d.user_id, deviceId: d.device_id,
    deviceKey: p.identity.publicKey, issuedMs: d.issued_ms });
  return { userId: d.user_id, deviceId: d.device_id, identityKey: p.identity.publicKey, certificate,
    signedPrekeyId: d.spk_id, signedPrekey: p.spk.publicKey,
    signedPrekeySignature: C.signedPrekeySign(p.identity, p.spk.publicKey), oneTimePrekeyId: opkId,
    oneTimePrekey: opkId === null ? null : p.opks.get(opkId).publicKey };
}

const stateJson = (s) => C.canonicalJson(C.stateToDict(s));
const recordJson = (r) => C.canonicalJson(C.recordToDict(r));

test("primitives: RFC 5869, 7748, 8032, XChaCha draft, RNG, HMAC, pad", () => {
  for (const c of PRIM.hkdf_sha256) assert.equal(hx(P.hkdf(H(c.salt), H(c.ikm), H(c.info), c.length)), c.okm, c.name);
  for (const c of PRIM.x25519) assert.equal(hx(P.x25519(H(c.scalar), H(c.u))), c.out, c.name);
  const v = PRIM.x25519_dh[0];
  assert.equal(hx(P.x25519Base(H(v.alice_private))), v.alice_public);
  assert.equal(hx(P.x25519Base(H(v.bob_private))), v.bob_public);
  assert.equal(hx(P.x25519(H(v.alice_private), H(v.bob_public))), v.shared);
  for (const c of PRIM.ed25519) {
    const kp = C.signingKeyPairFromSeed(H(c.seed));
    assert.equal(hx(kp.publicKey), c.public);
    assert.equal(hx(C.sign(kp, H(c.message))), c.signature, c.name);
    assert.ok(P.ed25519Verify(kp.publicKey, H(c.message), H(c.signature)));
  }
  const x = PRIM.xchacha20poly1305[0];
  const ct = P.aeadEncrypt(H(x.key), H(x.nonce), H(x.plaintext), H(x.aad));
  assert.equal(hx(ct), x.ciphertext + x.tag);
  assert.equal(hx(P.aeadDecrypt(H(x.key), H(x.nonce), ct, H(x.aad))), x.plaintext);
  for (const c of PRIM.rng) {
    const rng = C.deterministicRng(H(c.seed_key));
    assert.deepEqual(c.calls.map((k) => hx(rng(k.n))), c.calls.map((k) => k.out));
  }
  const m = PRIM.hmac_sha256[0];
  assert.equal(hx(P.hmacSha256(H(m.key), H(m.data))), m.mac);
  for (const c of PRIM.pad) {
    assert.equal(hx(P.pad(H(c.input), 64)), c.padded);
    assert.equal(hx(P.unpad(H(c.padded), 64)), c.input);
  }
});

test("keys, certificates, signed prekeys, auth messages", () => {
  for (const k of PROTO.keys) {
    const kp = C.signingKeyPairFromSeed(H(k.seed));
    assert.deepEqual([hx(kp.publicKey), hx(C.x25519Public(kp)), hx(C.x25519Secret(kp))],
      [k.ed25519_public, k.x25519_public, k.x25519_secret]);
  }
  const c = PROTO.device_certificate[0];
  const account = C.signingKeyPairFromSeed(H(c.account_seed));
  const msg = C.deviceCertificateMessage(c.user_id, c.device_id, H(c.device_key), c.issued_ms);
  assert.equal(hx(msg), c.message);
  const cert = C.deviceCertificateSign(account, { userId: c.user_id, deviceId: c.device_id, deviceKey: H(c.device_key),
    issuedMs: c.issued_ms });
  assert.equal(hx(cert.signature), c.signature);
  C.deviceCertificateVerify(account.publicKey, cert);
  const s = PROTO.signed_prekey[0];
  const ident = C.signingKeyPairFromSeed(H(s.identity_seed));
  assert.equal(hx(C.signedPrekeyMessage(H(s.spk_public))), s.message);
  assert.equal(hx(C.signedPrekeySign(ident, H(s.spk_public))), s.signature);
  C.signedPrekeyVerify(ident.publicKey, H(s.spk_public), H(s.signature));
  const a = PROTO.auth[0];
  const am = C.authMessage(H(a.server_nonce), a.user_id, a.device_id, a.ts_ms);
  assert.equal(hx(am), a.message);
  assert.equal(hx(C.authSign(C.signingKeyPairFromSeed(H(a.identity_seed)), { serverNonce: H(a.server_nonce),
    userId: a.user_id, deviceId: a.device_id, tsMs: a.ts_ms })), a.signature);
});

test("KDF_RK, KDF_CK, header encoding", () => {
  const r = PROTO.kdf_rk[0];
  assert.deepEqual(C.kdfRk(H(r.rk), H(r.dh)).map(hx), [r.rk_out, r.ck_out]);
  const c = PROTO.kdf_ck[0];
  assert.deepEqual(C.kdfCk(H(c.ck)).map(hx), [c.ck_out, c.mk]);
  for (const h of PROTO.header) {
    const enc = C.encodeHeader({ dh: H(h.dh), pn: h.pn, n: h.n });
    assert.equal(hx(enc), h.encoded);
    const dec = C.decodeHeader(enc);
    assert.deepEqual([hx(dec.dh), dec.pn, dec.n], [h.dh, h.pn, h.n]);
  }
});

test("X3DH both sides", () => {
  for (const c of PROTO.x3dh) {
    const alice = party(c.alice);
    const bob = party(c.bob);
    const init = C.x3dhInitiate(alice.identity, bundleFrom(c.bundle), H(c.bob_account_public),
      C.deterministicRng(H(c.rng_seed)));
    assert.equal(hx(init.ephemeralPublic), c.ephemeral_public);
    assert.equal(hx(init.sharedSecret), c.shared_secret);
    assert.equal(hx(init.associatedData), c.associated_data);
    const opkId = c.bundle.one_time_prekey_id;
    const r = C.x3dhRespond(bob.identity, bob.spk, opkId === null ? null : bob.opks.get(opkId), alice.identity.publicKey,
      init.ephemeralPublic);
    assert.equal(hx(r.sharedSecret), c.shared_secret);
    assert.equal(hx(r.associatedData), c.associated_data);
  }
});

test("ratchet encrypt/decrypt and prekey message encoding", () => {
  const e = PROTO.ratchet_encrypt[0];
  const st = C.stateFromDict(JSON.parse(e.state));
  assert.equal(stateJson(st), e.state);
  const [after, msg] = C.ratchetEncrypt(st, H(e.plaintext), C.deterministicRng(H(e.rng_seed)));
  assert.equal(hx(msg), e.message);
  assert.equal(stateJson(after), e.state_after);
  const d = PROTO.ratchet_decrypt[0];
  const [after2, pt] = C.ratchetDecrypt(C.stateFromDict(JSON.parse(d.state)), H(d.message),
    C.deterministicRng(H(d.rng_seed)));
  assert.equal(hx(pt), d.plaintext);
  assert.equal(stateJson(after2), d.state_after);
  for (const m of PROTO.prekey_message) {
    const enc = C.encodePrekeyMessage({ identityKey: H(m.identity_key), ephemeralKey: H(m.ephemeral_key),
      signedPrekeyId: m.signed_prekey_id, oneTimePrekeyId: m.one_time_prekey_id, message: H(m.message) });
    assert.equal(hx(enc), m.encoded);
    const dec = C.decodePrekeyMessage(enc);
    assert.equal(dec.oneTimePrekeyId, m.one_time_prekey_id);
    assert.equal(hx(dec.message), m.message);
  }
});

test("safety numbers: Signal known answer and Enigmo vectors", () => {
  const k = PROTO.safety_number.signal_kat;
  const fa = C.fingerprint(H(k.alice_key), C.utf8(k.alice_id), k.iterations);
  const fb = C.fingerprint(H(k.bob_key), C.utf8(k.bob_id), k.iterations);
  assert.equal(hx(fa), k.alice_fingerprint);
  assert.equal(C.displayString(fa, fb), k.display);
  assert.equal(C.displayString(fb, fa), k.display);
  assert.equal(hx(C.scannableEncode(fa, fb)), k.alice_scannable);
  assert.equal(hx(C.scannableEncode(fb, fa)), k.bob_scannable);
  for (const v of PROTO.safety_number.enigmo) {
    const r = C.safetyNumber(H(v.local_account_key), v.local_username, H(v.remote_account_key), v.remote_username);
    assert.equal(r.digits, v.digits);
    assert.equal(hx(r.qr), v.qr);
    const local = C.fingerprint(H(v.local_account_key), C.utf8(v.local_username));
    const remote = C.fingerprint(H(v.remote_account_key), C.utf8(v.remote_username));
    assert.ok(C.scannableMatches(local, remote, H(v.remote_qr)));
    assert.ok(!C.scannableMatches(local, remote, r.qr));
  }
});

test("attachments and content", () => {
  for (const a of PROTO.attachment) {
    const data = pattern(a.plaintext_len);
    const r = C.encryptAttachment(data, C.deterministicRng(H(a.rng_seed)));
    assert.deepEqual([hx(r.key), hx(r.digest), r.blob.length], [a.key, a.digest, a.blob_len]);
    if (a.blob !== null) assert.equal(hx(r.blob), a.blob);
    assert.deepEqual(C.decryptAttachment(r.blob, r.key, r.digest), data);
  }
  for (const c of PROTO.content) {
    assert.equal(C.fromUtf8(C.contentBuild(c.kind, c.fields)), c.encoded);
    assert.equal(C.contentParse(C.utf8(c.encoded)).type, c.kind);
  }
});

for (const t of TRANS.transcripts) {
  test(`transcript replay: ${t.name}`, () => {
    const parties = Object.fromEntries(Object.entries(t.parties).map(([n, d]) => [n, party(d)]));
    const records = new Map();
    const wires = new Map();
    for (const step of t.steps) {
      const who = parties[step.who];
      const peer = parties[step.peer];
      const key = `${step.who}>${step.peer}`;
      const record = records.get(key) ?? C.emptyRecord();
      if (step.op === "init") {
        records.set(key, C.sessionInitiate(record, who.identity, bundleOf(peer, step.opk_id), peer.account.publicKey,
          who.rng));
      } else if (step.op === "send") {
        const [next, wire] = C.sessionEncrypt(record, C.utf8(step.plaintext), who.rng);
        assert.equal(hx(wire), step.wire, step.id);
        records.set(key, next);
        wires.set(step.id, wire);
      } else {
        const r = C.sessionDecrypt(record, wires.get(step.id), who.identity, who.store, who.rng);
        assert.equal(C.fromUtf8(r.plaintext), step.plaintext, step.id);
        assert.equal(r.newSession, step.new_session);
        assert.equal(r.usedOneTimePrekeyId, step.used_one_time_prekey_id);
        if (r.usedOneTimePrekeyId !== null) who.store.oneTime.delete(r.usedOneTimePrekeyId);
        records.set(key, r.record);
      }
    }
    for (const [pname, peers] of Object.entries(t.final_records)) {
      for (const [peer, json] of Object.entries(peers)) assert.equal(recordJson(records.get(`${pname}>${peer}`)), json);
    }
  });
}

function mutate(blob, key, data, m) {
  if (m.no_final) return C.encryptStream(data, key, blob.slice(0, 24), { finalTag: false });
  if ("truncate_to" in m) return blob.slice(0, m.truncate_to);
  if ("append_zeros" in m) return C.concat(blob, new Uint8Array(m.append_zeros));
  return blob;
}

function runNegative(c) {
  if (c.kind === "x3dh_initiate") {
    C.x3dhInitiate(party(c.alice).identity, bundleFrom(c.bundle), H(c.account_public), C.deterministicRng(H(c.rng_seed)));
  } else if (c.kind === "session_decrypt") {
    const bob = party(c.bob);
    const store = C.memoryPrekeyStore(c.signed_prekey_ids.map((i) => [i, bob.spk]),
      c.one_time_prekey_ids.map((i) => [i, bob.opks.get(i)]));
    const record = C.recordFromDict(JSON.parse(c.record));
    try {
      C.sessionDecrypt(record, H(c.wire), bob.identity, store, C.deterministicRng(H(c.rng_seed)));
    } finally {
      assert.equal(recordJson(record), c.record); // a failure never mutates the stored state
    }
  } else if (c.kind === "attachment_decrypt") {
    const data = pattern(c.plaintext_len);
    const r = C.encryptAttachment(data, C.deterministicRng(H(c.rng_seed)));
    C.decryptAttachment(mutate(r.blob, r.key, data, c.mutation), r.key, H(c.mutated_digest));
  } else if (c.kind === "content_parse") {
    C.contentParse(H(c.data));
  } else {
    throw new Error(c.kind);
  }
}

test("negative cases fail with the expected error code", async (t) => {
  for (const c of NEG.cases) {
    await t.test(c.name, () => {
      assert.throws(() => runNegative(c), (e) => e instanceof C.ProtocolError && e.code === c.error);
    });
  }
});
