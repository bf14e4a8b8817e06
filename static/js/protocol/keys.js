// Account/device keys, device certificates, signed/one-time prekeys and the signed-message builders.
import { P } from "./prims.js";
import { ProtocolError } from "./errors.js";
import { concat, u32, u64, utf8 } from "./bytes.js";

export const CERT_CONTEXT = utf8("Enigmo-DeviceCert-v1\0");
export const AUTH_CONTEXT = utf8("Enigmo-Auth-v1\0");
export const SIGNED_PREKEY_ROTATE_MS = 7 * 24 * 3600 * 1000;
export const SIGNED_PREKEY_KEEP_MS = 14 * 24 * 3600 * 1000;
export const ONE_TIME_PREKEY_BATCH = 100;
export const ONE_TIME_PREKEY_LOW_WATER = 20;

// Secrets are non-enumerable so console.log / JSON.stringify of a key pair never show them.
function keyPair(kind, publicKey, secret) {
  const pair = { kind, publicKey };
  Object.defineProperty(pair, "secret", { value: secret, enumerable: false });
  return Object.freeze(pair);
}

export function signingKeyPairFromSeed(seed) {
  const kp = P.ed25519SeedKeypair(seed);
  return keyPair("ed25519", kp.publicKey, kp.privateKey);
}

export const signingKeyPairGenerate = (rng) => signingKeyPairFromSeed(rng(32));

export function dhKeyPairFromSecret(secret) {
  if (secret.length !== 32) throw new ProtocolError("invalid_key", "X25519 secrets are 32 bytes");
  return keyPair("x25519", P.x25519Base(secret), secret);
}

export const dhKeyPairGenerate = (rng) => dhKeyPairFromSecret(rng(32));

export const sign = (pair, message) => P.ed25519Sign(pair.secret, message);
export const x25519Public = (pair) => P.ed25519PkToX25519(pair.publicKey);
export const x25519Secret = (pair) => P.ed25519SkToX25519(pair.secret);

export function userIdBytes(userId) {
  const text = String(userId);
  // User ids are usernames: lowercase a–z, digits and underscore (the server enforces 3–32).
  if (!/^[a-z0-9_]{1,64}$/.test(text)) throw new Error("user_id must be 1–64 characters of a–z, 0–9 and _");
  return utf8(text);
}

export function deviceCertificateMessage(userId, deviceId, deviceKey, issuedMs) {
  if (deviceKey.length !== 32) throw new ProtocolError("invalid_key", "device key is 32 bytes");
  return concat(CERT_CONTEXT, userIdBytes(userId), u32(deviceId), deviceKey, u64(issuedMs));
}

export function authMessage(serverNonce, userId, deviceId, tsMs) {
  if (serverNonce.length !== 32) throw new Error("server nonce must be 32 bytes");
  return concat(AUTH_CONTEXT, serverNonce, userIdBytes(userId), u32(deviceId), u64(tsMs));
}

export function signedPrekeyMessage(spkPublic) {
  if (spkPublic.length !== 32) throw new ProtocolError("invalid_key", "signed prekey is 32 bytes");
  return concat(new Uint8Array([5]), spkPublic);
}

export function deviceCertificateSign(account, { userId, deviceId, deviceKey, issuedMs }) {
  const message = deviceCertificateMessage(userId, deviceId, deviceKey, issuedMs);
  return { userId: String(userId), deviceId, deviceKey, issuedMs, signature: sign(account, message) };
}

export function deviceCertificateVerify(accountPublic, cert) {
  let message;
  try {
    message = deviceCertificateMessage(cert.userId, cert.deviceId, cert.deviceKey, cert.issuedMs);
  } catch {
    throw new ProtocolError("bad_certificate", "malformed certificate");
  }
  if (!P.ed25519Verify(accountPublic, message, cert.signature)) {
    throw new ProtocolError("bad_certificate", "certificate signature invalid");
  }
}

export const signedPrekeySign = (identity, spkPublic) => sign(identity, signedPrekeyMessage(spkPublic));

export function signedPrekeyVerify(identityPublic, spkPublic, signature) {
  if (spkPublic.length !== 32 || !P.ed25519Verify(identityPublic, signedPrekeyMessage(spkPublic), signature)) {
    throw new ProtocolError("bad_signed_prekey_signature", "signed prekey signature invalid");
  }
}

export const authSign = (device, { serverNonce, userId, deviceId, tsMs }) =>
  sign(device, authMessage(serverNonce, userId, deviceId, tsMs));

export function signedPrekeyGenerate(identity, { keyId, createdMs, rng }) {
  const pair = dhKeyPairGenerate(rng);
  return { keyId, pair, signature: signedPrekeySign(identity, pair.publicKey), createdMs };
}

export function oneTimePrekeysGenerate({ startId, count, rng }) {
  if (!(count > 0 && count <= ONE_TIME_PREKEY_BATCH)) throw new Error("batches hold 1..100 keys");
  return Array.from({ length: count }, (_, i) => ({ keyId: startId + i, pair: dhKeyPairGenerate(rng) }));
}

export const oneTimePrekeysNeeded = (remaining) =>
  remaining < ONE_TIME_PREKEY_LOW_WATER ? ONE_TIME_PREKEY_BATCH - remaining : 0;
export const signedPrekeyDue = (createdMs, nowMs) => nowMs - createdMs >= SIGNED_PREKEY_ROTATE_MS;
export const signedPrekeyExpired = (replacedMs, nowMs) => nowMs - replacedMs >= SIGNED_PREKEY_KEEP_MS;
