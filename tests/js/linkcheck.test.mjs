// The device-link check (protocol/linkcheck.js): known answer, display formats and input parsing.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as C from "../../static/js/crypto.js";

await C.ready();

const deviceKey = Uint8Array.from({ length: 32 }, (_, i) => i);
const provisioningKey = Uint8Array.from({ length: 32 }, (_, i) => 32 + i);
const HASH = "4db238a4a28c90308e0c1f324519243ba1cd92212c9c043d0ba779f760db5c3f";

test("known answer: device key 0..31, provisioning key 32..63", () => {
  const hash = C.linkCheckHash(deviceKey, provisioningKey);
  assert.equal(C.hex(hash), HASH);
  assert.equal(C.linkCheckString(hash), "KY3DTKFC");
  const shown = C.linkDisplay("ABCDEFGH", hash);
  assert.equal(shown.text, "ABCDEFGH-KY3DTKFC");
  assert.equal(shown.qr, `enigmo-link:ABCDEFGH:${HASH}`);
});

test("the check string is the first 40 bits, 5 bits per symbol, big-endian", () => {
  const hash = new Uint8Array(32);
  assert.equal(C.linkCheckString(hash), "AAAAAAAA");
  hash.set([0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
  assert.equal(C.linkCheckString(hash), "99999999");
  hash.set([0x00, 0x00, 0x00, 0x00, 0x01]); // the lowest bit of byte 4 is the last symbol's lowest bit
  assert.equal(C.linkCheckString(hash), "AAAAAAAB");
  hash.set([0x08, 0x00, 0x00, 0x00, 0x00]); // bit 35 (from the end) is the first symbol's lowest bit
  assert.equal(C.linkCheckString(hash), "BAAAAAAA");
});

test("typed input is case-, space- and dash-tolerant; the QR text carries the full hash", () => {
  for (const typed of ["ABCDEFGH-KY3DTKFC", "abcdefgh-ky3dtkfc", " abcd efgh ky3d tkfc ", "ABCDEFGHKY3DTKFC", "ABCD-EFGH-KY3D-TKFC"]) {
    const parsed = C.linkInputParse(typed);
    assert.deepEqual(parsed, { code: "ABCDEFGH", check: "KY3DTKFC", hash: null }, typed);
    assert.ok(C.linkCheckMatches(parsed, deviceKey, provisioningKey), typed);
  }
  const scanned = C.linkInputParse(`enigmo-link:ABCDEFGH:${HASH.toUpperCase()}`);
  assert.deepEqual(scanned, { code: "ABCDEFGH", check: null, hash: HASH });
  assert.ok(C.linkCheckMatches(scanned, deviceKey, provisioningKey));
});

test("a substituted key, a wrong check or a missing check is refused", () => {
  const other = Uint8Array.from(provisioningKey);
  other[31] ^= 1;
  const typed = C.linkInputParse("ABCDEFGH-KY3DTKFC");
  assert.equal(C.linkCheckMatches(typed, deviceKey, other), false);
  assert.equal(C.linkCheckMatches(typed, other, provisioningKey), false);
  assert.equal(C.linkCheckMatches(typed, provisioningKey, deviceKey), false, "the key order is bound");
  assert.equal(C.linkCheckMatches(C.linkInputParse("ABCDEFGH-KY3DTKFD"), deviceKey, provisioningKey), false);
  assert.equal(C.linkCheckMatches(C.linkInputParse(`enigmo-link:ABCDEFGH:${"0".repeat(64)}`), deviceKey, provisioningKey), false);
  assert.equal(C.linkCheckMatches(typed, deviceKey.slice(0, 31), provisioningKey), false, "a short key is refused, not thrown");
  const bare = C.linkInputParse("ABCDEFGH");
  assert.deepEqual(bare, { code: "ABCDEFGH", check: null, hash: null });
  assert.equal(C.linkCheckMatches(bare, deviceKey, provisioningKey), false);
  assert.equal(C.linkCheckMatches(C.linkInputParse("enigmo-link:ABCDEFGH"), deviceKey, provisioningKey), false);
  for (const junk of ["", "ABC", "ABCDEFGH-KY3", "ABCDEFGH-KY3DTKF0", "enigmo-link:ABCDEFGH:xyz"]) {
    const parsed = C.linkInputParse(junk);
    assert.equal(C.linkCheckMatches(parsed, deviceKey, provisioningKey), false, junk);
  }
});
