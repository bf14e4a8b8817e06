"""Privacy switches and call history."""

from __future__ import annotations

from messaging.models import Call


def test_privacy_defaults_and_update(api, alice, bob, eve):
    assert api.get("/api/v1/me/privacy", token=alice.token) == (200, {"read_receipts": True, "presence": True})
    assert api.post("/api/v1/me/privacy", {"read_receipts": False}, token=alice.token) == (200, {"read_receipts": False, "presence": True})
    assert api.get("/api/v1/me/privacy", token=alice.token)[1] == {"read_receipts": False, "presence": True}
    assert api.get("/api/v1/me/privacy", token=bob.token)[1]["read_receipts"] is True


def test_privacy_validation_and_unauthenticated(api, alice, bob, eve):
    assert api.post("/api/v1/me/privacy", {"presence": "maybe"}, token=alice.token)[0] == 400
    assert api.get("/api/v1/me/privacy")[0] == 401


def test_call_history_only_for_participants(api, alice, bob, eve, chat):
    from keys.models import Device
    from messaging.models import Conversation

    conversation = Conversation.objects.get(public_id=chat)
    caller = Device.objects.get(user__username="alice", device_id=1)
    Call.objects.create(conversation=conversation, caller_device=caller, caller_user=caller.user, kind="video")
    status, rows = api.get("/api/v1/calls", token=bob.token)
    assert status == 200 and len(rows) == 1
    assert rows[0]["caller"] == {"user_id": "alice", "device_id": 1} and rows[0]["type"] == "video" and rows[0]["status"] == "ringing"
    assert api.get("/api/v1/calls", token=eve.token) == (200, [])
    assert api.get("/api/v1/calls")[0] == 401
