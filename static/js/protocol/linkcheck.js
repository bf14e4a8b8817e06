// The link check: binds a device-link code to the new device's keys, so the server cannot swap them.
//
// The server's 8-character link code only names a pending link; the keys it hands the approving
// device could be the server's own. So the new device also shows a check over its two public keys,
//   hash  = SHA-256("Enigmo-LinkCheck-v1" 0x00 ‖ device_key(32) ‖ provisioning_key(32))
//   check = the first 40 bits of hash, big-endian, as 8 symbols of 5 bits from LINK_ALPHABET,
// displayed as "CODE-CHECK" (typed) or the QR text "enigmo-link:CODE:<hex of the full hash>".
// The approver sends only CODE to the server, recomputes the hash over the keys the server
// returned, and refuses to certify or seal anything unless it matches. Same scheme in
// enigmo/client (Python).
import { P } from "./prims.js";
import { concat, equal, utf8 } from "./bytes.js";

export const LINK_CHECK_CONTEXT = utf8("Enigmo-LinkCheck-v1\0");
export const LINK_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const QR_PREFIX = "enigmo-link:";
const SYMBOLS = new RegExp(`^[${LINK_ALPHABET}]{8}$`);

export function linkCheckHash(deviceKey, provisioningKey) {
  if (deviceKey.length !== 32 || provisioningKey.length !== 32) throw new Error("link keys are 32 bytes");
  return P.sha256(concat(LINK_CHECK_CONTEXT, deviceKey, provisioningKey));
}

// The first 40 bits (5 bytes) of the hash as 8 five-bit symbols, most significant first.
export function linkCheckString(hash) {
  let bits = 0n;
  for (let i = 0; i < 5; i++) bits = (bits << 8n) | BigInt(hash[i]);
  let out = "";
  for (let i = 7; i >= 0; i--) out += LINK_ALPHABET[Number((bits >> BigInt(5 * i)) & 31n)];
  return out;
}

export function linkDisplay(code, hash) {
  return { text: `${code}-${linkCheckString(hash)}`, qr: `${QR_PREFIX}${code}:${P.toHex(hash)}` };
}

// What the approver typed or scanned: {code, check} or {code, hash}; check and hash are null when
// the input names only a code (which linkCheckMatches then refuses). Null for unreadable input.
export function linkInputParse(input) {
  const text = String(input).trim();
  if (text.toLowerCase().startsWith(QR_PREFIX)) {
    const m = /^([A-Za-z0-9]{8}):([0-9a-fA-F]{64})$/.exec(text.slice(QR_PREFIX.length).trim());
    const code = m ? m[1].toUpperCase() : text.slice(QR_PREFIX.length).trim().toUpperCase();
    if (m && SYMBOLS.test(code)) return { code, check: null, hash: m[2].toLowerCase() };
    return SYMBOLS.test(code) ? { code, check: null, hash: null } : null;
  }
  const compact = text.replace(/[\s-]+/g, "").toUpperCase();
  if (compact.length === 8 && SYMBOLS.test(compact)) return { code: compact, check: null, hash: null };
  if (compact.length === 16 && SYMBOLS.test(compact.slice(0, 8)) && SYMBOLS.test(compact.slice(8))) {
    return { code: compact.slice(0, 8), check: compact.slice(8), hash: null };
  }
  return null;
}

export function linkCheckMatches(parsed, deviceKey, provisioningKey) {
  if (!parsed || (!parsed.check && !parsed.hash)) return false;
  if (deviceKey.length !== 32 || provisioningKey.length !== 32) return false;
  const hash = linkCheckHash(deviceKey, provisioningKey);
  if (parsed.hash) return equal(utf8(P.toHex(hash)), utf8(parsed.hash));
  return equal(utf8(linkCheckString(hash)), utf8(parsed.check));
}
