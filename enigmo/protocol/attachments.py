"""Attachment encryption: crypto_secretstream_xchacha20poly1305 in 64 KiB chunks plus a SHA-256 digest."""

from __future__ import annotations

import hmac

import nacl.bindings as nb
import nacl.exceptions

from .errors import ProtocolError
from .primitives import sha256
from .rng import Rng

CHUNK = 64 * 1024
ABYTES = nb.crypto_secretstream_xchacha20poly1305_ABYTES
HEADER_BYTES = nb.crypto_secretstream_xchacha20poly1305_HEADERBYTES
TAG_MESSAGE = nb.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL = nb.crypto_secretstream_xchacha20poly1305_TAG_FINAL


def _push_state(key: bytes, header: bytes) -> nb.crypto_secretstream_xchacha20poly1305_state:
    # init_push draws its header from libsodium's own RNG; init_pull with our RNG's header yields the
    # identical state, so pushing from it keeps attachments reproducible under the injectable RNG.
    state = nb.crypto_secretstream_xchacha20poly1305_state()
    nb.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state


def encrypt_attachment(plaintext: bytes, rng: Rng, chunk_size: int = CHUNK) -> tuple[bytes, bytes, bytes]:
    """Return (key, sha256 digest of blob, blob = header ‖ chunk*)."""
    key = rng(32)
    header = rng(HEADER_BYTES)
    state = _push_state(key, header)
    parts = [header]
    offset = 0
    while True:
        chunk = plaintext[offset:offset + chunk_size]
        offset += chunk_size
        last = offset >= len(plaintext)
        parts.append(nb.crypto_secretstream_xchacha20poly1305_push(state, chunk, None,
                                                                   TAG_FINAL if last else TAG_MESSAGE))
        if last:
            break
    blob = b"".join(parts)
    return key, sha256(blob), blob


def decrypt_attachment(blob: bytes, key: bytes, digest: bytes, chunk_size: int = CHUNK) -> bytes:
    if not hmac.compare_digest(sha256(blob), digest):
        raise ProtocolError("digest_mismatch", "attachment digest does not match")
    if len(blob) < HEADER_BYTES + ABYTES:
        raise ProtocolError("truncated_stream", "attachment shorter than one chunk")
    state = nb.crypto_secretstream_xchacha20poly1305_state()
    nb.crypto_secretstream_xchacha20poly1305_init_pull(state, blob[:HEADER_BYTES], key)
    out = []
    offset = HEADER_BYTES
    while offset < len(blob):
        chunk = blob[offset:offset + chunk_size + ABYTES]
        offset += len(chunk)
        if len(chunk) < ABYTES:
            raise ProtocolError("truncated_stream", "chunk shorter than its tag")
        try:
            message, tag = nb.crypto_secretstream_xchacha20poly1305_pull(state, chunk, None)
        except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError) as exc:
            raise ProtocolError("decrypt_failed", "attachment chunk failed authentication") from exc
        out.append(message)
        if tag == TAG_FINAL:
            if offset != len(blob):
                raise ProtocolError("trailing_bytes", "data after the final chunk")
            return b"".join(out)
    raise ProtocolError("missing_final_tag", "stream ended without TAG_FINAL")
