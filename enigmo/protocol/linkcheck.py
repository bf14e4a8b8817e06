"""The device-linking check: a short string, shown next to the server's link code, that binds the code
to the new device's identity and provisioning keys so that a server cannot substitute its own."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from .errors import ProtocolError
from .primitives import sha256

LINK_CHECK_CONTEXT = b"Enigmo-LinkCheck-v1\x00"
LINK_CHECK_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 symbols: no 0/O, no 1/I
LINK_CHECK_LENGTH = 8  # 8 symbols × 5 bits = the first 40 bits of the hash
LINK_QR_PREFIX = "enigmo-link:"

_SYMBOLS_RE = re.compile(f"[{LINK_CHECK_ALPHABET}]{{{LINK_CHECK_LENGTH}}}")  # a server code or a check
_QR_RE = re.compile(f"([{LINK_CHECK_ALPHABET}]{{{LINK_CHECK_LENGTH}}}):([0-9A-F]{{64}})")


def link_check_hash(device_key: bytes, provisioning_key: bytes) -> bytes:
    """SHA-256("Enigmo-LinkCheck-v1" 0x00 ‖ device_key(32) ‖ provisioning_key(32))."""
    if len(device_key) != 32 or len(provisioning_key) != 32:
        raise ProtocolError("invalid_key", "device_key and provisioning_key are 32 bytes each")
    return sha256(LINK_CHECK_CONTEXT + device_key + provisioning_key)


def link_check_string(device_key: bytes, provisioning_key: bytes) -> str:
    """The first 40 bits of the hash, big-endian, as 8 symbols of 5 bits."""
    bits = int.from_bytes(link_check_hash(device_key, provisioning_key)[:5], "big")
    return "".join(LINK_CHECK_ALPHABET[(bits >> (35 - 5 * i)) & 31] for i in range(LINK_CHECK_LENGTH))


def link_display(code: str, device_key: bytes, provisioning_key: bytes) -> str:
    """What the new device shows to be typed: `CODE-CHECK`."""
    return f"{code}-{link_check_string(device_key, provisioning_key)}"


def link_qr_payload(code: str, device_key: bytes, provisioning_key: bytes) -> str:
    """What the new device may show as a QR code: `enigmo-link:CODE:<64 hex of the full hash>`."""
    return f"{LINK_QR_PREFIX}{code}:{link_check_hash(device_key, provisioning_key).hex()}"


@dataclass(frozen=True)
class LinkInput:
    """What the person approving typed or scanned: the server's code and the check (40 bits typed,
    or the full 256-bit hash from the QR payload). `check` and `full_hash` are both None when the
    input carried no check at all."""

    code: str
    check: str | None = None
    full_hash: bytes | None = None


def link_input_parse(text: str) -> LinkInput:
    """`CODE-CHECK` as typed: case, spaces and dashes do not matter, so 16 symbols are CODE then
    CHECK and 8 are a bare CODE (no check); or the QR text `enigmo-link:CODE:HEX`. Codes and checks
    are 8 symbols of the alphabet. Raises ProtocolError("bad_link_code") for anything else. The
    browser's linkInputParse (static/js/protocol/linkcheck.js) reads the same inputs."""
    compact = re.sub(r"\s+", "", text).upper()
    if compact.startswith(LINK_QR_PREFIX.upper()):
        qr = _QR_RE.fullmatch(compact[len(LINK_QR_PREFIX):])
        if not qr:
            raise ProtocolError("bad_link_code", "a link QR text is enigmo-link:CODE:<64 hex digits>")
        return LinkInput(qr.group(1), full_hash=bytes.fromhex(qr.group(2)))
    symbols = compact.replace("-", "")
    if len(symbols) == LINK_CHECK_LENGTH and _SYMBOLS_RE.fullmatch(symbols):
        return LinkInput(symbols)
    if (len(symbols) == 2 * LINK_CHECK_LENGTH and _SYMBOLS_RE.fullmatch(symbols[:LINK_CHECK_LENGTH])
            and _SYMBOLS_RE.fullmatch(symbols[LINK_CHECK_LENGTH:])):
        return LinkInput(symbols[:LINK_CHECK_LENGTH], check=symbols[LINK_CHECK_LENGTH:])
    raise ProtocolError("bad_link_code", f"a link code is 8 + 8 characters of {LINK_CHECK_ALPHABET}, "
                                         "like K7XQ2M9P-KY3DTKFC")


def link_check_verify(given: LinkInput, device_key: bytes, provisioning_key: bytes) -> None:
    """The approving device's check, against the keys the server returned for `given.code`.
    Raises ProtocolError("link_check_missing") or ProtocolError("link_check_mismatch")."""
    digest = link_check_hash(device_key, provisioning_key)
    if given.full_hash is not None:
        ok = hmac.compare_digest(given.full_hash, digest)
    elif given.check is not None:
        ok = hmac.compare_digest(given.check.encode(), link_check_string(device_key, provisioning_key).encode())
    else:
        raise ProtocolError("link_check_missing", "the link code has no check part (CODE-CHECK)")
    if not ok:
        raise ProtocolError("link_check_mismatch", "the link check does not match the keys the server returned")
