"""WebSocket routes of the relay: the session cookie is read for browsers; tokens in the
Authorization header for native apps (checked by the consumer)."""

from typing import Any

from channels.sessions import SessionMiddlewareStack
from django.urls import path

from messaging.consumers import RelayConsumer


class SessionIfCookie:
    """Channels' session middleware only for a handshake that carries a Cookie header (a
    browser). A token socket has no session to read, and the middleware would cost it, for the
    socket's whole life, a session store and two more copies of the scope."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.with_session = SessionMiddlewareStack(inner)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if any(name == b"cookie" for name, _ in scope.get("headers", ())):
            return await self.with_session(scope, receive, send)
        return await self.inner(scope, receive, send)


websocket_urlpatterns = [path("api/v1/ws", SessionIfCookie(RelayConsumer.as_asgi()))]
