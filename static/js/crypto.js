// The only module that touches libsodium: installs the primitives and re-exports the protocol API.
import _sodium from "libsodium-wrappers-sumo";
import { installPrimitives } from "./protocol/prims.js";
import { ProtocolError } from "./protocol/errors.js";

let sodium = null;

function hmacSha256(key, data) {
  // crypto_auth_hmacsha256 insists on a 32-byte key; the streaming API takes any length (RFC 5869 salts).
  const st = sodium.crypto_auth_hmacsha256_init(key);
  sodium.crypto_auth_hmacsha256_update(st, data);
  return sodium.crypto_auth_hmacsha256_final(st);
}

function hkdf(salt, ikm, info, length) {
  if (length > 255 * 32) throw new Error("HKDF length too large");
  const prk = hmacSha256(salt.length ? salt : new Uint8Array(32), ikm);
  const out = new Uint8Array(length);
  let block = new Uint8Array(0);
  for (let i = 0, counter = 1; i < length; counter++) {
    const input = new Uint8Array(block.length + info.length + 1);
    input.set(block, 0);
    input.set(info, block.length);
    input[input.length - 1] = counter;
    block = hmacSha256(prk, input);
    out.set(block.subarray(0, Math.min(32, length - i)), i);
    i += 32;
  }
  return out;
}

function x25519(secret, pub) {
  if (secret.length !== 32 || pub.length !== 32) throw new ProtocolError("invalid_key", "X25519 keys are 32 bytes");
  let out;
  try {
    out = sodium.crypto_scalarmult(secret, pub);
  } catch {
    throw new ProtocolError("invalid_key", "small-order public key");
  }
  if (out.every((b) => b === 0)) throw new ProtocolError("invalid_key", "all-zero DH output");
  return out;
}

// WebCrypto's CSPRNG: libsodium.js's randombytes_buf costs ~160 µs per call under Node (measured), this ~2 µs.
function randomBytes(n) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) globalThis.crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
  return out;
}

function build() {
  const s = sodium;
  return {
    hmacSha256,
    hkdf,
    sha256: (d) => s.crypto_hash_sha256(d),
    sha512: (d) => s.crypto_hash_sha512(d),
    x25519,
    x25519Base: (k) => s.crypto_scalarmult_base(k),
    ed25519SeedKeypair: (seed) => s.crypto_sign_seed_keypair(seed),
    ed25519Sign: (sk, m) => s.crypto_sign_detached(m, sk),
    ed25519Verify(pk, m, sig) {
      if (pk.length !== 32 || sig.length !== 64) return false;
      try { return s.crypto_sign_verify_detached(sig, m, pk); } catch { return false; }
    },
    ed25519PkToX25519(pk) {
      if (pk.length !== 32) throw new ProtocolError("invalid_key", "Ed25519 public keys are 32 bytes");
      try { return s.crypto_sign_ed25519_pk_to_curve25519(pk); } catch {
        throw new ProtocolError("invalid_key", "not a valid Ed25519 point");
      }
    },
    ed25519SkToX25519: (sk) => s.crypto_sign_ed25519_sk_to_curve25519(sk),
    aeadEncrypt: (key, nonce, pt, ad) => s.crypto_aead_xchacha20poly1305_ietf_encrypt(pt, ad, null, nonce, key),
    aeadDecrypt(key, nonce, ct, ad) {
      try { return s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ct, ad, nonce, key); } catch {
        throw new ProtocolError("decrypt_failed", "AEAD authentication failed");
      }
    },
    pad: (d, block) => s.pad(d, block),
    unpad(d, block) {
      try { return s.unpad(d, block); } catch { throw new ProtocolError("bad_padding", "invalid sodium padding"); }
    },
    randomBytes,
    randomBytesDeterministic: (n, seed) => (n === 0 ? new Uint8Array(0) : s.randombytes_buf_deterministic(n, seed)),
    streamInit: (header, key) => s.crypto_secretstream_xchacha20poly1305_init_pull(header, key),
    streamPush: (st, m, tag) => s.crypto_secretstream_xchacha20poly1305_push(st, m, null, tag),
    streamPull(st, c) {
      try { return s.crypto_secretstream_xchacha20poly1305_pull(st, c, null); } catch { return false; }
    },
    TAG_MESSAGE: s.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
    TAG_FINAL: s.crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    toHex: (b) => s.to_hex(b),
    fromHex: (h) => s.from_hex(h),
    toBase64: (b) => s.to_base64(b, s.base64_variants.ORIGINAL),
    fromBase64(t) {
      try { return s.from_base64(t, s.base64_variants.ORIGINAL); } catch {
        throw new ProtocolError("bad_message", "invalid base64");
      }
    },
  };
}

export async function ready() {
  if (sodium === null) {
    await _sodium.ready;
    sodium = _sodium;
    installPrimitives(build());
  }
}

export { P as primitives } from "./protocol/prims.js";
export { ProtocolError } from "./protocol/errors.js";
export * from "./protocol/bytes.js";
export * from "./protocol/rng.js";
export * from "./protocol/keys.js";
export * from "./protocol/x3dh.js";
export * from "./protocol/ratchet.js";
export * from "./protocol/session.js";
export * from "./protocol/envelope.js";
export * from "./protocol/safety.js";
export * from "./protocol/attachments.js";
export * from "./protocol/content.js";
export * from "./protocol/linkcheck.js";
