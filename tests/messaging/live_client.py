"""A small asyncio client of the relay over real sockets (the `websockets` library), shared by
the live-server tests and bench/relay_bench.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets


async def ws_connect(ws_url: str, token: str, query: str = "") -> Any:
    return await websockets.connect(
        ws_url + "/api/v1/ws" + (f"?{query}" if query else ""), additional_headers={"Authorization": f"Token {token}"},
        max_size=2**21, open_timeout=30, ping_interval=None,
    )


@dataclass
class Receiver:
    """Keeps one device connected (reconnecting after failures), acks every envelope and
    records what arrived: envelope ids in arrival order and the time each first arrived."""

    ws_url: str
    token: str
    ack: bool = True
    reconnect: bool = True
    on_envelope: Callable[[dict[str, Any]], None] | None = None
    arrivals: list[dict[str, Any]] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)
    other: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ws: Any = None
    task: asyncio.Task[None] | None = None

    def start(self) -> Receiver:
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self) -> None:
        while True:
            try:
                self.ws = await ws_connect(self.ws_url, self.token)
                async for raw in self.ws:
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "envelope":
                        now = time.perf_counter()
                        self.arrivals.append(frame)
                        self.first_seen.setdefault(frame["id"], now)
                        if self.on_envelope:
                            self.on_envelope(frame)
                        if self.ack:
                            await self.ws.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
                    elif kind == "backlog":
                        if not frame["has_more"]:
                            self.ready.set()
                    else:
                        self.other.append(frame)
                self.close_codes.append(self.ws.close_code)
            except (OSError, websockets.ConnectionClosed, websockets.InvalidStatus, asyncio.TimeoutError) as exc:
                self.close_codes.append(getattr(getattr(exc, "rcvd", None), "code", None))
            if not self.reconnect:
                return
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self.reconnect = False
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    @property
    def unique_ids(self) -> set[str]:
        return set(self.first_seen)


async def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()
