"""Low-level primitives: HKDF (RFC 5869), HMAC, X25519, Ed25519, XChaCha20-Poly1305 and padding."""

from __future__ import annotations

import hashlib
import hmac
import struct

import nacl.bindings as nb
import nacl.exceptions

from .errors import ProtocolError

PAD_BLOCK = 64


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha512(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    if length > 255 * 32:
        raise ValueError("HKDF length too large")
    prk = hmac_sha256(salt if salt else b"\x00" * 32, ikm)
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac_sha256(prk, block + info + bytes([counter]))
        okm += block
        counter += 1
    return okm[:length]


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def x25519_base(private: bytes) -> bytes:
    return nb.crypto_scalarmult_base(private)


def x25519(private: bytes, public: bytes) -> bytes:
    if len(public) != 32 or len(private) != 32:
        raise ProtocolError("invalid_key", "X25519 keys are 32 bytes")
    try:
        out = nb.crypto_scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:
        # libsodium refuses an all-zero result, i.e. a small-order public key.
        raise ProtocolError("invalid_key", "small-order public key") from exc
    if not any(out):
        raise ProtocolError("invalid_key", "all-zero DH output")
    return out


def ed25519_seed_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """Return (public 32, secret 64) for a 32-byte seed."""
    return nb.crypto_sign_seed_keypair(seed)


def ed25519_sign(secret64: bytes, message: bytes) -> bytes:
    return nb.crypto_sign(message, secret64)[:64]


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    try:
        nb.crypto_sign_open(signature + message, public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.RuntimeError, ValueError):
        return False
    return True


def ed25519_pk_to_x25519(public: bytes) -> bytes:
    if len(public) != 32:
        raise ProtocolError("invalid_key", "Ed25519 public keys are 32 bytes")
    try:
        out = nb.crypto_sign_ed25519_pk_to_curve25519(public)
    except (nacl.exceptions.RuntimeError, ValueError) as exc:
        raise ProtocolError("invalid_key", "not a valid Ed25519 point") from exc
    return out


def ed25519_sk_to_x25519(secret64: bytes) -> bytes:
    return nb.crypto_sign_ed25519_sk_to_curve25519(secret64)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return nb.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return nb.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError) as exc:
        raise ProtocolError("decrypt_failed", "AEAD authentication failed") from exc


def pad(data: bytes, block: int = PAD_BLOCK) -> bytes:
    return nb.sodium_pad(data, block)


def unpad(data: bytes, block: int = PAD_BLOCK) -> bytes:
    try:
        return nb.sodium_unpad(data, block)
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError) as exc:
        raise ProtocolError("bad_padding", "invalid sodium padding") from exc
