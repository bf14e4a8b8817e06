"""Client-side failures, each with a message fit to print on one line."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A failure the user can act on; the CLI prints `message` and exits non-zero."""

    def __init__(self, message: str, *, code: str = "client_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ApiError(ClientError):
    """The server answered with an error: its HTTP status, code, message and extra fields."""

    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(f"server said {status} {code}: {message}", code=code)
        self.detail = message  # the server's own words, without the status and code
        self.status = status
        self.extra = extra or {}
        self.retry_after = retry_after
