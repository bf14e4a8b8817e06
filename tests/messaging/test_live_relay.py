"""The relay over real sockets against real daphne processes: restart, SIGKILL, two processes
sharing PostgreSQL and Redis, and 1,000 concurrent connections without a lost envelope."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

from tests.messaging.helpers import open_direct
from tests.messaging.live_client import Receiver, wait_for, ws_connect
from tests.messaging.seed_pairs import seed
from tests.reliability.common import cast, envelope, post_until_answered
from tests.support import HttpTransport

pytestmark = pytest.mark.live
needs_shared_layer = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the embedded profile has no shared channel layer")


def redis_sockets_of(pid: int, port: int = 6379) -> int:
    """TCP connections the process `pid` holds to a Redis on `port` (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


def test_idempotency_survives_a_restart_and_a_sigkill(live_server_factory):
    server = live_server_factory()
    api = HttpTransport(server.http_url)
    alice, bob = cast(api, "alice", "bob")
    chat = open_direct(api, alice, bob)
    body = envelope("bob", "once")
    status, first = api.post(f"/api/v1/conversations/{chat}/messages", body, token=alice.token)
    assert status == 201
    server.restart()
    assert api.post(f"/api/v1/conversations/{chat}/messages", body, token=alice.token) == (200, first)
    server.kill()
    server.start()
    assert api.post(f"/api/v1/conversations/{chat}/messages", body, token=alice.token) == (200, first)
    status, page = api.get(f"/api/v1/conversations/{chat}/messages", token=bob.token)
    assert [m["id"] for m in page["messages"]] == [first["id"]]


async def test_sigkill_mid_stream_loses_nothing(live_server_factory):
    """alice streams 150 envelopes while bob is connected; the server is SIGKILLed mid-stream and
    restarted; every answered envelope reaches bob, in order, none lost."""
    server = await asyncio.to_thread(live_server_factory)
    api = HttpTransport(server.http_url)
    alice, bob = await asyncio.to_thread(cast, api, "alice", "bob")
    chat = await asyncio.to_thread(open_direct, api, alice, bob)
    receiver = Receiver(server.ws_url, bob.token).start()
    await asyncio.wait_for(receiver.ready.wait(), 10)
    answered: list[dict] = []
    total = 150

    def stream() -> None:
        for i in range(total):
            answered.append(post_until_answered(api, f"/api/v1/conversations/{chat}/messages", envelope("bob", f"m{i}"), alice.token)[1])

    sender = threading.Thread(target=stream)
    sender.start()
    assert await wait_for(lambda: len(answered) >= 50, 30)
    await asyncio.to_thread(server.kill)
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(sender.join, 90)
    assert len(answered) == total and len({a["id"] for a in answered}) == total
    expected = {a["id"] for a in answered}
    assert await wait_for(lambda: expected <= receiver.unique_ids, 30), f"missing {len(expected - receiver.unique_ids)}"
    await receiver.stop()
    first_arrival_order = []
    for frame in receiver.arrivals:
        if frame["seq"] not in first_arrival_order:
            first_arrival_order.append(frame["seq"])
    assert first_arrival_order == sorted(first_arrival_order) == list(range(1, total + 1))


@needs_shared_layer
async def test_two_processes_share_delivery_and_presence(live_server_factory):
    """alice on process A, bob on process B (same PostgreSQL and Redis): envelopes and presence cross."""
    a = await asyncio.to_thread(live_server_factory)
    b = await asyncio.to_thread(live_server_factory, None, a.database_url)
    api_a, api_b = HttpTransport(a.http_url), HttpTransport(b.http_url)
    alice, bob = await asyncio.to_thread(cast, api_a, "alice", "bob")
    chat = await asyncio.to_thread(open_direct, api_a, alice, bob)
    alice_rx = Receiver(a.ws_url, alice.token).start()
    await asyncio.wait_for(alice_rx.ready.wait(), 10)
    bob_rx = Receiver(b.ws_url, bob.token).start()
    await asyncio.wait_for(bob_rx.ready.wait(), 10)
    assert await wait_for(lambda: any(f["type"] == "presence" and f["user_id"] == "bob" and f["online"] for f in alice_rx.other), 5)
    status, sent = await asyncio.to_thread(api_a.post, f"/api/v1/conversations/{chat}/messages", envelope("bob", "across"), token=alice.token)
    assert status == 201
    assert await wait_for(lambda: sent["id"] in bob_rx.unique_ids, 5)
    # and back, over the socket on B to alice on A
    ws = await ws_connect(b.ws_url, bob.token)  # replaces bob's receiver socket (4409), then sends
    frame = {"type": "send", "ref": "x", "conversation_id": chat, **envelope("alice", "back")}
    await ws.send(json.dumps(frame))
    while (reply := json.loads(await ws.recv()))["type"] != "sent":
        pass
    assert await wait_for(lambda: reply["id"] in alice_rx.unique_ids, 5)
    for api in (api_a, api_b):
        status, detail = await asyncio.to_thread(api.get, f"/api/v1/conversations/{chat}", token=alice.token)
        assert {p["user_id"]: p["online"] for p in detail["participants"]} == {"alice": True, "bob": True}
    await ws.close()
    await alice_rx.stop()
    await bob_rx.stop()


def _publishes() -> int:
    """PUBLISH commands Redis has run so far (every database: pub/sub is server-wide)."""
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        return int(client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))
    finally:
        client.close()


def _receipts_for(rx: Receiver, message_ids: set[str]) -> set[str]:
    return {f["message_id"] for f in rx.other if f.get("type") == "receipt" and f.get("status") == "delivered"} & message_ids


@needs_shared_layer
async def test_a_lone_process_publishes_nothing_and_a_second_one_is_heard_at_once(live_server_factory):
    """One process alone: envelopes, acks and the receipts they raise never reach Redis's
    PUBLISH (each would come back only to that process). A second process joins: the first
    hears it announce itself, so a receipt raised on the first for a socket on the second
    crosses straight away, not after the next count of subscribers."""
    a = await asyncio.to_thread(live_server_factory)
    api = HttpTransport(a.http_url)
    alice, bob = await asyncio.to_thread(cast, api, "alice", "bob")
    chat = await asyncio.to_thread(open_direct, api, alice, bob)
    alice_rx, bob_rx = Receiver(a.ws_url, alice.token).start(), Receiver(a.ws_url, bob.token).start()
    await asyncio.wait_for(asyncio.gather(alice_rx.ready.wait(), bob_rx.ready.wait()), 10)
    await asyncio.sleep(3)  # A has counted itself alone (it counts every PEER_CHECK_SECONDS, 1 s)
    before = await asyncio.to_thread(_publishes)
    alone = set()
    for n in range(20):
        status, sent = await asyncio.to_thread(api.post, f"/api/v1/conversations/{chat}/messages", envelope("bob", f"alone {n}"), token=alice.token)
        assert status == 201
        alone.add(sent["id"])
    assert await wait_for(lambda: alone <= bob_rx.unique_ids and _receipts_for(alice_rx, alone) == alone, 10)
    assert await asyncio.to_thread(_publishes) == before, "a lone process published to Redis"

    b = await asyncio.to_thread(live_server_factory, None, a.database_url)
    await alice_rx.stop()
    alice_on_b = Receiver(b.ws_url, alice.token).start()  # B's first socket: B subscribes and announces itself
    await asyncio.wait_for(alice_on_b.ready.wait(), 10)
    status, sent = await asyncio.to_thread(HttpTransport(b.http_url).post, f"/api/v1/conversations/{chat}/messages", envelope("bob", "across"), token=alice.token)
    assert status == 201
    # bob, on A, acks it; A raises the receipt and must publish it for alice's socket on B
    assert await wait_for(lambda: _receipts_for(alice_on_b, {sent["id"]}) == {sent["id"]}, 5)
    await alice_on_b.stop()
    await bob_rx.stop()


@needs_shared_layer
async def test_a_thousand_connections_lose_nothing(live_server_factory):
    """500 pairs (1,000 sockets) on one process in the production profile; every sender sends
    three 300-byte envelopes over its socket; every one arrives."""
    pairs, per_sender = int(os.environ.get("ENIGMO_LOAD_PAIRS", 500)), int(os.environ.get("ENIGMO_LOAD_PER_SENDER", 2))
    server = await asyncio.to_thread(live_server_factory, {"ENIGMO_LOG_LEVEL": "WARNING"})
    started = time.monotonic()

    cast = await asyncio.to_thread(seed, server.database_url, pairs, "load")
    print(f"setup {time.monotonic() - started:.1f}s")
    receivers = [Receiver(server.ws_url, rx_token) for _, rx_token, _, _, _ in cast]
    for start in range(0, pairs, 100):
        batch = receivers[start : start + 100]
        for rx in batch:
            rx.start()
        await asyncio.wait_for(asyncio.gather(*(rx.ready.wait() for rx in batch)), 60)
    senders = []
    for start in range(0, pairs, 100):
        senders += await asyncio.gather(*(ws_connect(server.ws_url, tx_token) for tx_token, _, _, _, _ in cast[start : start + 100]))
    sent_ids: set[str] = set()
    print(f"connected {time.monotonic() - started:.1f}s")
    # Redis connections are per process, not per socket (a socket's own cache client once
    # opened one Redis connection per WebSocket: 1,000 sockets, 1,000 connections).
    redis_sockets = redis_sockets_of(server.process.pid)
    assert 0 < redis_sockets < 150, f"{redis_sockets} Redis connections for {2 * pairs} WebSockets"

    async def send_all(ws, chat: str, to: str) -> None:
        for n in range(per_sender):
            body = {"type": "send", "ref": n, "conversation_id": chat, **envelope(to, "x" * 300)}
            await ws.send(json.dumps(body))
        got = 0
        while got < per_sender:
            frame = json.loads(await ws.recv())
            if frame["type"] == "sent":
                sent_ids.add(frame["id"])
                got += 1
            elif frame["type"] == "error":
                raise AssertionError(frame)

    await asyncio.wait_for(asyncio.gather(*(send_all(ws, chat, to) for ws, (_, _, chat, _, to) in zip(senders, cast, strict=True))), 60)
    received = lambda: set().union(*(rx.unique_ids for rx in receivers))  # noqa: E731
    assert await wait_for(lambda: len(received()) >= len(sent_ids), 30)
    print(f"done {time.monotonic() - started:.1f}s")
    assert len(sent_ids) == pairs * per_sender
    assert received() == sent_ids, f"lost {len(sent_ids - received())}"
    assert not [c for rx in receivers for c in rx.close_codes if c == 1011]
    for ws in senders:
        await ws.close()
    await asyncio.gather(*(rx.stop() for rx in receivers))
    assert time.monotonic() - started < 120

