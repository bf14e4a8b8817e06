"""Presence in the cache (Redis in production, so every process agrees): one key per connected
device with a TTL the socket refreshes; a dead client's key simply expires."""

from __future__ import annotations

import time
from collections.abc import Iterable

from django.core.cache import cache

PRESENCE_TTL_SECONDS = 45  # a dead client is offline at most this long after its last refresh
LAST_SEEN_TTL_SECONDS = 90 * 86400


def _device_key(device_pk: int) -> str:
    return f"presence:dev:{device_pk}"


def _last_seen_key(user_pk: int) -> str:
    return f"presence:last:{user_pk}"


def device_online(*, user_pk: int, device_pk: int) -> None:
    now = time.time()
    cache.set(_device_key(device_pk), now, timeout=PRESENCE_TTL_SECONDS)
    cache.set(_last_seen_key(user_pk), now, timeout=LAST_SEEN_TTL_SECONDS)


def device_offline(*, user_pk: int, device_pk: int) -> None:
    cache.delete(_device_key(device_pk))
    cache.set(_last_seen_key(user_pk), time.time(), timeout=LAST_SEEN_TTL_SECONDS)


def presence_of(*, devices_by_user: dict[int, Iterable[int]]) -> dict[int, tuple[bool, float | None]]:
    """user pk → (online, last seen as a UNIX time) from the cache, in one round trip."""
    keys = [_device_key(pk) for pks in devices_by_user.values() for pk in pks]
    keys += [_last_seen_key(user_pk) for user_pk in devices_by_user]
    found = cache.get_many(keys)
    out: dict[int, tuple[bool, float | None]] = {}
    for user_pk, pks in devices_by_user.items():
        online = any(_device_key(pk) in found for pk in pks)
        out[user_pk] = (online, found.get(_last_seen_key(user_pk)))
    return out


def devices_online(pairs: list[tuple[int, int]]) -> None:
    """device_online for many (user pk, device pk) at once: two bulk writes."""
    if not pairs:
        return
    now = time.time()
    cache.set_many({_device_key(device_pk): now for _, device_pk in pairs}, timeout=PRESENCE_TTL_SECONDS)
    cache.set_many({_last_seen_key(user_pk): now for user_pk, _ in pairs}, timeout=LAST_SEEN_TTL_SECONDS)
