"""Per-peer-device sessions: prekey messages, active and archived ratchets, initiation races, reset."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ProtocolError
from .keys import DhKeyPair, SigningKeyPair
from .ratchet import (PendingPreKey, RatchetState, init_initiator, init_responder, ratchet_decrypt,
                      ratchet_encrypt)
from .rng import Rng
from .x3dh import PreKeyBundle, x3dh_initiate, x3dh_respond

PREKEY_MESSAGE_VERSION = 0x02
RATCHET_MESSAGE_VERSION = 0x01
MAX_ARCHIVED = 40


@dataclass(frozen=True)
class PreKeyMessage:
    identity_key: bytes
    ephemeral_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    message: bytes

    def encode(self) -> bytes:
        opk = b"\x00" if self.one_time_prekey_id is None else b"\x01" + struct.pack(">I", self.one_time_prekey_id)
        return (bytes([PREKEY_MESSAGE_VERSION]) + self.identity_key + self.ephemeral_key
                + struct.pack(">I", self.signed_prekey_id) + opk + self.message)

    @classmethod
    def decode(cls, data: bytes) -> "PreKeyMessage":
        if len(data) < 70 or data[0] != PREKEY_MESSAGE_VERSION:
            raise ProtocolError("bad_message", "bad prekey message")
        ik, ek = data[1:33], data[33:65]
        (spk_id,) = struct.unpack(">I", data[65:69])
        flag = data[69]
        if flag == 0:
            opk_id, rest = None, data[70:]
        elif flag == 1 and len(data) >= 74:
            (opk_id,) = struct.unpack(">I", data[70:74])
            rest = data[74:]
        else:
            raise ProtocolError("bad_message", "bad one-time prekey flag")
        return cls(ik, ek, spk_id, opk_id, rest)


class PreKeyStore(Protocol):
    """The receiving device's private prekeys, looked up by id."""

    def signed_prekey(self, key_id: int) -> DhKeyPair | None: ...

    def one_time_prekey(self, key_id: int) -> DhKeyPair | None: ...


@dataclass
class MemoryPreKeyStore:
    signed: dict[int, DhKeyPair] = field(default_factory=dict)
    one_time: dict[int, DhKeyPair] = field(default_factory=dict)

    def signed_prekey(self, key_id: int) -> DhKeyPair | None:
        return self.signed.get(key_id)

    def one_time_prekey(self, key_id: int) -> DhKeyPair | None:
        return self.one_time.get(key_id)


@dataclass
class SessionRecord:
    """All sessions with one remote device; only `active` is used to send."""

    active: RatchetState | None = None
    archived: list[RatchetState] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"SessionRecord(active={self.active!r}, archived={len(self.archived)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": None if self.active is None else self.active.to_dict(),
            "archived": [s.to_dict() for s in self.archived],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SessionRecord":
        active = data.get("active")
        return cls(
            active=None if active is None else RatchetState.from_dict(active),
            archived=[RatchetState.from_dict(s) for s in data.get("archived", [])],
        )


def _promote(record: SessionRecord, state: RatchetState, replaced_index: int | None) -> SessionRecord:
    archived = [s for i, s in enumerate(record.archived) if i != replaced_index]
    if record.active is not None and replaced_index != -1:
        archived.insert(0, record.active)
    return SessionRecord(active=state, archived=archived[:MAX_ARCHIVED])


def session_reset(record: SessionRecord) -> SessionRecord:
    """Archive the active session; the next send needs a fresh bundle (used on reset and on retry)."""
    if record.active is None:
        return record
    return SessionRecord(active=None, archived=([record.active] + record.archived)[:MAX_ARCHIVED])


def session_initiate(record: SessionRecord, identity: SigningKeyPair, bundle: PreKeyBundle,
                     account_public: bytes, rng: Rng) -> SessionRecord:
    init = x3dh_initiate(identity, bundle, account_public, rng)
    pending = PendingPreKey(identity.public, init.ephemeral_public, init.signed_prekey_id, init.one_time_prekey_id)
    state = init_initiator(init.shared_secret, init.associated_data, init.signed_prekey, bundle.identity_key,
                           init.ephemeral_public, pending, rng)
    return _promote(record, state, None)


def session_encrypt(record: SessionRecord, plaintext: bytes, rng: Rng) -> tuple[SessionRecord, bytes]:
    if record.active is None:
        raise ProtocolError("no_session", "no active session")
    state, message = ratchet_encrypt(record.active, plaintext, rng)
    if state.pending is not None:
        pend = state.pending
        message = PreKeyMessage(pend.identity_key, pend.ephemeral_key, pend.signed_prekey_id,
                                pend.one_time_prekey_id, message).encode()
    return SessionRecord(active=state, archived=list(record.archived)), message


@dataclass(frozen=True)
class Decrypted:
    record: SessionRecord
    plaintext: bytes
    remote_identity: bytes
    used_one_time_prekey_id: int | None = None
    new_session: bool = False


def _try_states(record: SessionRecord, message: bytes, rng: Rng,
                base_key: bytes | None = None) -> Decrypted | None:
    """Try the active then archived sessions (only those with `base_key` if given)."""
    candidates: list[tuple[int, RatchetState]] = []
    if record.active is not None:
        candidates.append((-1, record.active))
    candidates += list(enumerate(record.archived))
    first_error: ProtocolError | None = None
    for index, state in candidates:
        if base_key is not None and state.base_key != base_key:
            continue
        try:
            new_state, plaintext = ratchet_decrypt(state, message, rng)
        except ProtocolError as exc:
            first_error = first_error or exc
            continue
        if index == -1:
            new_record = SessionRecord(active=new_state, archived=list(record.archived))
        else:
            new_record = _promote(record, new_state, index)
        return Decrypted(new_record, plaintext, new_state.remote_identity)
    if first_error is not None:
        raise first_error
    return None


def session_decrypt(record: SessionRecord, data: bytes, identity: SigningKeyPair, prekeys: PreKeyStore,
                    rng: Rng) -> Decrypted:
    """Decrypt a ratchet (0x01) or prekey (0x02) message; the caller deletes `used_one_time_prekey_id`."""
    if not data:
        raise ProtocolError("bad_message", "empty message")
    if data[0] == RATCHET_MESSAGE_VERSION:
        result = _try_states(record, data, rng)
        if result is None:
            raise ProtocolError("no_session", "no session for this device")
        return result
    pkm = PreKeyMessage.decode(data)
    # A retransmitted prekey message (sender has not seen a reply yet) belongs to an existing session.
    existing = _try_states(record, pkm.message, rng, base_key=pkm.ephemeral_key)
    if existing is not None:
        return existing
    spk = prekeys.signed_prekey(pkm.signed_prekey_id)
    if spk is None:
        raise ProtocolError("unknown_signed_prekey", f"signed prekey {pkm.signed_prekey_id}")
    opk = None
    if pkm.one_time_prekey_id is not None:
        opk = prekeys.one_time_prekey(pkm.one_time_prekey_id)
        if opk is None:
            raise ProtocolError("unknown_one_time_prekey", f"one-time prekey {pkm.one_time_prekey_id}")
    sk, ad = x3dh_respond(identity, spk, opk, pkm.identity_key, pkm.ephemeral_key)
    state = init_responder(sk, ad, spk, pkm.identity_key, pkm.ephemeral_key)
    new_state, plaintext = ratchet_decrypt(state, pkm.message, rng)
    return Decrypted(_promote(record, new_state, None), plaintext, pkm.identity_key,
                     pkm.one_time_prekey_id, True)
