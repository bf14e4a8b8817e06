"""The E2EE plaintext: versioned canonical JSON for text, attachments, reactions, deletes, timers, receipts, retries, group names."""

from __future__ import annotations

import json
from typing import Any

from .encoding import canonical_json
from .errors import ProtocolError

CONTENT_VERSION = 1
MAX_BODY_CHARS = 16_000
MAX_TIMER_SECONDS = 4 * 7 * 24 * 3600
MAX_NAME_CHARS = 64

# field -> (type, required); "id" and "sent_ms" are common to every type.
_SCHEMAS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "text": {"body": (str, True), "reply_to": (str, False)},
    "attachment": {"attachment": (dict, True), "caption": (str, False), "reply_to": (str, False)},
    "reaction": {"target": (str, True), "emoji": (str, True), "remove": (bool, False)},
    "delete": {"target": (str, True)},
    "timer": {"seconds": (int, True)},
    "receipt": {"kind": (str, True), "targets": (list, True)},
    "retry": {"target": (str, True)},
    "meta": {"name": (str, True)},  # a group's name, sent to every member (the server never sees it)
}
_ATTACHMENT_FIELDS = {"ref": str, "key": str, "digest": str, "size": int, "mime": str, "name": str}
CONTENT_TYPES = tuple(_SCHEMAS)


def _fail(why: str) -> ProtocolError:
    return ProtocolError("bad_content", why)


def content_validate(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail("content is not an object")
    if value.get("v") != CONTENT_VERSION:
        raise _fail("unsupported content version")
    kind = value.get("type")
    if kind not in _SCHEMAS:
        raise _fail(f"unknown type {kind!r}")
    if not isinstance(value.get("id"), str) or not value["id"] or len(value["id"]) > 64:
        raise _fail("id must be a non-empty string of at most 64 chars")
    if type(value.get("sent_ms")) is not int or value["sent_ms"] < 0:
        raise _fail("sent_ms must be a non-negative integer")
    for name, (expected, required) in _SCHEMAS[kind].items():
        if name not in value:
            if required:
                raise _fail(f"{kind}.{name} is required")
            continue
        field_value = value[name]
        # bool is an int subclass in Python; JSON keeps them apart, so must we.
        if expected is int and type(field_value) is not int:
            raise _fail(f"{kind}.{name} must be an integer")
        if not isinstance(field_value, expected):
            raise _fail(f"{kind}.{name} has the wrong type")
    if kind == "text" and len(value["body"]) > MAX_BODY_CHARS:
        raise _fail("text body too long")
    if kind == "meta" and len(value["name"]) > MAX_NAME_CHARS:
        raise _fail("group name too long")
    if kind == "timer" and not 0 <= value["seconds"] <= MAX_TIMER_SECONDS:
        raise _fail("timer seconds out of range")
    if kind == "receipt":
        if value["kind"] not in ("delivered", "read"):
            raise _fail("receipt kind must be delivered or read")
        if not value["targets"] or not all(isinstance(t, str) for t in value["targets"]):
            raise _fail("receipt targets must be a non-empty list of ids")
    if kind == "attachment":
        att = value["attachment"]
        for name, expected in _ATTACHMENT_FIELDS.items():
            if name not in att or type(att[name]) is not expected:
                raise _fail(f"attachment.{name} is missing or has the wrong type")
    return value


def content_build(content_type: str, /, *, id: str, sent_ms: int, **fields: Any) -> bytes:
    value = {"v": CONTENT_VERSION, "type": content_type, "id": id, "sent_ms": sent_ms, **fields}
    return canonical_json(content_validate(value))


def content_parse(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail("not UTF-8 JSON") from exc
    return content_validate(value)
