"""Fixtures of the messaging tests: alice and bob's direct conversation."""

from __future__ import annotations

import pytest

from tests.messaging.helpers import open_direct


@pytest.fixture
def chat(api, alice, bob, eve) -> str:
    """The id of alice and bob's direct conversation (eve is in none)."""
    return open_direct(api, alice, bob)


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test (and its event loop) gets its own channel-layer instance: channels-redis binds
    its pools and locks to the loop that first used them."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()
