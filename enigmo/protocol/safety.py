"""Safety numbers: Signal's numeric fingerprint over account keys and usernames, plus the QR payload."""

from __future__ import annotations

import hmac

from .errors import ProtocolError
from .primitives import sha512

ITERATIONS = 5200
FINGERPRINT_VERSION = 0
SCANNABLE_VERSION = 1


def fingerprint(public_key: bytes, stable_id: bytes, iterations: int = ITERATIONS) -> bytes:
    """Signal's NumericFingerprintGenerator.getFingerprint: 64 bytes."""
    digest = sha512(FINGERPRINT_VERSION.to_bytes(2, "big") + public_key + stable_id + public_key)
    for _ in range(1, iterations):
        digest = sha512(digest + public_key)
    return digest


def encode_digits(fprint: bytes) -> str:
    return "".join(f"{int.from_bytes(fprint[i:i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def display_string(local: bytes, remote: bytes) -> str:
    a, b = encode_digits(local), encode_digits(remote)
    return a + b if a < b else b + a


def scannable_encode(local: bytes, remote: bytes, version: int = SCANNABLE_VERSION) -> bytes:
    """Signal's CombinedFingerprints protobuf: {1: version, 2: {1: local[:32]}, 3: {1: remote[:32]}}."""
    if not 0 <= version < 128:
        raise ValueError("version must fit one varint byte")
    return (bytes([0x08, version, 0x12, 0x22, 0x0A, 0x20]) + local[:32]
            + bytes([0x1A, 0x22, 0x0A, 0x20]) + remote[:32])


def scannable_decode(data: bytes) -> tuple[int, bytes, bytes]:
    if (len(data) != 74 or data[0] != 0x08 or data[2:6] != b"\x12\x22\x0a\x20"
            or data[38:42] != b"\x1a\x22\x0a\x20"):
        raise ProtocolError("bad_message", "not a safety-number QR payload")
    return data[1], data[6:38], data[42:74]


def scannable_matches(own_local: bytes, own_remote: bytes, scanned: bytes) -> bool:
    """True when the other phone shows our key as its remote and their key as its local."""
    version, their_local, their_remote = scannable_decode(scanned)
    if version != SCANNABLE_VERSION:
        return False
    return hmac.compare_digest(their_local, own_remote[:32]) & hmac.compare_digest(their_remote, own_local[:32])


def safety_number(local_account_key: bytes, local_username: str, remote_account_key: bytes,
                  remote_username: str) -> tuple[str, bytes]:
    """(60 digits, QR payload) for our account key + username against theirs."""
    local = fingerprint(local_account_key, local_username.encode("utf-8"))
    remote = fingerprint(remote_account_key, remote_username.encode("utf-8"))
    return display_string(local, remote), scannable_encode(local, remote)


def format_digits(digits: str) -> str:
    return " ".join(digits[i:i + 5] for i in range(0, len(digits), 5))
