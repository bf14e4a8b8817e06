"""The provisioning envelope that carries the account key to a newly linked device: ephemeral
X25519 to the new device's provisioning key, HKDF-SHA256, XChaCha20-Poly1305. Byte-compatible
with static/js/engine.js (seal/open), so a CLI device and a browser can link each other."""

from __future__ import annotations

import json
from typing import Any

from enigmo.protocol import primitives as p
from enigmo.protocol.errors import ProtocolError
from enigmo.protocol.keys import DhKeyPair
from enigmo.protocol.rng import Rng

PROVISION_INFO = b"Enigmo_Provisioning_v1"


def _key(secret: bytes, public: bytes) -> bytes:
    return p.hkdf_sha256(b"\x00" * 32, p.x25519(secret, public), PROVISION_INFO, 32)


def seal(recipient_public: bytes, payload: dict[str, Any], rng: Rng) -> bytes:
    eph = DhKeyPair.generate(rng)
    nonce = rng(24)
    plaintext = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return eph.public + nonce + p.aead_encrypt(_key(eph.secret, recipient_public), nonce, plaintext,
                                               eph.public + recipient_public)


def open_envelope(recipient: DhKeyPair, envelope: bytes) -> dict[str, Any]:
    if len(envelope) < 32 + 24 + 16:
        raise ProtocolError("bad_message", "provisioning envelope too short")
    eph_public, nonce, ciphertext = envelope[:32], envelope[32:56], envelope[56:]
    plaintext = p.aead_decrypt(_key(recipient.secret, eph_public), nonce, ciphertext, eph_public + recipient.public)
    payload = json.loads(plaintext.decode("utf-8"))
    if not isinstance(payload, dict):
        raise ProtocolError("bad_message", "provisioning payload is not an object")
    return payload
