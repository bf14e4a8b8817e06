"""The Enigmo (Flutter/Dart) WebSocket protocol on /ws against a live server, driven by a client
written from that server's JSON frames."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.compat.clients import EnigmoClient, close_code, http_get, nothing_for, recv, recv_type

pytestmark = pytest.mark.live
PRESENCE = ("user_status_update",)


async def _chatting(server, *names):
    clients = [await EnigmoClient(server.ws_url, n).online() for n in names]
    first = clients[0]
    for other in clients[1:]:
        await first.send({"type": "add_to_chat", "target_user_id": other.user_id})
        await recv_type(first.ws, "add_to_chat_success")
        await recv_type(other.ws, "chat_added")
    return clients


def _msg(to: str, text: str) -> dict:
    return {"type": "send_message", "receiverId": to, "encryptedContent": text, "signature": "sig-" + text, "messageType": "text"}


async def test_register_and_auth_answer_in_the_dart_servers_shape(compat_server):
    client = EnigmoClient(compat_server.ws_url, "Alice")
    await client.open()
    registered = await client.register()
    assert len(client.user_id) == 16 and client.user_id == client.user_id.upper()
    assert registered["user"]["publicSigningKey"] == client.signing_b64 and registered["user"]["nickname"] == "Alice"
    assert "timestamp" in registered
    # registering the same keys again is idempotent; another encryption key is refused (pinning)
    assert (await client.register())["userId"] == client.user_id
    await client.send({"type": "register", "publicSigningKey": client.signing_b64, "publicEncryptionKey": client.signing_b64})
    assert (await recv(client.ws))["type"] == "error"
    answer = await client.auth()
    assert answer["type"] == "auth_success" and answer["userId"] == client.user_id and answer["success"] is True
    await client.close()


async def test_auth_refuses_replay_stale_timestamps_and_wrong_keys(compat_server):
    """Each refusal is for the reason it names, on a socket that is not yet authenticated: a
    signature already used once, a timestamp 90 s off, another key's signature. The same
    socket then authenticates with a fresh frame, and an unauthenticated one cannot send."""
    client = EnigmoClient(compat_server.ws_url, "Replay")
    await client.open()
    await client.register()
    used = client.auth_frame()
    await client.send(used)
    first = await recv(client.ws)
    assert first["type"] == "auth_success" and first["userId"] == client.user_id
    await client.close()
    # a fresh connection: the captured frame is refused as a replay, not as "already authenticated"
    await client.open()
    await client.send(used)
    replay = await recv(client.ws)
    assert replay["type"] == "error" and replay["code"] == "auth_replayed" and "already used" in replay["message"]
    for when in (datetime.now(UTC) - timedelta(seconds=90), datetime.now(UTC) + timedelta(seconds=90)):
        await client.send(client.auth_frame(when))
        stale = await recv(client.ws)
        assert stale["type"] == "error" and stale["code"] == "auth_failed", stale
    impostor = EnigmoClient(compat_server.ws_url, "Impostor")
    impostor.user_id = client.user_id
    await client.send(impostor.auth_frame())
    wrong_key = await recv(client.ws)
    assert wrong_key["type"] == "error" and wrong_key["code"] == "auth_failed"
    await client.send({"type": "send_message", "receiverId": client.user_id, "encryptedContent": "x", "signature": "y"})
    assert (await recv(client.ws))["message"] == "Authentication required"
    # none of that used up the socket: a fresh signature authenticates it
    answer = await client.auth()
    assert answer["type"] == "auth_success", answer
    await client.close()


async def test_auth_accepts_the_flutter_apps_offset_free_local_time(compat_server):
    """`DateTime.now().toIso8601String()` in India (UTC+5:30) has no offset: accepted once."""
    client = EnigmoClient(compat_server.ws_url, "Local")
    await client.open()
    await client.register()
    local = (datetime.now(UTC) + timedelta(hours=5, minutes=30)).replace(tzinfo=None).isoformat()
    frame = {**client.auth_frame(), "timestamp": local}
    frame["signature"] = base64.b64encode(client.signing_key.sign(local.encode()).signature).decode()
    await client.send(frame)
    assert (await recv(client.ws))["type"] == "auth_success"
    await client.close()
    await client.open()
    await client.send(frame)
    assert (await recv(client.ws))["code"] == "auth_replayed"
    await client.close()


async def _history_when_delivered(client, other_id: str, timeout: float = 5) -> list[dict]:
    """get_history, asked again until its last message is no longer "sent" (the recipient's
    acknowledgement is committed just after the frame is written to its socket)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await client.send({"type": "get_history", "otherUserId": other_id, "limit": 10})
        history = await recv_type(client.ws, "message_history")
        assert history["otherUserId"] == other_id
        if history["messages"][-1]["status"] != "sent" or loop.time() > deadline:
            return history["messages"]
        await asyncio.sleep(0.05)


async def test_send_to_online_user_history_and_mark_read(compat_server):
    alice, bob = await _chatting(compat_server, "A", "B")
    await alice.send(_msg(bob.user_id, "hello"))
    sent = await recv_type(alice.ws, "message_sent")
    assert sent["message"]["senderId"] == alice.user_id and sent["message"]["receiverId"] == bob.user_id
    new = await recv_type(bob.ws, "new_message")
    assert new["message"]["id"] == sent["messageId"]
    assert new["message"]["encryptedContent"] == "hello" and new["message"]["signature"] == "sig-hello"
    assert new["message"]["senderId"] == alice.user_id
    # delivered: the server no longer holds the ciphertext, history keeps the metadata
    history = await _history_when_delivered(bob, alice.user_id)
    assert [(m["id"], m["status"], m["encryptedContent"], m["signature"]) for m in history] == [(sent["messageId"], "delivered", "", "")]
    await bob.send({"type": "mark_read", "messageId": sent["messageId"]})
    marked = await recv_type(bob.ws, "message_marked_read")
    assert marked == {**marked, "messageId": sent["messageId"], "success": True}
    read = await recv_type(alice.ws, "message_read")
    assert read["messageId"] == sent["messageId"] and read["readerId"] == bob.user_id
    # eve (not the recipient) cannot mark it
    eve = await EnigmoClient(compat_server.ws_url, "E").online()
    await eve.send({"type": "mark_read", "messageId": sent["messageId"]})
    assert (await recv_type(eve.ws, "message_marked_read"))["success"] is False
    for c in (alice, bob, eve):
        await c.close()


async def test_offline_messages_are_delivered_once_in_order_when_the_user_comes_back(compat_server):
    """Queued while bob is away, pushed in order when he authenticates, and never again: the
    Flutter client does not deduplicate, so a message written to a socket counts as delivered
    (with or without mark_read), as in the Dart server."""
    alice, bob = await _chatting(compat_server, "A2", "B2")
    await bob.close()
    for i in range(4):
        await alice.send(_msg(bob.user_id, f"m{i}"))
        await recv_type(alice.ws, "message_sent")
    # while queued the server holds the ciphertext, and the sender's history says "sent"
    await alice.send({"type": "get_history", "otherUserId": bob.user_id, "limit": 10})
    queued = (await recv_type(alice.ws, "message_history"))["messages"]
    assert [(m["status"], m["encryptedContent"]) for m in queued] == [("sent", f"m{i}") for i in range(4)]
    await bob.online()
    got = [f["message"] for f in await nothing_for(bob.ws, 1.0, ignore=PRESENCE) if f["type"] == "new_message"]
    assert [m["encryptedContent"] for m in got] == ["m0", "m1", "m2", "m3"]
    await bob.close()
    await bob.online()
    assert [f for f in await nothing_for(bob.ws, 0.7, ignore=PRESENCE) if f["type"] == "new_message"] == []
    await alice.close()
    await bob.close()


async def test_presence_goes_only_to_users_who_share_a_chat(compat_server):
    alice, bob = await _chatting(compat_server, "A3", "B3")
    carol = await EnigmoClient(compat_server.ws_url, "C3").online()
    await bob.close()
    offline = await recv_type(alice.ws, "user_status_update")
    if offline["isOnline"]:  # bob's own "online" may still be in flight when the chat opened
        offline = await recv_type(alice.ws, "user_status_update")
    assert offline["userId"] == bob.user_id and offline["isOnline"] is False
    await bob.online()
    online = await recv_type(alice.ws, "user_status_update")
    assert online["userId"] == bob.user_id and online["isOnline"] is True
    assert [f for f in await nothing_for(carol.ws, 0.5) if f["type"] == "user_status_update"] == []
    # get_users lists only chat partners
    await alice.send({"type": "get_users"})
    users = (await recv_type(alice.ws, "users_list"))["users"]
    assert [u["id"] for u in users] == [bob.user_id] and users[0]["isOnline"] is True
    await carol.send({"type": "get_users"})
    assert (await recv_type(carol.ws, "users_list"))["users"] == []
    for c in (alice, bob, carol):
        await c.close()


async def test_call_signalling_reaches_only_the_peer(compat_server):
    alice, bob = await _chatting(compat_server, "A4", "B4")
    carol = await EnigmoClient(compat_server.ws_url, "C4").online()
    await alice.send({"type": "call_offer", "to": bob.user_id, "offer": "enc-sdp-offer", "call_id": "call-1"})
    offer = await recv_type(bob.ws, "call_offer")
    assert offer["from"] == alice.user_id and offer["offer"] == "enc-sdp-offer" and offer["call_id"] == "call-1"
    await bob.send({"type": "call_answer", "call_id": "call-1", "answer": "enc-sdp-answer"})
    assert (await recv_type(alice.ws, "call_answer"))["answer"] == "enc-sdp-answer"
    await alice.send({"type": "ice_candidate", "call_id": "call-1", "candidate": "enc-ice"})
    assert (await recv_type(bob.ws, "ice_candidate"))["candidate"] == "enc-ice"
    # a stranger can neither ring someone they share no chat with nor join the call
    await carol.send({"type": "call_offer", "to": alice.user_id, "offer": "x", "call_id": "call-2"})
    assert (await recv_type(carol.ws, "error"))["message"] == "Recipient not found"
    await carol.send({"type": "ice_candidate", "call_id": "call-1", "candidate": "evil"})
    assert (await recv_type(carol.ws, "error"))["message"] == "Call not found"
    await bob.send({"type": "end_call", "call_id": "call-1"})
    assert (await recv_type(alice.ws, "end_call"))["from"] == bob.user_id
    assert [f for f in await nothing_for(carol.ws, 0.4) if f["type"] != "user_status_update"] == []
    for c in (alice, bob, carol):
        await c.close()


async def test_ping_unknown_malformed_and_oversized_frames(compat_server):
    client = EnigmoClient(compat_server.ws_url, "Frames")
    await client.open()
    await client.send({"type": "ping"})
    assert (await recv(client.ws))["type"] == "pong"
    for bad in ["nope", "[]", json.dumps({"type": "teleport"}), json.dumps({"type": "register", "publicSigningKey": "short", "publicEncryptionKey": "x"})]:
        await client.ws.send(bad)
        assert (await recv(client.ws))["type"] == "error", bad
    await client.register()
    await client.auth()
    await client.send({"type": "send_message", "receiverId": "0000000000000000", "encryptedContent": "x", "signature": "y"})
    assert (await recv_type(client.ws, "error"))["message"] == "User not found"
    await client.send({"type": "send_message", "receiverId": client.user_id, "encryptedContent": "p" * (100 * 1024), "signature": "s"})
    assert "too large" in (await recv_type(client.ws, "error"))["message"].lower()
    await client.ws.send(json.dumps({"type": "ping", "pad": "p" * (200 * 1024)}))
    assert (await recv_type(client.ws, "error"))["code"] == "too_large"
    assert await close_code(client.ws) == 4009


def _is_iso(value) -> bool:
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def test_health_and_stats_are_public_with_the_flag(compat_server):
    """Both answer without credentials, in the Dart server's shapes (every nested key)."""
    status, health = http_get(compat_server.http_url + "/api/health")
    assert status == 200
    assert set(health) == {"status", "timestamp", "checks"} and health["status"] == "ok" and _is_iso(health["timestamp"])
    assert set(health["checks"]) == {"database", "channel_layer", "broker"}
    assert all(isinstance(v, str) and v.startswith("ok") for v in health["checks"].values()), health
    status, stats = http_get(compat_server.http_url + "/api/stats")
    assert status == 200
    assert set(stats) == {"server", "users", "messages"}
    assert set(stats["server"]) == {"uptime", "version"}
    assert isinstance(stats["server"]["uptime"], (int, float)) and stats["server"]["uptime"] >= 0
    assert isinstance(stats["server"]["version"], str) and stats["server"]["version"]
    assert set(stats["users"]) == {"totalUsers", "onlineUsers"}
    assert set(stats["messages"]) == {"total", "delivered", "read"}
    counts = [*stats["users"].values(), *stats["messages"].values()]
    assert all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts), stats
