"""HTTP and WebSocket access to an Enigmo server: JSON requests with `Authorization: Token`,
errors turned into ApiError, raw media upload/download, and the relay socket."""

from __future__ import annotations

import base64
import collections
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from .errors import ApiError, ClientError

TIMEOUT = 30.0
USER_AGENT = "enigmo-cli/1"


class Api:
    """One server, optionally one device token."""

    def __init__(self, server: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError(f"--server must be an http:// or https:// URL, got {server!r}")
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    # --- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                auth: bool = True, want_bytes: bool = False) -> Any:
        url = self.server + "/api/v1" + path
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        data: bytes | None = None
        if raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
        elif body is not None or method == "POST":
            data = json.dumps(body if body is not None else {}).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Token {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                payload = response.read()
                ctype = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raise self._error(err) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach {self.server}: {reason}", code="unreachable") from None
        if want_bytes:
            return payload
        if not payload:
            return None
        if not ctype.startswith("application/json"):
            raise ClientError(f"unexpected answer from {self.server} ({ctype or 'no content type'}); is it an Enigmo server?")
        return json.loads(payload)

    @staticmethod
    def _error(err: urllib.error.HTTPError) -> ApiError:
        raw = err.read()
        code, message, extra = "http_error", err.reason or "error", {}
        try:
            body = json.loads(raw)
            error = body.get("error", {}) if isinstance(body, dict) else {}
            if isinstance(error, dict) and error:
                extra = {k: v for k, v in error.items() if k not in ("code", "message")}
                code = str(error.get("code", code))
                message = str(error.get("message", message))
        except (ValueError, AttributeError):
            pass
        retry = err.headers.get("Retry-After") if err.headers else None
        return ApiError(err.code, code, message, extra, int(retry) if retry and retry.isdigit() else None)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    # --- endpoints --------------------------------------------------------------------------

    def challenge(self) -> bytes:
        return base64.b64decode(self.post("/auth/challenge", auth=False)["nonce"])

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return self.get(f"/conversations/{urllib.parse.quote(conversation_id)}")

    def messages(self, conversation_id: str, after_seq: int = 0, limit: int = 100) -> dict[str, Any]:
        query = urllib.parse.urlencode({"after_seq": after_seq, "limit": limit})
        return self.get(f"/conversations/{urllib.parse.quote(conversation_id)}/messages?{query}")

    def media_upload(self, conversation_id: str, blob: bytes) -> dict[str, Any]:
        query = urllib.parse.urlencode({"conversation_id": conversation_id})
        return self.request("POST", f"/media/upload?{query}", raw=blob)

    def media_download(self, media_id: str) -> bytes:
        return self.request("GET", f"/media/{urllib.parse.quote(media_id)}", want_bytes=True)

    # --- the relay socket -------------------------------------------------------------------

    def ws_url(self) -> str:
        parts = urllib.parse.urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        # batch=1: the frames the server produces in one tick arrive as one batch frame (Relay unpacks)
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/api/v1/ws", "batch=1", ""))

    def socket(self) -> "Relay":
        if not self.token:
            raise ClientError("not logged in")
        try:
            conn = connect(self.ws_url(), additional_headers={"Authorization": f"Token {self.token}"},
                           open_timeout=self.timeout, max_size=2**20, user_agent_header=USER_AGENT)
        except InvalidStatus as exc:
            raise ClientError(f"the server refused the socket ({exc.response.status_code})", code="ws_refused") from None
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
            raise ClientError(f"cannot open the socket to {self.server}: {exc}", code="unreachable") from None
        return Relay(conn)


CLOSE_UNAUTHENTICATED = 4401
CLOSE_REPLACED = 4409


class Relay:
    """The relay socket: JSON frames in and out; `recv` returns None on timeout."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._ref = 0
        self._unpacked: collections.deque[dict[str, Any]] = collections.deque()

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        if self._unpacked:
            return self._unpacked.popleft()
        try:
            text = self.conn.recv(timeout=timeout)
        except TimeoutError:
            return None
        frame = json.loads(text)
        if isinstance(frame, dict) and frame.get("type") == "batch" and isinstance(frame.get("frames"), list):
            self._unpacked.extend(f for f in frame["frames"] if isinstance(f, dict))
            return self._unpacked.popleft() if self._unpacked else None
        return frame if isinstance(frame, dict) else None

    def send(self, frame: dict[str, Any]) -> int:
        self._ref += 1
        self.conn.send(json.dumps({**frame, "ref": self._ref}))
        return self._ref

    def close_code(self) -> int | None:
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Api", "Relay", "ConnectionClosed", "CLOSE_REPLACED", "CLOSE_UNAUTHENTICATED"]
