"""The cast: alice and bob (who talk) and eve (who is in no conversation), registered through
the real API, plus per-test isolation of the cache and rate limits."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.cache import cache

from enigmo import ratelimit
from tests.support import Account, DjangoTransport


def _clear_cache() -> None:
    """Forget cached challenges and rate limits: this run's own keys only, never FLUSHDB."""
    ratelimit.reset_local()
    if not settings.REDIS_URL:
        cache.clear()
        return
    client = cache._cache.get_client(None, write=True)
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}:*", count=1000):
        client.delete(key)


@pytest.fixture(autouse=True)
def _fresh_cache():
    _clear_cache()
    yield
    _clear_cache()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test (and its event loop) gets its own channel-layer instance: channels-redis binds
    its pools and locks to the loop that first used them."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def api(client):
    return DjangoTransport(client)


def _registered(api: DjangoTransport, name: str) -> Account:
    account = Account(name)
    account.register(api)
    account.publish_prekeys(api)
    return account


@pytest.fixture
def alice(db, api) -> Account:
    return _registered(api, "alice")


@pytest.fixture
def bob(db, api) -> Account:
    return _registered(api, "bob")


@pytest.fixture
def eve(db, api) -> Account:
    return _registered(api, "eve")


@pytest.fixture
def live_server_factory():
    """Start real daphne processes; all are stopped and their databases dropped afterwards."""
    from tests.live import drop_database, start_live_server

    started = []

    def factory(env_overrides=None, database_url=None):
        server = start_live_server(env_overrides, database_url)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
    for url in {s.database_url for s in started}:
        drop_database(url)
