"""The provisioning envelope (account key to a new device) opens only with its key."""

from __future__ import annotations

import pytest

from enigmo.client import provisioning
from enigmo.protocol.errors import ProtocolError
from enigmo.protocol.keys import DhKeyPair
from enigmo.protocol.rng import system_rng


def test_seal_then_open():
    recipient = DhKeyPair.generate(system_rng)
    envelope = provisioning.seal(recipient.public, {"account_seed": "AAAA", "username": "bob"}, system_rng)
    assert provisioning.open_envelope(recipient, envelope) == {"account_seed": "AAAA", "username": "bob"}
    assert b"bob" not in envelope


def test_another_key_or_a_flipped_bit_fails():
    recipient, other = DhKeyPair.generate(system_rng), DhKeyPair.generate(system_rng)
    envelope = provisioning.seal(recipient.public, {"username": "bob"}, system_rng)
    with pytest.raises(ProtocolError):
        provisioning.open_envelope(other, envelope)
    with pytest.raises(ProtocolError):
        provisioning.open_envelope(recipient, envelope[:-1] + bytes([envelope[-1] ^ 1]))
    with pytest.raises(ProtocolError):
        provisioning.open_envelope(recipient, envelope[:40])
