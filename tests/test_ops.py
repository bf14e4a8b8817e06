"""Operations: health with readiness, stats for staff, the OpenAPI schema and Swagger UI."""

from __future__ import annotations

import pytest
import yaml
from django.contrib.auth import get_user_model

pytestmark = pytest.mark.django_db


DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


def _dead_redis_layer() -> dict:
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [DEAD_REDIS]}}}


def test_health_reports_each_backing_service(client, settings):
    """Every backing service is checked and ok: embedded, the in-memory layer (exercised) and no
    broker; production, the Redis layer and the broker."""
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["timestamp"]
    if settings.REDIS_URL:
        assert body["checks"] == {"database": "ok", "channel_layer": "ok", "broker": "ok"}
    else:
        assert body["checks"] == {"database": "ok", "channel_layer": "ok (in-memory)", "broker": "ok (embedded, no broker)"}


def test_health_is_degraded_when_redis_is_down(client, settings):
    """Channel layer and broker on a Redis that is down: 503, both reported down, quickly."""
    import time

    settings.REDIS_URL = DEAD_REDIS
    settings.CHANNEL_LAYERS = _dead_redis_layer()
    settings.CELERY_BROKER_URL = DEAD_REDIS
    started = time.monotonic()
    response = client.get("/api/health")
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["timestamp"]
    assert body["checks"] == {"database": "ok", "channel_layer": "down", "broker": "down"}


def test_health_pings_the_celery_broker_url_itself(client, settings):
    """Only the broker is unreachable (CELERY_BROKER_URL): the broker alone is down."""
    settings.CELERY_BROKER_URL = DEAD_REDIS
    response = client.get("/api/health")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"] == "down" and checks["database"] == "ok" and checks["channel_layer"].startswith("ok")


def test_a_non_redis_broker_is_checked_too_and_fails_fast(client, settings):
    """A broker on another transport (AMQP here) is reached through kombu: down, in about a second."""
    import time

    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
    started = time.monotonic()
    response = client.get("/api/health")
    assert time.monotonic() - started < 2
    assert response.status_code == 503 and response.json()["checks"]["broker"] == "down"


def test_health_exercises_the_configured_channel_layer(client, settings):
    """Only the channel layer points at a dead Redis: the layer alone is down."""
    settings.CHANNEL_LAYERS = _dead_redis_layer()
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    checks = body["checks"]
    assert checks["channel_layer"] == "down" and checks["database"] == "ok" and checks["broker"].startswith("ok")


def test_a_channel_layer_that_accepts_but_never_delivers_is_down_within_the_timeout(client, settings, monkeypatch):
    """The layer check is a real send and receive, not a ping: a layer that swallows messages
    fails it, and the health answer still comes back in about a second."""
    import asyncio
    import time

    from channels.layers import InMemoryChannelLayer

    async def never(self, channel):
        await asyncio.sleep(60)

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setattr(InMemoryChannelLayer, "receive", never)
    started = time.monotonic()
    response = client.get("/api/health")
    assert time.monotonic() - started < 2.5
    assert response.status_code == 503 and response.json()["checks"]["channel_layer"] == "down"


def test_stats_are_for_staff_only(api, alice):
    status, body = api.get("/api/stats", token=alice.token)
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert api.get("/api/stats")[0] == 401
    get_user_model().objects.filter(username="alice").update(is_staff=True)
    status, body = api.get("/api/stats", token=alice.token)
    assert status == 200
    assert set(body) == {"server", "users", "messages"}
    assert set(body["server"]) == {"uptime", "version"}
    assert body["users"]["totalUsers"] == 1 and body["users"]["onlineUsers"] == 1
    assert set(body["messages"]) == {"total", "delivered", "read"}


def test_unknown_api_route_is_json_404(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_malformed_json_is_400_in_the_error_shape(client):
    response = client.post("/api/v1/auth/login", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"


def test_openapi_schema_validates_and_docs_render(client):
    from drf_spectacular.validation import validate_schema

    response = client.get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate_schema(schema)
    assert "/api/v1/keys/prekeys/{user_id}" in schema["paths"]
    assert "/api/v1/auth/register" in schema["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    assert b"cdn" not in docs.content.lower()


def test_security_headers(client):
    response = client.get("/api/health")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "frame-ancestors 'none'" in csp
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
