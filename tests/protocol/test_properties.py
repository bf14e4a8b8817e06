"""Round-trip properties, session behaviour (MAX_SKIP edge, eviction, reset, fan-out) and secret hygiene."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from enigmo.protocol import attachments, primitives as p
from enigmo.protocol.content import content_build, content_parse
from enigmo.protocol.envelope import device_set_diff, envelope_encrypt
from enigmo.protocol.errors import ProtocolError
from enigmo.protocol.keys import DhKeyPair, SigningKeyPair, one_time_prekeys_needed
from enigmo.protocol.ratchet import MAX_SKIP, MAX_STORED_SKIPPED, RatchetState
from enigmo.protocol.rng import DeterministicRng, system_rng
from enigmo.protocol.session import SessionRecord, session_decrypt, session_encrypt, session_initiate, session_reset
from enigmo.protocol.vectors import Party
from enigmo.protocol.encoding import b64d

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def established() -> tuple[Party, Party, SessionRecord, SessionRecord]:
    alice, bob = Party("alice", "1", 1, "alice"), Party("bob", "2", 3, "bob")
    a = session_initiate(SessionRecord(), alice.identity, bob.bundle(100), bob.account.public, system_rng)
    a, w = session_encrypt(a, b"hi", system_rng)
    b = session_decrypt(SessionRecord(), w, bob.identity, bob.store, system_rng).record
    b, w = session_encrypt(b, b"hi back", system_rng)
    a = session_decrypt(a, w, alice.identity, alice.store, system_rng).record
    return alice, bob, a, b


@FAST
@given(st.binary(max_size=2000))
def test_padding_round_trip(data: bytes) -> None:
    padded = p.pad(data)
    assert len(padded) % 64 == 0 and p.unpad(padded) == data


@FAST
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_session_round_trip_any_order(messages: list[bytes], rnd) -> None:
    alice, bob, a, b = established()
    wires = []
    for m in messages:
        a, w = session_encrypt(a, m, system_rng)
        wires.append((m, w))
    rnd.shuffle(wires)
    for m, w in wires:
        result = session_decrypt(b, w, bob.identity, bob.store, system_rng)
        b = result.record
        assert result.plaintext == m
    # state survives JSON serialisation
    b = SessionRecord.from_dict(json.loads(json.dumps(b.to_dict())))
    b, w = session_encrypt(b, b"after", system_rng)
    assert session_decrypt(a, w, alice.identity, alice.store, system_rng).plaintext == b"after"


@FAST
@given(st.binary(max_size=200_000))
def test_attachment_round_trip(data: bytes) -> None:
    key, digest, blob = attachments.encrypt_attachment(data, system_rng)
    assert attachments.decrypt_attachment(blob, key, digest) == data


@FAST
@given(st.text(max_size=200), st.text(min_size=1, max_size=64), st.integers(0, 2**53))
def test_content_round_trip(body: str, msg_id: str, sent_ms: int) -> None:
    encoded = content_build("text", id=msg_id, sent_ms=sent_ms, body=body)
    assert content_parse(encoded)["body"] == body


def test_exactly_max_skip_is_accepted_and_stored_keys_are_capped() -> None:
    alice, bob, a, b = established()
    wires = []
    for i in range(MAX_SKIP + 1):
        a, w = session_encrypt(a, str(i).encode(), system_rng)
        wires.append(w)
    result = session_decrypt(b, wires[-1], bob.identity, bob.store, system_rng)  # skips exactly MAX_SKIP
    assert result.plaintext == str(MAX_SKIP).encode()
    assert result.record.active is not None and len(result.record.active.skipped) == MAX_SKIP
    assert session_decrypt(result.record, wires[0], bob.identity, bob.store, system_rng).plaintext == b"0"


def test_skipped_key_store_evicts_oldest() -> None:
    alice, bob, a, b = established()
    for turn in range(3):
        wires = []
        for i in range(MAX_SKIP):
            a, w = session_encrypt(a, b"x", system_rng)
            wires.append(w)
        b = session_decrypt(b, wires[-1], bob.identity, bob.store, system_rng).record
        b, w = session_encrypt(b, b"turn", system_rng)
        a = session_decrypt(a, w, alice.identity, alice.store, system_rng).record
    assert b.active is not None and len(b.active.skipped) == MAX_STORED_SKIPPED


def test_reset_archives_and_old_messages_still_decrypt() -> None:
    alice, bob, a, b = established()
    a, late = session_encrypt(a, b"in flight", system_rng)
    a = session_reset(a)
    assert a.active is None and len(a.archived) == 1
    with pytest.raises(ProtocolError) as info:
        session_encrypt(a, b"x", system_rng)
    assert info.value.code == "no_session"
    a = session_initiate(a, alice.identity, bob.bundle(101), bob.account.public, system_rng)
    a, w = session_encrypt(a, b"fresh", system_rng)
    r = session_decrypt(b, w, bob.identity, bob.store, system_rng)
    assert r.new_session and r.plaintext == b"fresh" and len(r.record.archived) == 1
    assert session_decrypt(r.record, late, bob.identity, bob.store, system_rng).plaintext == b"in flight"


def test_envelope_fan_out_and_device_set_diff() -> None:
    alice, bob, a, b = established()
    alice2 = Party("alice", "1", 2, "alice")
    own = session_initiate(SessionRecord(), alice.identity, alice2.bundle(100), alice2.account.public, system_rng)
    cts, records = envelope_encrypt(b"fan", [("2", 3, a), ("1", 2, own)], system_rng)
    assert set(cts) == {"2.3", "1.2"}
    assert session_decrypt(b, b64d(cts["2.3"]), bob.identity, bob.store, system_rng).plaintext == b"fan"
    assert session_decrypt(SessionRecord(), b64d(cts["1.2"]), alice2.identity, alice2.store, system_rng).plaintext == b"fan"
    assert device_set_diff(["2.3", "2.9"], ["2.3", "2.4"]) == (["2.4"], ["2.9"])


def test_prekey_policy() -> None:
    assert one_time_prekeys_needed(19) == 81
    assert one_time_prekeys_needed(20) == 0


def test_no_secret_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """repr() of every key-holding object hides secret bytes; nothing in the library logs them."""
    alice, bob, a, b = established()
    rng = DeterministicRng(b"\x07" * 32)
    ident = SigningKeyPair.generate(rng)
    dh = DhKeyPair.generate(rng)
    state: RatchetState = a.active  # type: ignore[assignment]
    secrets = [ident.secret[:32], ident.secret, ident.x25519_secret, dh.secret, state.rk, state.dhs.secret,
               state.cks or b"", bob.spk.secret]
    with caplog.at_level(logging.DEBUG):
        texts = [repr(ident), str(ident), repr(dh), repr(state), repr(a), repr(b), repr(rng), repr(bob.spk)]
        session_encrypt(a, b"x", system_rng)
    blob = "\n".join(texts + [r.getMessage() for r in caplog.records])
    for s in secrets:
        assert s.hex() not in blob
        assert repr(s) not in blob


def test_group_name_meta_round_trips_and_is_bounded() -> None:
    """A group's name travels as E2EE `meta` content; over 64 characters it is bad content, as in JS."""
    encoded = content_build("meta", id="m1", sent_ms=1, name="Hiking ⛰")
    assert content_parse(encoded)["name"] == "Hiking ⛰"
    with pytest.raises(ProtocolError) as err:
        content_build("meta", id="m2", sent_ms=1, name="x" * 65)
    assert err.value.code == "bad_content"
