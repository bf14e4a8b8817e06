"""HTTP middleware: Content-Security-Policy and JSON errors for everything under /api/."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

from enigmo.errors import NotFound, PayloadTooLarge, ServiceUnavailable, ValidationFailed, as_enigmo_error, error_response

logger = logging.getLogger("enigmo.http")

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'{extra}",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class ContentSecurityPolicyMiddleware:
    """Scripts from self only (plus wasm for libsodium); hashes of inline import maps may be added by a view."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        hashes = getattr(request, "csp_script_hashes", [])
        extra = "".join(f" 'sha256-{h}'" for h in hashes)
        response.setdefault("Content-Security-Policy", CSP.format(extra=extra))
        response.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        response.setdefault("Permissions-Policy", "camera=(self), microphone=(self), geolocation=()")
        return response


def json_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return error_response(NotFound())
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Exception())


def json_500(request: HttpRequest) -> HttpResponse:
    # Called inside Django's except block: a database outage anywhere (middleware, session,
    # a non-DRF view) is a 503 the client retries, not a 500.
    if isinstance(sys.exc_info()[1], (OperationalError, InterfaceError)):
        logger.warning("database unavailable path=%s", request.path)
        return error_response(ServiceUnavailable())
    if request.path.startswith("/api/"):
        err = ServiceUnavailable("An unexpected error occurred.")
        err.code, err.status = "internal", 500
        return error_response(err)
    from django.views.defaults import server_error

    return server_error(request)


def json_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    err = as_enigmo_error(exception) if exception else None
    if isinstance(err, PayloadTooLarge):
        return error_response(err)
    return error_response(ValidationFailed("Bad request."))


def json_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from enigmo.errors import Forbidden

    return error_response(Forbidden())


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    from enigmo.errors import Forbidden

    logger.warning("csrf refused path=%s ip=%s", request.path, request.META.get("REMOTE_ADDR"))
    err = Forbidden("CSRF verification failed; send the X-CSRFToken header.")
    err.code = "csrf_failed"
    return error_response(err)
