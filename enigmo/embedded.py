"""The embedded default has no broker: a daemon thread runs the periodic purge in-process."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger("enigmo.embedded")
_started = False
_lock = threading.Lock()


def _loop(interval: float) -> None:
    from messaging.tasks import purge_expired

    while True:
        time.sleep(interval)
        try:
            close_old_connections()
            purge_expired()
        except Exception:  # keep purging on the next tick; the error is logged, not swallowed
            logger.exception("embedded purge failed")


def start_purger() -> None:
    """Start the purge thread once per process when the embedded profile asks for it."""
    global _started
    if not settings.EMBEDDED_PURGE:
        return
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_loop, args=(settings.PURGE_INTERVAL_SECONDS,), name="enigmo-purge", daemon=True).start()
    logger.info("embedded purge every %ss", settings.PURGE_INTERVAL_SECONDS)
