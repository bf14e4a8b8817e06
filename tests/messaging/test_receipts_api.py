"""Delivered and read receipts over REST, and the read-receipt switch."""

from __future__ import annotations

from messaging.models import Delivery, Participant
from tests.messaging.helpers import NOWHERE, send


def test_delivered_and_read(api, alice, bob, eve, chat):
    _, sent = send(api, alice, chat, "hi")
    assert api.post(f"/api/v1/messages/{sent['id']}/delivered", token=bob.token) == (200, {"message_id": sent["id"], "status": "delivered"})
    d = Delivery.objects.get()
    assert d.delivered_at is not None and d.ciphertext is None
    assert api.post(f"/api/v1/messages/{sent['id']}/read", token=bob.token)[0] == 200
    [m] = api.get(f"/api/v1/conversations/{chat}/messages", token=alice.token)[1]["messages"]
    assert m["delivered_at"] and m["read_at"]
    assert api.get("/api/v1/conversations", token=bob.token)[1][0]["unread_count"] == 0


def test_mark_read_up_to_seq(api, alice, bob, eve, chat):
    for i in range(3):
        send(api, alice, chat, f"m{i}")
    assert api.post(f"/api/v1/conversations/{chat}/mark-read", {"seq": 2}, token=bob.token) == (200, {"seq": 2})
    assert api.get("/api/v1/conversations", token=bob.token)[1][0]["unread_count"] == 1
    assert Delivery.objects.filter(read_at__isnull=False).count() == 2
    assert api.post(f"/api/v1/conversations/{chat}/mark-read", {"seq": 99}, token=bob.token)[1] == {"seq": 3}


def test_read_receipts_off_keeps_read_state_private(api, alice, bob, eve, chat):
    api.post("/api/v1/me/privacy", {"read_receipts": False}, token=bob.token)
    _, sent = send(api, alice, chat, "hi")
    api.post(f"/api/v1/messages/{sent['id']}/read", token=bob.token)
    assert Participant.objects.get(user__username="bob").last_read_seq == 1
    [m] = api.get(f"/api/v1/conversations/{chat}/messages", token=alice.token)[1]["messages"]
    assert m["read_at"] is None


def test_validation_unauthenticated_and_eve(api, alice, bob, eve, chat):
    assert api.post(f"/api/v1/conversations/{chat}/mark-read", {"seq": -1}, token=bob.token)[0] == 400
    assert api.post(f"/api/v1/conversations/{chat}/mark-read", {"seq": 1})[0] == 401
    for cid in (chat, NOWHERE):
        status, body = api.post(f"/api/v1/conversations/{cid}/mark-read", {"seq": 1}, token=eve.token)
        assert status == 404 and body["error"]["code"] == "not_found"
        status, body = api.post(f"/api/v1/conversations/{cid}/typing", {"state": "started"}, token=eve.token)
        assert status == 404 and body["error"]["code"] == "not_found"
    assert api.post(f"/api/v1/conversations/{chat}/typing", {"state": "dancing"}, token=bob.token)[0] == 400
    assert api.post(f"/api/v1/conversations/{chat}/typing", {"state": "started"}, token=bob.token)[0] == 202
    assert api.post(f"/api/v1/conversations/{chat}/typing", {"state": "started"})[0] == 401
