// Safety numbers: Signal's numeric fingerprint over account keys and usernames, plus the QR payload.
import { P } from "./prims.js";
import { ProtocolError } from "./errors.js";
import { concat, equal, utf8 } from "./bytes.js";

export const ITERATIONS = 5200;
export const SCANNABLE_VERSION = 1;

export function fingerprint(publicKey, stableId, iterations = ITERATIONS) {
  let digest = P.sha512(concat(new Uint8Array([0, 0]), publicKey, stableId, publicKey));
  for (let i = 1; i < iterations; i++) digest = P.sha512(concat(digest, publicKey));
  return digest;
}

export function encodeDigits(fp) {
  let out = "";
  for (let i = 0; i < 30; i += 5) {
    let x = 0;
    for (let j = 0; j < 5; j++) x = x * 256 + fp[i + j]; // 40 bits stays exact in a double
    out += String(x % 100000).padStart(5, "0");
  }
  return out;
}

export function displayString(local, remote) {
  const a = encodeDigits(local);
  const b = encodeDigits(remote);
  return a < b ? a + b : b + a;
}

export function scannableEncode(local, remote, version = SCANNABLE_VERSION) {
  return concat(new Uint8Array([0x08, version, 0x12, 0x22, 0x0a, 0x20]), local.slice(0, 32),
    new Uint8Array([0x1a, 0x22, 0x0a, 0x20]), remote.slice(0, 32));
}

export function scannableDecode(d) {
  const ok = d.length === 74 && d[0] === 0x08 && equal(d.slice(2, 6), new Uint8Array([0x12, 0x22, 0x0a, 0x20]))
    && equal(d.slice(38, 42), new Uint8Array([0x1a, 0x22, 0x0a, 0x20]));
  if (!ok) throw new ProtocolError("bad_message", "not a safety-number QR payload");
  return { version: d[1], local: d.slice(6, 38), remote: d.slice(42, 74) };
}

export function scannableMatches(ownLocal, ownRemote, scanned) {
  const { version, local, remote } = scannableDecode(scanned);
  if (version !== SCANNABLE_VERSION) return false;
  const a = equal(local, ownRemote.slice(0, 32));
  const b = equal(remote, ownLocal.slice(0, 32));
  return a && b;
}

export function safetyNumber(localAccountKey, localUsername, remoteAccountKey, remoteUsername) {
  const local = fingerprint(localAccountKey, utf8(localUsername));
  const remote = fingerprint(remoteAccountKey, utf8(remoteUsername));
  return { digits: displayString(local, remote), qr: scannableEncode(local, remote) };
}

export const formatDigits = (digits) => digits.match(/.{1,5}/g).join(" ");
