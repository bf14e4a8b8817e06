"""Faults on live servers — nothing lost: SIGKILL of the server (and the Celery worker) mid-stream,
a stalled socket with a backlog behind it, Redis restarted under connected clients, PostgreSQL
cut away, a client that vanishes without closing, and daphne closing old sockets."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest
import websockets

from tests.live import PYTHON, ROOT, LiveServer, drop_database, fresh_database_url
from tests.messaging.live_client import Receiver, wait_for, ws_connect
from tests.reliability.common import (
    CuttableProxy,
    envelope,
    first_arrival_seqs,
    is_error_shape,
    pair,
    post_until_answered,
    production,
    redis_start,
    redis_stop,
    redis_up,
    send_over_socket,
)
from tests.support import Account, HttpTransport, unb64

pytestmark = pytest.mark.live
needs_production = pytest.mark.skipif(not production, reason="needs the production profile (DATABASE_URL=postgres…, REDIS_URL)")


def _start_worker(server: LiveServer) -> subprocess.Popen:
    """A Celery worker on the server's database and Redis, as production runs it."""
    log = open(server.log_path.with_suffix(".worker.log"), "wb")
    worker = subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "enigmo", "worker", "--pool", "solo", "--loglevel", "INFO", "--without-heartbeat", "--without-gossip"],
        cwd=ROOT, env=server.env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while b"ready" not in server.log_path.with_suffix(".worker.log").read_bytes():
        assert worker.poll() is None and time.monotonic() < deadline, "the Celery worker did not start"
        time.sleep(0.1)
    return worker


async def test_offline_device_gets_500_of_500_in_order_across_sigkill(live_server_factory):
    """500 envelopes to an offline device; the server (and in production the Celery worker) is
    SIGKILLed mid-stream and restarted; the device connects: 500 of 500, in order."""
    server = await asyncio.to_thread(live_server_factory)
    api, alice, bob, chat = await asyncio.to_thread(pair, server)
    worker = await asyncio.to_thread(_start_worker, server) if production else None
    answered: list[dict] = []
    total = 500

    def stream() -> None:
        for i in range(total):
            answered.append(post_until_answered(api, f"/api/v1/conversations/{chat}/messages", envelope("bob", f"m{i}"), alice.token)[1])

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        assert await wait_for(lambda: len(answered) >= 200, 60)
        await asyncio.to_thread(server.kill)
        if worker is not None:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            worker = await asyncio.to_thread(_start_worker, server)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(sender.join, 120)
    finally:
        if worker is not None:
            worker.kill()
            worker.wait(10)
    assert len(answered) == total and len({a["id"] for a in answered}) == total
    receiver = Receiver(server.ws_url, bob.token).start()
    assert await wait_for(lambda: len(receiver.unique_ids) >= total, 60), f"got {len(receiver.unique_ids)} of {total}"
    await receiver.stop()
    assert receiver.unique_ids == {a["id"] for a in answered}
    assert first_arrival_seqs(receiver.arrivals) == list(range(1, total + 1))
    print(f"\n[faults] offline device after SIGKILL: {len(receiver.unique_ids)} of {total} delivered, in order")


async def _stalled_socket(ws_url: str, token: str) -> websockets.ClientConnection:
    """A client that stops reading: a tiny receive buffer and a tiny frame queue, never read."""
    host, port = urlsplit(ws_url).hostname, urlsplit(ws_url).port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.setblocking(False)
    return await websockets.connect(
        ws_url + "/api/v1/ws", sock=sock, additional_headers={"Authorization": f"Token {token}"}, max_queue=1, ping_interval=None, max_size=2**21
    )


async def _read_and_ack(ws: websockets.ClientConnection, count: int) -> list[dict]:
    """Read until `count` distinct envelopes arrived, acking in batches of 100, and wait until
    the server confirmed every ack. Envelopes beyond `count` are neither kept nor acked."""
    arrivals: list[dict] = []
    seen: set[str] = set()
    batch: list[str] = []
    refs: set[str] = set()
    while len(seen) < count or batch or refs:
        if batch and (len(batch) >= 100 or len(seen) >= count):
            ref = f"ack{len(arrivals)}"
            refs.add(ref)
            await ws.send(json.dumps({"type": "ack", "ids": batch, "ref": ref}))
            batch = []
            continue
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] == "envelope" and (len(seen) < count or frame["id"] in seen):
            arrivals.append(frame)
            if frame["id"] not in seen:
                seen.add(frame["id"])
                batch.append(frame["id"])
        elif frame["type"] == "ok":
            refs.discard(frame["ref"])
        elif frame["type"] == "error":
            raise AssertionError(frame)
    return arrivals


def _send_over_rest(base_url: str, token: str, chat: str, to: str, count: int, threads: int = 4) -> list[dict]:
    """`count` envelopes over REST from `threads` clients, each retried with its own
    client_message_id until answered; the answers in the order sent ("m0", …)."""
    path = f"/api/v1/conversations/{chat}/messages"

    def one(n: int) -> dict:
        return post_until_answered(HttpTransport(base_url), path, envelope(to, f"m{n}"), token)[1]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


@needs_production
def test_a_burst_of_http_requests_leaves_no_database_connection_behind(live_server_factory):
    """Under ASGI every HTTP request runs in a thread of its own, so a connection kept open for
    reuse is never reused: it stayed open until the dead thread was collected, and a burst of
    1,000 REST sends held 77 of PostgreSQL's 100 connections (a CI run then failed with "too
    many clients"). After a burst of 400 sends the server holds no more than its relay
    threads' few."""
    server = live_server_factory({})
    _, alice, _, chat = pair(server)
    answers = _send_over_rest(server.http_url, alice.token, chat, "bob", 400)
    assert len({a["id"] for a in answers}) == 400
    database = urlsplit(server.database_url).path.lstrip("/")
    held = server.shell(
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        f"    c.execute(\"SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()\", [{database!r}])\n"
        "    print(c.fetchone()[0])"
    )
    assert int(held.split()[-1]) <= 10, held


def _backends(database_url: str) -> set[int]:
    """The PostgreSQL backends serving the live server's database right now."""
    import psycopg

    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(database_url.replace(f"/{name}", "/postgres"), autocommit=True) as c:
        return {pid for (pid,) in c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [name])}


@needs_production
async def test_the_relays_database_threads_keep_their_connections_across_their_clean_ups(live_server_factory):
    """The relay's database threads live as long as the process, so they keep their PostgreSQL
    connections while requests (each in a thread of its own) do not. With CONN_MAX_AGE 0
    applied to them too, each thread reconnected at its 5-second clean-up: a fresh backend, its
    statements prepared again and a batch waiting on both, per thread every 5 s (open-loop p99
    at 1,000 msg/s rose from ≈ 22 ms to 100-250 ms). alice sends over her socket for 12 s,
    past two clean-ups: every backend there after her first sends is still there at the end."""
    server = await asyncio.to_thread(live_server_factory, {})
    _, alice, bob, chat = await asyncio.to_thread(pair, server)
    ws = await ws_connect(server.ws_url, alice.token)
    first: set[int] = set()
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 12:
        await ws.send(json.dumps({"type": "send", "ref": sent, "conversation_id": chat, **envelope("bob", f"m{sent}")}))
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "sent":
            assert frame["type"] != "error", frame
        sent += 1
        if not first and time.monotonic() - started > 1.5:
            first = await asyncio.to_thread(_backends, server.database_url)
        await asyncio.sleep(0.1)
    last = await asyncio.to_thread(_backends, server.database_url)
    await ws.close()
    assert first, "the server held no connection while sending"
    assert sent > 50
    assert first <= last, f"backends replaced during the run: {sorted(first - last)} gone, {sorted(last - first)} new"


CHANNEL_CAPACITY = 20  # the overflow variant's layer capacity: far below the 1,000 queued


async def test_stalled_socket_gets_its_whole_backlog_from_the_database(live_server_factory):
    """bob's socket stops reading while 1,000 envelopes queue behind it; it resumes, takes half
    and drops; a new socket gets the other half from the database: all 1,000, in order.

    In production the channel layer really overflows: bob's socket is held by a second process
    (sharing PostgreSQL and Redis) whose channel holds only 20 messages, and that process is
    frozen (SIGSTOP: a consumer that has fallen behind) while alice stores the 1,000 through the
    first process. alice sends over REST there, because a socket's sends to a device held
    elsewhere ride the relay bus, not the layer; each REST send nudges bob's channel. At most 20
    nudges fit; the sender's channels-redis logs every one it drops, so at least 980 envelopes
    can only come from the database. (Within one process pushes bypass the layer, so the
    embedded run cannot overflow it.)"""
    env = {"ENIGMO_RELAY_TICK_SECONDS": "2", "ENIGMO_CHANNEL_CAPACITY": str(CHANNEL_CAPACITY)}
    server = await asyncio.to_thread(live_server_factory, env)
    receiving = await asyncio.to_thread(live_server_factory, env, server.database_url) if production else server
    api, alice, bob, chat = await asyncio.to_thread(pair, server)
    total = 1000
    stalled = await _stalled_socket(receiving.ws_url, bob.token)
    # its first frame comes after it joined its groups, so nudges from now on are addressed to it
    assert json.loads(await asyncio.wait_for(stalled.recv(), 10))["type"] in ("backlog", "presence")
    dropped_before = server.log_path.read_text(errors="replace").count("over capacity in group dev.")
    if production:
        os.kill(receiving.process.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        if production:
            answers = await asyncio.to_thread(_send_over_rest, server.http_url, alice.token, chat, "bob", total)
        else:
            answers = await send_over_socket(server.ws_url, alice.token, chat, "bob", total)
    finally:
        if production:
            os.kill(receiving.process.pid, signal.SIGCONT)
    took = time.monotonic() - started
    dropped = server.log_path.read_text(errors="replace").count("over capacity in group dev.") - dropped_before
    print(f"\n[faults] {total} envelopes queued behind a stalled socket in {took:.1f}s; {dropped} nudges dropped by the channel layer")
    if production:
        # all but the `capacity` that fit are dropped (20 more fit each time the held ones expire, 30 s)
        assert total - dropped <= CHANNEL_CAPACITY * (1 + math.ceil(took / 30)), dropped
    await asyncio.sleep(1)
    undelivered = lambda: int(server.shell(  # noqa: E731 - the last word: shell prints a banner first
        "from messaging.models import Delivery; print(Delivery.objects.filter(delivered_at__isnull=True).count())"
    ).split()[-1])
    assert await asyncio.to_thread(undelivered) == total
    first = await _read_and_ack(stalled, total // 2)
    stalled.transport.abort()  # gone without a close frame
    assert await wait_for(lambda: undelivered() == total - len({f["id"] for f in first}), 10)
    fresh = await ws_connect(receiving.ws_url, bob.token)
    rest = await _read_and_ack(fresh, total - len({f["id"] for f in first}))
    await fresh.close()
    arrivals = first + rest
    assert {f["id"] for f in arrivals} == {a["id"] for a in answers}
    assert first_arrival_seqs(arrivals) == list(range(1, total + 1))
    sent_text = {a["id"]: f"m{n}".encode() for n, a in enumerate(answers)}
    assert all(unb64(f["ciphertext"]) == sent_text[f["id"]] for f in arrivals)
    assert await asyncio.to_thread(undelivered) == 0
    print(f"[faults] stalled socket: {len({f['id'] for f in arrivals})} of {total} delivered in order ({len(first)} before the drop, {len(rest)} after)")


@pytest.fixture
def redis_restored():
    """Whatever happens in the test, Redis is up at the end."""
    assert redis_up(), "Redis at 127.0.0.1:6379 is not running"
    yield
    redis_start()


@needs_production
async def test_redis_restart_under_connected_clients(live_server_factory, redis_restored):
    """Redis goes away while alice and bob are connected: login, registration and key fetches
    fail closed (503 in the error shape), sending fails open; Redis comes back, clients carry on
    (reconnecting if their socket dropped) and every envelope arrives."""
    server = await asyncio.to_thread(live_server_factory, {"ENIGMO_RATE_LIMITS": "1", "ENIGMO_RELAY_TICK_SECONDS": "2"})
    api, alice, bob, chat = await asyncio.to_thread(pair, server)
    await asyncio.to_thread(bob.publish_prekeys, api)
    bob_rx, alice_rx = Receiver(server.ws_url, bob.token).start(), Receiver(server.ws_url, alice.token).start()
    await asyncio.wait_for(asyncio.gather(bob_rx.ready.wait(), alice_rx.ready.wait()), 10)
    path = f"/api/v1/conversations/{chat}/messages"
    sent = [(await asyncio.to_thread(api.post, path, envelope("bob", "before"), token=alice.token))[1]["id"]]
    nonce = await asyncio.to_thread(bob.challenge, api)
    carol = Account("carol")
    carol_nonce = await asyncio.to_thread(carol.challenge, api)
    try:
        await asyncio.to_thread(redis_stop)
        assert not redis_up()
        status, body = await asyncio.to_thread(api.post, "/api/v1/auth/login", bob.login_payload(nonce))
        assert status == 503 and is_error_shape(body, "unavailable"), (status, body)
        status, body = await asyncio.to_thread(api.post, "/api/v1/auth/register", carol.register_payload(carol_nonce))
        assert status == 503 and is_error_shape(body, "unavailable"), (status, body)
        status, body = await asyncio.to_thread(api.get, "/api/v1/keys/prekeys/bob", token=alice.token)
        assert status == 503 and is_error_shape(body, "unavailable"), (status, body)
        for n in range(5):  # fail open: the message limit does not stop a send
            status, body = await asyncio.to_thread(api.post, path, envelope("bob", f"during{n}"), token=alice.token)
            assert status == 201, (status, body)
            sent.append(body["id"])
        await asyncio.sleep(1)
    finally:
        await asyncio.to_thread(redis_start)
    for n in range(5):
        sent.append((await asyncio.to_thread(post_until_answered, api, path, envelope("bob", f"after{n}"), alice.token))[1]["id"])
    assert await wait_for(lambda: set(sent) <= bob_rx.unique_ids, 30), f"missing {len(set(sent) - bob_rx.unique_ids)}"
    assert first_arrival_seqs(bob_rx.arrivals) == list(range(1, len(sent) + 1))
    # the limits work again, and a fresh login succeeds
    assert (await asyncio.to_thread(bob.login, api))["token"]
    print(f"\n[faults] Redis restart: {len(sent)} of {len(sent)} delivered; bob's socket closes seen: {bob_rx.close_codes}")
    await bob_rx.stop()
    await alice_rx.stop()


@pytest.fixture
def proxied_server():
    """A live server whose PostgreSQL connections go through a proxy the test can cut."""
    real_url = fresh_database_url()
    parts = urlsplit(real_url)
    proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    proxied_netloc = (netloc[0] + "@" if len(netloc) == 2 else "") + f"127.0.0.1:{proxy.port}"
    server = LiveServer(database_url=urlunsplit((parts.scheme, proxied_netloc, parts.path, parts.query, parts.fragment)))
    server.migrate()
    server.start()
    yield server, proxy, real_url
    server.stop()
    proxy.close()
    drop_database(real_url)


@needs_production
def test_postgres_outage_answers_503_writes_nothing_half_and_recovers(proxied_server):
    """PostgreSQL becomes unreachable (every connection cut, new ones refused) for a few seconds
    while alice streams envelopes: requests get 503 in the error shape, no message is stored
    without all its deliveries, a send refused with 503 was not stored, and the service resumes
    without a restart."""
    import psycopg

    server, proxy, real_url = proxied_server
    api, alice, bob, chat = pair(server)
    path = f"/api/v1/conversations/{chat}/messages"
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            body = envelope("bob", "x")
            try:
                status, _ = api.post(path, body, token=alice.token)
            except OSError:
                status = 0
            results.append((status, body["client_message_id"]))

    sender = threading.Thread(target=stream)
    sender.start()
    time.sleep(1.0)
    proxy.cut()
    cut_at = time.monotonic()
    time.sleep(0.5)
    refused = envelope("bob", "refused")
    status, body = api.post(path, refused, token=alice.token)
    assert status == 503 and is_error_shape(body, "unavailable"), (status, body)
    status, body = api.get("/api/v1/conversations", token=alice.token)
    assert status == 503 and is_error_shape(body, "unavailable"), (status, body)
    time.sleep(max(0.0, 3 - (time.monotonic() - cut_at)))
    proxy.restore()
    restored_at = time.monotonic()
    while api.get("/api/v1/conversations", token=alice.token)[0] != 200:
        assert time.monotonic() - restored_at < 15, "the service did not resume by itself"
        time.sleep(0.1)
    recovered = time.monotonic() - restored_at
    time.sleep(1.0)
    stop.set()
    sender.join(30)
    codes = {status for status, _ in results}
    assert codes <= {201, 503}, codes
    assert 503 in codes and 201 in codes
    with psycopg.connect(real_url) as conn:
        rows = conn.execute(
            "SELECT m.client_message_id::text, count(d.id) FROM messaging_message m "
            "LEFT JOIN messaging_delivery d ON d.message_id = m.id GROUP BY m.id"
        ).fetchall()
    stored = {cid: n for cid, n in rows}
    assert set(stored.values()) == {1}, "a message without its delivery (half-written)"
    assert {cid for status, cid in results if status == 201} <= set(stored)
    assert refused["client_message_id"] not in stored
    # the refused send, retried after the outage, is stored now (201, not a replay)
    assert api.post(path, refused, token=alice.token)[0] == 201
    print(
        f"\n[faults] PostgreSQL cut 3 s: {sum(1 for s, _ in results if s == 503)} requests answered 503, "
        f"{len(stored)} messages stored whole, service back {recovered:.2f}s after the path returned"
    )


_SILENT_CLIENT = """
import asyncio, sys, websockets
async def main():
    ws = await websockets.connect(sys.argv[1] + "/api/v1/ws", additional_headers={"Authorization": "Token " + sys.argv[2]}, ping_interval=None)
    print("ready", flush=True)
    async for _ in ws:
        pass
asyncio.run(main())
"""


async def test_client_that_vanishes_is_offline_within_the_ping_bound(live_server_factory):
    """bob's client process freezes (SIGSTOP: no FIN, no pong, like a dropped network): daphne's
    keepalive drops the socket and alice sees bob offline within ping interval + timeout (the
    defaults, 20 + 30 s, are the 60 s promise; this test shortens them to 2 + 3 s)."""
    interval, timeout = 2, 3
    server = await asyncio.to_thread(
        live_server_factory, {"ENIGMO_WS_PING_INTERVAL": str(interval), "ENIGMO_WS_PING_TIMEOUT": str(timeout)}
    )
    api, alice, bob, chat = await asyncio.to_thread(pair, server)
    alice_rx = Receiver(server.ws_url, alice.token).start()
    await asyncio.wait_for(alice_rx.ready.wait(), 10)
    client = subprocess.Popen([sys.executable, "-c", _SILENT_CLIENT, server.ws_url, bob.token], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert client.stdout is not None and (await asyncio.to_thread(client.stdout.readline)).strip() == b"ready"
        presence = lambda online: [f for f in alice_rx.other if f["type"] == "presence" and f["user_id"] == "bob" and f["online"] is online]  # noqa: E731
        assert await wait_for(lambda: presence(True), 10)
        client.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        assert await wait_for(lambda: presence(False), interval + timeout + 10), "bob never went offline"
        took = time.monotonic() - frozen
        status, detail = await asyncio.to_thread(api.get, f"/api/v1/conversations/{chat}", token=alice.token)
        assert {p["user_id"]: p["online"] for p in detail["participants"]}["bob"] is False
    finally:
        client.kill()
        client.wait(10)
    await alice_rx.stop()
    assert took <= interval + timeout + 3
    print(f"\n[faults] frozen client offline after {took:.1f}s (ping {interval}+{timeout}s; defaults 20+30 s ≤ 60 s)")


async def test_server_closing_old_sockets_loses_nothing(live_server_factory):
    """daphne closes every socket older than WS_MAX_AGE_SECONDS (24 h in production, 3 s here)
    while alice streams: bob's client reconnects each time and gets every envelope, in order."""
    server = await asyncio.to_thread(live_server_factory, {"ENIGMO_WS_MAX_AGE": "3"})
    api, alice, bob, chat = await asyncio.to_thread(pair, server)
    receiver = Receiver(server.ws_url, bob.token).start()
    await asyncio.wait_for(receiver.ready.wait(), 10)
    total, answered = 240, []

    def stream() -> None:
        for i in range(total):
            answered.append(post_until_answered(api, f"/api/v1/conversations/{chat}/messages", envelope("bob", f"m{i}"), alice.token)[1])
            time.sleep(0.03)

    await asyncio.to_thread(stream)
    assert await wait_for(lambda: len(receiver.unique_ids) >= total, 30), f"got {len(receiver.unique_ids)} of {total}"
    server_closes = [c for c in receiver.close_codes if c == 1000]
    await receiver.stop()
    assert receiver.unique_ids == {a["id"] for a in answered}
    assert first_arrival_seqs(receiver.arrivals) == list(range(1, total + 1))
    assert len(server_closes) >= 2, receiver.close_codes
    print(f"\n[faults] {len(server_closes)} server-side closes during the stream; {total} of {total} delivered in order")
