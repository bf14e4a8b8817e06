"""Operational endpoints: health with readiness of each backing service, and stats for staff."""

from __future__ import annotations

import time
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


def _check_redis() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def readiness() -> dict[str, str]:
    redis_ok = _check_redis() if settings.REDIS_URL else None
    return {
        "database": "ok" if _check_database() else "down",
        "channel_layer": ("ok" if redis_ok else "down") if settings.REDIS_URL else "ok (in-memory)",
        "broker": ("ok" if redis_ok else "down") if settings.REDIS_URL else "ok (embedded, no broker)",
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
