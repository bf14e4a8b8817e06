"""Account and device keys, device certificates, signed/one-time prekeys and signed-message builders."""

from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Any

from . import primitives as p
from .encoding import b64d, b64e
from .errors import ProtocolError
from .rng import Rng

CERT_CONTEXT = b"Enigmo-DeviceCert-v1\x00"
AUTH_CONTEXT = b"Enigmo-Auth-v1\x00"
SIGNED_PREKEY_PREFIX = b"\x05"
SIGNED_PREKEY_ROTATE_MS = 7 * 24 * 3600 * 1000
SIGNED_PREKEY_KEEP_MS = 14 * 24 * 3600 * 1000
ONE_TIME_PREKEY_BATCH = 100
ONE_TIME_PREKEY_LOW_WATER = 20


@dataclass(frozen=True, repr=False)
class SigningKeyPair:
    """An Ed25519 key pair (account key or device identity key); `secret` is libsodium's 64-byte form."""

    public: bytes
    secret: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> "SigningKeyPair":
        public, secret = p.ed25519_seed_keypair(seed)
        return cls(public=public, secret=secret)

    @classmethod
    def generate(cls, rng: Rng) -> "SigningKeyPair":
        return cls.from_seed(rng(32))

    def sign(self, message: bytes) -> bytes:
        return p.ed25519_sign(self.secret, message)

    @property
    def x25519_public(self) -> bytes:
        return p.ed25519_pk_to_x25519(self.public)

    @property
    def x25519_secret(self) -> bytes:
        return p.ed25519_sk_to_x25519(self.secret)

    def to_dict(self) -> dict[str, str]:
        return {"seed": b64e(self.secret[:32])}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SigningKeyPair":
        return cls.from_seed(b64d(data["seed"]))

    def __repr__(self) -> str:
        return f"SigningKeyPair(public={self.public.hex()}, secret=<hidden>)"


@dataclass(frozen=True, repr=False)
class DhKeyPair:
    """An X25519 key pair (ephemeral, ratchet, signed or one-time prekey)."""

    public: bytes
    secret: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> "DhKeyPair":
        if len(secret) != 32:
            raise ProtocolError("invalid_key", "X25519 secrets are 32 bytes")
        return cls(public=p.x25519_base(secret), secret=secret)

    @classmethod
    def generate(cls, rng: Rng) -> "DhKeyPair":
        return cls.from_secret(rng(32))

    def to_dict(self) -> dict[str, str]:
        return {"secret": b64e(self.secret)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DhKeyPair":
        return cls.from_secret(b64d(data["secret"]))

    def __repr__(self) -> str:
        return f"DhKeyPair(public={self.public.hex()}, secret=<hidden>)"


_USER_ID_RE = re.compile(r"[a-z0-9_]{1,64}")


def user_id_bytes(user_id: int | str) -> bytes:
    # User ids are usernames: lowercase a–z, digits and underscore (the server enforces 3–32).
    text = str(user_id)
    if not _USER_ID_RE.fullmatch(text):
        raise ValueError("user_id must be 1–64 characters of a–z, 0–9 and _")
    return text.encode("utf-8")


def device_certificate_message(user_id: int | str, device_id: int, device_key: bytes, issued_ms: int) -> bytes:
    if len(device_key) != 32:
        raise ProtocolError("invalid_key", "device key is 32 bytes")
    return CERT_CONTEXT + user_id_bytes(user_id) + p.u32(device_id) + device_key + p.u64(issued_ms)


def auth_message(server_nonce: bytes, user_id: int | str, device_id: int, ts_ms: int) -> bytes:
    if len(server_nonce) != 32:
        raise ValueError("server_nonce must be 32 bytes")
    return AUTH_CONTEXT + server_nonce + user_id_bytes(user_id) + p.u32(device_id) + p.u64(ts_ms)


def signed_prekey_message(spk_public: bytes) -> bytes:
    if len(spk_public) != 32:
        raise ProtocolError("invalid_key", "signed prekey is 32 bytes")
    return SIGNED_PREKEY_PREFIX + spk_public


@dataclass(frozen=True)
class DeviceCertificate:
    """The account key's statement that `device_key` is device `device_id` of user `user_id`."""

    user_id: str
    device_id: int
    device_key: bytes
    issued_ms: int
    signature: bytes

    def message(self) -> bytes:
        return device_certificate_message(self.user_id, self.device_id, self.device_key, self.issued_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "device_key": b64e(self.device_key),
            "issued_ms": self.issued_ms,
            "signature": b64e(self.signature),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeviceCertificate":
        return cls(
            user_id=str(data["user_id"]),
            device_id=int(data["device_id"]),
            device_key=b64d(data["device_key"]),
            issued_ms=int(data["issued_ms"]),
            signature=b64d(data["signature"]),
        )


def device_certificate_sign(
    account: SigningKeyPair, *, user_id: int | str, device_id: int, device_key: bytes, issued_ms: int
) -> DeviceCertificate:
    message = device_certificate_message(user_id, device_id, device_key, issued_ms)
    return DeviceCertificate(str(user_id), device_id, device_key, issued_ms, account.sign(message))


def device_certificate_verify(account_public: bytes, cert: DeviceCertificate) -> None:
    try:
        message = cert.message()
    except (ValueError, ProtocolError) as exc:
        raise ProtocolError("bad_certificate", "malformed certificate") from exc
    if not p.ed25519_verify(account_public, message, cert.signature):
        raise ProtocolError("bad_certificate", "certificate signature invalid")


def signed_prekey_sign(identity: SigningKeyPair, spk_public: bytes) -> bytes:
    return identity.sign(signed_prekey_message(spk_public))


def signed_prekey_verify(identity_public: bytes, spk_public: bytes, signature: bytes) -> None:
    if len(spk_public) != 32 or not p.ed25519_verify(identity_public, signed_prekey_message(spk_public), signature):
        raise ProtocolError("bad_signed_prekey_signature", "signed prekey signature invalid")


def auth_sign(device: SigningKeyPair, *, server_nonce: bytes, user_id: int | str, device_id: int, ts_ms: int) -> bytes:
    return device.sign(auth_message(server_nonce, user_id, device_id, ts_ms))


def auth_verify(device_public: bytes, signature: bytes, *, server_nonce: bytes, user_id: int | str, device_id: int, ts_ms: int) -> bool:
    return p.ed25519_verify(device_public, auth_message(server_nonce, user_id, device_id, ts_ms), signature)


@dataclass(frozen=True, repr=False)
class SignedPreKey:
    key_id: int
    pair: DhKeyPair
    signature: bytes
    created_ms: int

    def __repr__(self) -> str:
        return f"SignedPreKey(key_id={self.key_id}, public={self.pair.public.hex()})"


def signed_prekey_generate(identity: SigningKeyPair, *, key_id: int, created_ms: int, rng: Rng) -> SignedPreKey:
    pair = DhKeyPair.generate(rng)
    return SignedPreKey(key_id, pair, signed_prekey_sign(identity, pair.public), created_ms)


def one_time_prekeys_generate(*, start_id: int, count: int, rng: Rng) -> list[tuple[int, DhKeyPair]]:
    if not 0 < count <= ONE_TIME_PREKEY_BATCH:
        raise ValueError("one-time prekey batches hold 1..100 keys")
    return [(start_id + i, DhKeyPair.generate(rng)) for i in range(count)]


def one_time_prekeys_needed(remaining: int) -> int:
    """How many keys to upload: top up to a full batch once the server holds fewer than 20."""
    return ONE_TIME_PREKEY_BATCH - remaining if remaining < ONE_TIME_PREKEY_LOW_WATER else 0


def signed_prekey_due(created_ms: int, now_ms: int) -> bool:
    return now_ms - created_ms >= SIGNED_PREKEY_ROTATE_MS


def signed_prekey_expired(replaced_ms: int, now_ms: int) -> bool:
    """A replaced signed prekey's private half is deleted 14 days after it was replaced."""
    return now_ms - replaced_ms >= SIGNED_PREKEY_KEEP_MS
