"""A WebSocket frame over the cap is refused by the protocol layer with close 1009, and the
other sockets carry on."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.support import Account, HttpTransport


@pytest.mark.live
def test_oversized_frame_closes_1009_and_others_carry_on(live_server_factory):
    server = live_server_factory({"ENIGMO_MAX_WS_FRAME_BYTES": "65536"})
    api = HttpTransport(server.http_url)
    alice, bob = Account("alice"), Account("bob")
    for account in (alice, bob):
        account.register(api)

    async def scenario() -> tuple[int, dict]:
        url = server.ws_url + "/api/v1/ws"
        async with websockets.connect(url, additional_headers={"Authorization": f"Token {alice.token}"}) as big, websockets.connect(
            url, additional_headers={"Authorization": f"Token {bob.token}"}
        ) as other:
            await big.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                for _ in range(50):
                    await asyncio.wait_for(big.recv(), timeout=5)
            await other.send(json.dumps({"type": "ping", "ref": "still-here"}))
            while True:
                frame = json.loads(await asyncio.wait_for(other.recv(), timeout=5))
                if frame.get("type") == "pong":
                    return closed.value.rcvd.code, frame

    code, pong = asyncio.run(scenario())
    assert code == 1009
    assert pong["type"] == "pong"
