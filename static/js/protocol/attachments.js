// Attachments: crypto_secretstream_xchacha20poly1305 in 64 KiB chunks and a SHA-256 digest of the blob.
import { P } from "./prims.js";
import { ProtocolError } from "./errors.js";
import { concat, equal } from "./bytes.js";

export const CHUNK = 64 * 1024;
export const HEADER_BYTES = 24;
export const ABYTES = 17;

// Pushing from an init_pull state seeded with our RNG's header equals init_push, but stays reproducible.
export function encryptStream(plaintext, key, header, { finalTag = true, chunkSize = CHUNK } = {}) {
  const state = P.streamInit(header, key);
  const parts = [header];
  let offset = 0;
  for (;;) {
    const chunk = plaintext.subarray(offset, offset + chunkSize);
    offset += chunkSize;
    const last = offset >= plaintext.length;
    parts.push(P.streamPush(state, chunk, last && finalTag ? P.TAG_FINAL : P.TAG_MESSAGE));
    if (last) break;
  }
  return concat(...parts);
}

export function encryptAttachment(plaintext, rng) {
  const key = rng(32);
  const header = rng(HEADER_BYTES);
  const blob = encryptStream(plaintext, key, header);
  return { key, digest: P.sha256(blob), blob };
}

export function decryptAttachment(blob, key, digest, chunkSize = CHUNK) {
  if (!equal(P.sha256(blob), digest)) throw new ProtocolError("digest_mismatch", "attachment digest does not match");
  if (blob.length < HEADER_BYTES + ABYTES) throw new ProtocolError("truncated_stream", "shorter than one chunk");
  const state = P.streamInit(blob.subarray(0, HEADER_BYTES), key);
  const out = [];
  let offset = HEADER_BYTES;
  while (offset < blob.length) {
    const chunk = blob.subarray(offset, offset + chunkSize + ABYTES);
    offset += chunk.length;
    if (chunk.length < ABYTES) throw new ProtocolError("truncated_stream", "chunk shorter than its tag");
    const r = P.streamPull(state, chunk);
    if (!r) throw new ProtocolError("decrypt_failed", "attachment chunk failed authentication");
    out.push(r.message);
    if (r.tag === P.TAG_FINAL) {
      if (offset !== blob.length) throw new ProtocolError("trailing_bytes", "data after the final chunk");
      return concat(...out);
    }
  }
  throw new ProtocolError("missing_final_tag", "stream ended without TAG_FINAL");
}
