"""The relay's process-wide hot path: which sockets this process holds, group commit of socket
sends and acknowledgements (one database call per event-loop tick, not per frame), direct
delivery to sockets of this process, the channel layer for devices held elsewhere, and one Redis pub/sub channel for user events
to the other processes.

The database stays the truth (BRIEF §4): an envelope is pushed to a live socket only after the
row is committed, a socket takes a push only when nothing older can be pending for it (otherwise
it drains from the database), and everything sent across processes is only a nudge or a
live-only event — a lost one is recovered by the next drain."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg
from django.conf import settings

from enigmo import ratelimit, wire
from enigmo.realtime import device_group
from messaging import selectors, services
from messaging.loopdb import LOOP_DB

if TYPE_CHECKING:
    from messaging.consumers import RelayConsumer

logger = logging.getLogger("enigmo.relay")

NUDGE = {"type": "relay.nudge"}
ORIGIN = uuid.uuid4().hex  # this process on the bus

# device pk → its socket on this process; user pk → that user's sockets on this process
devices: dict[int, RelayConsumer] = {}
users: dict[int, set[RelayConsumer]] = {}


_loop: asyncio.AbstractEventLoop | None = None

# The event loop keeps only weak references to tasks: a background task nobody holds can be
# garbage-collected while it waits (the bus listener was). Every task started here is held.
_tasks: set[asyncio.Task[Any]] = set()


def _spawn(coro: Awaitable[Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def _same_loop() -> None:
    """Sockets, batches and the bus belong to one event loop (daphne has one; tests make many)."""
    global _loop
    loop = asyncio.get_running_loop()
    if _loop is not loop:
        _loop = loop
        devices.clear()
        users.clear()
        SENDS.reset()
        ACKS.reset()
        BUS.reset()
        LOOP_DB.close()


def register(consumer: RelayConsumer) -> None:
    _same_loop()
    device = consumer.device
    devices[device.pk] = consumer
    users.setdefault(device.user_id, set()).add(consumer)
    BUS.start()


def unregister(consumer: RelayConsumer) -> None:
    device = consumer.device
    if devices.get(device.pk) is consumer:
        del devices[device.pk]
    mine = users.get(device.user_id)
    if mine is not None:
        mine.discard(consumer)
        if not mine:
            del users[device.user_id]


async def deliver_local(group: str, event: dict[str, Any]) -> None:
    """Hand a channel-layer-shaped event to this process's sockets in `group` (dev.N / usr.N)."""
    kind, _, pk = group.partition(".")
    if kind == "dev":
        one = devices.get(int(pk))
        targets = [one] if one is not None else []
    elif kind == "usr":
        targets = list(users.get(int(pk), ()))
    else:
        return
    name = event.get("type", "").replace(".", "_")
    for consumer in targets:
        handler = getattr(consumer, name, None)
        if handler is None or name not in consumer.LOCAL_EVENTS:
            continue
        try:
            await handler(event)
        except Exception:
            logger.exception("local delivery failed group=%s", group)


async def publish(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Events produced by a relay database call. A device held by this process gets its event
    directly and nothing leaves the process; any other device (another process, a compat
    socket, nobody) through the channel layer as before. User events (receipts) go to this
    process's sockets directly and to the other processes in one bus message per tick."""
    from messaging.consumers import layer_call

    elsewhere = []
    for group, event in events:
        if group.startswith("dev."):
            if int(group[4:]) in devices:
                await deliver_local(group, event)
            else:
                elsewhere.append(layer_call("group_send", group, event))
            continue
        await deliver_local(group, event)
        BUS.send(group, event)
    if elsewhere:
        for outcome in await asyncio.gather(*elsewhere, return_exceptions=True):
            if isinstance(outcome, Exception):  # a lost nudge is recovered by the next drain
                logger.warning("channel layer send failed error=%s", type(outcome).__name__)


# --- batching: one database call per tick ------------------------------------------------------


class Batcher:
    """Collects items submitted during one event-loop tick and runs them through `run` in one
    call; items that arrive meanwhile form the next batch (at most `parallel` batches run)."""

    def __init__(self, run: Callable[[list[Any]], Awaitable[None]], parallel: int = 2, max_items: int = 1000) -> None:
        self.run = run
        self.parallel = parallel
        self.max_items = max_items
        self.pending: list[tuple[Any, asyncio.Future[None]]] = []
        self.group_ends: dict[int, int] = {}  # end → start (in pending) of each group of several items
        self.running = 0
        self.scheduled = False

    def reset(self) -> None:
        self.pending, self.group_ends, self.running, self.scheduled = [], {}, 0, False

    def submit(self, item: Any) -> asyncio.Future[None]:
        return self.submit_group([item])[0]

    def submit_group(self, items: list[Any]) -> list[asyncio.Future[None]]:
        """Items that go into the same batch, in this order (never split between two batches,
        which may run side by side)."""
        _same_loop()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        if len(items) > 1:
            self.group_ends[len(self.pending) + len(items)] = len(self.pending)
        self.pending.extend(zip(items, futures, strict=True))
        if not self.scheduled and self.running < self.parallel:
            self.scheduled = True
            loop.call_soon(self._start)
        return futures

    def _start(self) -> None:
        self.scheduled = False
        while self.pending and self.running < self.parallel:
            cut = min(self.max_items, len(self.pending))
            for end, start in self.group_ends.items():  # a cut inside a group moves to its end
                if start < cut < end:
                    cut = end
            batch, self.pending = self.pending[:cut], self.pending[cut:]
            self.group_ends = {end - cut: start - cut for end, start in self.group_ends.items() if start >= cut}
            self.running += 1
            _spawn(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future[None]]]) -> None:
        try:
            await self.run([item for item, _ in batch])
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.running -= 1
            if self.pending and not self.scheduled:
                self.scheduled = True
                asyncio.get_running_loop().call_soon(self._start)


async def in_db(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """Run `func` on a relay database thread; returns its result and the events it produced."""
    from messaging.consumers import _db_executor, _in_db_thread

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_executor(), functools.partial(_in_db_thread, func, *args, **kwargs))


def _wire_texts(items: list[services.BatchSend]) -> None:
    for item in items:
        item.pushes = [
            (device_pk, delivery_pk, wire.dumps({**frame, "ciphertext": base64.b64encode(frame["ciphertext"]).decode()}))
            for device_pk, delivery_pk, frame in item.pushes
        ]


def _send_batch(items: list[services.BatchSend]) -> None:
    services.messages_send_batch(items=items)
    _wire_texts(items)  # built here, off the event loop's critical section


async def _store_on_loop(items: list[services.BatchSend]) -> bool:
    """The group commit on the event loop's own connection (loopdb), when the batch's checks need
    no database read (services.known_batch): the "message" rate limit counted in one round trip
    to Redis, then one statement. False: the database threads' path must store the sends that
    have no error yet (nothing of them was stored, or a repeat of it is, which that path's look-up
    finds and answers as message_send does)."""
    if not LOOP_DB.enabled:
        return False
    batch = services.known_batch(items)
    if batch is None:
        return False
    if batch.limits:
        client = await BUS.redis() if BUS.enabled else None
        errors = await ratelimit.hit_many(client, "message", [bucket for _, buckets in batch.limits for bucket in buckets])
        verdicts = iter(errors)
        for item, buckets in batch.limits:
            item.counted = True
            item.error = next((error for error in [next(verdicts) for _ in buckets] if error is not None), None)
    if all(item.error is not None for item, _, _ in batch.fast):
        return True
    sql, params, answer = services.known_batch_statement(batch)
    try:
        rows = await LOOP_DB.fetch(sql, params)
    except psycopg.Error as exc:  # a repeat (the idempotency index), a deadlock, a lost connection
        logger.info("group commit handed to the database threads error=%s", type(exc).__name__)
        return False
    if not answer(rows):
        return False
    _wire_texts(items)
    return True


async def _run_sends(items: list[services.BatchSend]) -> None:
    if await _store_on_loop(items):
        box: list[tuple[str, dict[str, Any]]] = []
    else:
        _, box = await in_db(_send_batch, [item for item in items if item.error is None])
    events: list[tuple[str, dict[str, Any]]] = list(box)
    for item in items:
        if item.answer is None:
            continue
        if not item.pushes:
            continue
        conversation, seq = selectors.canonical_uuid(item.conversation_id), item.answer["seq"]
        meta = (item.answer["id"], conversation, item.sender_device.user_id)
        for device_pk, delivery_pk, text in item.pushes:
            consumer = devices.get(device_pk)
            if consumer is not None:
                await consumer.push(delivery_pk, meta, seq, text)
            elif BUS.enabled:
                # Held by another process, or by none: the committed envelope itself rides the
                # bus (one PUBLISH per tick for all of them) and that process pushes it without
                # reading it back; if it is lost, the device's next drain finds it.
                BUS.send(device_group(device_pk), {"type": "relay.push", "d": delivery_pk, "m": meta, "s": seq, "t": text})
            else:
                events.append((device_group(device_pk), NUDGE))
    if events:
        await publish(events)


def _ack_batch(acks: list[tuple[Any, list[tuple[int, str, str, int | None]]]]) -> None:
    services.deliveries_ack_sent_many(acks=acks)


async def _run_acks(acks: list[tuple[Any, list[tuple[int, str, str, int | None]]]]) -> None:
    if LOOP_DB.enabled:
        try:
            await LOOP_DB.fetch(*services.ack_statement(acks), prepare=False)
        except psycopg.Error as exc:  # the database threads' path runs it again (it is idempotent)
            logger.info("acknowledgements handed to the database threads error=%s", type(exc).__name__)
        else:
            await publish(services.ack_receipts(acks))
            return
    _, box = await in_db(_ack_batch, acks)
    if box:
        await publish(list(box))


SENDS = Batcher(_run_sends, parallel=int(os.environ.get("ENIGMO_RELAY_SEND_BATCHES", 2)))
ACKS = Batcher(_run_acks, parallel=1)


# --- the bus: one Redis pub/sub channel shared by every process -----------------------------------


PEER_CHECK_SECONDS = 1.0


class Bus:
    """Cross-process events, one PUBLISH per tick with everything collected in it, and one
    subscriber per process. At most once, like the channel layer: only what the database
    already holds (committed envelopes, nudges) and live-only events travel here.

    A process alone on the bus publishes nothing: every PUBLISH would come back only to
    itself (measured: a tenth of a lone process's event loop at 1,000 msg/s, in the write to
    Redis and reading its own messages back). Whether others listen is known from the
    channel's subscriber count, read every PEER_CHECK_SECONDS, and at once from any message
    another process sends: each one announces itself when it subscribes."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.outbox: list[tuple[str, dict[str, Any]]] = []
        self.flushing, self.started, self.client = False, False, None
        self.peers = True  # until the subscriber count says otherwise
        self.heard_at = 0.0  # when another process's message last arrived

    @property
    def enabled(self) -> bool:
        return bool(getattr(settings, "REDIS_URL", ""))

    def channel(self) -> str:
        return f"{settings.REDIS_KEY_PREFIX}:relay-bus"

    def start(self) -> None:
        if self.started or not self.enabled:
            return
        self.started = True
        _spawn(self._listen())
        _spawn(self._count_peers())

    def send(self, group: str, event: dict[str, Any]) -> None:
        if not self.enabled or not self.peers:
            return
        self.outbox.append((group, event))
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_soon(lambda: _spawn(self._flush()))

    async def redis(self) -> Any:
        """This process's Redis client on the event loop (settings.REDIS_URL)."""
        if self.client is None:
            import redis.asyncio as redis

            self.client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        return self.client

    async def _flush(self) -> None:
        try:
            while self.outbox:
                batch, self.outbox = self.outbox, []
                payload = wire.dumps({"o": ORIGIN, "e": batch})
                try:
                    if await (await self.redis()).publish(self.channel(), payload) > 1:
                        self.peers = True
                except Exception as exc:  # at most once: the next drain recovers envelopes
                    logger.warning("relay bus publish failed error=%s", type(exc).__name__)
        finally:
            self.flushing = False

    async def _listen(self) -> None:
        import redis.asyncio as redis

        while True:
            client = redis.Redis.from_url(settings.REDIS_URL)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel())
                # Announce this process: the others start publishing to it now, not at their
                # next count of subscribers.
                await client.publish(self.channel(), wire.dumps({"o": ORIGIN, "e": []}))
                async for message in pubsub.listen():
                    data = wire.loads(message["data"])
                    if data.get("o") == ORIGIN:
                        continue
                    self.peers, self.heard_at = True, time.monotonic()
                    for group, event in data.get("e", []):
                        await deliver_local(group, event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("relay bus receive failed error=%s; resubscribing", type(exc).__name__)
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass

    async def _count_peers(self) -> None:
        """Is any other process subscribed? (This one counts itself once it listens.) A count
        read before a newcomer's announcement arrived does not silence the bus."""
        while True:
            await asyncio.sleep(PEER_CHECK_SECONDS)
            try:
                ((_, count),) = await (await self.redis()).pubsub_numsub(self.channel())
                if count > 1:
                    self.peers = True
                elif time.monotonic() - self.heard_at > 2 * PEER_CHECK_SECONDS:
                    self.peers = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not known: publish, as before
                self.peers = True
                logger.warning("relay bus count failed error=%s", type(exc).__name__)


BUS = Bus()
