"""Double Ratchet with header encoding, message wire format and JSON-safe serialisable state."""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from . import primitives as p
from .encoding import b64d, b64e
from .errors import ProtocolError
from .keys import DhKeyPair
from .rng import Rng

RATCHET_INFO = b"Enigmo_Ratchet_v1"
MAX_SKIP = 1000
MAX_STORED_SKIPPED = 2000
HEADER_VERSION = 0x01
HEADER_LEN = 41
NONCE_LEN = 24
TAG_LEN = 16
STATE_VERSION = 1


@dataclass(frozen=True)
class Header:
    dh: bytes
    pn: int
    n: int

    def encode(self) -> bytes:
        return bytes([HEADER_VERSION]) + self.dh + p.u32(self.pn) + p.u32(self.n)

    @classmethod
    def decode(cls, data: bytes) -> "Header":
        if len(data) != HEADER_LEN or data[0] != HEADER_VERSION:
            raise ProtocolError("bad_message", "bad ratchet header")
        pn, n = struct.unpack(">II", data[33:41])
        return cls(dh=data[1:33], pn=pn, n=n)


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = p.hkdf_sha256(rk, dh_out, RATCHET_INFO, 64)
    return out[:32], out[32:]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """Return (next chain key, message key)."""
    return p.hmac_sha256(ck, b"\x02"), p.hmac_sha256(ck, b"\x01")


@dataclass(frozen=True)
class PendingPreKey:
    """Set on the initiator until the first reply arrives: every message goes out as a prekey message."""

    identity_key: bytes
    ephemeral_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None


@dataclass(repr=False)
class RatchetState:
    dhs: DhKeyPair
    dhr: bytes | None
    rk: bytes
    cks: bytes | None
    ckr: bytes | None
    ns: int
    nr: int
    pn: int
    ad: bytes
    remote_identity: bytes
    base_key: bytes
    pending: PendingPreKey | None = None
    skipped: "OrderedDict[tuple[bytes, int], bytes]" = field(default_factory=OrderedDict)

    def __repr__(self) -> str:
        return (f"RatchetState(dhs_public={self.dhs.public.hex()}, ns={self.ns}, nr={self.nr}, "
                f"pn={self.pn}, skipped={len(self.skipped)}, secrets=<hidden>)")

    def clone(self) -> "RatchetState":
        return RatchetState(
            dhs=self.dhs, dhr=self.dhr, rk=self.rk, cks=self.cks, ckr=self.ckr, ns=self.ns, nr=self.nr,
            pn=self.pn, ad=self.ad, remote_identity=self.remote_identity, base_key=self.base_key,
            pending=self.pending, skipped=OrderedDict(self.skipped),
        )

    def to_dict(self) -> dict[str, Any]:
        def opt(b: bytes | None) -> str | None:
            return None if b is None else b64e(b)

        pending = None
        if self.pending is not None:
            pending = {
                "identity_key": b64e(self.pending.identity_key),
                "ephemeral_key": b64e(self.pending.ephemeral_key),
                "signed_prekey_id": self.pending.signed_prekey_id,
                "one_time_prekey_id": self.pending.one_time_prekey_id,
            }
        return {
            "v": STATE_VERSION,
            "dhs": b64e(self.dhs.secret),
            "dhr": opt(self.dhr),
            "rk": b64e(self.rk),
            "cks": opt(self.cks),
            "ckr": opt(self.ckr),
            "ns": self.ns,
            "nr": self.nr,
            "pn": self.pn,
            "ad": b64e(self.ad),
            "remote_identity": b64e(self.remote_identity),
            "base_key": b64e(self.base_key),
            "pending": pending,
            "skipped": [[b64e(dh), n, b64e(mk)] for (dh, n), mk in self.skipped.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RatchetState":
        if data.get("v") != STATE_VERSION:
            raise ProtocolError("bad_message", "unknown session state version")

        def opt(v: str | None) -> bytes | None:
            return None if v is None else b64d(v)

        pend = data.get("pending")
        pending = None
        if pend is not None:
            pending = PendingPreKey(
                b64d(pend["identity_key"]), b64d(pend["ephemeral_key"]),
                int(pend["signed_prekey_id"]),
                None if pend["one_time_prekey_id"] is None else int(pend["one_time_prekey_id"]),
            )
        return cls(
            dhs=DhKeyPair.from_secret(b64d(data["dhs"])),
            dhr=opt(data["dhr"]),
            rk=b64d(data["rk"]),
            cks=opt(data["cks"]),
            ckr=opt(data["ckr"]),
            ns=int(data["ns"]),
            nr=int(data["nr"]),
            pn=int(data["pn"]),
            ad=b64d(data["ad"]),
            remote_identity=b64d(data["remote_identity"]),
            base_key=b64d(data["base_key"]),
            pending=pending,
            skipped=OrderedDict(((b64d(dh), int(n)), b64d(mk)) for dh, n, mk in data["skipped"]),
        )


def init_initiator(shared_secret: bytes, ad: bytes, remote_ratchet_key: bytes, remote_identity: bytes,
                   base_key: bytes, pending: PendingPreKey | None, rng: Rng) -> RatchetState:
    dhs = DhKeyPair.generate(rng)
    rk, cks = kdf_rk(shared_secret, p.x25519(dhs.secret, remote_ratchet_key))
    return RatchetState(dhs=dhs, dhr=remote_ratchet_key, rk=rk, cks=cks, ckr=None, ns=0, nr=0, pn=0, ad=ad,
                        remote_identity=remote_identity, base_key=base_key, pending=pending)


def init_responder(shared_secret: bytes, ad: bytes, signed_prekey: DhKeyPair, remote_identity: bytes,
                   base_key: bytes) -> RatchetState:
    return RatchetState(dhs=signed_prekey, dhr=None, rk=shared_secret, cks=None, ckr=None, ns=0, nr=0, pn=0,
                        ad=ad, remote_identity=remote_identity, base_key=base_key)


def encode_message(header: Header, nonce: bytes, ciphertext: bytes) -> bytes:
    return header.encode() + nonce + ciphertext


def decode_message(data: bytes) -> tuple[Header, bytes, bytes, bytes]:
    """Return (header, raw header bytes, nonce, ciphertext)."""
    if len(data) < HEADER_LEN + NONCE_LEN + TAG_LEN:
        raise ProtocolError("bad_message", "ratchet message too short")
    raw = data[:HEADER_LEN]
    return Header.decode(raw), raw, data[HEADER_LEN:HEADER_LEN + NONCE_LEN], data[HEADER_LEN + NONCE_LEN:]


def ratchet_encrypt(state: RatchetState, plaintext: bytes, rng: Rng) -> tuple[RatchetState, bytes]:
    if state.cks is None:
        raise ProtocolError("no_session", "no sending chain yet")
    s = state.clone()
    s.cks, mk = kdf_ck(state.cks)  # type: ignore[arg-type]
    header = Header(s.dhs.public, s.pn, s.ns)
    s.ns += 1
    nonce = rng(NONCE_LEN)
    raw = header.encode()
    ct = p.aead_encrypt(mk, nonce, p.pad(plaintext), s.ad + raw)
    return s, raw + nonce + ct


def _store_skipped(s: RatchetState, until: int) -> None:
    if s.nr + MAX_SKIP < until:
        raise ProtocolError("too_many_skipped", f"would skip {until - s.nr} keys")
    if s.ckr is None:
        return
    while s.nr < until:
        s.ckr, mk = kdf_ck(s.ckr)
        s.skipped[(s.dhr, s.nr)] = mk  # type: ignore[index]
        s.nr += 1
        while len(s.skipped) > MAX_STORED_SKIPPED:
            s.skipped.popitem(last=False)


def _dh_ratchet(s: RatchetState, header: Header, rng: Rng) -> None:
    s.pn = s.ns
    s.ns = 0
    s.nr = 0
    s.dhr = header.dh
    s.rk, s.ckr = kdf_rk(s.rk, p.x25519(s.dhs.secret, header.dh))
    s.dhs = DhKeyPair.generate(rng)
    s.rk, s.cks = kdf_rk(s.rk, p.x25519(s.dhs.secret, header.dh))


def ratchet_decrypt(state: RatchetState, message: bytes, rng: Rng) -> tuple[RatchetState, bytes]:
    """Work on a copy; the caller keeps the old state unless this returns."""
    header, raw, nonce, ct = decode_message(message)
    s = state.clone()
    mk = s.skipped.pop((header.dh, header.n), None)
    if mk is None:
        if header.dh != s.dhr:
            _store_skipped(s, header.pn)
            _dh_ratchet(s, header, rng)
        elif header.n < s.nr:
            raise ProtocolError("duplicate_message", "message key already used")
        if s.ckr is None:
            raise ProtocolError("decrypt_failed", "no receiving chain for this key")
        _store_skipped(s, header.n)
        s.ckr, mk = kdf_ck(s.ckr)
        s.nr += 1
    plaintext = p.unpad(p.aead_decrypt(mk, nonce, ct, s.ad + raw))
    s.pending = None
    return s, plaintext
