"""A bounded soak of the relay on loopback: N authenticated sockets (half senders, half
receivers, one direct conversation per pair) held for a while as M envelopes per second flow.
Prints unexpected closes, lost envelopes, p50/p95/p99 relay latency (send → arrival at the
recipient), and the server's RSS after warm-up and at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/1 \\
      .venv/bin/python bench/soak.py --sockets 1000 --minutes 5 --rate 50

tests/reliability/test_soak_short.py runs a short version (200 sockets, 20 s) through run_soak().
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402

from tests.live import LiveServer, drop_database, start_live_server  # noqa: E402
from tests.messaging.live_client import ws_connect  # noqa: E402
from tests.messaging.seed_pairs import seed  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Stats:
    stopping: bool = False
    unexpected_closes: list[Any] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)  # ref → perf_counter at send
    answered: dict[str, str] = field(default_factory=dict)  # ref → message id
    arrived: dict[str, float] = field(default_factory=dict)  # message id → first arrival
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Socket:
    """One device's socket: acks every envelope, records arrivals and `sent` answers, and
    reconnects (counting the close as unexpected) unless the soak is stopping."""

    ws_url: str
    token: str
    stats: Stats
    ws: Any = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> Socket:
        self.task = asyncio.create_task(self.run())
        return self

    async def run(self) -> None:
        while not self.stats.stopping:
            try:
                self.ws = await ws_connect(self.ws_url, self.token)
                async for raw in self.ws:
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "envelope":
                        self.stats.arrived.setdefault(frame["id"], time.perf_counter())
                        await self.ws.send(json.dumps({"type": "ack", "ids": [frame["id"]]}))
                    elif kind == "sent":
                        self.stats.answered[frame["ref"]] = frame["id"]
                    elif kind == "backlog" and not frame["has_more"]:
                        self.ready.set()
                    elif kind == "error":
                        self.stats.errors.append(frame)
                code = self.ws.close_code
            except (OSError, websockets.ConnectionClosed, websockets.InvalidStatus, asyncio.TimeoutError) as exc:
                code = getattr(getattr(exc, "rcvd", None), "code", None) or type(exc).__name__
            if self.stats.stopping:
                return
            self.stats.unexpected_closes.append(code)
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 5)
            except (asyncio.TimeoutError, Exception):
                self.task.cancel()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_soak(
    *, sockets: int = 1000, seconds: float = 300, rate: float = 50, warmup: float = 30, server: LiveServer | None = None, log: Any = print
) -> dict[str, Any]:
    """Run the soak against `server` (default: a fresh live server of the active profile)."""
    own = server is None
    if server is None:
        server = await asyncio.to_thread(start_live_server, {"ENIGMO_LOG_LEVEL": "WARNING"})
    assert server.process is not None
    pid = server.process.pid
    stats = Stats()
    socks: list[Socket] = []
    try:
        pairs = await asyncio.to_thread(seed, server.database_url, sockets // 2, "soak" + secrets.token_hex(3), server.env)
        started = time.monotonic()
        receivers = [Socket(server.ws_url, rx, stats) for _, rx, _, _, _ in pairs]
        senders = [Socket(server.ws_url, tx, stats) for tx, _, _, _, _ in pairs]
        socks = receivers + senders
        for start in range(0, len(socks), 100):
            batch = [s.start() for s in socks[start : start + 100]]
            await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in batch)), 120)
        log(f"[soak] {len(socks)} sockets connected in {time.monotonic() - started:.1f}s; RSS {rss_mib(pid):.0f} MiB")
        body = base64.b64encode(b"\x00" * 300).decode()
        traffic_start = time.perf_counter()
        next_at = traffic_start
        rss_warm: float | None = None
        sent = 0
        while (now := time.perf_counter()) - traffic_start < seconds:
            if rss_warm is None and now - traffic_start >= warmup:
                rss_warm = rss_mib(pid)
                log(f"[soak] warm-up done after {warmup:.0f}s: RSS {rss_warm:.1f} MiB, {sent} sent, {len(stats.unexpected_closes)} unexpected closes")
            i = random.randrange(len(pairs))
            sender, (_, _, chat, _, to) = senders[i], pairs[i]
            ref = uuid.uuid4().hex
            frame = {"type": "send", "ref": ref, "conversation_id": chat, "client_message_id": str(uuid.uuid4()),
                     "recipients": [{"user_id": to, "device_id": 1, "ciphertext": body}]}
            try:
                stats.sent_at[ref] = time.perf_counter()
                await sender.ws.send(json.dumps(frame))
                sent += 1
            except (websockets.ConnectionClosed, AttributeError):
                stats.sent_at.pop(ref, None)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        elapsed = time.perf_counter() - traffic_start
        drain_deadline = time.monotonic() + 20
        while time.monotonic() < drain_deadline:
            if len(stats.answered) >= len(stats.sent_at) and all(mid in stats.arrived for mid in stats.answered.values()):
                break
            await asyncio.sleep(0.1)
        rss_end = rss_mib(pid)
        if rss_warm is None:
            rss_warm = rss_end
        latencies = [stats.arrived[mid] - stats.sent_at[ref] for ref, mid in stats.answered.items() if mid in stats.arrived]
        lost = sum(1 for mid in stats.answered.values() if mid not in stats.arrived)
        result = {
            "sockets": len(socks),
            "seconds": round(elapsed, 1),
            "sent": sent,
            "rate_per_s": round(sent / elapsed, 1),
            "answered": len(stats.answered),
            "unanswered": len(stats.sent_at) - len(stats.answered),
            "delivered": len(latencies),
            "lost": lost,
            "unexpected_closes": len(stats.unexpected_closes),
            "close_codes": sorted({str(c) for c in stats.unexpected_closes}),
            "errors": len(stats.errors),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else 0.0,
            "rss_warm_mib": round(rss_warm, 1),
            "rss_end_mib": round(rss_end, 1),
            "rss_growth_pct": round((rss_end - rss_warm) / rss_warm * 100, 1),
            "profile": "production" if os.environ.get("REDIS_URL") else "embedded",
        }
        log("[soak] " + json.dumps(result))
        return result
    finally:
        stats.stopping = True
        await asyncio.gather(*(s.stop() for s in socks), return_exceptions=True)
        if own:
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(drop_database, server.database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate", type=float, default=50, help="envelopes per second, all senders together")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of traffic before the first RSS reading")
    args = parser.parse_args()
    if not (os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres")):
        print("[soak] note: not the production profile (set DATABASE_URL=postgres://… and REDIS_URL)", file=sys.stderr)
    result = asyncio.run(run_soak(sockets=args.sockets, seconds=args.minutes * 60, rate=args.rate, warmup=args.warmup))
    ok = result["unexpected_closes"] == 0 and result["lost"] == 0 and result["p95_ms"] < 250 and result["rss_growth_pct"] < 10
    print(f"[soak] {'PASS' if ok else 'FAIL'}: closes {result['unexpected_closes']}, lost {result['lost']}, "
          f"p95 {result['p95_ms']} ms, RSS {result['rss_warm_mib']} → {result['rss_end_mib']} MiB ({result['rss_growth_pct']:+.1f} %)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
