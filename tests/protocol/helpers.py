"""Shared loaders for the protocol tests: read the JSON vectors and rebuild parties from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from enigmo.protocol.keys import DeviceCertificate, DhKeyPair, SigningKeyPair
from enigmo.protocol.rng import DeterministicRng
from enigmo.protocol.session import MemoryPreKeyStore
from enigmo.protocol.x3dh import PreKeyBundle

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def hx(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def bundle_from(data: dict[str, Any]) -> PreKeyBundle:
    cert = data["certificate"]
    return PreKeyBundle(
        user_id=data["user_id"], device_id=data["device_id"], identity_key=bytes.fromhex(data["identity_key"]),
        certificate=DeviceCertificate(cert["user_id"], cert["device_id"], bytes.fromhex(cert["device_key"]),
                                      cert["issued_ms"], bytes.fromhex(cert["signature"])),
        signed_prekey_id=data["signed_prekey_id"], signed_prekey=bytes.fromhex(data["signed_prekey"]),
        signed_prekey_signature=bytes.fromhex(data["signed_prekey_signature"]),
        one_time_prekey_id=data["one_time_prekey_id"], one_time_prekey=hx(data["one_time_prekey"]),
    )


class VParty:
    """A party rebuilt only from a vector's description."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d
        self.account = SigningKeyPair.from_seed(bytes.fromhex(d["account_seed"]))
        self.identity = SigningKeyPair.from_seed(bytes.fromhex(d["identity_seed"]))
        self.spk = DhKeyPair.from_secret(bytes.fromhex(d["spk_secret"]))
        self.opks = {int(k): DhKeyPair.from_secret(bytes.fromhex(v)) for k, v in d["opks"].items()}
        self.store = MemoryPreKeyStore({d["spk_id"]: self.spk}, dict(self.opks))
        self.rng = DeterministicRng(bytes.fromhex(d["rng_seed"]))
