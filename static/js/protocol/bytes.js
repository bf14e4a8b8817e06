// Byte helpers and canonical JSON shared by the protocol modules.
import { P } from "./prims.js";

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) { out.set(p, i); i += p.length; }
  return out;
}

export function equal(a, b) {
  if (a === null || b === null) return a === b;
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

export function u32(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, false);
  return b;
}

export function u64(n) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), false);
  return b;
}

export function readU32(b, off) {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, false);
}

export const utf8 = (s) => new TextEncoder().encode(s);
export const fromUtf8 = (b) => new TextDecoder("utf-8", { fatal: true }).decode(b);
export const hex = (b) => P.toHex(b);
export const unhex = (s) => P.fromHex(s);
export const b64e = (b) => P.toBase64(b);
export const b64d = (s) => P.fromBase64(s);

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    const out = {};
    for (const k of Object.keys(v).sort()) out[k] = sortKeys(v[k]);
    return out;
  }
  return v;
}

// Same bytes as Python's json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False).
export function canonicalJson(value) {
  return JSON.stringify(sortKeys(value));
}
