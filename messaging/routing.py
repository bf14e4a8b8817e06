"""WebSocket routes of the relay: the session cookie is read for browsers; tokens in the
Authorization header for native apps (checked by the consumer)."""

from channels.sessions import SessionMiddlewareStack
from django.urls import path

from messaging.consumers import RelayConsumer

websocket_urlpatterns = [path("api/v1/ws", SessionMiddlewareStack(RelayConsumer.as_asgi()))]
