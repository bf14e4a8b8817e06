"""One live server for the whole end-to-end module (on the active profile), with its own media
directory and, on the embedded profile, the in-process purge running every second."""

from __future__ import annotations

import os
import tempfile

import pytest

PRODUCTION = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


@pytest.fixture(scope="module")
def live():
    from tests.live import drop_database, start_live_server

    media = tempfile.mkdtemp(prefix="enigmo-e2e-media-")
    overrides = {"ENIGMO_MEDIA_ROOT": media}
    if not PRODUCTION:
        overrides.update(ENIGMO_EMBEDDED_PURGE="1", ENIGMO_PURGE_INTERVAL_SECONDS="1")
    server = start_live_server(overrides)
    server.media_root = media
    try:
        yield server
    finally:
        server.stop()
        drop_database(server.database_url)
