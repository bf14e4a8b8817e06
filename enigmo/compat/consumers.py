"""The two compatibility sockets: Enigma Protocol v0.3 (/ws/{userId}, /connect/{userId}) and the
Enigmo Flutter/Dart protocol (/ws). Both drain the device's durable queue from the database;
channel-layer messages only wake the drain (BRIEF §4), and a periodic tick recovers lost nudges."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from enigmo.compat import services
from enigmo.compat.models import EnigmoWsUser, V03Identity
from enigmo.errors import EnigmoError
from enigmo.realtime import device_group, user_group

logger = logging.getLogger("enigmo.compat")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_UNKNOWN_USER = 4404
CLOSE_REPLACED = 4409
# daphne (autobahn) may only send 1000 or 3000–4999, so 1009 "message too big" becomes 4009.
CLOSE_TOO_BIG = 4009
CHALLENGE_SECONDS = 30
# Enigmo-WS: most envelopes written to one socket whose acknowledgement is not yet committed.
MAX_INFLIGHT = 1000
PAGE_SIZE = 100


def _tick_seconds() -> float:
    return float(settings.RELAY_TICK_SECONDS)


def _now() -> str:
    return timezone.now().isoformat()


def _current_key(device_pk: int) -> str:
    return f"compat:current:{device_pk}"


class _CompatSocket(AsyncWebsocketConsumer):
    """Shared plumbing: frame size and JSON checks, group membership of one device, the drain."""

    device_pk: int | None = None
    user_pk: int | None = None
    closing = False
    drainer: asyncio.Task[None] | None = None
    ticker: asyncio.Task[None] | None = None
    dirty = False

    # --- subclass hooks ---------------------------------------------------------------------------

    async def send_error(self, message: str, code: str = "error") -> None:
        raise NotImplementedError

    async def handle(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def drain_once(self) -> None:
        """Send everything queued for this device (called with no other drain running)."""

    async def on_event(self, frame: dict[str, Any]) -> None:
        """A native relay event for this user (presence, receipts …); ignored unless translated."""

    async def on_tick(self) -> bool:
        return True

    async def on_detach(self) -> None:
        """Called once when an attached socket goes away."""

    # --- frames -----------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        size = len(text_data.encode("utf-8", "replace")) if text_data is not None else len(bytes_data or b"")
        if size > services.compat_max_frame_bytes():
            await self.send_error(f"Frame too large (max {services.compat_max_frame_bytes()} bytes)", "too_large")
            await self.shut(CLOSE_TOO_BIG)
            return
        if text_data is None:
            await self.send_error("Binary frames are not supported; send JSON text frames", "invalid")
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self.send_error("Invalid message format: not JSON", "invalid")
            return
        if not isinstance(frame, dict):
            await self.send_error("Invalid message format: expected a JSON object", "invalid")
            return
        try:
            await self.handle(frame)
        except EnigmoError as exc:
            await self.send_error(exc.message, exc.code)
        except Exception:
            logger.exception("compat frame failed")
            await self.send_error("Internal error", "internal")

    async def send_json(self, frame: dict[str, Any]) -> None:
        if not self.closing:
            await self.send(text_data=json.dumps(frame))

    async def shut(self, code: int) -> None:
        if not self.closing:
            self.closing = True
            await self.close(code=code)

    # --- attachment to a device ------------------------------------------------------------------

    async def attach(self, *, device_pk: int, user_pk: int) -> None:
        """This socket now speaks for the device: an older socket of it is told to go."""
        self.device_pk, self.user_pk = device_pk, user_pk
        await self.channel_layer.group_send(device_group(device_pk), {"type": "device.replaced", "channel": self.channel_name})
        await self.channel_layer.group_add(device_group(device_pk), self.channel_name)
        await self.channel_layer.group_add(user_group(user_pk), self.channel_name)
        await database_sync_to_async(cache.set)(_current_key(device_pk), self.channel_name, 3 * _tick_seconds() + 30)
        self.ticker = asyncio.create_task(self._tick_loop())
        self.wake()

    async def disconnect(self, code: int) -> None:
        self.closing = True
        for task in (self.ticker, self.drainer, getattr(self, "deadline", None)):
            if task is not None:
                task.cancel()
        if self.device_pk is None or self.user_pk is None:
            return
        await self.channel_layer.group_discard(device_group(self.device_pk), self.channel_name)
        await self.channel_layer.group_discard(user_group(self.user_pk), self.channel_name)
        try:
            if await database_sync_to_async(cache.get)(_current_key(self.device_pk)) == self.channel_name:
                await database_sync_to_async(cache.delete)(_current_key(self.device_pk))
                await self.on_detach()
        except Exception:
            logger.exception("compat detach failed")

    async def _tick_loop(self) -> None:
        period = _tick_seconds()
        while not self.closing:
            await asyncio.sleep(period * random.uniform(0.8, 1.2))
            try:
                current = await database_sync_to_async(cache.get)(_current_key(self.device_pk))
                if current not in (None, self.channel_name):
                    await self.shut(CLOSE_REPLACED)
                    return
                await database_sync_to_async(cache.set)(_current_key(self.device_pk), self.channel_name, 3 * period + 30)
                await self.on_tick()
                self.wake()  # recovers a nudge the channel layer lost
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("compat tick failed")

    def wake(self) -> None:
        self.dirty = True
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.dirty and not self.closing:
                self.dirty = False
                await self.drain_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("compat drain failed")

    # --- channel-layer events ------------------------------------------------------------------------

    async def relay_nudge(self, event: dict[str, Any]) -> None:
        self.wake()

    async def relay_event(self, event: dict[str, Any]) -> None:
        if event.get("skip_device") is not None and event.get("skip_device") == self.device_pk:
            return
        await self.on_event(event["frame"])

    async def device_replaced(self, event: dict[str, Any]) -> None:
        if event.get("channel") != self.channel_name:
            await self.shut(CLOSE_REPLACED)

    async def device_closed(self, event: dict[str, Any]) -> None:
        await self.shut(CLOSE_UNAUTHENTICATED)

    async def compat_frame(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])


# --- Enigma Protocol v0.3 ---------------------------------------------------------------------------


class EnigmaV03Consumer(_CompatSocket):
    """One socket of a v0.3 userId. Frames are {"from", "to", "payload"}; errors {"error"}."""

    identity: V03Identity | None = None
    nonce: bytes | None = None

    async def connect(self) -> None:
        await self.accept()  # the spec answers an unknown id with a JSON error, so accept first
        public_id = self.scope["url_route"]["kwargs"]["user_id"]
        try:
            identity = await database_sync_to_async(services.v03_identity_get)(public_id=public_id)
        except services.UnknownUser:
            await self.send_error("User not found")
            await self.shut(CLOSE_UNKNOWN_USER)
            return
        if services.v03_strict():
            self.pending = identity
            self.nonce = os.urandom(32)
            await self.send_json({"type": "challenge", "challenge": base64.b64encode(self.nonce).decode()})
            self.deadline = asyncio.create_task(self._challenge_deadline())
            return
        await self._attach(identity)

    async def _challenge_deadline(self) -> None:
        await asyncio.sleep(CHALLENGE_SECONDS)
        if self.identity is None:
            await self.send_error("Authentication timed out")
            await self.shut(CLOSE_UNAUTHENTICATED)

    async def _attach(self, identity: V03Identity) -> None:
        self.identity = identity
        await self.attach(device_pk=identity.device_id, user_pk=identity.user_id)

    async def send_error(self, message: str, code: str = "error") -> None:
        await self.send_json({"error": message})

    async def handle(self, frame: dict[str, Any]) -> None:
        if self.identity is None:
            if self.nonce is None:
                return
            try:
                await database_sync_to_async(services.v03_challenge_verify)(identity=self.pending, nonce=self.nonce, signature_b64=frame.get("signature"))
            except services.AuthFailed as exc:
                await self.send_error(exc.message)
                await self.shut(CLOSE_UNAUTHENTICATED)
                return
            self.nonce = None
            await self.send_json({"type": "authenticated", "userId": self.pending.public_id})
            await self._attach(self.pending)
            return
        # "from" is whatever the client wrote; the sender is this connection's userId.
        await database_sync_to_async(services.v03_message_send)(sender=self.identity, to=frame.get("to"), payload=frame.get("payload"))

    async def drain_once(self) -> None:
        assert self.identity is not None
        while not self.closing:
            frames, ids, has_more = await database_sync_to_async(services.v03_pending_take)(
                identity_device_pk=self.identity.device_id, own_id=self.identity.public_id
            )
            for frame in frames:
                if self.closing:
                    return
                await self.send_json(frame)
            # The spec deletes a pending message once it has been written to the socket.
            await database_sync_to_async(services.deliveries_acknowledge)(device_pk=self.identity.device_id, message_ids=ids)
            if not has_more:
                return


# --- Enigmo (Flutter/Dart) -------------------------------------------------------------------------


CALL_FRAMES = {
    # client frame type → (action, field carrying the opaque payload, forwarded frame type)
    "call_offer": ("offer", "offer", "call_offer"),
    "call_initiate": ("offer", "offer", "call_offer"),
    "call_answer": ("answer", "answer", "call_answer"),
    "call_accept": ("answer", "answer", "call_answer"),
    "ice_candidate": ("ice", "candidate", "ice_candidate"),
    "call_candidate": ("ice", "candidate", "ice_candidate"),
    "end_call": ("end", None, "end_call"),
    "call_end": ("end", None, "end_call"),
}
MAX_SIGNAL_CHARS = 64 * 1024


class EnigmoWsConsumer(_CompatSocket):
    """One socket speaking the Enigmo JSON protocol: register/auth, then messages, history,
    receipts, contacts and call signalling. Every server frame carries `type` and `timestamp`."""

    user: EnigmoWsUser | None = None

    async def connect(self) -> None:
        # No Origin check: this socket never reads cookies, so a foreign page gains nothing.
        # Written to this socket, acknowledgement not yet committed: delivery pk → ack record.
        self.inflight: dict[int, tuple[int, str, str, int | None]] = {}
        await self.accept()

    async def reply(self, kind: str, **fields: Any) -> None:
        await self.send_json({"type": kind, "timestamp": _now(), **fields})

    async def send_error(self, message: str, code: str = "error") -> None:
        await self.reply("error", message=message, code=code)

    def _client_ip(self) -> str:
        client = self.scope.get("client") or ("unknown", 0)
        return str(client[0])

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        public: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {"register": self.do_register, "auth": self.do_auth, "ping": self.do_ping}
        private: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "send_message": self.do_send_message,
            "get_history": self.do_get_history,
            "mark_read": self.do_mark_read,
            "get_users": self.do_get_users,
            "add_to_chat": self.do_add_to_chat,
        }
        if kind in public:
            await public[kind](frame)
        elif kind in private or kind in CALL_FRAMES:
            if self.user is None:
                await self.send_error("Authentication required", "not_authenticated")
            elif kind in private:
                await private[kind](frame)
            else:
                await self.do_call(str(kind), frame)
        else:
            await self.send_error(f"Unknown message type: {str(kind)[:64]}", "unknown_type")

    async def do_ping(self, frame: dict[str, Any]) -> None:
        await self.reply("pong")

    async def do_register(self, frame: dict[str, Any]) -> None:
        user = await database_sync_to_async(services.ews_register)(
            signing_key=frame.get("publicSigningKey"),
            encryption_key=frame.get("publicEncryptionKey"),
            nickname=frame.get("nickname"),
            client_ip=self._client_ip(),
        )
        await self.reply("register_success", userId=user.public_id, user=services.ews_user_json(user))

    async def do_auth(self, frame: dict[str, Any]) -> None:
        if self.user is not None:
            await self.send_error("Already authenticated on this connection", "invalid")
            return
        user = await database_sync_to_async(services.ews_authenticate)(
            public_id=frame.get("userId"), signature_b64=frame.get("signature"), timestamp=frame.get("timestamp")
        )
        self.user = user
        # Online before the client hears auth_success; queued messages follow the answer.
        await database_sync_to_async(services.ews_presence)(user=user, online=True)
        await self.reply("auth_success", userId=user.public_id, success=True)
        await self.attach(device_pk=user.device_id, user_pk=user.user_id)

    async def on_tick(self) -> bool:
        assert self.user is not None
        await database_sync_to_async(services.ews_presence_refresh)(user=self.user)
        return True

    async def on_detach(self) -> None:
        if self.user is not None:
            await database_sync_to_async(services.ews_presence)(user=self.user, online=False)

    async def do_send_message(self, frame: dict[str, Any]) -> None:
        assert self.user is not None
        message = await database_sync_to_async(services.ews_message_send)(sender=self.user, frame=frame)
        await self.reply("message_sent", messageId=message["id"], message=message)

    async def do_get_history(self, frame: dict[str, Any]) -> None:
        assert self.user is not None
        other = frame.get("otherUserId")
        if not isinstance(other, str):
            await self.send_error("Missing interlocutor ID", "invalid")
            return
        messages = await database_sync_to_async(services.ews_history)(user=self.user, other_id=other, limit=frame.get("limit"), before=frame.get("before"))
        await self.reply("message_history", messages=messages, otherUserId=other)

    async def do_mark_read(self, frame: dict[str, Any]) -> None:
        assert self.user is not None
        message_id = frame.get("messageId")
        success = await database_sync_to_async(services.ews_mark_read)(user=self.user, message_id=message_id)
        await self.reply("message_marked_read", messageId=message_id, success=success)

    async def do_get_users(self, frame: dict[str, Any]) -> None:
        assert self.user is not None
        users = await database_sync_to_async(services.ews_contacts)(user=self.user)
        await self.reply("users_list", users=users)

    async def do_add_to_chat(self, frame: dict[str, Any]) -> None:
        assert self.user is not None
        target, info = await database_sync_to_async(services.ews_chat_add)(user=self.user, target_id=frame.get("target_user_id"))
        note = {"type": "chat_added", "user_id": self.user.public_id, "nickname": self.user.nickname or self.user.public_id, "timestamp": _now()}
        await self.channel_layer.group_send(user_group(target.user_id), {"type": "compat.frame", "frame": note})
        await self.reply("add_to_chat_success", target_user=info)

    async def do_call(self, kind: str, frame: dict[str, Any]) -> None:
        assert self.user is not None
        action, field, forwarded = CALL_FRAMES[kind]
        out: dict[str, Any] = {"type": forwarded, "from": self.user.public_id}
        if field is not None:
            value = frame.get(field)
            if not isinstance(value, str) or len(value) > MAX_SIGNAL_CHARS:
                await self.send_error(f"Missing or oversized field: {field}", "invalid")
                return
            out[field] = value
        route, call_id = await database_sync_to_async(services.ews_call_route)(user=self.user, action=action, frame=frame)
        out.update(call_id=call_id, timestamp=_now())
        # Ephemeral, like typing: straight to the peer's live sockets, never stored.
        await self.channel_layer.group_send(user_group(route.target_user_pk), {"type": "compat.frame", "frame": out})

    async def drain_once(self) -> None:
        """Push queued messages, then acknowledge them: a message written to a connected socket
        counts as delivered (the Dart server's rule), so it is never pushed again. Only
        envelopes written and not yet acknowledged count against MAX_INFLIGHT; they are also
        kept out of the next pages, so a failed acknowledgement never repeats a frame on this
        socket (it is retried on the next wake)."""
        assert self.user is not None
        while not self.closing:
            await self._settle()
            room = MAX_INFLIGHT - len(self.inflight)
            if room <= 0:
                return
            page, has_more = await database_sync_to_async(services.ews_pending_page)(
                user=self.user, exclude=sorted(self.inflight), limit=min(PAGE_SIZE, room)
            )
            for delivery_pk, message, ack in page:
                if self.closing:
                    return
                await self.reply("new_message", message=message)
                self.inflight[delivery_pk] = ack
            if not has_more:
                await self._settle()
                return

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        # Frames written before the socket went away were delivered: never push them again.
        await self._settle()

    async def _settle(self) -> None:
        if not getattr(self, "inflight", None) or self.user is None:
            return
        batch = dict(self.inflight)
        try:
            await database_sync_to_async(services.ews_deliveries_settle)(user=self.user, sent=list(batch.values()))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("compat delivery acknowledgement failed")
            return
        for pk in batch:
            self.inflight.pop(pk, None)

    async def on_event(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "presence":
            peer = services.ews_id_for_username(frame.get("user_id"))
            if peer is not None:
                await self.reply("user_status_update", userId=peer, isOnline=bool(frame.get("online")), lastSeen=frame.get("last_seen"))
        elif kind == "receipt" and frame.get("status") == "read":
            reader = services.ews_id_for_username(frame.get("user_id"))
            if reader is not None:
                await self.reply("message_read", messageId=frame.get("message_id"), readerId=reader)
