"""The profile under test is the one CI asked for, and its services really answer."""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.db import connection


def test_the_expected_profile_is_active():
    """CI sets ENIGMO_EXPECT_PROFILE; a production run must not silently fall back to SQLite."""
    expected = os.environ.get("ENIGMO_EXPECT_PROFILE")
    engine = settings.DATABASES["default"]["ENGINE"]
    if expected == "production":
        assert engine == "django.db.backends.postgresql"
        assert settings.REDIS_URL
        assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
        assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
        assert settings.CELERY_BROKER_URL.startswith("redis://")
    elif expected == "embedded":
        assert engine == "django.db.backends.sqlite3"
        assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
        assert not settings.REDIS_URL


@pytest.mark.django_db
def test_database_answers():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone()[0] == 1


def test_redis_answers_when_configured():
    if not settings.REDIS_URL:
        assert os.environ.get("ENIGMO_EXPECT_PROFILE") != "production"
        return
    import redis

    assert redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
