"""Compat users and native users never reach each other's data, and without the flags the
compat routes do not exist."""

from __future__ import annotations

import json

import pytest
import websockets

from tests.compat.clients import EnigmaClient, EnigmoClient, http_get, recv, recv_type, ws_open
from tests.support import Account, HttpTransport

pytestmark = pytest.mark.live


def test_the_default_profile_starts_with_no_compat_variable_at_all(_compat_servers):
    """"Off by default" is tested with the variables absent, not only set to "0"."""
    assert _compat_servers["plain"].compat_env == {}
    assert _compat_servers["off"].compat_env == {"ENIGMO_COMPAT_ENIGMA_V03": "0", "ENIGMO_COMPAT_ENIGMO_WS": "0"}


def test_without_the_variables_the_routes_do_not_exist(plain_server):
    """No /login, /connect; /api/stats stays staff-only."""
    assert http_get(plain_server.http_url + "/login/" + "A" * 44)[0] == 404
    assert http_get(plain_server.http_url + "/connect/abcdef0123456789")[0] == 404
    assert http_get(plain_server.http_url + "/api/stats")[0] in (401, 403)


@pytest.mark.parametrize("path", ["/ws/abcdef0123456789", "/connect/abcdef0123456789", "/ws"])
async def test_without_the_variables_the_sockets_are_refused(plain_server, path):
    with pytest.raises((websockets.InvalidStatus, websockets.InvalidHandshake, websockets.ConnectionClosed)):
        ws = await ws_open(plain_server.ws_url + path)
        await ws.recv()  # a route-less handshake may be accepted by the transport and closed at once


async def test_native_and_compat_users_cannot_reach_each_other(compat_server):
    api = HttpTransport(compat_server.http_url)
    alice = Account("alice")
    alice.register(api)
    v03 = EnigmaClient(compat_server.http_url, compat_server.ws_url)
    v03.login()
    ews = EnigmoClient(compat_server.ws_url, "Ews")
    await ews.online()
    for username in (f"v03.{v03.user_id}", f"ews.{ews.user_id}"):
        # native → compat: no directory entry, no bundle, no conversation
        assert api.get(f"/api/v1/keys/identity/{username}", token=alice.token)[0] == 404
        assert api.get(f"/api/v1/keys/prekeys/{username}", token=alice.token)[0] == 404
        status, body = api.post("/api/v1/conversations", {"kind": "direct", "members": [username]}, token=alice.token)
        assert status in (400, 404), (status, body)
        # compat users cannot log in natively
        status, _ = api.post("/api/v1/auth/login", {"username": username, "device_id": 1, "nonce": "AA==", "timestamp_ms": 0, "signature": "AA=="})
        assert status in (400, 401, 404)
    # compat → native: the native username is not a compat id
    ws = await v03.socket()
    await ws.send(json.dumps({"to": "alice", "payload": "x"}))
    assert (await recv(ws))["error"] == "User not found"
    await ws.close()
    await ews.send({"type": "add_to_chat", "target_user_id": "alice"})
    assert (await recv_type(ews.ws, "error"))["message"] == "User not found"
    await ews.send({"type": "send_message", "receiverId": "alice", "encryptedContent": "x", "signature": "y"})
    assert (await recv_type(ews.ws, "error"))["message"] == "User not found"
    # nothing of theirs shows up in the native user's conversations
    status, conversations = api.get("/api/v1/conversations", token=alice.token)
    assert status == 200 and "v03." not in json.dumps(conversations) and "ews." not in json.dumps(conversations)
    await ews.close()


async def test_v03_and_enigmo_ws_namespaces_are_separate(compat_server):
    """A v0.3 user cannot address an Enigmo-WS user, nor the other way round."""
    v03 = EnigmaClient(compat_server.http_url, compat_server.ws_url)
    v03.login()
    ews = await EnigmoClient(compat_server.ws_url, "Sep").online()
    ws = await v03.socket()
    await ws.send(json.dumps({"to": ews.user_id, "payload": "x"}))
    assert "error" in await recv(ws)
    await ws.close()
    await ews.send({"type": "send_message", "receiverId": v03.user_id.upper(), "encryptedContent": "x", "signature": "y"})
    assert (await recv_type(ews.ws, "error"))["message"] == "User not found"
    await ews.close()
