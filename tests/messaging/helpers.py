"""Helpers for messaging tests: open a conversation and fan an envelope out to every device."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support import Account, Device, b64

NOWHERE = "00000000-0000-4000-8000-000000000000"  # a well-formed conversation id that does not exist


def open_direct(api: Any, a: Account, b: Account) -> str:
    status, body = api.post("/api/v1/conversations", {"kind": "direct", "members": [b.username]}, token=a.token)
    assert status in (200, 201), body
    return body["id"]


def open_group(api: Any, creator: Account, *members: Account) -> str:
    status, body = api.post("/api/v1/conversations", {"kind": "group", "members": [m.username for m in members]}, token=creator.token)
    assert status == 201, body
    return body["id"]


def fanout(api: Any, sender: Account, conversation_id: str, text: str, device: Device | None = None) -> list[dict[str, Any]]:
    """One fake ciphertext per current device of the conversation, except the sending device."""
    device = device or sender.device
    status, detail = api.get(f"/api/v1/conversations/{conversation_id}", token=device.token)
    assert status == 200, detail
    out = []
    for p in detail["participants"]:
        for device_id in p["devices"]:
            if p["user_id"] == sender.username and device_id == device.device_id:
                continue
            out.append({"user_id": p["user_id"], "device_id": device_id, "ciphertext": b64(f"{text}|{p['user_id']}.{device_id}".encode())})
    return out


def send(api: Any, sender: Account, conversation_id: str, text: str, *, device: Device | None = None, **extra: Any) -> tuple[int, Any]:
    device = device or sender.device
    body = {"client_message_id": str(uuid.uuid4()), "recipients": fanout(api, sender, conversation_id, text, device), **extra}
    return api.post(f"/api/v1/conversations/{conversation_id}/messages", body, token=device.token)
