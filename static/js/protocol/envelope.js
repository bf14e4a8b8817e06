// Sesame-style fan-out: one ciphertext per recipient device and per sender's other devices.
import { b64e } from "./bytes.js";
import { sessionEncrypt } from "./session.js";

export const deviceAddress = (userId, deviceId) => `${userId}.${deviceId}`;

// targets: [{userId, deviceId, record}] -> {ciphertexts: {addr: base64}, records: {addr: record}}; save records first.
export function envelopeEncrypt(plaintext, targets, rng) {
  const ciphertexts = {};
  const records = {};
  for (const { userId, deviceId, record } of targets) {
    const addr = deviceAddress(userId, deviceId);
    if (addr in ciphertexts) throw new Error(`duplicate device ${addr}`);
    const [next, wire] = sessionEncrypt(record, plaintext, rng);
    records[addr] = next;
    ciphertexts[addr] = b64e(wire);
  }
  return { ciphertexts, records };
}

export function deviceSetDiff(sent, current) {
  const s = new Set(sent);
  const c = new Set(current);
  return { missing: [...c].filter((x) => !s.has(x)).sort(), extra: [...s].filter((x) => !c.has(x)).sort() };
}
