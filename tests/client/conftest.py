"""A live server shared by the client's network tests in this directory."""

from __future__ import annotations

import tempfile

import pytest


@pytest.fixture(scope="module")
def live():
    from tests.live import drop_database, start_live_server

    server = start_live_server({"ENIGMO_MEDIA_ROOT": tempfile.mkdtemp(prefix="enigmo-client-media-")})
    try:
        yield server
    finally:
        server.stop()
        drop_database(server.database_url)
