"""The signed statements (byte layouts shared with the clients through enigmo.protocol.keys)
and their Ed25519 verification with PyNaCl. The server verifies public material only."""

from __future__ import annotations

import base64
import binascii

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey

from enigmo.protocol import keys as protocol_keys


def device_certificate_message(*, user_id: str, device_id: int, device_key: bytes, issued_ms: int) -> bytes:
    return protocol_keys.device_certificate_message(user_id, device_id, device_key, issued_ms)


def auth_message(*, nonce: bytes, user_id: str, device_id: int, ts_ms: int) -> bytes:
    return protocol_keys.auth_message(nonce, user_id, device_id, ts_ms)


def signed_prekey_message(public_key: bytes) -> bytes:
    return protocol_keys.signed_prekey_message(public_key)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False
    return True


def b64decode(value: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not (libsodium.js defaults to URL-safe)."""
    cleaned = value.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc


def b64encode(value: bytes | memoryview) -> str:
    return base64.b64encode(bytes(value)).decode()
