"""Byte/text encodings shared with the JS client: standard padded base64 and canonical JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .errors import ProtocolError


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ProtocolError("bad_message", "invalid base64") from exc


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, raw UTF-8: the same bytes JSON.stringify gives after key sorting."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
