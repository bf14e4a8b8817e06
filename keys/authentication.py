"""Who is calling: a device, by its API token (native apps, bots) or its session cookie
(browser, CSRF-checked). request.auth is always the Device."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, permissions
from rest_framework.request import Request

from keys.models import Device

logger = logging.getLogger("enigmo.auth")
SESSION_DEVICE_KEY = "enigmo_device_pk"
LAST_SEEN_RESOLUTION = timedelta(seconds=60)


def device_for_token(token: str) -> Device | None:
    if not token or len(token) > 200:
        return None
    device = (
        Device.objects.select_related("user")
        .filter(token_hash=Device.hash_token(token), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if device is not None:
        touch_device(device)
    return device


def device_for_session(session: Any) -> Device | None:
    pk = session.get(SESSION_DEVICE_KEY) if session is not None else None
    if pk is None:
        return None
    device = Device.objects.select_related("user").filter(pk=pk, revoked_at__isnull=True, user__is_active=True).first()
    if device is not None:
        touch_device(device)
    return device


def touch_device(device: Device) -> None:
    now = timezone.now()
    if device.last_seen_at is None or now - device.last_seen_at > LAST_SEEN_RESOLUTION:
        Device.objects.filter(pk=device.pk).update(last_seen_at=now)
        device.last_seen_at = now


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Token <token>` (or `Bearer`)."""

    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, Device] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            return None
        device = device_for_token(token.strip())
        if device is None:
            from rest_framework.exceptions import AuthenticationFailed

            logger.warning("token refused ip=%s path=%s", request.META.get("REMOTE_ADDR"), request.path)
            raise AuthenticationFailed("Invalid or revoked token.")
        return device.user, device

    def authenticate_header(self, request: Request) -> str:
        return 'Token realm="enigmo"'


class DeviceSessionAuthentication(authentication.SessionAuthentication):
    """The browser's session cookie, bound to one device at login; unsafe methods need CSRF."""

    def authenticate(self, request: Request) -> tuple[Any, Device] | None:
        device = device_for_session(getattr(request._request, "session", None))
        if device is None:
            return None
        self.enforce_csrf(request)
        return device.user, device

    def enforce_csrf(self, request: Request) -> None:
        """The same code and log line as Django's own CSRF failure (enigmo.middleware.csrf_failure)."""
        from rest_framework.exceptions import PermissionDenied

        from enigmo.errors import Forbidden

        try:
            super().enforce_csrf(request)
        except PermissionDenied:
            logger.warning("csrf refused path=%s ip=%s", request.path, request.META.get("REMOTE_ADDR"))
            err = Forbidden("CSRF verification failed; send the X-CSRFToken header.")
            err.code = "csrf_failed"
            raise err from None


class IsDeviceAuthenticated(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Device)


class IsStaffDevice(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Device) and request.user.is_staff
