"""Walk every URL the project serves without credentials: every route that is not public
answers 401/403 in the error shape, never data and never a 500."""

from __future__ import annotations

import re
import uuid

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

PUBLIC = {
    "/api/health",
    "/api/schema/",
    "/api/docs/",
    "/api/v1/auth/challenge",
    "/api/v1/auth/register",
    "/api/v1/auth/login",
    "/api/v1/devices/link",
    "/api/v1/devices/link/poll",
}


def _walk(patterns, prefix=""):
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route


def _concrete(route: str) -> str:
    path = "/" + route.lstrip("^").rstrip("$").replace("\\Z", "")
    path = re.sub(r"<int:[^>]+>", "1", path)
    path = re.sub(r"<uuid:[^>]+>", str(uuid.uuid4()), path)
    path = re.sub(r"<(?:str|slug|path)?:?[^>]+>", "x", path)
    return path


def _api_routes() -> list[str]:
    paths = {_concrete(r) for r in _walk(get_resolver().url_patterns)}
    return sorted(p for p in paths if p.startswith("/api/") and "(?P" not in p and "\\" not in p)


def test_every_private_api_route_refuses_anonymous_callers(client):
    routes = _api_routes()
    assert len(routes) >= 10
    checked = 0
    for path in routes:
        if path in PUBLIC:
            continue
        for method in ("get", "post", "delete", "patch", "put"):
            response = getattr(client, method)(path, content_type="application/json")
            assert response.status_code in (401, 403), (method, path, response.status_code)
            assert response.json()["error"]["code"] in ("not_authenticated", "forbidden"), (method, path)
            checked += 1
    assert checked >= 40


def test_public_routes_never_answer_500(client):
    for path in PUBLIC:
        for method in ("get", "post"):
            response = getattr(client, method)(path, content_type="application/json")
            assert response.status_code < 500, (method, path, response.status_code)


def test_admin_needs_a_staff_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
