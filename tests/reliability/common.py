"""Helpers of the reliability tests: the cast over real HTTP, pipelined sends over a socket,
a TCP proxy that can cut a backing service, and Redis restarts that always end with Redis up."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import uuid
from typing import Any

import websockets

from tests.messaging.helpers import open_direct
from tests.messaging.live_client import ws_connect
from tests.support import Account, HttpTransport, b64

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
production = bool(os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL", "").startswith("postgres"))


def envelope(to: str, text: str, device_id: int = 1) -> dict[str, Any]:
    return {"client_message_id": str(uuid.uuid4()), "recipients": [{"user_id": to, "device_id": device_id, "ciphertext": b64(text.encode())}]}


def cast(api: HttpTransport, *names: str) -> list[Account]:
    accounts = [Account(name) for name in names]
    for account in accounts:
        account.register(api)
    return accounts


def pair(server: Any) -> tuple[HttpTransport, Account, Account, str]:
    """alice and bob registered on `server`, with their direct conversation."""
    api = HttpTransport(server.http_url)
    alice, bob = cast(api, "alice", "bob")
    return api, alice, bob, open_direct(api, alice, bob)


def post_until_answered(api: HttpTransport, path: str, body: dict, token: str, timeout: float = 60) -> tuple[int, dict]:
    """A client's retry loop: the same body (same client_message_id) until the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, answer = api.post(path, body, token=token)
            if status in (200, 201):
                return status, answer
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer for {body['client_message_id']}")
        time.sleep(0.1)


async def send_over_socket(ws_url: str, token: str, chat: str, to: str, count: int, window: int = 50) -> list[dict[str, Any]]:
    """`count` envelopes over one socket, at most `window` unanswered; the `sent` answers in order."""
    ws = await ws_connect(ws_url, token)
    answers: dict[int, dict[str, Any]] = {}
    slots = asyncio.Semaphore(window)

    async def reader() -> None:
        while len(answers) < count:
            frame = json.loads(await ws.recv())
            if frame["type"] == "sent":
                answers[frame["ref"]] = frame
                slots.release()
            elif frame["type"] == "error":
                raise AssertionError(frame)

    reading = asyncio.create_task(reader())
    for n in range(count):
        await slots.acquire()
        if reading.done():
            break
        await ws.send(json.dumps({"type": "send", "ref": n, "conversation_id": chat, **envelope(to, f"m{n}")}))
    await asyncio.wait_for(reading, 120)
    await ws.close()
    return [answers[n] for n in range(count)]


def first_arrival_seqs(frames: list[dict[str, Any]]) -> list[int]:
    seen: set[str] = set()
    out = []
    for frame in frames:
        if frame["id"] not in seen:
            seen.add(frame["id"])
            out.append(frame["seq"])
    return out


def is_error_shape(body: Any, code: str | None = None) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(body["error"].get("code"), str)
        and isinstance(body["error"].get("message"), str)
        and (code is None or body["error"]["code"] == code)
    )


# --- Redis: the machine's own server (no persistence), restarted by the fault tests -------------


def redis_up() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_stop() -> None:
    subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True, timeout=10)
    deadline = time.monotonic() + 10
    while redis_up() and time.monotonic() < deadline:
        time.sleep(0.05)


def redis_start() -> None:
    if redis_up():
        return
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no"],
        capture_output=True,
        timeout=10,
    )
    deadline = time.monotonic() + 10
    while not redis_up():
        if time.monotonic() > deadline:
            raise RuntimeError("Redis did not come back on 127.0.0.1:6379")
        time.sleep(0.05)


# --- a TCP proxy in front of PostgreSQL that the test can cut and restore -----------------------


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to `upstream`. `cut()` drops every open connection and refuses
    new ones (accepted, then closed at once, as a dead network path would look to libpq);
    `restore()` forwards again."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.blocked = False
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.blocked:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self.lock:
            self.open.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        self.blocked = True
        with self.lock:
            victims = list(self.open)
        for s in victims:
            self._close(s)

    def restore(self) -> None:
        self.blocked = False

    def close(self) -> None:
        self.running = False
        self.cut()
        self.listener.close()


async def pinger(ws_url: str, token: str, rtts: list[float], stop: asyncio.Event, closes: list[Any], every: float = 0.05) -> None:
    """Ping every `every` seconds until `stop`, recording each round trip; a close is recorded in `closes`."""
    ws = await ws_connect(ws_url, token)
    try:
        while not stop.is_set():
            ref = uuid.uuid4().hex
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "ping", "ref": ref}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("ref") == ref:
                    rtts.append(time.perf_counter() - sent)
                    break
            await asyncio.sleep(every)
    except websockets.ConnectionClosed as exc:
        closes.append(exc.rcvd.code if exc.rcvd else None)
    finally:
        await ws.close()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values[0] if values else 0.0)
