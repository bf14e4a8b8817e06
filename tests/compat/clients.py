"""Minimal clients written from the two earlier systems' wire formats (the Enigma Protocol v0.3
specification and the Enigmo Dart server's JSON frames), using only urllib and `websockets`.
They know nothing of Enigmo's own code."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

import websockets
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


async def ws_open(url: str, **kwargs: Any) -> ClientConnection:
    return await websockets.connect(url, open_timeout=10, max_size=4 * 1024 * 1024, **kwargs)


async def recv(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next frame of `type` == kind, skipping others (presence, …)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await recv(ws, max(0.05, deadline - loop.time()))
        if frame.get("type") == kind:
            return frame


async def nothing_for(ws: ClientConnection, seconds: float = 0.5, ignore: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Frames that arrive within `seconds` (expected: none), ignoring the given types."""
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        if frame.get("type") not in ignore:
            got.append(frame)
    return got


async def close_code(ws: ClientConnection, timeout: float = 5) -> int | None:
    """Read until the server closes; the close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


# --- Enigma Protocol v0.3 --------------------------------------------------------------------------


class EnigmaClient:
    """A v0.3 user: a key pair, GET /login/{publicKey}, then a socket on /ws/{id} or /connect/{id}."""

    def __init__(self, http_url: str, ws_url: str, public_key: str | None = None, signing_key: SigningKey | None = None):
        self.http_url, self.ws_url = http_url, ws_url
        self.signing_key = signing_key or SigningKey.generate()
        self.public_key = public_key or base64.b64encode(bytes(self.signing_key.verify_key)).decode()
        self.user_id: str | None = None

    def login(self) -> str:
        status, body = http_get(f"{self.http_url}/login/{urllib.parse.quote(self.public_key, safe='')}")
        assert status == 200, (status, body)
        self.user_id = body["userId"]
        return self.user_id

    async def socket(self, path: str = "ws", user_id: str | None = None) -> ClientConnection:
        return await ws_open(f"{self.ws_url}/{path}/{user_id or self.user_id}")

    def sign_challenge(self, challenge_b64: str) -> str:
        nonce = base64.b64decode(challenge_b64)
        message = b"Enigmo-V03-Auth-v1\x00" + nonce + self.user_id.encode()
        return base64.b64encode(self.signing_key.sign(message).signature).decode()


# --- Enigmo (Flutter/Dart) ---------------------------------------------------------------------------


class EnigmoClient:
    """An Enigmo app user: Ed25519 signing key + X25519 encryption key, base64 on the wire."""

    def __init__(self, ws_url: str, nickname: str):
        self.ws_url = ws_url + "/ws"
        self.nickname = nickname
        self.signing_key = SigningKey.generate()
        self.signing_b64 = base64.b64encode(bytes(self.signing_key.verify_key)).decode()
        from nacl.public import PrivateKey

        self.encryption_b64 = base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()
        self.user_id: str | None = None
        self.ws: ClientConnection | None = None

    async def open(self) -> ClientConnection:
        self.ws = await ws_open(self.ws_url)
        return self.ws

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def register(self) -> dict[str, Any]:
        await self.send({"type": "register", "publicSigningKey": self.signing_b64, "publicEncryptionKey": self.encryption_b64, "nickname": self.nickname})
        frame = await recv_type(self.ws, "register_success")
        self.user_id = frame["userId"]
        return frame

    def auth_frame(self, when: datetime | None = None) -> dict[str, Any]:
        timestamp = (when or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        signature = base64.b64encode(self.signing_key.sign(timestamp.encode()).signature).decode()
        return {"type": "auth", "userId": self.user_id, "signature": signature, "timestamp": timestamp}

    async def auth(self) -> dict[str, Any]:
        await self.send(self.auth_frame())
        return await recv(self.ws)

    async def online(self) -> EnigmoClient:
        """Open a socket, register if new, authenticate."""
        await self.open()
        if self.user_id is None:
            await self.register()
        answer = await self.auth()
        assert answer["type"] == "auth_success", answer
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None
