"""Who is calling: a device, by its API token (native apps, bots) or its session cookie
(browser, CSRF-checked). request.auth is always the Device."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, permissions
from rest_framework.request import Request

from keys.models import Device

logger = logging.getLogger("enigmo.auth")
SESSION_DEVICE_KEY = "enigmo_device_pk"
# The session is bound to the login that created it: a digest of the device's token hash at
# that login. Logging out (or in again) replaces the token hash, so the session dies with it.
SESSION_LOGIN_KEY = "enigmo_login"
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


def session_login_binding(token_hash: str) -> str:
    """What the session stores to name its login: derived from, never equal to, the token hash."""
    return hashlib.sha256(f"enigmo-session-v1:{token_hash}".encode()).hexdigest()


def session_bind(session: Any, *, device: Device, token: str) -> None:
    """Tie a fresh browser session to this device and to the login that issued `token`."""
    session[SESSION_DEVICE_KEY] = device.pk
    session[SESSION_LOGIN_KEY] = session_login_binding(Device.hash_token(token))


def device_for_session(session: Any) -> Device | None:
    """The session's device while the login that created the session is still current."""
    if session is None:
        return None
    pk, binding = session.get(SESSION_DEVICE_KEY), session.get(SESSION_LOGIN_KEY)
    if pk is None or not binding:
        return None
    device = (
        Device.objects.select_related("user")
        .filter(pk=pk, revoked_at__isnull=True, user__is_active=True, token_hash__isnull=False)
        .first()
    )
    if device is None or not hmac.compare_digest(session_login_binding(device.token_hash or ""), str(binding)):
        return None
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
