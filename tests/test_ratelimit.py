"""Rate limits counted from the relay's event loop (ratelimit.hit_many) share their buckets with
those counted everywhere else (ratelimit.hit), and fail as each limit says when Redis is down."""

from __future__ import annotations

import pytest
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings

from enigmo import ratelimit
from enigmo.errors import RateLimited, ServiceUnavailable


@pytest.fixture
def limited(settings):
    settings.RATE_LIMITS_ENABLED = True
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message": "2/60", "media": "2/60"}


async def test_the_event_loop_counts_the_same_buckets_as_the_request_path(limited):
    """Two sends alice→bob through the request path use up a "2 a minute" bucket: the loop's
    count refuses a third alice→bob (with Retry-After) and still allows alice→carol; every key
    given is counted."""
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL) if settings.REDIS_URL else None
    try:
        for _ in range(2):
            await sync_to_async(ratelimit.hit)("message", 1, 2)
        first = await ratelimit.hit_many(client, "message", [(1, 2), (1, 3)])
        assert isinstance(first[0], RateLimited) and first[0].extra["retry_after"] >= 1 and first[1] is None
        assert await ratelimit.hit_many(client, "message", [(1, 3), (1, 4)]) == [None, None]
        third = await ratelimit.hit_many(client, "message", [(1, 3)])
        assert isinstance(third[0], RateLimited)
        with pytest.raises(RateLimited):
            await sync_to_async(ratelimit.hit)("message", 1, 3)
    finally:
        if client is not None:
            await client.aclose()


async def test_with_redis_down_messages_fail_open_and_other_limits_closed(limited, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
    try:
        assert await ratelimit.hit_many(client, "message", [(1, 2), (1, 3)]) == [None, None]
        (refused,) = await ratelimit.hit_many(client, "media", [(1,)])
        assert isinstance(refused, ServiceUnavailable)
    finally:
        await client.aclose()
