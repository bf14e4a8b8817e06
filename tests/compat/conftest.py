"""Live servers for the compat tests: one with both surfaces on, one in v0.3 strict mode, one
with the variables unset (the default) and one with them set to "0". Real daphne processes on
fresh databases, started once per session and in parallel (creating and migrating a database
dominates the run time)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.live import LiveServer, drop_database, start_live_server

PROFILES = {
    "compat": {"ENIGMO_COMPAT_ENIGMA_V03": "1", "ENIGMO_COMPAT_ENIGMO_WS": "1", "ENIGMO_RELAY_TICK_SECONDS": "2"},
    "strict": {"ENIGMO_COMPAT_ENIGMA_V03": "1", "ENIGMO_COMPAT_ENIGMA_V03_STRICT": "1"},
    "plain": {},  # nothing set: off by default
    "off": {"ENIGMO_COMPAT_ENIGMA_V03": "0", "ENIGMO_COMPAT_ENIGMO_WS": "0"},
}
COMPAT_PREFIX = "ENIGMO_COMPAT_"


def _start(env: dict[str, str]) -> LiveServer:
    server = start_live_server(env)
    # what the process was started with, for the tests to check
    server.compat_env = {k: v for k, v in server.env.items() if k.startswith(COMPAT_PREFIX)}
    return server


@pytest.fixture(scope="session")
def _compat_servers() -> dict[str, LiveServer]:
    # Servers inherit this process's environment: drop any compat variable from it while they
    # start, so each profile has exactly the variables it lists ("plain" has none at all).
    with pytest.MonkeyPatch.context() as patch:
        for name in [k for k in os.environ if k.startswith(COMPAT_PREFIX)]:
            patch.delenv(name)
        with ThreadPoolExecutor(max_workers=len(PROFILES)) as pool:
            futures = {name: pool.submit(_start, env) for name, env in PROFILES.items()}
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


@pytest.fixture(scope="session", params=["plain", "off"])
def plain_server(request, _compat_servers) -> LiveServer:
    """A server without the surfaces: variables unset, then set to "0"."""
    return _compat_servers[request.param]
