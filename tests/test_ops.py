"""Operations: health with readiness, stats for staff, the OpenAPI schema and Swagger UI."""

from __future__ import annotations

import pytest
import yaml
from django.contrib.auth import get_user_model

pytestmark = pytest.mark.django_db


def test_health_reports_each_backing_service(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["timestamp"]
    assert set(body["checks"]) == {"database", "channel_layer", "broker"}


def test_health_is_degraded_when_redis_is_down(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/api/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded" and body["checks"]["broker"] == "down"


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
