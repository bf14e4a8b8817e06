"""Enigma Protocol v0.3.1 (/ws/{userId}) and v0.3.0 (/connect/{userId}) against a live server,
driven by a client written from the specification."""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import pytest

from tests.compat.clients import EnigmaClient, close_code, http_get, nothing_for, recv, ws_open

pytestmark = pytest.mark.live

PATHS = ["ws", "connect"]  # v0.3.1, v0.3.0


def _pair(server):
    alice = EnigmaClient(server.http_url, server.ws_url)
    bob = EnigmaClient(server.http_url, server.ws_url)
    alice.login()
    bob.login()
    return alice, bob


def test_login_is_stable_per_key_and_connect_returns_the_key(compat_server):
    """The same key gets the same userId; /connect/{userId} answers the key, 404 for unknown ids."""
    pem = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END PUBLIC KEY-----"
    client = EnigmaClient(compat_server.http_url, compat_server.ws_url, public_key=pem)
    first = client.login()
    assert client.login() == first
    status, body = http_get(f"{compat_server.http_url}/connect/{first}")
    assert status == 200 and body["userId"] == first and body["publicKey"] == pem
    status, body = http_get(f"{compat_server.http_url}/connect/doesnotexist")
    assert status == 404 and "error" in body


def test_login_rejects_malformed_keys(compat_server):
    for bad in ["short", "<script>alert(1)</script>xxxxxxxx", "x" * 5000]:
        status, body = http_get(f"{compat_server.http_url}/login/{urllib.parse.quote(bad, safe='')}")
        assert status == 400 and "error" in body, bad


@pytest.mark.parametrize("path", PATHS)
async def test_online_recipient_gets_the_frame_at_once_with_from_rewritten(compat_server, path):
    """A spoofed "from" is replaced by the connection's own userId."""
    alice, bob = _pair(compat_server)
    a = await alice.socket(path)
    b = await bob.socket(path)
    await a.send(json.dumps({"from": "someone-else", "to": bob.user_id, "payload": "ciphertext-1"}))
    assert await recv(b) == {"from": alice.user_id, "to": bob.user_id, "payload": "ciphertext-1"}
    await a.close()
    await b.close()


@pytest.mark.parametrize("path", PATHS)
async def test_offline_recipient_gets_queue_in_order_on_reconnect_then_it_is_gone(compat_server, path):
    alice, bob = _pair(compat_server)
    a = await alice.socket(path)
    for i in range(5):
        await a.send(json.dumps({"from": alice.user_id, "to": bob.user_id, "payload": f"m{i}"}))
    assert await nothing_for(a, 0.5) == []  # no error: queued
    b = await bob.socket(path)
    got = [await recv(b) for _ in range(5)]
    assert [g["payload"] for g in got] == [f"m{i}" for i in range(5)]
    assert all(g["from"] == alice.user_id and g["to"] == bob.user_id for g in got)
    await b.close()
    b = await bob.socket(path)
    assert await nothing_for(b, 0.7) == []  # delivered once, then deleted
    await b.close()
    await a.close()


@pytest.mark.parametrize("path", PATHS)
async def test_unknown_recipient_gets_an_error(compat_server, path):
    """An unknown "to" answers {"error": "User not found"}; the socket stays usable."""
    alice, bob = _pair(compat_server)
    a = await alice.socket(path)
    b = await bob.socket(path)
    await a.send(json.dumps({"from": alice.user_id, "to": "nobody42", "payload": "x"}))
    assert await recv(a) == {"error": "User not found"}
    await a.send(json.dumps({"to": bob.user_id, "payload": "after-the-error"}))
    assert (await recv(b))["payload"] == "after-the-error"
    await a.close()
    await b.close()


@pytest.mark.parametrize("path", PATHS)
async def test_unknown_user_id_gets_an_error_then_the_socket_closes(compat_server, path):
    ws = await ws_open(f"{compat_server.ws_url}/{path}/nobody42")
    assert "error" in await recv(ws)
    assert await close_code(ws) is not None


@pytest.mark.parametrize("path", PATHS)
async def test_malformed_frames_get_errors_and_the_socket_stays_usable(compat_server, path):
    alice, bob = _pair(compat_server)
    a = await alice.socket(path)
    b = await bob.socket(path)
    for bad in ["not json", "[1,2]", json.dumps({"to": bob.user_id}), json.dumps({"to": 5, "payload": "x"}), json.dumps({"to": bob.user_id, "payload": {"a": 1}})]:
        await a.send(bad)
        assert "error" in await recv(a), bad
    await a.send(b"\x00binary")
    assert "error" in await recv(a)
    await a.send(json.dumps({"to": bob.user_id, "payload": "still-works"}))
    assert (await recv(b))["payload"] == "still-works"
    await a.close()
    await b.close()


@pytest.mark.parametrize("path", PATHS)
async def test_oversized_payload_is_refused_and_oversized_frame_closes(compat_server, path):
    """A payload over 96 KiB is refused with the socket left open; a frame over the frame cap
    is refused and closes the socket with 4009; neither reaches the recipient."""
    alice, bob = _pair(compat_server)
    a = await alice.socket(path)
    b = await bob.socket(path)
    await a.send(json.dumps({"to": bob.user_id, "payload": "p" * (100 * 1024)}))
    assert "payload too large" in (await recv(a))["error"].lower()
    await a.send(json.dumps({"to": bob.user_id, "payload": "still-open"}))
    assert (await recv(b))["payload"] == "still-open"
    await a.send(json.dumps({"to": bob.user_id, "payload": "p" * (200 * 1024)}))
    assert "frame too large" in (await recv(a))["error"].lower()
    assert await close_code(a) == 4009
    assert await nothing_for(b, 0.5) == []
    await b.close()
    b = await bob.socket(path)
    assert await nothing_for(b, 0.5) == []
    await b.close()


async def test_second_socket_for_the_same_id_replaces_the_first(compat_server):
    alice, bob = _pair(compat_server)
    first = await alice.socket()
    second = await alice.socket()
    assert await close_code(first) == 4409
    b = await bob.socket()
    await b.send(json.dumps({"to": alice.user_id, "payload": "to-the-new-socket"}))
    assert (await recv(second))["payload"] == "to-the-new-socket"
    await second.close()
    await b.close()


async def test_strict_mode_requires_a_signed_challenge(strict_server):
    """Strict mode: the server sends {"type": "challenge"}; the client signs
    "Enigmo-V03-Auth-v1" 0x00 ‖ nonce ‖ userId with the key behind its userId."""
    alice, bob = _pair(strict_server)
    # bob sends nothing: an unauthenticated socket cannot send …
    b = await bob.socket()
    challenge = await recv(b)
    assert challenge["type"] == "challenge"
    # … a wrong signature (another key) is refused and the socket closes
    impostor = EnigmaClient(strict_server.http_url, strict_server.ws_url)
    impostor.user_id = bob.user_id
    await b.send(json.dumps({"signature": impostor.sign_challenge(challenge["challenge"])}))
    assert "error" in await recv(b)
    assert await close_code(b) == 4401
    # the real keys work
    a = await alice.socket()
    await a.send(json.dumps({"signature": alice.sign_challenge((await recv(a))["challenge"])}))
    assert (await recv(a))["type"] == "authenticated"
    await a.send(json.dumps({"to": bob.user_id, "payload": "strict-hello"}))
    b = await bob.socket()
    await b.send(json.dumps({"signature": bob.sign_challenge((await recv(b))["challenge"])}))
    assert (await recv(b))["type"] == "authenticated"
    assert (await recv(b)) == {"from": alice.user_id, "to": bob.user_id, "payload": "strict-hello"}
    await a.close()
    await b.close()


async def test_strict_mode_refuses_a_replayed_signature(strict_server):
    """Each challenge is fresh, so a signature captured on one connection is useless on the next."""
    alice, _ = _pair(strict_server)
    a = await alice.socket()
    signature = alice.sign_challenge((await recv(a))["challenge"])
    await a.send(json.dumps({"signature": signature}))
    assert (await recv(a))["type"] == "authenticated"
    await a.close()
    replay = await alice.socket()
    await recv(replay)
    await replay.send(json.dumps({"signature": signature}))
    assert "error" in await recv(replay)
    assert await close_code(replay) == 4401
    await asyncio.sleep(0)
