"""A hypothesis fuzzer for relay WebSocket frames on a live server: random JSON, wrong types,
huge numbers, unicode and binary frames. Every frame is answered with the error shape or a
clean close; the worker never crashes and another connection notices nothing."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.common import p95, pinger
from tests.support import Account, HttpTransport

FRAME_TYPES = ["send", "ack", "typing", "read", "mark_read", "call", "ping", "sync", "nope", "", None, 5]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
frames = st.one_of(
    st.builds(
        lambda t, body: {"type": t, **body},
        st.sampled_from(FRAME_TYPES),
        st.dictionaries(
            st.sampled_from(["ref", "conversation_id", "client_message_id", "recipients", "ids", "message_id", "seq", "state", "to", "payload", "action", "kind"]),
            json_values,
            max_size=6,
        ),
    ).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)


@pytest.mark.live
def test_random_frames_get_errors_or_clean_closes(live_server_factory):
    server = live_server_factory()
    api = HttpTransport(server.http_url)
    alice, bob = Account("alice"), Account("bob")
    for account in (alice, bob):
        account.register(api)
    url = server.ws_url + "/api/v1/ws"
    outcomes = {"error": 0, "closed": 0, "other": 0}

    async def send_one(frame: str | bytes) -> None:
        async with websockets.connect(url, additional_headers={"Authorization": f"Token {alice.token}"}) as ws:
            await ws.send(frame)
            await ws.send(json.dumps({"type": "ping", "ref": "after"}))
            try:
                while True:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=5))
                    if reply.get("type") == "error":
                        assert set(reply["error"]) >= {"code", "message"}
                        outcomes["error"] += 1
                    if reply.get("type") == "pong" and reply.get("ref") == "after":
                        return
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code in (1000, 1003, 1007, 1008, 1009, 4400), closed
                outcomes["closed"] += 1

    bystander = Bystander(server.ws_url, bob.token)
    bystander.start()
    assert bystander.ready.wait(30)
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(frames)
    def fuzz(frame: str | bytes) -> None:
        asyncio.run(send_one(frame))

    started = time.monotonic()
    fuzz()
    took = time.monotonic() - started
    bystander.finish()
    status, health = api.get("/api/health")
    assert status == 200 and server.process.poll() is None
    print(f"ws fuzz outcomes: {outcomes}; bob's socket, open throughout: {len(bystander.rtts)} pings in {took:.1f} s, "
          f"p95 {p95(bystander.rtts) * 1000:.1f} ms, max {max(bystander.rtts) * 1000:.1f} ms")
    assert outcomes["error"] + outcomes["closed"] > 50
    # bob, connected for the whole fuzz, noticed nothing: never closed, answered all along
    assert bystander.closes == [], bystander.closes
    assert len(bystander.rtts) >= took / 0.5, "bob's pings stopped being answered during the fuzz"
    assert max(bystander.rtts) < 5.0


class Bystander(threading.Thread):
    """bob, on his own event loop in a thread, pinging every 100 ms while the fuzz runs."""

    def __init__(self, ws_url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.ws_url, self.token = ws_url, token
        self.rtts: list[float] = []
        self.closes: list[object] = []
        self.ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        await pinger(self.ws_url, self.token, self.rtts, self.stop, self.closes, 0.1)

    def finish(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.join(30)
