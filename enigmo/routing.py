"""WebSocket routes of every app, collected in one list."""

from django.conf import settings

from enigmo.compat.routing import websocket_urlpatterns as compat_ws
from messaging.routing import websocket_urlpatterns as messaging_ws

# Compat routes exist only when their flag is on (docs/compat.md).
websocket_urlpatterns = [*messaging_ws, *compat_ws(enigma_v03=settings.COMPAT_ENIGMA_V03, enigmo_ws=settings.COMPAT_ENIGMO_WS)]
