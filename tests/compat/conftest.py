"""Live servers for the compat tests: one with both surfaces on, one in v0.3 strict mode, one
with neither. Real daphne processes on fresh databases, started once per session and in
parallel (creating and migrating a database dominates the run time)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.live import LiveServer, drop_database, start_live_server

PROFILES = {
    "compat": {"ENIGMO_COMPAT_ENIGMA_V03": "1", "ENIGMO_COMPAT_ENIGMO_WS": "1", "ENIGMO_RELAY_TICK_SECONDS": "2"},
    "strict": {"ENIGMO_COMPAT_ENIGMA_V03": "1", "ENIGMO_COMPAT_ENIGMA_V03_STRICT": "1"},
    "plain": {"ENIGMO_COMPAT_ENIGMA_V03": "0", "ENIGMO_COMPAT_ENIGMO_WS": "0"},
}


@pytest.fixture(scope="session")
def _compat_servers() -> dict[str, LiveServer]:
    with ThreadPoolExecutor(max_workers=len(PROFILES)) as pool:
        futures = {name: pool.submit(start_live_server, env) for name, env in PROFILES.items()}
    servers = {}
    errors = []
    for name, future in futures.items():
        try:
            servers[name] = future.result()
        except Exception as exc:  # stop the others before failing
            errors.append(exc)
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for server in servers.values():
            server.stop()
            drop_database(server.database_url)


@pytest.fixture(scope="session")
def compat_server(_compat_servers) -> LiveServer:
    return _compat_servers["compat"]


@pytest.fixture(scope="session")
def strict_server(_compat_servers) -> LiveServer:
    return _compat_servers["strict"]


@pytest.fixture(scope="session")
def plain_server(_compat_servers) -> LiveServer:
    return _compat_servers["plain"]
