"""Loaded before Django is set up (pytest -p): environment the test run needs."""

import os

# The embedded purge thread must not run against the test database; tests call the purge.
os.environ.setdefault("ENIGMO_EMBEDDED_PURGE", "0")
# Concurrent test runs on one Redis keep to their own keys (see tests/conftest.py).
os.environ.setdefault("ENIGMO_REDIS_PREFIX", f"test{os.getpid()}")


# A last-resort watchdog. pytest-timeout (pyproject: timeout) fails a test that runs too long by
# raising inside it; if the test's teardown then blocks too (a browser or a child process that
# never answers), nothing would ever end the run. faulthandler's timer lives in C: it prints
# every thread's stack and exits the process, so a stuck run fails with its cause, in bounded
# time, instead of timing CI out in silence.
import faulthandler  # noqa: E402

import pytest  # noqa: E402

WATCHDOG_SECONDS = 420
# pytest captures fd 2 during a test; keep a handle on the real stderr, taken before it does.
_REAL_STDERR = os.fdopen(os.dup(2), "w")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # a test that declares a longer pytest-timeout (the schemathesis run) gets that plus a margin
    marker = item.get_closest_marker("timeout")
    declared = marker.args[0] if marker and marker.args else 0
    faulthandler.dump_traceback_later(max(WATCHDOG_SECONDS, declared + 120), exit=True, file=_REAL_STDERR)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
