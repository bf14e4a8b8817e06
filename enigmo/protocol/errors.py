"""Typed protocol errors shared by every module, each with a stable machine-readable code."""

from __future__ import annotations


class ProtocolError(Exception):
    """A protocol failure; `code` is stable and identical in the JS implementation."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


# The complete list, mirrored in static/js/protocol/errors.js and docs/protocol.md.
CODES = (
    "invalid_key",  # wrong length or a small-order / all-zero DH output
    "bad_signed_prekey_signature",
    "bad_certificate",
    "unknown_signed_prekey",
    "unknown_one_time_prekey",
    "bad_message",  # malformed wire bytes
    "decrypt_failed",  # AEAD authentication failure (tampered header, AD, or ciphertext)
    "bad_padding",
    "too_many_skipped",
    "duplicate_message",
    "no_session",
    "truncated_stream",
    "missing_final_tag",
    "trailing_bytes",
    "digest_mismatch",
    "bad_content",
    "bad_link_code",  # device linking: input that is neither CODE-CHECK nor enigmo-link:CODE:HEX
    "link_check_missing",  # device linking: a bare CODE, without the check that binds the keys
    "link_check_mismatch",  # device linking: the server returned keys other than the new device showed
)
