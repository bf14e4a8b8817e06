"""WebSocket routes of the compatibility surfaces, each present only when its flag is on."""

from __future__ import annotations

from typing import Any

from django.urls import path, re_path

from enigmo.compat.consumers import EnigmaV03Consumer, EnigmoWsConsumer


def websocket_urlpatterns(*, enigma_v03: bool, enigmo_ws: bool) -> list[Any]:
    routes: list[Any] = []
    if enigma_v03:
        routes += [
            re_path(r"^ws/(?P<user_id>[^/]+)$", EnigmaV03Consumer.as_asgi()),  # v0.3.1
            re_path(r"^connect/(?P<user_id>[^/]+)$", EnigmaV03Consumer.as_asgi()),  # v0.3.0
        ]
    if enigmo_ws:
        routes.append(path("ws", EnigmoWsConsumer.as_asgi()))
    return routes
