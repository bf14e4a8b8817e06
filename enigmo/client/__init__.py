"""Enigmo's command-line and library client: an encrypted local key store, the HTTP and
WebSocket API, and a device that encrypts and decrypts locally with enigmo.protocol."""

from .errors import ApiError, ClientError
from .store import KeyStore

__all__ = ["ApiError", "ClientError", "KeyStore"]
