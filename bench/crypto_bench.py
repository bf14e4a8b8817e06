"""Per-message Double Ratchet encrypt/decrypt cost of the Python reference for 1 KB messages."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enigmo.protocol.rng import system_rng  # noqa: E402
from enigmo.protocol.session import SessionRecord, session_decrypt, session_encrypt, session_initiate  # noqa: E402
from enigmo.protocol.vectors import Party  # noqa: E402


def main(n: int = 5000) -> None:
    alice, bob = Party("alice", "1", 1, "alice"), Party("bob", "2", 3, "bob")
    a = session_initiate(SessionRecord(), alice.identity, bob.bundle(100), bob.account.public, system_rng)
    a, w = session_encrypt(a, b"hi", system_rng)
    b = session_decrypt(SessionRecord(), w, bob.identity, bob.store, system_rng).record
    b, w = session_encrypt(b, b"ok", system_rng)
    a = session_decrypt(a, w, alice.identity, alice.store, system_rng).record
    payload = b"x" * 1024
    wires = []
    t0 = time.perf_counter()
    for _ in range(n):
        a, w = session_encrypt(a, payload, system_rng)
        wires.append(w)
    t1 = time.perf_counter()
    for w in wires:
        b = session_decrypt(b, w, bob.identity, bob.store, system_rng).record
    t2 = time.perf_counter()
    print(f"python  1 KB  encrypt {(t1 - t0) / n * 1e6:6.1f} µs/msg  decrypt {(t2 - t1) / n * 1e6:6.1f} µs/msg  (n={n})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
