// Double Ratchet: header and message encoding, encrypt/decrypt on copies, JSON-safe state.
import { P } from "./prims.js";
import { ProtocolError } from "./errors.js";
import { b64d, b64e, concat, equal, hex, readU32, u32, utf8 } from "./bytes.js";
import { dhKeyPairFromSecret, dhKeyPairGenerate } from "./keys.js";

export const RATCHET_INFO = utf8("Enigmo_Ratchet_v1");
export const MAX_SKIP = 1000;
export const MAX_STORED_SKIPPED = 2000;
export const HEADER_LEN = 41;
export const NONCE_LEN = 24;
const TAG_LEN = 16;

export const encodeHeader = ({ dh, pn, n }) => concat(new Uint8Array([1]), dh, u32(pn), u32(n));

export function decodeHeader(b) {
  if (b.length !== HEADER_LEN || b[0] !== 1) throw new ProtocolError("bad_message", "bad ratchet header");
  return { dh: b.slice(1, 33), pn: readU32(b, 33), n: readU32(b, 37) };
}

export function kdfRk(rk, dhOut) {
  const out = P.hkdf(rk, dhOut, RATCHET_INFO, 64);
  return [out.slice(0, 32), out.slice(32)];
}

// Returns [next chain key, message key].
export const kdfCk = (ck) => [P.hmacSha256(ck, new Uint8Array([2])), P.hmacSha256(ck, new Uint8Array([1]))];

const skipKey = (dh, n) => `${hex(dh)}:${n}`;

export function cloneState(s) {
  return { ...s, skipped: new Map(s.skipped) };
}

export function stateToDict(s) {
  const opt = (b) => (b === null ? null : b64e(b));
  return {
    v: 1,
    dhs: b64e(s.dhs.secret),
    dhr: opt(s.dhr),
    rk: b64e(s.rk),
    cks: opt(s.cks),
    ckr: opt(s.ckr),
    ns: s.ns,
    nr: s.nr,
    pn: s.pn,
    ad: b64e(s.ad),
    remote_identity: b64e(s.remoteIdentity),
    base_key: b64e(s.baseKey),
    pending: s.pending === null ? null : {
      identity_key: b64e(s.pending.identityKey),
      ephemeral_key: b64e(s.pending.ephemeralKey),
      signed_prekey_id: s.pending.signedPrekeyId,
      one_time_prekey_id: s.pending.oneTimePrekeyId,
    },
    skipped: [...s.skipped.values()].map(({ dh, n, mk }) => [b64e(dh), n, b64e(mk)]),
  };
}

export function stateFromDict(d) {
  if (d.v !== 1) throw new ProtocolError("bad_message", "unknown session state version");
  const opt = (v) => (v === null ? null : b64d(v));
  const p = d.pending;
  return {
    dhs: dhKeyPairFromSecret(b64d(d.dhs)),
    dhr: opt(d.dhr),
    rk: b64d(d.rk),
    cks: opt(d.cks),
    ckr: opt(d.ckr),
    ns: d.ns,
    nr: d.nr,
    pn: d.pn,
    ad: b64d(d.ad),
    remoteIdentity: b64d(d.remote_identity),
    baseKey: b64d(d.base_key),
    pending: p == null ? null : {
      identityKey: b64d(p.identity_key),
      ephemeralKey: b64d(p.ephemeral_key),
      signedPrekeyId: p.signed_prekey_id,
      oneTimePrekeyId: p.one_time_prekey_id,
    },
    skipped: new Map(d.skipped.map(([dh, n, mk]) => {
      const dhb = b64d(dh);
      return [skipKey(dhb, n), { dh: dhb, n, mk: b64d(mk) }];
    })),
  };
}

export function initInitiator({ sharedSecret, ad, remoteRatchetKey, remoteIdentity, baseKey, pending, rng }) {
  const dhs = dhKeyPairGenerate(rng);
  const [rk, cks] = kdfRk(sharedSecret, P.x25519(dhs.secret, remoteRatchetKey));
  return { dhs, dhr: remoteRatchetKey, rk, cks, ckr: null, ns: 0, nr: 0, pn: 0, ad, remoteIdentity, baseKey,
    pending, skipped: new Map() };
}

export function initResponder({ sharedSecret, ad, signedPrekey, remoteIdentity, baseKey }) {
  return { dhs: signedPrekey, dhr: null, rk: sharedSecret, cks: null, ckr: null, ns: 0, nr: 0, pn: 0, ad,
    remoteIdentity, baseKey, pending: null, skipped: new Map() };
}

export function ratchetEncrypt(state, plaintext, rng) {
  if (state.cks === null) throw new ProtocolError("no_session", "no sending chain yet");
  const s = cloneState(state);
  const [ck, mk] = kdfCk(state.cks);
  s.cks = ck;
  const raw = encodeHeader({ dh: s.dhs.publicKey, pn: s.pn, n: s.ns });
  s.ns += 1;
  const nonce = rng(NONCE_LEN);
  const ct = P.aeadEncrypt(mk, nonce, P.pad(plaintext, 64), concat(s.ad, raw));
  return [s, concat(raw, nonce, ct)];
}

function storeSkipped(s, until) {
  if (s.nr + MAX_SKIP < until) throw new ProtocolError("too_many_skipped", `would skip ${until - s.nr} keys`);
  if (s.ckr === null) return;
  while (s.nr < until) {
    const [ck, mk] = kdfCk(s.ckr);
    s.ckr = ck;
    s.skipped.set(skipKey(s.dhr, s.nr), { dh: s.dhr, n: s.nr, mk });
    s.nr += 1;
    while (s.skipped.size > MAX_STORED_SKIPPED) s.skipped.delete(s.skipped.keys().next().value);
  }
}

function dhRatchet(s, header, rng) {
  s.pn = s.ns;
  s.ns = 0;
  s.nr = 0;
  s.dhr = header.dh;
  [s.rk, s.ckr] = kdfRk(s.rk, P.x25519(s.dhs.secret, header.dh));
  s.dhs = dhKeyPairGenerate(rng);
  [s.rk, s.cks] = kdfRk(s.rk, P.x25519(s.dhs.secret, header.dh));
}

export function decodeMessage(data) {
  if (data.length < HEADER_LEN + NONCE_LEN + TAG_LEN) throw new ProtocolError("bad_message", "ratchet message too short");
  const raw = data.slice(0, HEADER_LEN);
  return { header: decodeHeader(raw), raw, nonce: data.slice(HEADER_LEN, HEADER_LEN + NONCE_LEN),
    ciphertext: data.slice(HEADER_LEN + NONCE_LEN) };
}

// Works on a copy: the caller's state is untouched unless this returns.
export function ratchetDecrypt(state, message, rng) {
  const { header, raw, nonce, ciphertext } = decodeMessage(message);
  const s = cloneState(state);
  const key = skipKey(header.dh, header.n);
  let mk = s.skipped.get(key)?.mk ?? null;
  if (mk !== null) {
    s.skipped.delete(key);
  } else {
    if (!equal(header.dh, s.dhr)) {
      storeSkipped(s, header.pn);
      dhRatchet(s, header, rng);
    } else if (header.n < s.nr) {
      throw new ProtocolError("duplicate_message", "message key already used");
    }
    if (s.ckr === null) throw new ProtocolError("decrypt_failed", "no receiving chain for this key");
    storeSkipped(s, header.n);
    [s.ckr, mk] = kdfCk(s.ckr);
    s.nr += 1;
  }
  const plaintext = P.unpad(P.aeadDecrypt(mk, nonce, ciphertext, concat(s.ad, raw)), 64);
  s.pending = null;
  return [s, plaintext];
}
