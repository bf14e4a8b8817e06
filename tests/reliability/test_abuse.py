"""Abuse on live servers — refused, and others unaffected: a frame flood (error frame, close 1008),
bodies over the caps (413, no partial blob), rate limits (429 + Retry-After, per IP, per account,
per sender→recipient, attachments; shared across processes through Redis), mass assignment,
foreign Origins, CSRF, and logs that name who was refused but hold no secrets."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets

from tests.messaging.helpers import open_direct
from tests.messaging.live_client import ws_connect
from tests.reliability.common import cast, envelope, is_error_shape, p95, pair, pinger, production
from tests.support import Account, HttpTransport, b64

pytestmark = pytest.mark.live


class SourceTransport(HttpTransport):
    """HttpTransport from a chosen loopback address (127.0.0.x), so one test can be several IPs;
    keeps the response headers and cookies of the last call."""

    def __init__(self, base_url: str, source_ip: str = "127.0.0.1", cookie: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(base_url)
        self.source_ip, self.cookie, self.extra = source_ip, cookie, headers or {}
        self.last_headers: http.client.HTTPMessage | None = None

    def _request(self, method: str, path: str, body: Any, token: str | None) -> tuple[int, Any]:
        url = urlsplit(self.base_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30, source_address=(self.source_ip, 0))
        headers = {"Content-Type": "application/json", **self.extra}
        if token:
            headers["Authorization"] = f"Token {token}"
        if self.cookie:
            headers["Cookie"] = self.cookie
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None))
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        self.last_headers = response.headers
        conn.close()
        ctype = response.headers.get("Content-Type", "")
        return response.status, (json.loads(raw) if raw and ctype.startswith("application/json") else None)


def assert_logs_clean(log_path: Path, *accounts: Account, ciphertexts: tuple[str, ...] = ()) -> str:
    """The server log holds no token, no key bytes and no ciphertext; returns the log."""
    text = log_path.read_text(errors="replace")
    secrets = list(ciphertexts)
    for account in accounts:
        secrets.append(b64(bytes(account.account_key.verify_key)))
        for device in account.devices:
            secrets += [b64(bytes(device.identity.verify_key)), b64(bytes(device.signed_prekey.public_key))]
            secrets += [b64(bytes(k.public_key)) for k in device.one_time_prekeys.values()]
            if device.token:
                secrets.append(device.token)
    leaked = [s[:12] for s in secrets if s and s in text]
    assert not leaked, f"secrets in the server log: {leaked}"
    return text


async def test_a_frame_flood_gets_an_error_frame_and_close_1008_while_others_keep_their_latency(live_server_factory):
    """eve sends 20,000 frames as fast as she can: after the per-socket burst she gets one error
    frame (rate_limited) and close 1008; ten other users pinging every 50 ms keep p95 under 250 ms
    and none of their sockets closes."""
    bound = 0.250
    server = await asyncio.to_thread(live_server_factory)
    api = HttpTransport(server.http_url)
    accounts = await asyncio.to_thread(cast, api, "eve", *(f"user{n}" for n in range(10)))
    eve, others = accounts[0], accounts[1:]
    stop, closes = asyncio.Event(), []
    baseline: list[list[float]] = [[] for _ in others]
    pingers = [asyncio.create_task(pinger(server.ws_url, a.token, baseline[i], stop, closes)) for i, a in enumerate(others)]
    await asyncio.sleep(2)
    base = [r for rtts in baseline for r in rtts]
    during_start = [len(r) for r in baseline]
    ws = await ws_connect(server.ws_url, eve.token)
    flood_started = time.perf_counter()
    sent = 0
    try:
        for n in range(20_000):
            await ws.send(json.dumps({"type": "ping", "ref": n}))
            sent += 1
    except websockets.ConnectionClosed:
        pass
    frames = []
    try:
        async for raw in ws:
            frames.append(json.loads(raw))
    except websockets.ConnectionClosed:
        pass
    flood_took = time.perf_counter() - flood_started
    await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*pingers)
    during = [r for i, rtts in enumerate(baseline) for r in rtts[during_start[i]:]]
    errors = [f for f in frames if f["type"] == "error"]
    assert ws.close_code == 1008, ws.close_code
    assert len(errors) == 1 and errors[0]["error"]["code"] == "rate_limited" and frames[-1] == errors[0]
    pongs = sum(1 for f in frames if f["type"] == "pong")
    assert 2000 <= pongs < 20_000
    assert closes == [], closes
    print(
        f"\n[abuse] flood: {sent} frames sent, {pongs} answered, then error + close 1008 after {flood_took:.2f}s; "
        f"others' ping p95 {p95(base) * 1000:.1f} ms before, {p95(during) * 1000:.1f} ms during (bound {bound * 1000:.0f} ms, "
        f"{len(during)} samples)"
    )
    assert p95(during) < bound
    log = assert_logs_clean(server.log_path, *accounts)
    assert "ws flood closed user=eve device=1 ip=127.0.0.1" in log


async def test_bodies_over_the_caps_get_413_and_leave_no_blob(live_server_factory, tmp_path):
    """A JSON body over DATA_UPLOAD_MAX_MEMORY_SIZE → 413 in the error shape; a media upload over
    MAX_MEDIA_BYTES → 413 whether it declares its length or streams chunked, and no file is left."""
    media_root = tmp_path / "media"
    server = await asyncio.to_thread(
        live_server_factory, {"ENIGMO_MAX_BODY_BYTES": "65536", "ENIGMO_MAX_MEDIA_BYTES": "1048576", "ENIGMO_MEDIA_ROOT": str(media_root)}
    )
    api, alice, bob, chat = await asyncio.to_thread(pair, server)
    big = envelope("bob", "x")
    big["recipients"][0]["ciphertext"] = b64(os.urandom(80_000))  # under the ciphertext cap, over the body cap
    status, body = await asyncio.to_thread(api.post, f"/api/v1/conversations/{chat}/messages", big, token=alice.token)
    assert status == 413 and is_error_shape(body, "too_large"), (status, body)
    status, body = await asyncio.to_thread(api.post, "/api/v1/auth/register", {"padding": "x" * 100_000})
    assert status == 413 and is_error_shape(body, "too_large"), (status, body)

    def upload(size: int, chunked: bool) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        headers = {"Authorization": f"Token {alice.token}", "Content-Type": "application/octet-stream"}
        blob = os.urandom(size)
        if chunked:
            conn.request("POST", f"/api/v1/media/upload?conversation_id={chat}", body=(blob[i : i + 65536] for i in range(0, size, 65536)), headers=headers, encode_chunked=True)
        else:
            conn.request("POST", f"/api/v1/media/upload?conversation_id={chat}", body=blob, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        return response.status, json.loads(raw)

    for chunked in (False, True):
        status, body = await asyncio.to_thread(upload, 1_500_000, chunked)
        assert status == 413 and is_error_shape(body, "media_too_large"), (chunked, status, body)
    left = [p for p in media_root.rglob("*") if p.is_file()] if media_root.exists() else []
    assert left == [], left
    status, body = await asyncio.to_thread(upload, 100_000, True)
    assert status == 201 and body["size"] == 100_000
    assert len([p for p in media_root.rglob("*") if p.is_file()]) == 1
    assert (await asyncio.to_thread(api.post, f"/api/v1/conversations/{chat}/messages", envelope("bob", "fine"), token=alice.token))[0] == 201
    assert_logs_clean(server.log_path, alice, bob)


def _login(api: SourceTransport, account: Account) -> tuple[int, Any]:
    status, body = api.post("/api/v1/auth/login", account.login_payload(account.challenge(api)))
    if status == 200:
        account.device.token = body["token"]  # a login replaces the device's token
    return status, body


def _limited(status: int, body: Any, api: SourceTransport) -> bool:
    retry = api.last_headers.get("Retry-After") if api.last_headers else None
    return status == 429 and is_error_shape(body, "rate_limited") and retry is not None and int(retry) >= 1 and body["error"]["retry_after"] == int(retry)


LIMITS = {
    "ENIGMO_RATE_LIMITS": "1",
    "ENIGMO_RL_LOGIN_IP": "4/60",
    "ENIGMO_RL_LOGIN_ACCOUNT": "2/60",
    "ENIGMO_RL_REGISTER_IP": "3/60",
    "ENIGMO_RL_REGISTER_ACCOUNT": "2/60",
    "ENIGMO_RL_BUNDLE": "6/600",
    "ENIGMO_RL_MESSAGE": "3/60",
    "ENIGMO_RL_MEDIA": "2/60",
}


async def test_rate_limits_answer_429_with_retry_after(live_server_factory):
    """Login per IP and per account, registration per IP and per requested name, messages per
    sender→recipient (REST and socket), attachments: 429 in the error shape with Retry-After; every hit is logged with user
    and IP, and the log holds no secrets."""
    server = await asyncio.to_thread(live_server_factory, LIMITS)
    one, two = SourceTransport(server.http_url, "127.0.0.1"), SourceTransport(server.http_url, "127.0.0.2")

    def scenario() -> list[Account]:
        alice, bob, carol = cast(one, "alice", "bob", "carol")  # 3 registrations from .1: its burst
        status, body = one.post("/api/v1/auth/register", Account("dave").register_payload(Account("dave").challenge(one)))
        assert _limited(status, body, one), (status, body)
        dave = Account("dave")
        dave.register(two)  # another IP still registers
        # registration per requested name, whatever the IP: bob's own registration was the 1st
        three, four = SourceTransport(server.http_url, "127.0.0.3"), SourceTransport(server.http_url, "127.0.0.4")
        squatter = Account("bob")
        status, body = three.post("/api/v1/auth/register", squatter.register_payload(squatter.challenge(three)))
        assert status == 409 and is_error_shape(body, "username_taken"), (status, body)
        status, body = four.post("/api/v1/auth/register", squatter.register_payload(squatter.challenge(four)))
        assert _limited(status, body, four), (status, body)  # per account, from a fresh IP
        Account("erin").register(four)  # that IP registers another name
        # login: bob's account allows 2, whatever the IP; 127.0.0.1 allows 4, whoever logs in
        assert _login(one, bob)[0] == 200 and _login(one, bob)[0] == 200
        status, body = _login(one, bob)
        assert _limited(status, body, one), (status, body)
        status, body = _login(two, bob)
        assert _limited(status, body, two), (status, body)  # per account, across IPs
        assert _login(one, alice)[0] == 200  # the 4th login from .1
        status, body = _login(one, alice)
        assert _limited(status, body, one), (status, body)  # per IP
        assert _login(two, alice)[0] == 200  # the same account from another IP
        return [alice, bob, carol, dave]

    alice, bob, carol, dave = await asyncio.to_thread(scenario)
    chat_ab = await asyncio.to_thread(open_direct, two, alice, bob)
    chat_ac = await asyncio.to_thread(open_direct, two, alice, carol)
    ciphertexts = []

    def send(api: SourceTransport, sender: Account, chat: str, to: str) -> tuple[int, Any]:
        body = envelope(to, f"secret-{uuid.uuid4()}")
        ciphertexts.append(body["recipients"][0]["ciphertext"])
        return api.post(f"/api/v1/conversations/{chat}/messages", body, token=sender.token)

    for _ in range(3):
        assert (await asyncio.to_thread(send, two, alice, chat_ab, "bob"))[0] == 201
    status, body = await asyncio.to_thread(send, two, alice, chat_ab, "bob")
    assert _limited(status, body, two), (status, body)
    assert (await asyncio.to_thread(send, two, alice, chat_ac, "carol"))[0] == 201  # another recipient
    assert (await asyncio.to_thread(send, two, bob, chat_ab, "alice"))[0] == 201  # the other direction
    ws = await ws_connect(server.ws_url, alice.token)
    await ws.send(json.dumps({"type": "send", "ref": "over", "conversation_id": chat_ab, **envelope("bob", "over")}))
    while (frame := json.loads(await ws.recv()))["type"] != "error":
        pass
    assert frame["ref"] == "over" and frame["error"]["code"] == "rate_limited" and frame["error"]["retry_after"] >= 1
    await ws.close()

    def upload() -> tuple[int, Any]:
        return two.post(f"/api/v1/media/upload?conversation_id={chat_ab}", b"\x01" * 1000, token=alice.token)

    two.extra = {"Content-Type": "application/octet-stream"}
    assert [(await asyncio.to_thread(upload))[0] for _ in range(2)] == [201, 201]
    status, body = await asyncio.to_thread(upload)
    assert _limited(status, body, two), (status, body)
    log = assert_logs_clean(server.log_path, alice, bob, carol, dave, ciphertexts=tuple(ciphertexts))
    assert "auth refused code=rate_limited user=bob ip=127.0.0.2" in log
    assert "auth refused code=rate_limited user=alice ip=127.0.0.1" in log
    assert "rate limited path=/api/v1/auth/register user=- ip=127.0.0.1" in log
    assert "rate limit hit limit=register_account key=bob" in log
    assert "rate limited path=/api/v1/auth/register user=- ip=127.0.0.4" in log
    assert "rate limited path=/api/v1/media/upload user=alice ip=127.0.0.2" in log
    assert f"rate limited path=/api/v1/conversations/{chat_ab}/messages user=alice ip=127.0.0.2" in log


@pytest.mark.skipif(not production, reason="needs the production profile (rate-limit state in Redis)")
async def test_rate_limits_are_shared_by_two_processes(live_server_factory):
    """Two daphne processes on the same PostgreSQL and Redis count against the same buckets:
    messages per sender→recipient, login per account, registration per IP and per requested
    name, bundle fetches per (requester, target) (Signal: burst 6, then 1 per 10 min) and
    attachments. Requests alternate between the processes; the one over the burst is refused."""
    a = await asyncio.to_thread(live_server_factory, LIMITS)
    b = await asyncio.to_thread(live_server_factory, LIMITS, a.database_url)
    api_a, api_b = SourceTransport(a.http_url, "127.0.0.3"), SourceTransport(b.http_url, "127.0.0.3")
    alternate = [api_a, api_b] * 3
    alice, bob = await asyncio.to_thread(cast, api_a, "alice", "bob")
    chat = await asyncio.to_thread(open_direct, api_a, alice, bob)
    path = f"/api/v1/conversations/{chat}/messages"
    statuses = [(await asyncio.to_thread(api.post, path, envelope("bob", "x"), token=alice.token))[0] for api in (api_a, api_b, api_a)]
    assert statuses == [201, 201, 201]
    status, body = await asyncio.to_thread(api_b.post, path, envelope("bob", "x"), token=alice.token)
    assert _limited(status, body, api_b), (status, body)
    assert [(await asyncio.to_thread(_login, api, bob))[0] for api in (api_a, api_b)] == [200, 200]
    status, body = await asyncio.to_thread(_login, api_a, bob)
    assert _limited(status, body, api_a), (status, body)

    def registrations() -> Account:
        # per IP: 127.0.0.3 registered alice and bob on A; its 3rd is on B, its 4th refused on A
        carol = Account("carol")
        carol.register(api_b)
        status, body = api_a.post("/api/v1/auth/register", Account("dave").register_payload(Account("dave").challenge(api_a)))
        assert _limited(status, body, api_a), (status, body)
        # per requested name: alice's own registration (on A) was the 1st of its 2
        squatter = Account("alice")
        five, six = SourceTransport(b.http_url, "127.0.0.5"), SourceTransport(a.http_url, "127.0.0.6")
        status, body = five.post("/api/v1/auth/register", squatter.register_payload(squatter.challenge(five)))
        assert status == 409 and is_error_shape(body, "username_taken"), (status, body)
        status, body = six.post("/api/v1/auth/register", squatter.register_payload(squatter.challenge(six)))
        assert _limited(status, body, six), (status, body)
        Account("erin").register(six)  # the name was limited, not the IP
        return carol

    carol = await asyncio.to_thread(registrations)
    # bundle fetches: alice→bob gets 6 across both processes, then 429 for about 10 minutes
    fetched = [(await asyncio.to_thread(api.get, "/api/v1/keys/prekeys/bob", token=alice.token))[0] for api in alternate]
    assert fetched == [200] * 6
    status, body = await asyncio.to_thread(api_a.get, "/api/v1/keys/prekeys/bob", token=alice.token)
    assert _limited(status, body, api_a) and 500 <= body["error"]["retry_after"] <= 600, (status, body)
    status, body = await asyncio.to_thread(api_b.get, "/api/v1/keys/prekeys/bob", token=alice.token)
    assert _limited(status, body, api_b), (status, body)
    # the bucket is the pair's: another target, or another requester, is still served
    assert (await asyncio.to_thread(api_b.get, "/api/v1/keys/prekeys/carol", token=alice.token))[0] == 200
    assert (await asyncio.to_thread(api_a.get, "/api/v1/keys/prekeys/bob", token=carol.token))[0] == 200
    # attachments: 2 per user across both processes
    api_a.extra = api_b.extra = {"Content-Type": "application/octet-stream"}
    upload = f"/api/v1/media/upload?conversation_id={chat}"
    uploaded = [(await asyncio.to_thread(api.post, upload, b"\x01" * 1000, token=alice.token))[0] for api in (api_b, api_a)]
    assert uploaded == [201, 201]
    status, body = await asyncio.to_thread(api_b.post, upload, b"\x01" * 1000, token=alice.token)
    assert _limited(status, body, api_b), (status, body)
    log_a, log_b = a.log_path.read_text(errors="replace"), b.log_path.read_text(errors="replace")
    assert "rate limit hit limit=register_account key=alice" in log_a
    assert "rate limit hit limit=bundle" in log_a + log_b and "rate limit hit limit=media" in log_b
    print("\n[abuse] two processes, one Redis: message, login, registration (IP and name), bundle (6 then 429, ~600 s) and media limits shared")


async def test_server_owned_fields_are_never_written(live_server_factory):
    """sender, seq, created_at, expires_at, ids and device ids in a message (REST or socket), and
    is_staff/is_superuser/device_id in a registration, are ignored."""
    server = await asyncio.to_thread(live_server_factory)
    api = HttpTransport(server.http_url)
    mallory = Account("mallory")
    payload = {**mallory.register_payload(mallory.challenge(api)), "is_staff": True, "is_superuser": True, "device_id": 7, "id": 1}
    registered, body = await asyncio.to_thread(api.post, "/api/v1/auth/register", payload)
    assert registered in (201, 400), (registered, body)
    alice, bob = await asyncio.to_thread(cast, api, "alice", "bob")
    chat = await asyncio.to_thread(open_direct, api, alice, bob)
    forged = {
        "sender": {"user_id": "bob", "device_id": 1}, "sender_device": 9, "sender_user": "bob", "device_id": 9, "seq": 99,
        "created_at": "2000-01-01T00:00:00Z", "expires_at": "2000-01-02T00:00:00Z", "id": str(uuid.uuid4()), "delivered_at": "2000-01-01T00:00:00Z",
    }
    status, sent = await asyncio.to_thread(api.post, f"/api/v1/conversations/{chat}/messages", {**envelope("bob", "rest"), **forged}, token=alice.token)
    assert status in (201, 400), (status, sent)
    ws = await ws_connect(server.ws_url, alice.token)
    await ws.send(json.dumps({"type": "send", "ref": "s", "conversation_id": chat, **envelope("bob", "ws"), **forged}))
    while (frame := json.loads(await ws.recv()))["type"] not in ("sent", "error"):
        pass
    await ws.close()
    status, page = await asyncio.to_thread(api.get, f"/api/v1/conversations/{chat}/messages", token=bob.token)
    for m in page["messages"]:
        assert m["sender"] == {"user_id": "alice", "device_id": 1}
        assert m["seq"] in (1, 2) and not m["created_at"].startswith("2000") and m["expires_at"] is None and m["delivered_at"] is None
        assert m["id"] != forged["id"]
    staff = await asyncio.to_thread(
        server.shell,
        "from django.contrib.auth.models import User; from keys.models import Device; "
        "print(User.objects.filter(is_staff=True).count() + User.objects.filter(is_superuser=True).count(), "
        "sorted(set(Device.objects.values_list('device_id', flat=True))))",
    )
    assert staff.strip().splitlines()[-1] == "0 [1]"
    print(f"\n[abuse] mass assignment: registration {registered}, REST send and socket send {frame['type']}; nothing forged was stored")


async def test_origin_csrf_and_their_logs(live_server_factory):
    """A foreign Origin is refused at the handshake (403, logged with IP); a missing Origin works
    with a token but a session cookie without an Origin does not authenticate; a session POST
    without the CSRF token → 403."""
    server = await asyncio.to_thread(live_server_factory)
    api = HttpTransport(server.http_url)
    alice, bob = await asyncio.to_thread(cast, api, "alice", "bob")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(server.ws_url + "/api/v1/ws", additional_headers={"Authorization": f"Token {alice.token}", "Origin": "https://evil.example"})
    assert refused.value.response.status_code == 403
    ws = await ws_connect(server.ws_url, alice.token)  # no Origin, token: fine
    assert json.loads(await ws.recv())["type"] in ("backlog", "presence")
    await ws.close()
    # a browser session: the login sets the session cookie
    browser = SourceTransport(server.http_url)
    status, _ = await asyncio.to_thread(_login, browser, bob)
    assert status == 200
    cookies = [c.split(";", 1)[0] for c in browser.last_headers.get_all("Set-Cookie")]
    cookie = "; ".join(cookies)
    assert "sessionid=" in cookie
    ws = await websockets.connect(server.ws_url + "/api/v1/ws", additional_headers={"Cookie": cookie})
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4401  # a cookie without an Origin is no credential
    ws = await websockets.connect(server.ws_url + "/api/v1/ws", additional_headers={"Cookie": cookie, "Origin": "http://127.0.0.1:8000"})
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] in ("backlog", "presence")
    await ws.close()
    session = SourceTransport(server.http_url, cookie=cookie)
    status, body = await asyncio.to_thread(session.post, "/api/v1/conversations", {"kind": "direct", "members": ["alice"]})
    assert status == 403 and is_error_shape(body, "csrf_failed"), (status, body)
    log = assert_logs_clean(server.log_path, alice, bob)
    assert "ws origin refused origin=https://evil.example ip=127.0.0.1" in log
    assert "csrf refused path=/api/v1/conversations ip=127.0.0.1" in log
