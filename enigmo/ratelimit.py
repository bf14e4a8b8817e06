"""Rate limits as GCRA token buckets in the cache: Redis (atomic Lua) in production, a locked
dict in the embedded default. Each limit chooses whether to fail closed or open when the
store is down."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.base import get_key_func

from enigmo.errors import EnigmoError, RateLimited, ServiceUnavailable

logger = logging.getLogger("enigmo.ratelimit")

# KEYS[1] = bucket key; ARGV = interval_ms, burst. Returns retry-after ms (0 = allowed).
# Redis's own clock is the time base, so every server process agrees on it.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
if tat < now then tat = now end
local allow_at = tat - interval * burst + interval
if now < allow_at then return allow_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return 0
"""


@dataclass(frozen=True)
class Limit:
    """`burst` requests at once, then one per `interval_seconds`."""

    name: str
    burst: int
    interval_seconds: float
    fail_open: bool = False


def _parse(name: str, spec: str, fail_open: bool = False) -> Limit:
    burst, _, interval = spec.partition("/")
    return Limit(name, int(burst), float(interval), fail_open)


def limits() -> dict[str, Limit]:
    configured = getattr(settings, "RATE_LIMITS", {})
    return {name: _parse(name, spec, name in ("message",)) for name, spec in configured.items()}


_local_lock = threading.Lock()
_local_tat: dict[str, float] = {}


def _check_local(key: str, now_ms: float, interval_ms: float, burst: int) -> float:
    with _local_lock:
        tat = max(_local_tat.get(key, now_ms), now_ms)
        allow_at = tat - interval_ms * burst + interval_ms
        if now_ms < allow_at:
            return allow_at - now_ms
        _local_tat[key] = tat + interval_ms
        return 0.0


@functools.cache
def _key_function() -> Callable[[str, str, int], str]:
    return get_key_func(settings.CACHES["default"].get("KEY_FUNCTION"))


def _store_key(key: str) -> str:
    """The bucket's key in Redis: the cache's (its prefix and version), built here because
    `cache` is context-local: reaching it from an event loop's task builds a cache client."""
    cache_settings = settings.CACHES["default"]
    return _key_function()(key, cache_settings.get("KEY_PREFIX", ""), cache_settings.get("VERSION", 1))


def _check_redis(key: str, interval_ms: float, burst: int) -> float:
    full_key = _store_key(key)
    client = cache._cache.get_client(full_key, write=True)  # type: ignore[attr-defined]
    return float(client.eval(_GCRA_LUA, 1, full_key, int(interval_ms), burst))


def _key(limit_name: str, parts: tuple[object, ...]) -> str:
    return "rl:" + limit_name + ":" + ":".join(str(p) for p in parts)


def _unavailable(limit: Limit, exc: Exception) -> None:
    """The store is down: the limit decides (nothing, or ServiceUnavailable raised)."""
    logger.warning("rate-limit store unavailable limit=%s error=%s", limit.name, type(exc).__name__)
    if not limit.fail_open:
        raise ServiceUnavailable("Rate limiting is unavailable; retry shortly.") from exc


def _verdict(limit: Limit, parts: tuple[object, ...], wait_ms: float) -> None:
    if wait_ms > 0:
        logger.warning("rate limit hit limit=%s key=%s", limit.name, ":".join(str(p) for p in parts))
        raise RateLimited(max(1, math.ceil(wait_ms / 1000)))


def hit(limit_name: str, *parts: object) -> None:
    """Count one request against `limit_name` for the key built from `parts`; raise RateLimited
    with Retry-After when over. When the store is unreachable, fail as the limit says."""
    if not settings.RATE_LIMITS_ENABLED:
        return
    limit, key = limits()[limit_name], _key(limit_name, parts)
    interval_ms = limit.interval_seconds * 1000
    try:
        if settings.REDIS_URL:
            wait_ms = _check_redis(key, interval_ms, limit.burst)
        else:
            wait_ms = _check_local(key, time.time() * 1000, interval_ms, limit.burst)
    except Exception as exc:
        _unavailable(limit, exc)
        return
    _verdict(limit, parts, wait_ms)


async def hit_many(redis_client: Any, limit_name: str, keys: list[tuple[object, ...]]) -> list[EnigmoError | None]:
    """hit() for many keys of one limit from an event loop, in one round trip to Redis
    (`redis_client`: a redis.asyncio client of settings.REDIS_URL); the in-process buckets
    without Redis. → per key, the error hit() would raise, or None. Every key is counted."""
    if not settings.RATE_LIMITS_ENABLED or not keys:
        return [None] * len(keys)
    if not settings.REDIS_URL:
        return [_caught(hit, limit_name, *parts) for parts in keys]
    limit = limits()[limit_name]
    interval_ms = int(limit.interval_seconds * 1000)
    pipe = redis_client.pipeline(transaction=False)
    for parts in keys:
        pipe.eval(_GCRA_LUA, 1, _store_key(_key(limit_name, parts)), interval_ms, limit.burst)
    try:
        waits = await pipe.execute()
    except Exception as exc:
        return [_caught(_unavailable, limit, exc)] * len(keys)
    return [_caught(_verdict, limit, parts, float(wait_ms)) for parts, wait_ms in zip(keys, waits, strict=True)]


def _caught(func: Callable[..., None], *args: Any) -> EnigmoError | None:
    try:
        func(*args)
    except EnigmoError as exc:
        return exc
    return None


def reset_local() -> None:
    """Forget in-process buckets (tests)."""
    with _local_lock:
        _local_tat.clear()


class FrameBucket:
    """A GCRA bucket held by one WebSocket connection (no shared store: a flood is a property of
    the socket): `allow()` is False once the socket sends faster than settings.WS_FRAME_RATE."""

    def __init__(self, spec: str | None = None):
        burst, _, interval = (spec or settings.WS_FRAME_RATE).partition("/")
        self.burst, self.interval = int(burst), float(interval)
        self.tat = 0.0

    def allow(self) -> bool:
        now = time.monotonic()
        tat = max(self.tat, now)
        if now < tat - self.interval * self.burst + self.interval:
            return False
        self.tat = tat + self.interval
        return True
