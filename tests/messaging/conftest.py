"""Fixtures of the messaging tests: alice and bob's direct conversation."""

from __future__ import annotations

import pytest

from tests.messaging.helpers import open_direct


@pytest.fixture
def chat(api, alice, bob, eve) -> str:
    """The id of alice and bob's direct conversation (eve is in none)."""
    return open_direct(api, alice, bob)
