"""One error hierarchy, rendered as {"error": {"code", "message"}} by the API and the consumers."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DatabaseError, DataError, IntegrityError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger("enigmo.errors")


class EnigmoError(Exception):
    """A failure a client can act on: a stable code, a message, an HTTP status."""

    code = "error"
    status = 400
    message = "The request could not be processed."

    def __init__(self, message: str | None = None, *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.extra = extra or {}
        self.headers = headers or {}

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.extra)
        return {"error": body}


class ValidationFailed(EnigmoError):
    code, status, message = "invalid", 400, "The request is invalid."


class NotAuthenticated(EnigmoError):
    code, status, message = "not_authenticated", 401, "Authentication credentials were not provided or are invalid."


class Forbidden(EnigmoError):
    code, status, message = "forbidden", 403, "You are not allowed to do this."


class NotFound(EnigmoError):
    code, status, message = "not_found", 404, "Not found."


class Conflict(EnigmoError):
    code, status, message = "conflict", 409, "The request conflicts with the current state."


class PayloadTooLarge(EnigmoError):
    code, status, message = "too_large", 413, "The payload is too large."


class RateLimited(EnigmoError):
    code, status, message = "rate_limited", 429, "Too many requests; retry later."

    def __init__(self, retry_after: int, message: str | None = None):
        super().__init__(message, extra={"retry_after": retry_after}, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(EnigmoError):
    code, status, message = "unavailable", 503, "A backing service is unavailable; retry shortly."


def error_response(exc: EnigmoError) -> JsonResponse:
    response = JsonResponse(exc.as_dict(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _flatten_detail(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten_detail(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten_detail(item) for item in detail)
    return str(detail)


def as_enigmo_error(exc: Exception) -> EnigmoError | None:
    """Translate framework exceptions into the one hierarchy; None for unexpected errors."""
    if isinstance(exc, EnigmoError):
        return exc
    if isinstance(exc, drf_exceptions.Throttled):
        return RateLimited(int(exc.wait or 1))
    if isinstance(exc, drf_exceptions.ValidationError):
        return ValidationFailed(_flatten_detail(exc.detail), extra={"fields": exc.detail} if isinstance(exc.detail, dict) else None)
    if isinstance(exc, drf_exceptions.ParseError):
        return ValidationFailed(f"Malformed request body: {exc.detail}")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        err = ValidationFailed(str(exc.detail))
        err.code, err.status = "unsupported_media_type", 415
        return err
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        return NotAuthenticated(str(exc.detail))
    if isinstance(exc, (drf_exceptions.PermissionDenied, PermissionDenied)):
        return Forbidden(str(getattr(exc, "detail", "")) or None)
    if isinstance(exc, (drf_exceptions.NotFound, Http404)):
        return NotFound()
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        err = ValidationFailed(str(exc.detail))
        err.code, err.status = "method_not_allowed", 405
        return err
    if isinstance(exc, drf_exceptions.NotAcceptable):
        err = ValidationFailed(str(exc.detail))
        err.code, err.status = "not_acceptable", 406
        return err
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is too large.")
    if isinstance(exc, IntegrityError):
        # A concurrent request stored the same thing first.
        return Conflict("The request conflicts with data stored meanwhile; retry.")
    if isinstance(exc, DataError):
        return ValidationFailed("A value is out of range.")
    if isinstance(exc, (OperationalError, InterfaceError)):
        logger.warning("database unavailable: %s", type(exc).__name__)
        return ServiceUnavailable()
    if isinstance(exc, drf_exceptions.APIException):
        err = EnigmoError(str(exc.detail))
        err.status = exc.status_code
        return err
    return None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    err = as_enigmo_error(exc)
    if err is None:
        if isinstance(exc, DatabaseError):
            logger.exception("database error")
            err = ServiceUnavailable()
        else:
            return None
    if err.status == 429:
        request = context.get("request")
        device = getattr(request, "_auth", None)
        logger.warning(
            "rate limited path=%s user=%s ip=%s",
            getattr(request, "path", "?"),
            getattr(getattr(device, "user", None), "username", "-"),
            getattr(request, "META", {}).get("REMOTE_ADDR", "unknown"),
        )
    response = Response(err.as_dict(), status=err.status)
    for name, value in err.headers.items():
        response[name] = value
    if err.status == 401:
        response["WWW-Authenticate"] = 'Token realm="enigmo"'
    return response
