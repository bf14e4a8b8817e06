"""JSON for WebSocket frames and the relay bus: orjson, about ten times faster than the
standard library at encoding a frame and three at decoding one. It is also stricter, which a
relay wants: NaN, Infinity and unpaired surrogate escapes are malformed JSON, not values."""

from __future__ import annotations

from typing import Any

import orjson

loads = orjson.loads


def dumps(obj: Any) -> str:
    """Compact JSON text (a text frame is a str); non-string keys become strings, as with json."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
