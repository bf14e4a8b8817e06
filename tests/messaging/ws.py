"""WebsocketCommunicator helpers over the real ASGI application."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.testing import WebsocketCommunicator

from enigmo.asgi import application
from tests.support import Account, Device


async def connect(account: Account | None = None, device: Device | None = None, *, origin: str | None = None, cookie: str | None = None, token: str | None = None, query: str = "") -> WebsocketCommunicator:
    headers = []
    if token is None and account is not None:
        token = (device or account.device).token
    if token:
        headers.append((b"authorization", f"Token {token}".encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    comm = WebsocketCommunicator(application, "/api/v1/ws" + (f"?{query}" if query else ""), headers=headers)
    comm.connected_ok, _ = await comm.connect(timeout=5)
    return comm


async def frames_until(comm: WebsocketCommunicator, kind: str, timeout: float = 5) -> list[dict[str, Any]]:
    """Every frame up to and including the first of `kind`."""
    out = []
    while True:
        frame = await comm.receive_json_from(timeout=timeout)
        out.append(frame)
        if frame.get("type") == kind:
            return out


async def next_of(comm: WebsocketCommunicator, kind: str, timeout: float = 5) -> dict[str, Any]:
    return (await frames_until(comm, kind, timeout))[-1]


async def silent(comm: WebsocketCommunicator, wait: float = 0.3) -> bool:
    return await comm.receive_nothing(timeout=wait)


async def closed_with(comm: WebsocketCommunicator, timeout: float = 3) -> int | None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        output = await comm.receive_output(timeout=max(0.01, deadline - asyncio.get_running_loop().time()))
        if output["type"] == "websocket.close":
            return output.get("code")
