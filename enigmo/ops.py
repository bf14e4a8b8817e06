"""Operational endpoints: health with readiness of each backing service, and stats for staff."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from keys.authentication import IsStaffDevice
from keys.models import Device

STARTED_AT = time.time()
VERSION = "0.1.0"


def _check_database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


CHECK_TIMEOUT_SECONDS = 1.0


def _check_redis_url(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _check_broker() -> str:
    """Reach the Celery broker itself (CELERY_BROKER_URL), which need not be the cache's Redis."""
    url = settings.CELERY_BROKER_URL
    if url.startswith("memory://"):
        return "ok (embedded, no broker)"
    if url.startswith(("redis://", "rediss://")):
        return "ok" if _check_redis_url(url) else "down"
    try:
        from kombu import Connection

        with Connection(url, connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(max_retries=0, timeout=CHECK_TIMEOUT_SECONDS)  # one attempt, no back-off
        return "ok"
    except Exception:
        return "down"


async def _layer_round_trip(layer: Any) -> bool:
    # A general (not process-local) channel: its receive reads only this channel's key and never
    # joins the process-wide receive loop the sockets share. An unread message expires with the
    # layer's expiry.
    channel = f"enigmo.health.{uuid.uuid4().hex}"
    nonce = uuid.uuid4().hex
    await layer.send(channel, {"type": "health.ping", "nonce": nonce})
    message = await layer.receive(channel)
    return message.get("nonce") == nonce


def _check_channel_layer() -> str:
    """A send and a receive on a fresh channel of the configured layer, bounded in time."""
    from asgiref.sync import async_to_sync
    from channels.layers import InMemoryChannelLayer, get_channel_layer

    async def bounded(layer: Any) -> bool:
        return await asyncio.wait_for(_layer_round_trip(layer), timeout=CHECK_TIMEOUT_SECONDS)

    try:
        layer = get_channel_layer()
        if layer is None:
            return "down"
        ok = async_to_sync(bounded)(layer)
    except Exception:
        return "down"
    if not ok:
        return "down"
    return "ok (in-memory)" if isinstance(layer, InMemoryChannelLayer) else "ok"


def readiness() -> dict[str, str]:
    return {
        "database": "ok" if _check_database() else "down",
        "channel_layer": _check_channel_layer(),
        "broker": _check_broker(),
    }


class HealthApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: inline_serializer("Health", {"status": serializers.CharField(), "timestamp": serializers.CharField(), "checks": serializers.DictField()})
        },
        operation_id="health",
    )
    def get(self, request: Request) -> Response:
        checks = readiness()
        healthy = all(value.startswith("ok") for value in checks.values())
        body = {"status": "ok" if healthy else "degraded", "timestamp": timezone.now().isoformat(), "checks": checks}
        return Response(body, status=200 if healthy else 503)


def online_user_count() -> int:
    since = timezone.now() - timedelta(seconds=60)
    return Device.objects.filter(revoked_at__isnull=True, last_seen_at__gte=since).values("user_id").distinct().count()


class StatsApi(APIView):
    def get_permissions(self) -> list[Any]:
        if getattr(settings, "COMPAT_ENIGMO_WS", False):
            return [AllowAny()]
        return [IsStaffDevice()]

    @extend_schema(responses={200: inline_serializer("Stats", {"server": serializers.DictField(), "users": serializers.DictField(), "messages": serializers.DictField()})}, operation_id="stats")
    def get(self, request: Request) -> Response:
        from messaging.models import Delivery, Message

        return Response(
            {
                "server": {"uptime": round(time.time() - STARTED_AT, 3), "version": VERSION},
                "users": {"totalUsers": get_user_model().objects.filter(is_active=True).count(), "onlineUsers": online_user_count()},
                "messages": {
                    "total": Message.objects.count(),
                    "delivered": Delivery.objects.filter(delivered_at__isnull=False).count(),
                    "read": Delivery.objects.filter(read_at__isnull=False).count(),
                },
            }
        )
