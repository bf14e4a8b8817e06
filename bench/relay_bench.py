#!/usr/bin/env python3
"""relay_bench: Enigmo's relay under load, measured end to end, next to the raw relay (not a test).

Every configuration starts real daphne processes (tests/live.py: a fresh database of the active
profile; DATABASE_URL=postgres://… and REDIS_URL=redis://… select the production profile),
seeds devices and conversations straight into the database, opens authenticated WebSockets
(the `websockets` library) and waits until every socket has drained its queue. Receivers
acknowledge every envelope, so each one is validated, durably stored, delivered and acked.

Configurations (each repeated --repeat times; the table shows medians):
  closed-N   N connections as N/2 sender→receiver pairs, --messages per sender, --window in
             flight per sender; with --limit the raw relay (../shared/bench/relay_limit.py driven
             by wsload.py, same shape) runs in the same repetition and gives the ratio
  open-R     open loop: R msg/s offered on a schedule (latency from the scheduled send time,
             so no coordinated omission) for --open-seconds
  idle-N     N authenticated idle connections: server RSS growth per connection
  backlog-N  one device offline while N envelopes are stored, then reconnects: time to all
  group-N    one sender, an N-device group: fan-out latency (send → last of N devices)
  two-proc-N N connections, senders on process B, receivers on process A (one Redis, one DB)

Prints a table (msg/s, ratio to raw, p50/p99, CPU µs per message, RSS KB per connection,
lost) and writes the same figures as JSON (--json).

    .venv/bin/python bench/relay_bench.py --pin --limit --closed 100,1000 --open 1000 \
        --idle 5000 --backlog 10000 --group 100 --two-proc 1000 --repeat 3 --json docs/performance.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enigmo.settings")

from tests.live import LiveServer, drop_database, start_live_server  # noqa: E402
from tests.messaging.live_client import ws_connect  # noqa: E402
from tests.messaging.seed_pairs import seed  # noqa: E402

SHARED_BENCH = ROOT.parent / "shared" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Rate limits and the per-socket flood guard off: the load is the point (the backlog filler
# sends 10,000 frames on one socket, far above a person's 200 frames/s).
SERVER_ENV = {"ENIGMO_LOG_LEVEL": "WARNING", "ENIGMO_RATE_LIMITS": "0", "ENIGMO_WS_FRAME_RATE": "1000000/0.000001"}
BATCH_QUERY = ["batch=1"]  # the driver reads batch frames, as Enigmo's own clients do (--no-batch: one frame each)
GO_BUILD_ENV = {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": "/tmp/gocache"}
GO_DRIVER = ROOT / "var" / "enigmo-load"  # built from bench/enigmo-load
GO_LIMIT_DRIVER = ROOT / "var" / "wsload-go"  # built from ../shared/bench/wsload-go


def build_go_drivers() -> str | None:
    """Build the compiled drivers (Enigmo's and the raw relay's) → None, or why they cannot be."""
    sources = [(ROOT / "bench" / "enigmo-load", GO_DRIVER), (SHARED_BENCH / "wsload-go", GO_LIMIT_DRIVER)]
    for source, target in sources:
        if not source.is_dir():
            return f"{source} not found"
        target.parent.mkdir(exist_ok=True)
        try:
            built = subprocess.run(["go", "build", "-o", str(target), "."], cwd=source, env={**os.environ, **GO_BUILD_ENV}, capture_output=True, text=True, timeout=300)
        except FileNotFoundError:
            return "no Go toolchain (apt-get install golang-go golang-github-gorilla-websocket-dev)"
        if built.returncode:
            return f"go build {source.name} failed: {built.stderr.strip()[-500:]}"
    return None


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process on this machine, by pid (its backends and its
    writers): the database shares the two cores with the server and the driver."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat[stat.index("(") + 1 : stat.rindex(")")].startswith("postgres"):
                out[int(entry.name)] = proc_cpu_seconds(int(entry.name))
    return out


def postgres_cpu_since(before: dict[int, float], database_url: str) -> float | None:
    """What PostgreSQL used since `before` (processes that exited meanwhile are not counted:
    measured while the servers still hold their connections); None on SQLite."""
    if not database_url.startswith(("postgres://", "postgresql://")):
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in postgres_cpu().items())


def own_cpu_seconds() -> float:
    """This driver's CPU: near 100 % of its core, the driver and not the server is the limit."""
    usage = os.times()
    return usage.user + usage.system


def core_jiffies() -> list[tuple[int, int]]:
    """(busy, total) clock ticks of each core since boot, from /proc/stat (idle and iowait are
    not busy; the kernel's work for the sockets, softirq, is)."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            ticks = [int(x) for x in line.split()[1:9]]
            total = sum(ticks)
            out.append((total - ticks[3] - ticks[4], total))
    return out


def cores_busy_since(before: list[tuple[int, int]]) -> list[float]:
    """Each core's busy share (%) since `before`."""
    return [100 * (b - b0) / max(t - t0, 1) for (b, t), (b0, t0) in zip(core_jiffies(), before, strict=True)]


def redis_cpu() -> float:
    """CPU seconds of the Redis server(s) on this machine."""
    found = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout.split()
    total = 0.0
    for pid in found:
        try:
            total += proc_cpu_seconds(int(pid))
        except OSError:
            continue
    return total


class CpuUsage:
    """CPU used from construction to stop(): the servers' and PostgreSQL's seconds, and the share
    of a core used by the servers, this driver, PostgreSQL and Redis, with each core's busy share."""

    def __init__(self, servers: Servers, driver_pid: int | None = None) -> None:
        self.servers, self.driver_pid = servers, driver_pid
        self.server0, self.pg0, self.own0 = servers.cpu(), postgres_cpu(), self.driver_cpu()
        self.cores0, self.redis0, self.t0 = core_jiffies(), redis_cpu(), time.perf_counter()

    def stop(self) -> tuple[float, float | None, dict[str, float | None]]:
        """→ (server seconds, PostgreSQL seconds or None on SQLite, the JSON's shares in %)."""
        server = self.servers.cpu() - self.server0
        pg = postgres_cpu_since(self.pg0, self.servers.list[0].database_url)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        shares = {
            "driver_cpu_pct": 100 * (self.driver_cpu() - self.own0) / elapsed,
            "server_cpu_pct": 100 * server / elapsed,
            "pg_cpu_pct": 100 * pg / elapsed if pg is not None else None,
            "redis_cpu_pct": 100 * (redis_cpu() - self.redis0) / elapsed,
            **{f"core{i}_busy_pct": busy for i, busy in enumerate(cores_busy_since(self.cores0))},
        }
        return server, pg, shares

    def driver_cpu(self) -> float:
        """This process's CPU, and the compiled driver's when one runs the load."""
        return own_cpu_seconds() + (proc_cpu_seconds(self.driver_pid) if self.driver_pid else 0.0)


def proc_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def stamp(at: float, size: int) -> str:
    """An opaque 'ciphertext' whose first 8 bytes carry a send time (for latency)."""
    return base64.b64encode(struct.pack("!d", at) + b"\x00" * (size - 8)).decode()


def stamp_of(frame: dict[str, Any]) -> float:
    return struct.unpack("!d", base64.b64decode(frame["ciphertext"][:12])[:8])[0]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def service_threads() -> list[int]:
    """Every thread of PostgreSQL (postmaster and backends) and Redis on this machine."""
    found = subprocess.run(["pgrep", "-x", "postgres|redis-server"], capture_output=True, text=True).stdout.split()
    return [int(task.name) for pid in found for task in Path(f"/proc/{pid}/task").glob("*") if task.name.isdigit()]


def pin_services(cores: set[int]) -> dict[int, set[int]]:
    """PostgreSQL and Redis onto `cores` (backends PostgreSQL forks later inherit its
    postmaster's); → each moved thread's previous cores. Threads that cannot be moved (gone,
    not permitted) stay where they are."""
    before: dict[int, set[int]] = {}
    for tid in service_threads():
        try:
            was = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
            before[tid] = was
        except OSError:
            continue
    return before


def unpin_services(before: dict[int, set[int]]) -> None:
    """Back where they were; backends forked meanwhile get every core."""
    everywhere = set(range(os.cpu_count() or 1))
    for tid in service_threads():
        try:
            os.sched_setaffinity(tid, before.get(tid, everywhere))
        except OSError:
            continue


class Servers:
    """One or two daphne processes on one fresh database. With --pin: one server has core 0 to
    itself, the driver, PostgreSQL and Redis share core 1; two servers take a core each and
    PostgreSQL and Redis stay where the system puts them."""

    def __init__(self, args: argparse.Namespace, count: int = 1) -> None:
        self.args, self.count = args, count
        self.list: list[LiveServer] = []
        self.services: dict[int, set[int]] = {}

    def __enter__(self) -> Servers:
        first = start_live_server(SERVER_ENV)
        self.list.append(first)
        for _ in range(self.count - 1):
            self.list.append(start_live_server(SERVER_ENV, database_url=first.database_url))
        print(f"  server pids: {' '.join(str(s.process.pid) for s in self.list)}", flush=True)
        if self.args.pin:
            for i, server in enumerate(self.list):
                subprocess.run(["taskset", "-apc", str(i % 2), str(server.process.pid)], check=False, capture_output=True)
            os.sched_setaffinity(0, {1})
            if self.count == 1:
                self.services = pin_services({1})
                print(f"  PostgreSQL and Redis: {len(self.services)} threads on core 1", flush=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        for server in self.list:
            server.stop()
        drop_database(self.list[0].database_url)
        if self.args.pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
            if self.services:
                unpin_services(self.services)
                self.services = {}

    def cpu(self) -> float:
        return sum(proc_cpu_seconds(s.process.pid) for s in self.list)


def settle_database(url: str) -> None:
    """A CHECKPOINT before a measured phase: the previous configuration's writes (and the
    checkpoint its DROP DATABASE forces) are flushed now, not while this one is timed."""
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")


class Device:
    """One authenticated socket: acks every envelope, records first arrivals, knows when its
    queue is drained (first backlog frame with has_more false)."""

    def __init__(self, ws: Any, ack: bool = True) -> None:
        self.ws, self.ack = ws, ack
        self.ready = asyncio.Event()
        self.seen: dict[str, float] = {}
        self.latencies: list[float] = []
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(self.run())
        self.on_envelope: Any = None
        self.to_ack: list[str] = []

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                for frame in message["frames"] if message.get("type") == "batch" else (message,):
                    self.handle(frame)
        except Exception:
            pass

    def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "envelope":
            if frame["id"] not in self.seen:
                now = time.perf_counter()
                self.seen[frame["id"]] = now
                self.latencies.append(now - stamp_of(frame))
                if self.on_envelope:
                    self.on_envelope(frame, now)
            if self.ack:  # like a real client: one ack frame for what arrived in one read burst
                self.to_ack.append(frame["id"])
                if len(self.to_ack) == 1:
                    asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.flush_acks()))
        elif kind == "backlog":
            if not frame["has_more"]:
                self.ready.set()
        elif kind in ("sent", "error"):
            self.replies.put_nowait(frame)

    async def flush_acks(self) -> None:
        ids, self.to_ack = self.to_ack, []
        if ids:
            try:
                await self.ws.send(json.dumps({"type": "ack", "ids": ids}))
            except Exception:
                pass

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


async def connect_one(url: str, token: str) -> Any:
    for attempt in range(5):  # a handshake dropped under a connect storm is retried, as a client would
        try:
            return await ws_connect(url, token, BATCH_QUERY[0])
        except Exception:  # refused, reset, timed out or answered with an error status
            if attempt == 4:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))


async def connect(url: str, tokens: list[str], ack: bool = True) -> list[Device]:
    out: list[Device] = []
    for start in range(0, len(tokens), 100):
        sockets = await asyncio.gather(*(connect_one(url, t) for t in tokens[start : start + 100]))
        out += [Device(ws, ack) for ws in sockets]
    await asyncio.wait_for(asyncio.gather(*(d.ready.wait() for d in out)), 120)
    return out


def send_frame(chat: str, to: str, at: float, size: int, device_id: int = 1) -> str:
    return json.dumps(
        {
            "type": "send",
            "conversation_id": chat,
            "client_message_id": str(uuid.uuid4()),
            "recipients": [{"user_id": to, "device_id": device_id, "ciphertext": stamp(at, size)}],
        }
    )


def loop_figures(msgs_per_s: float, delivered: int, p50_ms: float, p99_ms: float, cpu: float, pg_cpu: float | None,
                 shares: dict[str, float | None], stored: int, lost: int, **more: Any) -> dict[str, Any]:
    """A closed or open loop's row, whichever driver ran it (CPU per envelope delivered)."""
    per = max(1, delivered)
    return {
        "msgs_per_s": msgs_per_s,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
        "cpu_us_per_msg": 1e6 * cpu / per,
        "pg_cpu_us_per_msg": 1e6 * pg_cpu / per if pg_cpu is not None else None,
        **more,
        **shares,
        "stored": stored,
        "delivered": delivered,
        "lost": lost,
    }


class GoDriver:
    """bench/enigmo-load driving one loop over the seeded pairs (closed: `messages` per sender;
    open: `total` envelopes at `rate` msg/s): started, it connects every socket and drains its
    queue; run() starts the measured phase and stops `usage` when it is over."""

    def __init__(self, args: argparse.Namespace, cast: list[list[str]], rx_url: str, tx_url: str, **shape: Any) -> None:
        self.config = {
            "rx_url": rx_url, "tx_url": tx_url, "query": BATCH_QUERY[0], "window": args.window, "size": args.size, "drain_seconds": args.drain_seconds,
            "pairs": [{"tx": tx, "rx": rx, "chat": chat, "to": to} for tx, rx, chat, _, to in cast], **shape,
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        path = Path(f"/tmp/enigmo-load-{os.getpid()}.json")
        path.write_text(json.dumps(self.config))
        self.process = await asyncio.create_subprocess_exec(  # inherits core 1 with --pin
            str(GO_DRIVER), "-config", str(path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env={**os.environ, "GOMAXPROCS": "1"}
        )
        await self.expect("ready", 300)
        return self.process.pid

    async def expect(self, word: str, timeout: float) -> str:
        assert self.process and self.process.stdout
        line = (await asyncio.wait_for(self.process.stdout.readline(), timeout)).decode()
        if not line.startswith(word):
            await self.process.wait()
            raise RuntimeError(f"enigmo-load: expected {word!r}, got {line!r} (exit {self.process.returncode})")
        return line

    async def say(self, word: str) -> None:
        assert self.process and self.process.stdin
        self.process.stdin.write(word.encode() + b"\n")
        await self.process.stdin.drain()

    async def run(self, usage: CpuUsage) -> tuple[dict[str, Any], tuple[float, float | None, dict[str, float | None]]]:
        """→ (the driver's result, usage.stop())."""
        assert self.process
        await self.say("go")
        await self.expect("done", 600)
        measured = usage.stop()
        await self.say("report")
        result = json.loads(await self.expect("{", 120))
        await self.process.wait()
        return result, measured


async def closed_loop_go(args: argparse.Namespace, conns: int, processes: int, on_start: Any, messages: int) -> dict[str, Any]:
    """closed_loop with the compiled driver."""
    with Servers(args, processes) as servers:
        base_rss = proc_kb(servers.list[0].process.pid, "VmRSS")
        cast = await asyncio.to_thread(seed, servers.list[0].database_url, conns // 2, uuid.uuid4().hex[:6])
        driver = GoDriver(args, cast, servers.list[0].ws_url, servers.list[-1].ws_url, messages=messages)
        driver_pid = await driver.start()
        print(f"  {conns} sockets connected and drained (enigmo-load)", flush=True)
        await asyncio.sleep(1)
        rss_per_conn = sum(proc_kb(s.process.pid, "VmRSS") for s in servers.list) - base_rss * processes
        await asyncio.to_thread(settle_database, servers.list[0].database_url)
        usage = CpuUsage(servers, driver_pid)
        if on_start:
            on_start([s.process.pid for s in servers.list])
        result, (cpu, pg_cpu, shares) = await driver.run(usage)
        peak_rss_kb = sum(proc_kb(s.process.pid, "VmHWM") for s in servers.list)
    n, wall = result["delivered"], result["duration_s"]
    if result["errors"]:
        print(f"  {result['errors']} sends answered with an error", file=sys.stderr)
    return loop_figures(n / wall if wall > 0 else 0.0, n, result["p50_ms"], result["p99_ms"], cpu, pg_cpu, shares, result["stored"], result["lost"],
                        rss_kb_per_conn=rss_per_conn / conns, peak_rss_mib=peak_rss_kb / 1024)


async def closed_loop(args: argparse.Namespace, conns: int, processes: int = 1, on_start: Any = None, messages: int | None = None) -> dict[str, Any]:
    """`on_start(server pids)` is called as the measured phase starts (the profiler's hook);
    `messages` overrides --messages per sender."""
    pairs = conns // 2
    messages = messages or args.messages
    if args.driver == "go":
        return await closed_loop_go(args, conns, processes, on_start, messages)
    with Servers(args, processes) as servers:
        base_rss = proc_kb(servers.list[0].process.pid, "VmRSS")
        cast = await asyncio.to_thread(seed, servers.list[0].database_url, pairs, uuid.uuid4().hex[:6])
        rx_url, tx_url = servers.list[0].ws_url, servers.list[-1].ws_url
        receivers = await connect(rx_url, [rx for _, rx, _, _, _ in cast])
        senders = await connect(tx_url, [tx for tx, _, _, _, _ in cast])
        print(f"  {conns} sockets connected and drained", flush=True)
        await asyncio.sleep(1)
        rss_per_conn = sum(proc_kb(s.process.pid, "VmRSS") for s in servers.list) - base_rss * processes
        stored: set[str] = set()
        expected = pairs * messages

        async def sender(device: Device, chat: str, to: str) -> None:
            in_flight, remaining = 0, messages
            while remaining or in_flight:
                while remaining and in_flight < args.window:
                    await device.ws.send(send_frame(chat, to, time.perf_counter(), args.size))
                    in_flight, remaining = in_flight + 1, remaining - 1
                reply = await device.replies.get()
                in_flight -= 1
                if reply["type"] == "sent":
                    stored.add(reply["id"])
                else:
                    print("error:", reply, file=sys.stderr)

        await asyncio.to_thread(settle_database, servers.list[0].database_url)
        t0, usage = time.perf_counter(), CpuUsage(servers)
        if on_start:
            on_start([s.process.pid for s in servers.list])
        await asyncio.gather(*(sender(d, chat, to) for d, (_, _, chat, _, to) in zip(senders, cast, strict=True)))
        deadline = time.monotonic() + args.drain_seconds
        while sum(len(r.seen) for r in receivers) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        last = max((max(r.seen.values(), default=t0) for r in receivers), default=t0)
        wall, (cpu, pg_cpu, shares) = last - t0, usage.stop()
        received = set().union(*(r.seen for r in receivers))
        latencies = [x for r in receivers for x in r.latencies]
        peak_rss_kb = sum(proc_kb(s.process.pid, "VmHWM") for s in servers.list)
        for device in receivers + senders:
            await device.close()
    n = len(received)
    return loop_figures(n / wall if wall > 0 else 0.0, n, 1000 * pct(latencies, 0.5), 1000 * pct(latencies, 0.99), cpu, pg_cpu, shares,
                        len(stored), len(stored - received), rss_kb_per_conn=rss_per_conn / conns, peak_rss_mib=peak_rss_kb / 1024)


async def open_loop_go(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """open_loop with the compiled driver."""
    with Servers(args) as servers:
        server = servers.list[0]
        cast = await asyncio.to_thread(seed, server.database_url, args.open_conns // 2, uuid.uuid4().hex[:6])
        total = int(rate * args.open_seconds)
        driver = GoDriver(args, cast, server.ws_url, server.ws_url, rate=rate, total=total)
        driver_pid = await driver.start()
        await asyncio.to_thread(settle_database, server.database_url)
        await asyncio.sleep(1)
        print("  sending (the open loop starts here: profile the server from now)", flush=True)
        result, (cpu, pg_cpu, shares) = await driver.run(CpuUsage(servers, driver_pid))
    return loop_figures(rate, result["delivered"], result["p50_ms"], result["p99_ms"], cpu, pg_cpu, shares, result["stored"], result["lost"])


async def open_loop(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    if args.driver == "go":
        return await open_loop_go(args, rate)
    pairs = args.open_conns // 2
    with Servers(args) as servers:
        server = servers.list[0]
        cast = await asyncio.to_thread(seed, server.database_url, pairs, uuid.uuid4().hex[:6])
        receivers = await connect(server.ws_url, [rx for _, rx, _, _, _ in cast])
        senders = await connect(server.ws_url, [tx for tx, _, _, _, _ in cast])
        await asyncio.to_thread(settle_database, server.database_url)
        await asyncio.sleep(1)
        total = int(rate * args.open_seconds)
        print("  sending (the open loop starts here: profile the server from now)", flush=True)
        stored: set[str] = set()
        start = time.perf_counter() + 0.2
        usage = CpuUsage(servers)

        async def drain_replies(device: Device, count: int) -> None:
            for _ in range(count):
                reply = await device.replies.get()
                if reply["type"] == "sent":
                    stored.add(reply["id"])

        counts = [total // pairs + (1 if i < total % pairs else 0) for i in range(pairs)]
        readers = [asyncio.create_task(drain_replies(d, c)) for d, c in zip(senders, counts, strict=True)]
        for k in range(total):
            at = start + k / rate  # the scheduled time: latency includes any lateness of ours
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            i = k % pairs
            _, _, chat, _, to = cast[i]
            await senders[i].ws.send(send_frame(chat, to, at, args.size))
        await asyncio.wait_for(asyncio.gather(*readers), args.drain_seconds)
        deadline = time.monotonic() + args.drain_seconds
        while sum(len(r.seen) for r in receivers) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        cpu, pg_cpu, shares = usage.stop()
        received = set().union(*(r.seen for r in receivers))
        latencies = [x for r in receivers for x in r.latencies]
        for device in receivers + senders:
            await device.close()
    return loop_figures(rate, len(received), 1000 * pct(latencies, 0.5), 1000 * pct(latencies, 0.99), cpu, pg_cpu, shares, len(stored), len(stored - received))


async def idle(args: argparse.Namespace, conns: int) -> dict[str, Any]:
    with Servers(args) as servers:
        server = servers.list[0]
        base = proc_kb(server.process.pid, "VmRSS")
        cast = await asyncio.to_thread(seed, server.database_url, conns // 2, uuid.uuid4().hex[:6])
        devices = await connect(server.ws_url, [t for tx, rx, _, _, _ in cast for t in (tx, rx)])
        await asyncio.sleep(2)
        rss = proc_kb(server.process.pid, "VmRSS")
        for device in devices:
            await device.close()
    return {"rss_kb_per_conn": (rss - base) / conns, "rss_mib": rss / 1024, "lost": 0}


async def backlog(args: argparse.Namespace, count: int) -> dict[str, Any]:
    with Servers(args) as servers:
        server = servers.list[0]
        (tx, rx, chat, _, to), = await asyncio.to_thread(seed, server.database_url, 1, uuid.uuid4().hex[:6])
        (sender,) = await connect(server.ws_url, [tx])
        stored: set[str] = set()
        in_flight = sent = 0
        while sent < count or in_flight:
            while sent < count and in_flight < 64:
                await sender.ws.send(send_frame(chat, to, time.perf_counter(), args.size))
                sent, in_flight = sent + 1, in_flight + 1
            reply = await sender.replies.get()
            in_flight -= 1
            if reply["type"] == "sent":
                stored.add(reply["id"])
        await asyncio.to_thread(settle_database, server.database_url)
        t0 = time.perf_counter()
        (receiver,) = await connect(server.ws_url, [rx])
        deadline = time.monotonic() + args.drain_seconds
        while len(receiver.seen) < len(stored) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        seconds = max(receiver.seen.values(), default=t0) - t0
        got = set(receiver.seen)
        await sender.close()
        await receiver.close()
    return {"seconds": seconds, "msgs_per_s": len(got) / seconds if seconds else 0.0, "stored": len(stored), "delivered": len(got), "lost": len(stored - got)}


GROUP_SEED = """
import json, secrets
from django.contrib.auth import get_user_model
from keys.models import Device, IdentityKey
from messaging.models import Conversation, Participant
User = get_user_model()
n = {n}
users = User.objects.bulk_create([User(username=f"g{tag}{{i}}") for i in range(n)])
tokens = [secrets.token_urlsafe(32) for _ in users]
devices = Device.objects.bulk_create([Device(user=u, device_id=1, name="g", token_hash=Device.hash_token(t)) for u, t in zip(users, tokens)])
IdentityKey.objects.bulk_create([IdentityKey(user=d.user, device=d, kind=IdentityKey.Kind.DEVICE, public_key=secrets.token_bytes(32), certificate=secrets.token_bytes(64), issued_ms=0) for d in devices])
c = Conversation.objects.create(kind="group", created_by=users[0])
Participant.objects.bulk_create([Participant(conversation=c, user=u, role="admin" if i == 0 else "member") for i, u in enumerate(users)])
print(json.dumps([str(c.public_id), [u.username for u in users], tokens]))
"""


async def group(args: argparse.Namespace, members: int) -> dict[str, Any]:
    """One sender and members-1 other devices of one group (members devices in all)."""
    with Servers(args) as servers:
        server = servers.list[0]
        out = await asyncio.to_thread(server.shell, GROUP_SEED.format(n=members, tag=uuid.uuid4().hex[:6]))
        chat, names, tokens = json.loads(out.strip().splitlines()[-1])
        devices = await connect(server.ws_url, tokens)
        sender, others = devices[0], devices[1:]
        await asyncio.to_thread(settle_database, server.database_url)
        fanouts: list[float] = []
        stored: set[str] = set()
        for _ in range(args.group_messages):
            at = time.perf_counter()
            frame = {
                "type": "send",
                "conversation_id": chat,
                "client_message_id": str(uuid.uuid4()),
                "recipients": [{"user_id": name, "device_id": 1, "ciphertext": stamp(at, args.size)} for name in names[1:]],
            }
            await sender.ws.send(json.dumps(frame))
            reply = await sender.replies.get()
            if reply["type"] != "sent":
                print("error:", reply, file=sys.stderr)
                continue
            stored.add(reply["id"])
            deadline = time.monotonic() + 10
            while not all(reply["id"] in d.seen for d in others) and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
            fanouts.append(max(d.seen.get(reply["id"], float("inf")) for d in others) - at)
        lost = sum(1 for mid in stored for d in others if mid not in d.seen)
        for device in devices:
            await device.close()
    return {"p50_ms": 1000 * pct(fanouts, 0.5), "p99_ms": 1000 * pct(fanouts, 0.99), "stored": len(stored), "lost": lost}


def limit_run(args: argparse.Namespace, conns: int) -> dict[str, Any] | None:
    """The raw relay with the same shape (connections, messages per sender, size, window)."""
    relay, load = SHARED_BENCH / "relay_limit.py", SHARED_BENCH / "wsload.py"  # or wsload-go (--driver go)
    if not (relay.exists() and load.exists()):
        print("relay_limit.py / wsload.py not found; skipping the limit", file=sys.stderr)
        return None
    port = 18765
    result_path = Path(f"/tmp/relay-limit-{os.getpid()}.json")
    result_path.unlink(missing_ok=True)
    pin = ["taskset", "-c", "0"] if args.pin else []
    server = subprocess.Popen([*pin, sys.executable, str(relay), "--mode", "direct", "--port", str(port), "--loop", "asyncio"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        driver = ["taskset", "-c", "1"] if args.pin else []
        shape = ["--url", f"ws://127.0.0.1:{port}/ws/%ID%", "--conns", str(conns), "--messages", str(args.messages), "--size", str(args.size), "--window", str(args.window)]
        if args.driver == "go":  # wsload-go: Go's flag package takes the same words with one dash
            rss_before = proc_kb(server.pid, "VmRSS")
            cmd = [*driver, str(GO_LIMIT_DRIVER), *(a.removeprefix("-") if a.startswith("--") else a for a in shape), "-watch", f"relay={server.pid}", "-json", str(result_path)]
        else:
            cmd = [*driver, sys.executable, str(load), *shape, "--loop", "asyncio", "--watch", f"relay={server.pid}", "--json", str(result_path)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "GOMAXPROCS": "1"})
        if args.driver == "go":
            peak_kb = proc_kb(server.pid, "VmHWM")
        try:
            raw = json.loads(result_path.read_text().strip().splitlines()[-1])
        except (ValueError, IndexError, OSError):
            print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
            return None
    finally:
        server.terminate()
        server.wait(timeout=10)
    watched = next(iter(raw.get("servers", {}).values()), {})
    if args.driver == "go":  # wsload-go reports neither RSS growth nor loss: from the relay's peak and its counts
        watched["rss_connected_mb"], watched["rss_before_mb"] = peak_kb / 1024, rss_before / 1024
        raw["lost"] = 0 if raw.get("timeout") is False and raw.get("received") == raw.get("expected") else (raw.get("expected", 0) - raw.get("received", 0))
    return {
        "msgs_per_s": float(raw.get("msgs_per_s") or 0),
        "p50_ms": raw["lat_ms"]["p50"],
        "p99_ms": raw["lat_ms"]["p99"],
        "cpu_us_per_msg": watched.get("cpu_us_per_msg"),
        "rss_kb_per_conn": 1024 * (watched.get("rss_connected_mb", 0) - watched.get("rss_before_mb", 0)) / conns,
        "lost": raw.get("lost"),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if values:
            out[key] = statistics.median(values)
    if "lost" in runs[0]:
        out["lost"] = max(r["lost"] or 0 for r in runs)  # the worst run, not the median
    return out


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    async def repeat(name: str, base: dict[str, Any], job: Any) -> dict[str, Any]:
        runs = []
        for i in range(args.repeat):
            runs.append(await job())
            print(f"  {name} run {i + 1}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in runs[-1].items()})}", flush=True)
        row = {"config": name, **base, **median_of(runs)}
        results.append(row)
        return row

    for conns in args.closed:
        if args.limit:
            raw_runs = []
            en_runs = []
            for i in range(args.repeat):  # interleaved: the raw relay and Enigmo in the same repetition
                en_runs.append(await closed_loop(args, conns))
                raw = await asyncio.to_thread(limit_run, args, conns)
                if raw:
                    raw_runs.append(raw)
                    en_runs[-1]["ratio_to_raw"] = en_runs[-1]["msgs_per_s"] / raw["msgs_per_s"] if raw["msgs_per_s"] else None
                print(f"  closed-{conns} run {i + 1}: enigmo {en_runs[-1]['msgs_per_s']:.0f} msg/s, raw {raw['msgs_per_s'] if raw else '—'}", flush=True)
            results.append({"config": f"closed-{conns}", "conns": conns, "profile": args.profile, **median_of(en_runs)})
            if raw_runs:
                results.append({"config": f"raw-closed-{conns}", "conns": conns, "profile": "raw websockets relay", **median_of(raw_runs), "ratio_to_raw": 1.0})
        else:
            await repeat(f"closed-{conns}", {"conns": conns, "profile": args.profile}, lambda c=conns: closed_loop(args, c))
    for rate in args.open:
        await repeat(f"open-{rate:g}", {"conns": args.open_conns, "profile": args.profile, "offered_msgs_per_s": rate}, lambda r=rate: open_loop(args, r))
    for conns in args.idle:
        await repeat(f"idle-{conns}", {"conns": conns, "profile": args.profile}, lambda c=conns: idle(args, c))
    for count in args.backlog:
        await repeat(f"backlog-{count}", {"conns": 2, "profile": args.profile, "envelopes": count}, lambda c=count: backlog(args, c))
    for members in args.group:
        await repeat(f"group-{members}", {"conns": members, "profile": args.profile, "messages": args.group_messages}, lambda m=members: group(args, m))
    for conns in args.two_proc:
        await repeat(f"two-proc-{conns}", {"conns": conns, "profile": args.profile + ", 2 daphne processes"}, lambda c=conns: closed_loop(args, c, processes=2))
    for conns in args.profile_server:
        profiled = await profile_server(args, conns)
        if profiled:
            results.append(profiled)
    for row in results:
        if row["config"].startswith(("closed-", "two-proc-", "open-")):
            row["blocked_by"] = what_blocks(row, args.pin)
    return results


def table(results: list[dict[str, Any]]) -> str:
    def f(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "—"

    lines = [
        "| config | conns | msg/s | ratio to raw | p50 ms | p99 ms | CPU µs/msg | RSS KB/conn | other | lost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        other = (
            f"{row['seconds']:.2f} s to drain" if "seconds" in row
            else f"{row['rss_mib']:.0f} MiB total" if "rss_mib" in row
            else f"peak RSS {row['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in row
            else "py-spy sampling the server (not in the medians)" if "samples" in row
            else ""
        )
        if isinstance(row.get("pg_cpu_us_per_msg"), int | float):
            other = f"{other}{', ' if other else ''}PostgreSQL {row['pg_cpu_us_per_msg']:.0f} µs/msg"
        if isinstance(row.get("driver_cpu_pct"), int | float):  # the driver shares core 1 with them under --pin
            other = f"{other}{', ' if other else ''}driver {row['driver_cpu_pct']:.0f} % of a core"
        lines.append(
            f"| {row['config']} | {row.get('conns', '')} | {f(row, 'msgs_per_s', '.0f')} | {f(row, 'ratio_to_raw', '.3f')} | {f(row, 'p50_ms', '.1f')} | "
            f"{f(row, 'p99_ms', '.1f')} | {f(row, 'cpu_us_per_msg', '.0f')} | {f(row, 'rss_kb_per_conn', '.1f')} | {other} | {f(row, 'lost', 'd') if isinstance(row.get('lost'), int) else row.get('lost', '—')} |"
        )
    return "\n".join(lines)


# Issue 8's targets: (config prefix, what is compared, bound, higher is better).
TARGETS = [
    ("closed-1000", "ratio_to_raw", 0.25, True, "throughput ≥ 0.25× the raw relay at 1,000 connections"),
    ("open-1000", "p50_ms", 5.0, False, "p50 ≤ 5 ms at 1,000 msg/s offered (open loop)"),
    ("open-1000", "p99_ms", 50.0, False, "p99 ≤ 50 ms at 1,000 msg/s offered (open loop)"),
    ("idle-5000", "rss_kb_per_conn", 40.0, False, "≤ 40 KB RSS per idle connection at 5,000"),
    ("backlog-10000", "seconds", 2.0, False, "10,000 queued envelopes in ≤ 2 s"),
    ("group-100", "p99_ms", 50.0, False, "100-device group fan-out p99 ≤ 50 ms"),
]


def judge(results: list[dict[str, Any]]) -> list[str]:
    """Each target against this run's figures: met or not, and by what factor it is off.
    Also marks every row with `target_met` (and every row's loss) in the JSON."""
    lines = ["| target | measured | met |", "|---|---|---|"]
    by_config = {row["config"]: row for row in results}
    for config, key, bound, higher, text in TARGETS:
        row = by_config.get(config)
        if row is None or not isinstance(row.get(key), int | float):
            lines.append(f"| {text} | not measured in this run | — |")
            continue
        value = row[key]
        met = value >= bound if higher else value <= bound
        factor = (bound / value if higher else value / bound) if value else float("inf")
        row.setdefault("targets", {})[key] = {"bound": bound, "met": met}
        lines.append(f"| {text} | {value:.3g} ({'met' if met else f'{factor:.1f}× off'}) | {'yes' if met else 'no'} |")
    lossy = [row["config"] for row in results if (row.get("lost") or 0) > 0 and not row["config"].startswith("raw")]
    lines.append(f"| 0 lost at every connection count and across processes | {'lost in ' + ', '.join(lossy) if lossy else '0 lost in every configuration'} | {'no' if lossy else 'yes'} |")
    one, two = by_config.get("closed-1000"), by_config.get("two-proc-1000")
    if one and two:
        lines.append(f"| scale out: msg/s with one and two processes (1,000 connections) | {one.get('msgs_per_s', 0):.0f} vs {two.get('msgs_per_s', 0):.0f} | {'yes' if not lossy else 'no'} (0 loss is the target) |")
    return lines


FULL_CORE_PCT = 90  # a core this busy is taken as full: the rest is scheduling slack


def what_blocks(row: dict[str, Any], pinned: bool) -> str:
    """What this run's CPU accounting says limits a closed loop (which core is full, and what
    shares it), or, for an open loop, whether a core is full at the offered rate."""
    if not isinstance(row.get("core0_busy_pct"), int | float):
        return "no CPU accounting in this run"
    c0, c1 = row["core0_busy_pct"], row.get("core1_busy_pct", 0.0)
    core1 = f"the driver {row.get('driver_cpu_pct', 0):.0f} %, PostgreSQL {row.get('pg_cpu_pct') or 0:.0f} %, Redis {row.get('redis_cpu_pct', 0):.0f} % of a core"
    if not pinned or row["config"].startswith("two-proc-"):  # two servers: one on each core
        return f"cores {c0:.0f} % and {c1:.0f} % busy (servers {row.get('server_cpu_pct', 0):.0f} %, {core1}); no core is one process's alone"
    if row["config"].startswith("open-"):
        full = [f"core {i}" for i, c in enumerate((c0, c1)) if c >= FULL_CORE_PCT]
        return (f"at this offered rate core 0 is {c0:.0f} % busy (the server {row.get('server_cpu_pct', 0):.0f} %) and core 1 "
                f"{c1:.0f} % ({core1}); " + (f"{' and '.join(full)} full: envelopes queue for CPU" if full else
                "neither is full: the latency is the path's own (at this rate each envelope is a durable "
                "commit of its own and its acknowledgement another, and each waits for a busy core; the "
                "profile shows where)"))
    if c1 >= FULL_CORE_PCT and c1 >= c0:
        return (f"core 1 is full ({c1:.0f} % busy: {core1}); core 0, the server's, is {c0:.0f} % busy "
                f"(the server {row.get('server_cpu_pct', 0):.0f} %): the server waits on the driver and PostgreSQL")
    if c0 >= FULL_CORE_PCT:
        return (f"core 0 is full ({c0:.0f} % busy, the server {row.get('server_cpu_pct', 0):.0f} %): the server's "
                f"{row.get('cpu_us_per_msg', 0):.0f} µs of CPU per envelope is the limit; core 1 is {c1:.0f} % busy ({core1})")
    return (f"neither core is full (core 0 {c0:.0f} %, core 1 {c1:.0f} %: {core1}): the closed loop "
            f"(a fixed number in flight per sender) is bound by round-trip latency")


def summarise_profile(raw: str, top: int = 10) -> dict[str, Any]:
    """py-spy's raw output (--threads) → the event loop's and the other threads' shares of the
    samples and the functions most often on top of the stack (line numbers merged)."""
    loop = other = 0
    leaves: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        if "MainThread" in frames[0]:
            loop += n
        else:
            other += n
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        leaves[leaf] = leaves.get(leaf, 0) + n
    total = max(loop + other, 1)
    ranked = sorted(leaves.items(), key=lambda item: -item[1])[:top]
    return {
        "samples": loop + other,
        "event_loop_pct": 100 * loop / total,
        "other_threads_pct": 100 * other / total,
        "top": [[name, round(100 * n / total, 1)] for name, n in ranked],
    }


async def profile_server(args: argparse.Namespace, conns: int) -> dict[str, Any] | None:
    """One more closed-loop run (not in the medians) with py-spy sampling the server for
    --profile-seconds of its measured phase: where the server's CPU goes under this load."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print("py-spy not installed in this environment (pip install py-spy): no server profile", file=sys.stderr)
        return None
    out = Path(f"/tmp/relay-profile-{os.getpid()}.txt")
    out.unlink(missing_ok=True)
    spies: list[subprocess.Popen[bytes]] = []

    def start(pids: list[int]) -> None:
        command = [str(spy), "record", "-p", str(pids[0]), "-d", str(args.profile_seconds), "-r", "200", "--threads",
                   "--nonblocking", "--format", "raw", "-o", str(out)]
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    run = await closed_loop(args, conns, on_start=start, messages=args.profile_messages)
    for process in spies:
        await asyncio.to_thread(process.wait, 60)
    if not out.exists():
        print("py-spy wrote no profile (was the measured phase shorter than --profile-seconds?)", file=sys.stderr)
        return None
    summary = summarise_profile(out.read_text())
    out.unlink(missing_ok=True)
    return {"config": f"profile-closed-{conns}", "conns": conns, "profile": args.profile, "msgs_per_s": run["msgs_per_s"],
            "lost": run["lost"], "profile_seconds": args.profile_seconds, **summary}


def describe_profile(row: dict[str, Any]) -> list[str]:
    lines = [f"Server profile (py-spy, {row['config'].removeprefix('profile-')}, {row['profile_seconds']:g} s at {row['msgs_per_s']:.0f} msg/s, "
             f"{row['samples']} samples): event loop {row['event_loop_pct']:.0f} %, other threads (database, group commit) "
             f"{row['other_threads_pct']:.0f} %. Most often on top of the stack:"]
    lines += [f"  {share:5.1f} %  {name}" for name, share in row["top"]]
    return lines


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--closed", type=ints, default=[100, 1000], help="closed-loop connection counts (comma-separated)")
    parser.add_argument("--open", type=lambda s: [float(x) for x in s.split(",") if x], default=[], help="open-loop offered msg/s")
    parser.add_argument("--open-conns", type=int, default=1000)
    parser.add_argument("--open-seconds", type=float, default=10)
    parser.add_argument("--idle", type=ints, default=[], help="idle connection counts (RSS per connection)")
    parser.add_argument("--backlog", type=ints, default=[], help="queued envelopes for one reconnecting device")
    parser.add_argument("--group", type=ints, default=[], help="group sizes in devices (fan-out latency)")
    parser.add_argument("--group-messages", type=int, default=100)
    parser.add_argument("--two-proc", type=ints, default=[], help="connection counts across two processes")
    parser.add_argument("--pairs", type=int, help="shorthand for --closed 2×PAIRS (one closed-loop configuration)")
    parser.add_argument("--messages", type=int, default=10, help="envelopes per sender (closed loop)")
    parser.add_argument("--size", type=int, default=300, help="ciphertext bytes")
    parser.add_argument("--window", type=int, default=4, help="frames in flight per sender (closed loop)")
    parser.add_argument("--drain-seconds", type=float, default=60)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pin", action="store_true", help="server on core 0; driver, PostgreSQL and Redis on core 1 (two servers: one per core)")
    parser.add_argument("--limit", action="store_true", help="also measure ../shared/bench/relay_limit.py in the same run")
    parser.add_argument("--no-batch", action="store_true", help="one WebSocket frame per server frame (no ?batch=1)")
    parser.add_argument("--driver", choices=["go", "python"], default="go",
                        help="closed and open loops (and the raw relay) driven by the compiled drivers (bench/enigmo-load, ../shared/bench/wsload-go; "
                        "built on start, Python's if Go is missing) or by this process and wsload.py")
    parser.add_argument("--profile-server", type=ints, default=[], help="connection counts: one more closed-loop run each with py-spy on the server")
    parser.add_argument("--profile-seconds", type=int, default=5, help="how long py-spy samples, whole seconds (within the measured phase)")
    parser.add_argument("--profile-messages", type=int, default=200, help="envelopes per sender in the profiled run (a phase longer than the sampling)")
    parser.add_argument("--json", help="write the results here (a JSON list, one object per configuration)")
    args = parser.parse_args()
    if args.pairs:
        args.closed = [2 * args.pairs]
    if args.no_batch:
        BATCH_QUERY[0] = ""
    args.profile = "production (PostgreSQL + Redis)" if os.environ.get("REDIS_URL") else "embedded (SQLite + in-memory layer)"
    if args.driver == "go" and (why := build_go_drivers()):
        print(f"compiled drivers unavailable ({why}): the Python drivers run the load", file=sys.stderr)
        args.driver = "python"
    print(f"profile: {args.profile}; {args.size} B ciphertexts, window {args.window}, {args.repeat} repetition(s), "
          f"{'one frame per server frame' if args.no_batch else 'batch frames (?batch=1)'}, "
          f"{'compiled drivers (enigmo-load, wsload-go)' if args.driver == 'go' else 'Python drivers (this process, wsload.py)'}", flush=True)
    results = asyncio.run(run_all(args))
    print(table(results))
    print()
    print("\n".join(judge(results)))
    blocked = [f"- {row['config']}: {row['blocked_by']}" for row in results if row.get("blocked_by")]
    if blocked:
        print("\nWhat limits each loop (this run's CPU accounting, medians):")
        print("\n".join(blocked))
    for row in results:
        if row["config"].startswith("profile-"):
            print()
            print("\n".join(describe_profile(row)))
    if args.json:
        meta = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv), "nproc": os.cpu_count(), "loadavg": os.getloadavg(), "driver": args.driver}
        Path(args.json).write_text(json.dumps([{**row, **meta} for row in results], indent=1) + "\n")


if __name__ == "__main__":
    main()
