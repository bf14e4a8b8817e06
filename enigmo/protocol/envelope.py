"""Sesame-style fan-out: one ciphertext per recipient device and per sender's other devices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .encoding import b64e
from .rng import Rng
from .session import SessionRecord, session_encrypt


def device_address(user_id: int | str, device_id: int) -> str:
    return f"{user_id}.{device_id}"


def envelope_encrypt(
    plaintext: bytes, targets: Sequence[tuple[int | str, int, SessionRecord]], rng: Rng
) -> tuple[dict[str, str], dict[str, SessionRecord]]:
    """Return ({"user.device": base64 ciphertext}, {"user.device": new record}); save records before sending."""
    ciphertexts: dict[str, str] = {}
    records: dict[str, SessionRecord] = {}
    for user_id, device_id, record in targets:
        address = device_address(user_id, device_id)
        if address in ciphertexts:
            raise ValueError(f"duplicate device {address}")
        records[address], wire = session_encrypt(record, plaintext, rng)
        ciphertexts[address] = b64e(wire)
    return ciphertexts, records


def device_set_diff(sent: Iterable[str], current: Iterable[str]) -> tuple[list[str], list[str]]:
    """(missing, extra) exactly as the server's 409 reports them, both sorted."""
    sent_set, current_set = set(sent), set(current)
    return sorted(current_set - sent_set), sorted(sent_set - current_set)
