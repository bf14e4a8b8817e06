"""The relay socket: authenticates a device, drains its queue from the database in order, and
forwards live events. Channel-layer messages are only nudges; a lost one is recovered by the
periodic re-check, so nothing depends on the layer delivering (BRIEF §4)."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import logging
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.security.websocket import OriginValidator
from channels.utils import await_many_dispatch
from channels_redis.core import RedisChannelLayer
from daphne.server import Server as DaphneServer
from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connections
from rest_framework import serializers

from enigmo import ratelimit, wire
from enigmo.errors import EnigmoError, RateLimited, ValidationFailed, as_enigmo_error
from enigmo.realtime import device_group, user_group
from keys.authentication import SESSION_LOGIN_KEY, device_for_session, device_for_token, session_login_binding
from keys.models import Device
from keys.signatures import b64decode
from messaging import presence, relay, selectors, services
from messaging.apis import SendInput, send_kwargs
from messaging.events import OUTBOX

logger = logging.getLogger("enigmo.relay")

# A drain page is at most PAGE_SIZE envelopes and about PAGE_BYTES of frames: the first page of
# a connection asks for FIRST_PAGE, later ones as many as PAGE_BYTES holds at the sizes seen.
PAGE_SIZE = 1000
FIRST_PAGE = 200
PAGE_BYTES = 2 * 1024 * 1024
WINDOW = 3000  # envelopes sent on a connection and not yet acknowledged (three pages in flight)
CLOSE_UNAUTHENTICATED = 4401
CLOSE_REPLACED = 4409
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008  # a flood: more frames than settings.WS_FRAME_RATE allows
# With ?batch=1 the frames one event-loop tick produces for a socket leave as one
# {"type": "batch", "frames": [...]} frame, up to this many bytes of frames each.
BATCH_BYTES = 256 * 1024
SEND_GROUP = 64  # plain sends of one socket taken into one group commit at most
UNDECODED = object()  # a frame's JSON not read yet


def tick_seconds() -> float:
    """How often the process re-checks its sockets' queues, refreshes their presence and
    re-validates their devices (one housekeeping pass for all sockets, see Housekeeper)."""
    return float(settings.RELAY_TICK_SECONDS)


def _current_key(device_pk: int) -> str:
    return f"ws:current:{device_pk}"


def _client_ip(scope: Any) -> str:
    client = scope.get("client") or ("unknown",)
    return str(client[0])


def _origin_allowed(origin: bytes) -> bool:
    parsed = urlparse(origin.decode("latin-1").lower())
    return OriginValidator(None, settings.WS_ALLOWED_ORIGINS).valid_origin(parsed)


# --- ORM calls, named and wrapped for async --------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_thread_state = threading.local()


def db_threads() -> int:
    """Database worker threads per process (ENIGMO_RELAY_DB_THREADS). Socket work is bound by
    database round trips, so several connections in parallel beat Channels' single thread."""
    configured = settings.RELAY_DB_THREADS
    if configured:
        return max(1, int(configured))
    return 8 if connection_vendor() == "postgresql" else 2


def connection_vendor() -> str:
    from django.db import connection

    return connection.vendor


def _db_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=db_threads(), thread_name_prefix="relay-db")
        return _executor


def reset_db_executor() -> None:
    """Close every worker's database connection and stop the workers, and close the event
    loop's idle connections (tests, shutdown)."""
    global _executor
    relay.LOOP_DB.close()
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is None:
        return
    barrier = threading.Barrier(executor._max_workers)

    def close() -> None:
        try:
            barrier.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass
        connections.close_all()

    for _ in range(executor._max_workers):
        executor.submit(close)
    executor.shutdown(wait=True)


def _in_db_thread(func: Any, *args: Any, **kwargs: Any) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """Run one service call; collect its events instead of sending them from this thread.
    Broken connections are dropped at most every few seconds, not around every call (each
    check costs a health-check round trip with CONN_HEALTH_CHECKS).

    The call runs in this worker thread's own context, never the calling socket's: Django's
    cache handler is context-local, so a socket's context would get its own cache client and
    with it its own Redis connection pool (one Redis connection per WebSocket, measured)."""
    context = getattr(_thread_state, "context", None)
    if context is None:
        context = _thread_state.context = contextvars.Context()
    return context.run(_collecting, func, *args, **kwargs)


def _collecting(func: Any, *args: Any, **kwargs: Any) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    now = time.monotonic()
    if now - getattr(_thread_state, "last_cleanup", 0.0) > 5:
        # These threads live as long as the process, so their connections are reused and kept
        # (CONN_MAX_AGE, 0 for requests, would have each reconnect at every clean-up: a new
        # backend, its statements prepared again, and a batch waiting on both): only an
        # unusable one is closed here.
        for wrapper in connections.all(initialized_only=True):
            wrapper.close_at = None
        close_old_connections()
        _thread_state.last_cleanup = now
    box: list[tuple[str, dict[str, Any]]] = []
    token = OUTBOX.set(box)
    try:
        return func(*args, **kwargs), box
    finally:
        OUTBOX.reset(token)


_layer_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def layer_concurrency() -> int:
    """Channel-layer calls in flight per process (ENIGMO_RELAY_LAYER_CONCURRENCY), kept under
    the Redis pool size: redis-py's pool raises "Too many connections" instead of waiting,
    which is what kills channels-redis consumers at 1,000 sockets (BRIEF §6)."""
    return int(settings.RELAY_LAYER_CONCURRENCY)


async def layer_call(method: str, *args: Any) -> None:
    """One channel-layer call through the gate, retried briefly on pool or connection errors."""
    loop = asyncio.get_running_loop()
    gate = _layer_gates.get(loop)
    if gate is None:
        gate = _layer_gates[loop] = asyncio.Semaphore(layer_concurrency())
    layer = get_channel_layer()
    for attempt in range(5):
        try:
            async with gate:
                await getattr(layer, method)(*args)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if attempt == 4:
                raise
            logger.warning("channel layer %s failed error=%s; retrying", method, type(exc).__name__)
            await asyncio.sleep(0.05 * (attempt + 1))


async def db(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `func` in the database thread, then publish the events it produced from the loop."""
    loop = asyncio.get_running_loop()
    result, box = await loop.run_in_executor(_db_executor(), functools.partial(_in_db_thread, func, *args, **kwargs))
    if box:
        outcomes = await asyncio.gather(*(layer_call("group_send", group, event) for group, event in box), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):  # a lost nudge is recovered by the next drain
                logger.warning("channel layer send failed error=%s", type(outcome).__name__)
    return result



def _authenticate(token: str | None, session: Any) -> Device | None:
    device = device_for_token(token) if token else device_for_session(session)
    if device is not None:
        device.user  # noqa: B018 - loaded here, not in the event loop
    return device


def _session_current(session: Any, token_hash: str) -> bool:
    """A browser socket's session still exists and still names the device's current login (a
    logout or a newer login of the device replaced the token hash it was bound to)."""
    return (
        session is not None
        and session.session_key is not None
        and session.get(SESSION_LOGIN_KEY) == session_login_binding(token_hash)
        and session.exists(session.session_key)
    )


def _claim_current(device_pk: int, channel_name: str) -> None:
    """This socket is now the device's current one (`cache` is resolved here, in the database
    thread: resolved on the event loop it would be the socket's own cache client)."""
    cache.set(_current_key(device_pk), channel_name, 3 * tick_seconds() + 30)


def _on_disconnect(device: Device, channel_name: str) -> None:
    if cache.get(_current_key(device.pk)) == channel_name:
        cache.delete(_current_key(device.pk))
        services.presence_publish(device=device, online=False)


def _housekeep(sockets: list[tuple[int, int, str, str | None, Any]], revalidate: bool) -> tuple[set[int], set[int], dict[int, int]]:
    """One pass for all of a process's sockets [(device pk, user pk, channel name, token hash,
    session)]: refresh their presence and their claim on their device, and find the sockets to
    close. Returns (replaced, invalid) as device pks and device pk → undelivered envelopes. A
    handful of bulk round trips, whatever the number of sockets."""
    keys = {pk: _current_key(pk) for pk, *_ in sockets}
    current = cache.get_many(list(keys.values()))
    replaced = {pk for pk, _, channel, _, _ in sockets if current.get(keys[pk]) not in (None, channel)}
    alive = [socket for socket in sockets if socket[0] not in replaced]
    cache.set_many({keys[pk]: channel for pk, _, channel, _, _ in alive}, 3 * tick_seconds() + 30)
    presence.devices_online([(user_pk, pk) for pk, user_pk, *_ in alive])
    invalid: set[int] = set()
    if revalidate:  # device.closed is the fast path; this is the backstop if it was lost
        tokens = dict(
            Device.objects.filter(
                pk__in=[pk for pk, *_ in alive], revoked_at__isnull=True, user__is_active=True, token_hash__isnull=False
            ).values_list("pk", "token_hash")
        )
        for pk, _, _, token_hash, session in alive:
            if pk not in tokens:
                invalid.add(pk)
            elif token_hash is not None:
                if tokens[pk] != token_hash:
                    invalid.add(pk)
            elif not _session_current(session, tokens[pk]):
                invalid.add(pk)
    pending = selectors.devices_pending_counts(device_pks=[pk for pk, *_ in alive if pk not in invalid])
    return replaced, invalid, pending


class Housekeeper:
    """The periodic work of every socket of this process in one task: a socket costs no timer
    of its own, and 1,000 sockets cost a few bulk queries per period instead of 1,000 × 3
    round trips spread over it."""

    CHUNK = 500

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self.run())

    async def run(self) -> None:
        passes = 0
        while True:
            await asyncio.sleep(tick_seconds())
            passes += 1
            try:
                await self.sweep(revalidate=passes % 2 == 0)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("relay housekeeping failed")

    async def sweep(self, revalidate: bool) -> None:
        sockets = [consumer for consumer in relay.devices.values() if not consumer.closing]
        stale_before = time.monotonic() - tick_seconds() / 2
        for start in range(0, len(sockets), self.CHUNK):
            chunk = sockets[start : start + self.CHUNK]
            rows = [(c.device.pk, c.device.user_id, c.channel_name, c.token_hash, c.session) for c in chunk]
            replaced, invalid, pending = await db(_housekeep, rows, revalidate)
            for consumer in chunk:
                pk = consumer.device.pk
                if pk in replaced:
                    await consumer.shut(CLOSE_REPLACED)
                elif pk in invalid:
                    await consumer.shut(CLOSE_UNAUTHENTICATED)
                elif pending.get(pk, 0) > len(consumer.inflight) and consumer.last_drained < stale_before:
                    # More is waiting than this socket has sent and not yet had acknowledged:
                    # a nudge the channel layer lost. A socket busy with live pushes, whose
                    # undelivered envelopes are all in flight to it, is left alone (waking all
                    # of them at once was a storm of drains under load, measured).
                    consumer.wake()


HOUSEKEEPER = Housekeeper()


def _pending_page(device_pk: int, exclude: list[int], limit: int, heads_of_user: int | None = None) -> tuple[list[tuple[int, tuple[str, str, int | None], int, str]], bool, dict[str, int]]:
    # Read before the page: every envelope up to these seqs is committed, so the page sees it.
    heads = selectors.conversation_heads(user_pk=heads_of_user) if heads_of_user is not None else {}
    frames, has_more = selectors.pending_page_with_senders(device_pk=device_pk, exclude=exclude, limit=limit)
    out = []
    for delivery_pk, frame, sender_pk in frames:
        if frame["ciphertext"] is not None:
            frame["ciphertext"] = base64.b64encode(frame["ciphertext"]).decode()
        out.append((delivery_pk, (frame["id"], frame["conversation_id"], sender_pk), frame["seq"], wire.dumps(frame)))
    return out, has_more, heads


# --- input frames ----------------------------------------------------------------------------


class _SendFrame(SendInput):
    conversation_id = serializers.CharField(max_length=64)


class _AckFrame(serializers.Serializer):
    ids = serializers.ListField(child=serializers.CharField(max_length=64), max_length=WINDOW)


class _TypingFrame(serializers.Serializer):
    conversation_id = serializers.CharField(max_length=64)
    state = serializers.ChoiceField(choices=["started", "stopped"])


class _ReadFrame(serializers.Serializer):
    message_id = serializers.CharField(max_length=64)


class _MarkReadFrame(serializers.Serializer):
    conversation_id = serializers.CharField(max_length=64)
    seq = serializers.IntegerField(min_value=0)


class _Address(serializers.Serializer):
    user_id = serializers.CharField(max_length=150)
    device_id = serializers.IntegerField(min_value=1, max_value=2**32 - 1)


class _CallFrame(serializers.Serializer):
    conversation_id = serializers.CharField(max_length=64)
    call_id = serializers.CharField(max_length=64, required=False, allow_null=True, default=None)
    action = serializers.ChoiceField(choices=["offer", "answer", "ice", "end", "decline"])
    media = serializers.ChoiceField(choices=["audio", "video"], required=False, allow_null=True, default=None)
    to = _Address(many=True, max_length=200)
    payload = serializers.CharField(allow_blank=True, max_length=256 * 1024, default="")


def _plain_string(value: Any, max_length: int) -> bool:
    """What a DRF CharField would accept unchanged: a non-blank str, already stripped, no NUL."""
    return isinstance(value, str) and 0 < len(value) <= max_length and value == value.strip() and "\x00" not in value


def _plain_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _fast_send(frame: dict[str, Any]) -> dict[str, Any] | None:
    """The common send frame (no reply, reaction or attachment), validated without DRF's
    per-call field copies; it accepts only what _SendFrame accepts with the same result.
    Anything else → None, and the frame goes through _SendFrame (same answers as before)."""
    conversation_id, recipients = frame.get("conversation_id"), frame.get("recipients")
    kind = frame.get("kind", "message")
    expires_in = frame.get("expires_in")
    if (
        not _plain_string(conversation_id, 64)
        or kind not in ("message", "control")
        or frame.get("reply_to") is not None
        or frame.get("reaction_to") is not None
        or frame.get("attachments", []) != []
        or not (expires_in is None or _plain_int(expires_in, 1, services.MAX_EXPIRES_SECONDS))
        or not isinstance(recipients, list)
        or len(recipients) > 1000
        or not isinstance(frame.get("client_message_id"), str)
    ):
        return None
    try:
        client_message_id = uuid.UUID(frame["client_message_id"])
        out = []
        for r in recipients:
            user_id, device_id, ciphertext = r.get("user_id"), r.get("device_id"), r.get("ciphertext")
            if not (_plain_string(user_id, 150) and _plain_int(device_id, 1, 2**32 - 1) and isinstance(ciphertext, str)):
                return None
            out.append(services.RecipientInput(user_id=user_id, device_id=device_id, ciphertext=b64decode(ciphertext)))
    except (ValueError, TypeError, AttributeError):
        return None
    return {"conversation_id": conversation_id, "client_message_id": client_message_id, "recipients": out, "kind": kind, "expires_in": expires_in}


def _fast_ack_ids(frame: dict[str, Any]) -> list[str] | None:
    ids = frame.get("ids")
    if isinstance(ids, list) and len(ids) <= WINDOW and all(_plain_string(i, 64) for i in ids):
        return ids
    return None


def _valid(serializer_class: type[serializers.Serializer], frame: dict[str, Any]) -> dict[str, Any]:
    data = serializer_class(data=frame)
    if not data.is_valid():
        raise as_enigmo_error(serializers.ValidationError(data.errors)) or ValidationFailed()
    return dict(data.validated_data)


def _daphne_connection(send: Any) -> tuple[Any, Any] | None:
    """(daphne's server, this socket's protocol) when `send` is daphne's own reply function
    (functools.partial(Server.handle_reply, protocol)), else None (middleware, a test)."""
    if isinstance(send, functools.partial) and len(send.args) == 1 and not send.keywords:
        server = getattr(send.func, "__self__", None)
        if isinstance(server, DaphneServer) and getattr(send.func, "__func__", None) is DaphneServer.handle_reply:
            return server, send.args[0]
    return None


class LayerPump:
    """channels-redis, one receive for the whole process. Its receive() for a process-local
    channel pops whatever arrives for any channel of this process into per-channel buffers;
    with every socket calling it, each idle socket holds a lock waiter, two tasks and a wait
    of its own (≈ 2 KB a socket). Here one task keeps receiving, on a channel nobody sends
    to, and a socket waits on its own buffer only. The in-memory layer is used as it is."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.layer: Any = None

    def serves(self, layer: Any) -> bool:
        """Called once per socket: True (and the pump running on this loop) for channels-redis."""
        if not isinstance(layer, RedisChannelLayer):
            return False
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop or self.layer is not layer:
            if self.task is not None and not self.task.done() and self.task.get_loop() is loop:
                self.task.cancel()
            self.layer = layer
            self.task = loop.create_task(self.run(layer))
        return True

    async def run(self, layer: Any) -> None:
        channel = await layer.new_channel()  # same process prefix as the sockets: one Redis list
        while True:
            try:
                await layer.receive(channel)  # never addressed: it only fills the sockets' buffers
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nudges lost meanwhile are recovered by the next drain
                logger.warning("channel layer receive failed error=%s; retrying", type(exc).__name__)
                await asyncio.sleep(0.1)

    def forget(self, layer: Any, channel: str) -> None:
        """A closed socket's buffer goes (channels-redis would keep it, and what still arrives)."""
        buffers = getattr(layer, "receive_buffer", None)
        if buffers is not None:
            buffers.pop(channel, None)


PUMP = LayerPump()


class _LayerInbox:
    """Channel-layer messages into a socket's queue of client frames, bounded like the layer's
    own buffer: past `capacity` waiting frames an envelope push becomes a nudge (the drain
    fetches it from the database, where it is already stored); control messages always go in."""

    __slots__ = ("queue", "capacity")

    def __init__(self, queue: asyncio.Queue[dict[str, Any]], capacity: int) -> None:
        self.queue = queue
        self.capacity = capacity

    def put_nowait(self, message: dict[str, Any]) -> None:
        if self.queue.qsize() >= self.capacity and message.get("type") in ("relay.push", "relay.nudge"):
            message = relay.NUDGE
        self.queue.put_nowait(message)


class _Flusher:
    """The batching sockets with frames waiting, flushed by one task after this tick's work
    (a task for every socket and tick was ~3 % of the process under load)."""

    def __init__(self) -> None:
        self.waiting: dict[RelayConsumer, None] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, consumer: RelayConsumer) -> None:
        loop = asyncio.get_running_loop()
        if self.task is not None and self.task.get_loop() is not loop:  # a new event loop (tests)
            self.task, self.waiting = None, {}
        self.waiting[consumer] = None
        if self.task is None:
            self.task = loop.create_task(self.run())

    async def run(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, {}
                for consumer in batch:
                    try:
                        await consumer.flush_out()
                    except Exception:  # one socket's failure is its own
                        logger.exception("relay flush failed")
        finally:
            if self.task is asyncio.current_task():
                self.task = None


FLUSHER = _Flusher()


class RelayConsumer(AsyncWebsocketConsumer):
    """One socket of one device. Client frames are dispatched through an allow-list."""

    device: Device | None = None
    batching = False  # ?batch=1: the client reads {"type": "batch", "frames": [...]}
    buffered = False  # channels-redis: wait on this socket's buffer, filled by the PUMP
    direct: tuple[Any, Any] | None = None  # daphne's server and this socket's protocol (send_text)
    outq: list[str]
    outq_bytes = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' AsyncConsumer.__call__ with a channel-layer receive that survives layer
        errors: with the configured Redis socket_timeout (5 s) equal to channels-redis's
        BZPOPMIN timeout (5 s), an idle read can time out; that must not kill the socket."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = self._layer_receive
        self.buffered = PUMP.serves(self.channel_layer)
        self.base_send = send
        self.direct = _daphne_connection(send)
        inbox = getattr(receive, "__self__", None)
        try:
            if isinstance(inbox, asyncio.Queue) and getattr(receive, "__name__", "") == "get":
                await self._serve(inbox)
            else:
                await await_many_dispatch([receive, self.channel_receive], self.dispatch)
        except StopConsumer:
            pass
        finally:
            PUMP.forget(self.channel_layer, self.channel_name)

    async def _serve(self, inbox: asyncio.Queue[dict[str, Any]]) -> None:
        """The server's own queue of client frames (daphne's, or a test communicator's) carries
        the channel layer's messages too, so a frame costs one queue get and no task or wait of
        its own (await_many_dispatch makes a task and an asyncio.wait for every frame). With
        channels-redis the PUMP puts this channel's messages straight in; with the in-memory
        layer one task forwards them."""
        forwarder = None
        if self.buffered:
            self.channel_layer.receive_buffer[self.channel_name] = _LayerInbox(inbox, self.channel_layer.capacity)
        else:
            forwarder = asyncio.ensure_future(self._forward(_LayerInbox(inbox, getattr(self.channel_layer, "capacity", 100))))
        try:
            held: tuple[dict[str, Any], Any] | None = None  # a message read ahead, and its decoded frame
            while True:
                message, decoded = held if held is not None else (await inbox.get(), UNDECODED)
                held = None
                text = message.get("text")
                if text is None or message["type"] != "websocket.receive":
                    await self.dispatch(message)
                    continue
                if decoded is UNDECODED:
                    decoded, first = self._plain_send(text)
                else:
                    first = None  # read ahead: not a plain send
                if first is None:
                    await self.receive(text_data=text, decoded=decoded)  # as websocket_receive would
                    continue
                # Plain sends already waiting behind this one join it in the same group commit
                # (one batch, in order) instead of each waiting for the one before to be stored.
                group = [first]
                while len(group) < SEND_GROUP and not inbox.empty():
                    message = inbox.get_nowait()
                    text = message.get("text")
                    decoded, one = self._plain_send(text) if text is not None and message["type"] == "websocket.receive" else (UNDECODED, None)
                    if one is None:
                        held = (message, decoded)  # handled next, after the group's answers
                        break
                    group.append(one)
                await self.send_group(group)
        finally:
            if forwarder is not None:
                forwarder.cancel()

    async def _forward(self, inbox: _LayerInbox) -> None:
        while True:
            inbox.put_nowait(await self._layer_receive())

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without closing old connections around every frame: this consumer
        reaches the database only through its own threads, which recycle their connections."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def _layer_receive(self) -> dict[str, Any]:
        if self.buffered:
            return await self.channel_layer.receive_buffer[self.channel_name].get()
        while True:
            try:
                return await self.channel_layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nudges lost meanwhile are recovered by the next drain
                logger.warning("channel layer receive failed error=%s; retrying", type(exc).__name__)
                await asyncio.sleep(0.1)

    # --- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.batching = query.get("batch") == ["1"]
        self.outq = []
        headers = dict(self.scope.get("headers", []))
        origin = headers.get(b"origin")
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        token = token.strip() if scheme.lower() in ("token", "bearer") else ""
        if origin is not None and not _origin_allowed(origin):
            logger.warning("ws origin refused origin=%s ip=%s", origin.decode("latin-1")[:100], _client_ip(self.scope))
            await self.close()  # refused at the handshake (403), like Channels' OriginValidator
            return
        # The session cookie is a browser's credential: it counts only with an allowed Origin.
        session = self.scope.get("session") if origin is not None else None
        device = await db(_authenticate, token or None, session) if (token or session is not None) else None
        await self.accept()
        if device is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.device = device
        self.token_hash = Device.hash_token(token) if token else None
        self.session = None if token else session
        # delivery pk → (message id, conversation id, sender user pk): sent on this socket, not acked
        self.inflight: dict[int, tuple[str, str, int | None]] = {}
        self.inflight_by_message: dict[str, int] = {}
        self.catching_up = True
        self.dirty = False
        self.last_drained = 0.0
        self.page_limit = FIRST_PAGE
        self.drainer: asyncio.Task[None] | None = None
        self.closing = False
        self.ack_queue: list[tuple[list[str], Any]] = []
        self.ack_flusher: asyncio.Task[None] | None = None
        self.frames = ratelimit.FrameBucket()
        self.max_frame_bytes = settings.MAX_WS_FRAME_BYTES
        # conversation id → the highest seq this socket has sent or received in it: a live push
        # of seq s is taken directly only if s follows it, else the queue is read from the database
        self.conv_last: dict[str, int] = {}
        # Tell an older socket of this device to go, then join this device's and user's groups.
        await layer_call("group_send", device_group(device.pk), {"type": "device.replaced", "channel": self.channel_name})
        await layer_call("group_add", device_group(device.pk), self.channel_name)
        await layer_call("group_add", user_group(device.user_id), self.channel_name)
        await db(_claim_current, device.pk, self.channel_name)
        relay.register(self)
        trimmed = await db(_on_connect_after_claim, device)
        if trimmed:
            await self.send_json({"type": "trimmed", "count": trimmed})
        self.wake()
        HOUSEKEEPER.start()

    async def disconnect(self, code: int) -> None:
        if self.device is None:
            return
        self.closing = True
        relay.unregister(self)
        for task in (self.drainer, self.ack_flusher):
            if task is not None:
                task.cancel()
        try:
            await layer_call("group_discard", device_group(self.device.pk), self.channel_name)
            await layer_call("group_discard", user_group(self.device.user_id), self.channel_name)
            await db(_on_disconnect, self.device, self.channel_name)
        except Exception:
            logger.exception("presence update on disconnect failed")

    async def shut(self, code: int) -> None:
        if not self.closing:
            self.closing = True
            await self.close(code=code)

    # --- the queue: database first, nudges only wake the drain ------------------------------------

    def wake(self) -> None:
        self.dirty = True
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.create_task(self.drain())

    async def drain(self) -> None:
        try:
            while self.dirty and not self.closing:
                self.dirty = False
                while not self.closing:
                    room = WINDOW - len(self.inflight)
                    if room <= 0:
                        break  # an ack makes room and wakes the drain again
                    first = self.catching_up and not self.conv_last
                    page, has_more, heads = await db(
                        _pending_page, self.device.pk, list(self.inflight), min(self.page_limit, room), self.device.user_id if first else None
                    )
                    if page:  # the next page: as many envelopes as PAGE_BYTES holds at this page's sizes
                        average = sum(len(text) for *_, text in page) / len(page)
                        self.page_limit = max(1, min(PAGE_SIZE, int(PAGE_BYTES / average)))
                    for conversation, head in heads.items():  # head 0: nothing can be pending before seq 1
                        if head > self.conv_last.get(conversation, -1):
                            self.conv_last[conversation] = head
                    for delivery_pk, meta, seq, text in page:
                        if self.closing:
                            return
                        self.inflight[delivery_pk] = meta
                        self.inflight_by_message[meta[0]] = delivery_pk
                        if seq > self.conv_last.get(meta[1], 0):
                            self.conv_last[meta[1]] = seq
                        await self.send(text_data=text)
                    if self.catching_up:
                        await self.send_json({"type": "backlog", "has_more": has_more})
                        self.catching_up = has_more
                    if not has_more:
                        break
            self.last_drained = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("relay drain failed device=%s", self.device.pk if self.device else None)
            self.dirty = True  # the next tick or nudge retries

    async def push(self, delivery_pk: int, meta: tuple[str, str, int | None], seq: int, text: str) -> None:
        """A committed envelope from this process's group commit. Sent straight away only when
        nothing older can be waiting in the database for this socket: caught up, not draining,
        window open, and the previous seq of the conversation already seen here."""
        if self.closing:
            return
        draining = self.drainer is not None and not self.drainer.done()
        if self.catching_up or self.dirty or draining or len(self.inflight) >= WINDOW or self.conv_last.get(meta[1]) != seq - 1:
            self.wake()
            return
        self.inflight[delivery_pk] = meta
        self.inflight_by_message[meta[0]] = delivery_pk
        self.conv_last[meta[1]] = seq
        await self.send(text_data=text)

    # --- channel-layer events ---------------------------------------------------------------

    # events other processes may hand to this socket over the relay bus (messaging.relay)
    LOCAL_EVENTS = frozenset({"relay_nudge", "relay_push", "relay_event", "device_closed", "device_replaced"})

    async def relay_nudge(self, event: dict[str, Any]) -> None:
        self.wake()

    async def relay_push(self, event: dict[str, Any]) -> None:
        """A committed envelope from another process's group commit (messaging.relay)."""
        message_id, conversation_id, sender_pk = event["m"]
        await self.push(event["d"], (message_id, conversation_id, sender_pk), event["s"], event["t"])

    async def relay_event(self, event: dict[str, Any]) -> None:
        if event.get("skip_device") != self.device.pk:
            await self.send_json(event["frame"])

    async def device_closed(self, event: dict[str, Any]) -> None:
        await self.shut(CLOSE_UNAUTHENTICATED)

    async def device_replaced(self, event: dict[str, Any]) -> None:
        if event.get("channel") != self.channel_name:
            await self.shut(CLOSE_REPLACED)

    # --- client frames ----------------------------------------------------------------------

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=wire.dumps(frame))

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False) -> None:
        """With batching, a text frame joins this tick's batch (in order) instead of going out on
        its own: a backlog page, or a tick's receipts, costs one WebSocket frame, not hundreds."""
        if not self.batching or text_data is None or close:
            await self.flush_out()
            if text_data and bytes_data is None and not close:
                await self.send_text(text_data)
            else:
                await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
            return
        self.outq.append(text_data)
        self.outq_bytes += len(text_data)
        if self.outq_bytes >= BATCH_BYTES:
            await self.flush_out()
        elif len(self.outq) == 1:
            FLUSHER.add(self)  # flushed after this tick's work

    async def flush_out(self) -> None:
        if not self.outq:
            return
        frames, self.outq, self.outq_bytes = self.outq, [], 0
        text = frames[0] if len(frames) == 1 else '{"type":"batch","frames":[' + ",".join(frames) + "]}"
        await self.send_text(text)

    async def send_text(self, text: str) -> None:
        """One text frame out. Under daphne, to an open socket the frame goes to its protocol
        directly, as daphne's handle_reply would pass it on (a token socket's `send` is daphne's
        own): Channels' send, the message dict and daphne's two reply coroutines were ~4 % of
        the event loop per frame under load. Anything else takes the ASGI send."""
        if self.direct is not None and text:
            server, protocol = self.direct
            state = server.connections.get(protocol)
            if state is not None and not state.get("disconnected") and protocol.state == protocol.STATE_OPEN:
                protocol.serverSend(text, False)
                return
        await super().send(text_data=text)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        await self.flush_out()  # what was said before the close still arrives, and first
        await super().close(code=code, reason=reason)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, *, decoded: Any = UNDECODED) -> None:
        """A client frame; `decoded` is text_data's JSON when _plain_send has decoded it already."""
        if self.device is None or self.closing:
            return
        # a str holds at most 4 UTF-8 bytes a character: encode only when it could be over the cap
        size = len(text_data) if text_data is not None else len(bytes_data or b"")
        if text_data is not None and size * 4 > self.max_frame_bytes:
            size = len(text_data.encode())
        if size > self.max_frame_bytes:
            await self.shut(CLOSE_TOO_BIG)
            return
        if not self.frames.allow():
            logger.warning("ws flood closed user=%s device=%s ip=%s", self.device.user.username, self.device.device_id, _client_ip(self.scope))
            err = RateLimited(1, "Too many frames; this socket is closed.")
            await self.send_json({"type": "error", "ref": None, **err.as_dict()})
            await self.shut(CLOSE_POLICY)
            return
        ref = None
        try:
            if text_data is None:
                raise ValidationFailed("Frames are JSON text.")
            if decoded is UNDECODED:
                try:
                    decoded = wire.loads(text_data)
                except ValueError:
                    raise ValidationFailed("Malformed JSON.") from None
            frame = decoded
            if not isinstance(frame, dict):
                raise ValidationFailed("A frame is a JSON object.")
            ref = frame.get("ref")
            if ref is not None and not isinstance(ref, str | int):
                ref = None
            handler = self.HANDLERS.get(frame.get("type"))  # type: ignore[arg-type]
            if handler is None:
                err = ValidationFailed("Unknown frame type.")
                err.code = "unknown_type"
                raise err
            await handler(self, frame, ref)
        except Exception as exc:
            await self.send_error(exc, ref)

    async def send_error(self, exc: Exception, ref: Any) -> None:
        err = as_enigmo_error(exc)
        if err is None:
            logger.exception("relay frame failed", exc_info=exc)
            err = EnigmoError("The frame could not be processed.")
            err.code = "internal"
        await self.send_json({"type": "error", "ref": ref, **err.as_dict()})

    def _plain_send(self, text: str) -> tuple[Any, tuple[dict[str, Any], Any] | None]:
        """(the frame's JSON or UNDECODED, (send, ref) if it is a frame receive() would hand to
        on_send's group commit path, else None). The checks receive() makes first (size, flood
        guard, JSON) are made the same way; a frame that is not a plain send goes through
        receive() with its JSON (the flood guard is asked last: a refusal takes no token and
        receive() refuses it again)."""
        if self.device is None or self.closing or len(text) * 4 > self.max_frame_bytes:
            return UNDECODED, None
        try:
            frame = wire.loads(text)
        except ValueError:
            return UNDECODED, None  # receive() answers it
        if not isinstance(frame, dict) or frame.get("type") != "send":
            return frame, None
        fast = _fast_send(frame)
        if fast is None or not self.frames.allow():
            return frame, None
        ref = frame.get("ref")
        return frame, (fast, ref if ref is None or isinstance(ref, str | int) else None)

    async def send_group(self, group: list[tuple[dict[str, Any], Any]]) -> None:
        """Plain sends of this socket, in order, into one group commit; each answered in order."""
        submitted = []
        for fast, ref in group:
            item = services.BatchSend(sender_device=self.device, **fast)
            submitted.append((item, ref, fast["conversation_id"]))
        futures = relay.SENDS.submit_group([item for item, _, _ in submitted])
        for (item, ref, conversation_id), future in zip(submitted, futures, strict=True):
            try:
                await future
                if item.error is not None:
                    raise item.error
                answer = item.answer
                conversation = selectors.canonical_uuid(conversation_id)
                if self.conv_last.get(conversation) == answer["seq"] - 1:
                    self.conv_last[conversation] = answer["seq"]
                await self.send_json({"type": "sent", "ref": ref, **answer})
            except Exception as exc:
                await self.send_error(exc, ref)

    async def on_send(self, frame: dict[str, Any], ref: Any) -> None:
        fast = _fast_send(frame)
        if fast is not None:
            await self.send_group([(fast, ref)])
            return
        data = _valid(_SendFrame, frame)
        conversation_id = data.pop("conversation_id")
        answer, _ = await db(services.message_send,
            sender_device=self.device, conversation_id=conversation_id, **send_kwargs(data)
        )
        await self.send_json({"type": "sent", "ref": ref, **answer})

    async def on_ack(self, frame: dict[str, Any], ref: Any) -> None:
        ids = _fast_ack_ids(frame)
        self.ack_queue.append((ids if ids is not None else _valid(_AckFrame, frame)["ids"], ref))
        if self.ack_flusher is None or self.ack_flusher.done():
            self.ack_flusher = asyncio.create_task(self.flush_acks())

    async def flush_acks(self) -> None:
        """Acks arriving while one batch is in the database wait and go together in the next."""
        while self.ack_queue and not self.closing:
            batch, self.ack_queue = self.ack_queue, []
            ids = [mid for ids, _ in batch for mid in ids]
            known = [self.inflight_by_message[m] for m in ids if m in self.inflight_by_message]
            others = [m for m in ids if m not in self.inflight_by_message]
            try:
                acked, unknown = [], []
                if known:
                    sent = [(pk, *self.inflight[pk]) for pk in set(known)]
                    await relay.ACKS.submit((self.device, sent))
                    acked = [pk for pk, *_ in sent]
                if others:
                    more, unknown = await db(services.deliveries_ack, device=self.device, message_ids=others)
                    acked += more
            except Exception as exc:
                err = as_enigmo_error(exc) or EnigmoError("The acknowledgement could not be stored; send it again.")
                for _, ref in batch:
                    await self.send_json({"type": "error", "ref": ref, **err.as_dict()})
                continue
            was_full = len(self.inflight) >= WINDOW
            for pk in acked:
                meta = self.inflight.pop(pk, None)
                if meta is not None:
                    self.inflight_by_message.pop(meta[0], None)
            if was_full or self.catching_up:
                self.wake()
            missing = set(unknown)
            for frame_ids, ref in batch:
                theirs = sorted(missing.intersection(frame_ids))
                if theirs:
                    err = EnigmoError("Not found.", extra={"ids": theirs})
                    err.code = "not_found"
                    await self.send_json({"type": "error", "ref": ref, **err.as_dict()})
                elif ref is not None:
                    await self.send_json({"type": "ok", "ref": ref})

    async def on_typing(self, frame: dict[str, Any], ref: Any) -> None:
        data = _valid(_TypingFrame, frame)
        await db(services.typing_send, device=self.device, **data)
        if ref is not None:
            await self.send_json({"type": "ok", "ref": ref})

    async def on_read(self, frame: dict[str, Any], ref: Any) -> None:
        data = _valid(_ReadFrame, frame)
        await db(services.message_read, device=self.device, **data)
        if ref is not None:
            await self.send_json({"type": "ok", "ref": ref})

    async def on_mark_read(self, frame: dict[str, Any], ref: Any) -> None:
        data = _valid(_MarkReadFrame, frame)
        seq = await db(services.conversation_mark_read, device=self.device, **data)
        if ref is not None:
            await self.send_json({"type": "ok", "ref": ref, "seq": seq})

    async def on_call(self, frame: dict[str, Any], ref: Any) -> None:
        data = _valid(_CallFrame, frame)
        data["to"] = [(a["user_id"], a["device_id"]) for a in data["to"]]
        call = await db(services.call_signal, device=self.device, **data)
        await self.send_json({"type": "ok", "ref": ref, "call_id": str(call.public_id), "status": call.status})

    async def on_ping(self, frame: dict[str, Any], ref: Any) -> None:
        await self.send_json({"type": "pong", "ref": ref})

    HANDLERS = {
        "send": on_send,
        "ack": on_ack,
        "typing": on_typing,
        "read": on_read,
        "mark_read": on_mark_read,
        "call": on_call,
        "ping": on_ping,
    }


def _on_connect_after_claim(device: Device) -> int:
    services.device_queue_trim(device_pk=device.pk)
    services.presence_publish(device=device, online=True)
    return services.device_queue_take_trimmed(device_pk=device.pk)
