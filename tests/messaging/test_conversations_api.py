"""Conversations: create, list, detail with devices, members, timer."""

from __future__ import annotations

from tests.messaging.helpers import NOWHERE, open_group, send
from tests.support import Account


def test_direct_conversation_is_created_once_per_pair(api, alice, bob, eve):
    """Creating a direct conversation again returns the same one with 200; the creator is admin."""
    status, first = api.post("/api/v1/conversations", {"kind": "direct", "members": ["bob"]}, token=alice.token)
    assert status == 201
    assert {p["user_id"]: p["role"] for p in first["participants"]} == {"alice": "admin", "bob": "member"}
    status, again = api.post("/api/v1/conversations", {"kind": "direct", "members": ["alice"]}, token=bob.token)
    assert status == 200 and again["id"] == first["id"]


def test_list_shows_unread_and_last_activity(api, alice, bob, eve, chat):
    send(api, alice, chat, "hi")
    send(api, alice, chat, "there")
    status, rows = api.get("/api/v1/conversations", token=bob.token)
    assert status == 200 and len(rows) == 1
    row = rows[0]
    assert row["id"] == chat and row["unread_count"] == 2 and row["last_seq"] == 2 and row["last_activity_at"]
    assert {"id", "kind", "participants", "unread_count", "last_seq", "last_activity_at", "disappearing_seconds", "encrypted_meta"} <= set(row)
    assert api.get("/api/v1/conversations", token=alice.token)[1][0]["unread_count"] == 0
    assert api.get("/api/v1/conversations", token=eve.token)[1] == []


def test_detail_lists_every_active_device(api, alice, bob, eve, chat):
    """The detail is the fan-out list: each participant's active devices."""
    bob.link_device(api)
    status, detail = api.get(f"/api/v1/conversations/{chat}", token=alice.token)
    assert status == 200
    devices = {p["user_id"]: p["devices"] for p in detail["participants"]}
    assert devices == {"alice": [1], "bob": [1, 2]}


def test_validation_failures(api, alice, bob, eve):
    assert api.post("/api/v1/conversations", {"kind": "direct", "members": ["bob", "eve"]}, token=alice.token)[0] == 400
    assert api.post("/api/v1/conversations", {"kind": "channel", "members": ["bob"]}, token=alice.token)[0] == 400
    assert api.post("/api/v1/conversations", {"kind": "group", "members": []}, token=alice.token)[0] == 400
    status, body = api.post("/api/v1/conversations", {"kind": "group", "members": ["nobody"]}, token=alice.token)
    assert status == 404 and body["error"]["code"] == "user_not_found"


def test_unauthenticated(api, alice, bob, eve, chat):
    assert api.get("/api/v1/conversations")[0] == 401
    assert api.post("/api/v1/conversations", {"kind": "direct", "members": ["bob"]})[0] == 401
    assert api.get(f"/api/v1/conversations/{chat}")[0] == 401


def test_eve_gets_the_same_404_as_for_a_missing_conversation(api, alice, bob, eve, chat):
    for cid in (chat, NOWHERE, "not-a-uuid"):
        for status, body in (
            api.get(f"/api/v1/conversations/{cid}", token=eve.token),
            api.post(f"/api/v1/conversations/{cid}/members", {"add": ["eve"]}, token=eve.token),
            api.delete(f"/api/v1/conversations/{cid}/members/bob", token=eve.token),
            api.post(f"/api/v1/conversations/{cid}/timer", {"seconds": 5}, token=eve.token),
        ):
            assert status == 404 and body == {"error": {"code": "not_found", "message": "Not found."}}


def test_group_members_admin_only_and_leave(api, alice, bob, eve):
    carol = Account("carol")
    carol.register(api)
    group = open_group(api, alice, bob)
    status, body = api.post(f"/api/v1/conversations/{group}/members", {"add": ["carol"]}, token=bob.token)
    assert status == 403 and body["error"]["code"] == "not_admin"
    status, body = api.post(f"/api/v1/conversations/{group}/members", {"add": ["carol"]}, token=alice.token)
    assert status == 200 and {p["user_id"] for p in body["participants"]} == {"alice", "bob", "carol"}
    assert api.delete(f"/api/v1/conversations/{group}/members/carol", token=bob.token)[0] == 403
    assert api.delete(f"/api/v1/conversations/{group}/members/carol", token=alice.token)[0] == 204
    # bob leaves by himself (the last admin's hand-off has its own test below)
    assert api.delete(f"/api/v1/conversations/{group}/members/bob", token=bob.token)[0] == 204
    assert api.get(f"/api/v1/conversations/{group}", token=bob.token)[0] == 404


def test_the_last_admin_leaving_hands_admin_to_the_longest_standing_member(api, alice, bob, eve):
    """When alice, the only admin, leaves, the member who joined first (carol, not bob who was
    added later though registered earlier) becomes admin and can act as one; bob stays a member."""
    carol = Account("carol")
    carol.register(api)
    group = open_group(api, alice, carol)
    assert api.post(f"/api/v1/conversations/{group}/members", {"add": ["bob"]}, token=alice.token)[0] == 200
    assert api.delete(f"/api/v1/conversations/{group}/members/alice", token=alice.token)[0] == 204
    assert api.get(f"/api/v1/conversations/{group}", token=alice.token)[0] == 404
    status, detail = api.get(f"/api/v1/conversations/{group}", token=bob.token)
    assert status == 200 and {p["user_id"]: p["role"] for p in detail["participants"]} == {"carol": "admin", "bob": "member"}
    assert api.delete(f"/api/v1/conversations/{group}/members/carol", token=bob.token)[1]["error"]["code"] == "not_admin"
    assert api.delete(f"/api/v1/conversations/{group}/members/bob", token=carol.token)[0] == 204
    status, detail = api.get(f"/api/v1/conversations/{group}", token=carol.token)
    assert {p["user_id"]: p["role"] for p in detail["participants"]} == {"carol": "admin"}


def test_members_cannot_be_added_to_a_direct_conversation(api, alice, bob, eve, chat):
    status, body = api.post(f"/api/v1/conversations/{chat}/members", {"add": ["eve"]}, token=alice.token)
    assert status == 400


def test_timer_sets_expires_at_of_later_messages(api, alice, bob, eve, chat):
    status, body = api.post(f"/api/v1/conversations/{chat}/timer", {"seconds": 60}, token=bob.token)
    assert status == 200 and body == {"seconds": 60}
    assert api.get(f"/api/v1/conversations/{chat}", token=alice.token)[1]["disappearing_seconds"] == 60
    status, sent = send(api, alice, chat, "brief")
    assert status == 201 and sent["expires_at"] is not None
    assert api.post(f"/api/v1/conversations/{chat}/timer", {"seconds": 0}, token=bob.token)[0] == 400
    assert api.post(f"/api/v1/conversations/{chat}/timer", {"seconds": None}, token=bob.token)[1] == {"seconds": None}
