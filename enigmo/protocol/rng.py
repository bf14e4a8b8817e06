"""Injectable randomness: the OS CSPRNG in production, a reproducible HMAC-counter RNG for vectors."""

from __future__ import annotations

import os
from typing import Protocol

import nacl.bindings as nb

from .primitives import hmac_sha256, u64


class Rng(Protocol):
    def __call__(self, n: int) -> bytes: ...


def system_rng(n: int) -> bytes:
    return os.urandom(n)


class DeterministicRng:
    """Call i returns randombytes_buf_deterministic(n, HMAC-SHA256(seed_key, u64_be(i))); i starts at 0."""

    def __init__(self, seed_key: bytes) -> None:
        if len(seed_key) != 32:
            raise ValueError("seed_key must be 32 bytes")
        self._seed_key = seed_key
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        seed = hmac_sha256(self._seed_key, u64(self.counter))
        self.counter += 1
        return nb.randombytes_buf_deterministic(n, seed)

    def __repr__(self) -> str:
        return f"DeterministicRng(counter={self.counter})"
