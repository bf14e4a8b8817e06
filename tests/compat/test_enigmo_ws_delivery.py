"""Delivery on Enigmo-WS sockets, in process (WebsocketCommunicator on the real consumer, the
embedded profile's database and in-memory channel layer): a long-lived socket keeps receiving,
and a message pushed to a socket once is never pushed again."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from enigmo.compat import consumers
from enigmo.compat.consumers import EnigmoWsConsumer
from messaging.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast(settings):
    settings.RATE_LIMITS_ENABLED = False
    settings.RELAY_TICK_SECONDS = 0.5


@pytest.fixture(autouse=True)
async def _close_thread_connections():
    """The consumer's ORM calls run in worker threads; close their connections afterwards."""
    yield
    from django.db import connections

    await sync_to_async(connections.close_all)()


class Person:
    """An Enigmo app user speaking the Dart server's frames over an in-process socket."""

    def __init__(self, nickname: str):
        self.nickname = nickname
        self.signing_key = SigningKey.generate()
        self.signing_b64 = base64.b64encode(bytes(self.signing_key.verify_key)).decode()
        self.encryption_b64 = base64.b64encode(bytes(PrivateKey.generate().public_key)).decode()
        self.user_id: str | None = None
        self.ws: WebsocketCommunicator | None = None

    async def online(self) -> Person:
        self.ws = WebsocketCommunicator(EnigmoWsConsumer.as_asgi(), "/ws")
        connected, _ = await self.ws.connect(timeout=5)
        assert connected
        if self.user_id is None:
            await self.ws.send_json_to(
                {"type": "register", "publicSigningKey": self.signing_b64, "publicEncryptionKey": self.encryption_b64, "nickname": self.nickname}
            )
            self.user_id = (await self.next("register_success"))["userId"]
        timestamp = datetime.now(UTC).isoformat()
        signature = base64.b64encode(self.signing_key.sign(timestamp.encode()).signature).decode()
        await self.ws.send_json_to({"type": "auth", "userId": self.user_id, "timestamp": timestamp, "signature": signature})
        assert (await self.next("auth_success"))["success"] is True
        return self

    async def next(self, kind: str, timeout: float = 5) -> dict:
        assert self.ws is not None
        while True:
            frame = await self.ws.receive_json_from(timeout=timeout)
            if frame.get("type") in (kind, "error"):
                assert frame["type"] == kind, frame
                return frame

    async def new_messages(self, wait: float = 0.8) -> list[str]:
        """encryptedContent of every new_message that arrives within `wait` seconds."""
        assert self.ws is not None
        got = []
        while not await self.ws.receive_nothing(timeout=wait):
            frame = await self.ws.receive_json_from(timeout=1)
            if frame.get("type") == "new_message":
                got.append(frame["message"]["encryptedContent"])
        return got

    async def send_to(self, other: Person, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_json_to({"type": "send_message", "receiverId": other.user_id, "encryptedContent": text, "signature": "sig-" + text})
        await self.next("message_sent")

    async def offline(self) -> None:
        assert self.ws is not None
        await self.ws.disconnect()
        self.ws = None


async def _chatting() -> tuple[Person, Person]:
    alice, bob = await Person("alice").online(), await Person("bob").online()
    assert alice.ws is not None
    await alice.ws.send_json_to({"type": "add_to_chat", "target_user_id": bob.user_id})
    await alice.next("add_to_chat_success")
    await bob.next("chat_added")
    return alice, bob


async def test_a_long_lived_socket_keeps_receiving_past_max_inflight(monkeypatch):
    """More messages than MAX_INFLIGHT over one connection all arrive, one by one: the bound
    counts only envelopes written and not yet acknowledged."""
    monkeypatch.setattr(consumers, "MAX_INFLIGHT", 3)
    alice, bob = await _chatting()
    for i in range(8):
        await alice.send_to(bob, f"m{i}")
        frame = await bob.next("new_message")
        assert frame["message"]["encryptedContent"] == f"m{i}"
    await alice.offline()
    await bob.offline()


async def test_a_backlog_larger_than_max_inflight_drains_in_order(monkeypatch):
    """An offline backlog bigger than MAX_INFLIGHT arrives whole and in order on one connection."""
    monkeypatch.setattr(consumers, "MAX_INFLIGHT", 3)
    alice, bob = await _chatting()
    await bob.offline()
    for i in range(7):
        await alice.send_to(bob, f"q{i}")
    await bob.online()
    assert await bob.new_messages() == [f"q{i}" for i in range(7)]
    await alice.offline()
    await bob.offline()


async def test_a_message_pushed_to_a_socket_is_not_pushed_again_on_reconnect():
    """The Dart server's rule: written to a connected socket = delivered. bob reconnecting
    (without mark_read) gets neither the live message nor the backlog a second time."""
    alice, bob = await _chatting()
    await alice.send_to(bob, "live")
    assert (await bob.next("new_message"))["message"]["encryptedContent"] == "live"
    await bob.offline()
    await alice.send_to(bob, "queued-1")
    await alice.send_to(bob, "queued-2")
    await bob.online()
    assert await bob.new_messages() == ["queued-1", "queued-2"]
    await bob.offline()
    await bob.online()
    assert await bob.new_messages() == []
    # delivered copies hold no ciphertext any more
    rows = await sync_to_async(list)(Delivery.objects.filter(device__user__username=f"ews.{bob.user_id}").values_list("delivered_at", "ciphertext"))
    assert len(rows) == 3 and all(d is not None and c is None for d, c in rows)
    await alice.offline()
    await bob.offline()
