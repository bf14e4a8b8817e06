"""Interop with the independent PyPI packages `x3dh` 1.3.0 and `doubleratchet` 1.3.0, in both directions.

Configured to our parameters: X3DH with Ed25519-format identity keys, HKDF-SHA256, 32 zero-byte salt, the
32×0xFF prefix (built into `x3dh`), info "Enigmo_X3DH_v1", signed-prekey encoding 0x05 ‖ pub and AD = IK_A ‖ IK_B;
Double Ratchet with root KDF HKDF-SHA256(salt=rk, info="Enigmo_Ratchet_v1"), chain KDF HMAC-SHA256 with
constants 0x02 (next chain key) and 0x01 (message key), our 41-byte header in the AD, XChaCha20-Poly1305 with a
random 24-byte nonce and sodium_pad(64), MAX_SKIP 1000 and 2000 stored keys.

What cannot be made identical (and is therefore not compared byte for byte, only for agreement):
* `x3dh` signs signed prekeys with XEdDSA-style randomised Ed25519 (libxeddsa), not RFC 8032 deterministic
  signatures; both verify as standard Ed25519, so each side accepts the other's signature, but bytes differ.
* `x3dh` does not know device certificates; our library verifies the certificate before X3DH, outside it.
* `x3dh` names the one-time prekey by its public key and chooses it at random; our prekey message names it by id.
* Both packages draw ephemeral and ratchet keys from `secrets`, not from an injectable RNG.
* `doubleratchet` only warns (and drops the keys) when a DH step would skip more than 1000 keys of the old
  chain; ours rejects the message with `too_many_skipped`.
"""

from __future__ import annotations

import asyncio
import os
import warnings

import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning)
import doubleratchet as dr  # noqa: E402  (test-only dependencies: a missing one fails, never skips)
import x3dh  # noqa: E402

from doubleratchet import aead as dr_aead  # noqa: E402
from doubleratchet.recommended import HashFunction as DrHash  # noqa: E402
from doubleratchet.recommended import diffie_hellman_ratchet_curve25519, kdf_hkdf, kdf_separate_hmacs  # noqa: E402
from x3dh.crypto_provider import HashFunction  # noqa: E402
from x3dh.identity_key_pair import IdentityKeyPairSeed  # noqa: E402
from x3dh.models import BaseStateModel, IdentityKeyPairModel, SignedPreKeyPairModel  # noqa: E402
from x3dh.types import SecretType  # noqa: E402

from enigmo.protocol import primitives as p  # noqa: E402
from enigmo.protocol.keys import signed_prekey_verify  # noqa: E402
from enigmo.protocol.ratchet import (Header, RatchetState, init_responder, ratchet_decrypt,  # noqa: E402
                                     ratchet_encrypt)
from enigmo.protocol.rng import system_rng  # noqa: E402
from enigmo.protocol.session import SessionRecord, session_initiate  # noqa: E402
from enigmo.protocol.vectors import Party  # noqa: E402
from enigmo.protocol.x3dh import X3DH_INFO, x3dh_initiate, x3dh_respond  # noqa: E402

from enigmo.protocol.ratchet import RATCHET_INFO  # noqa: E402


class EnigmoX3dhState(x3dh.BaseState):
    @staticmethod
    def _encode_public_key(key_format: x3dh.IdentityKeyFormat, pub: bytes) -> bytes:
        return b"\x05" + pub if key_format is x3dh.IdentityKeyFormat.CURVE_25519 else pub


def x3dh_state_for(party: Party) -> EnigmoX3dhState:
    model = BaseStateModel(
        identity_key=IdentityKeyPairModel(secret=party.identity_seed, secret_type=SecretType.SEED),
        signed_pre_key=SignedPreKeyPairModel(priv=party.spk.secret, sig=party.spk_sig, timestamp=0),
        old_signed_pre_key=None,
        pre_keys=frozenset(k.secret for k in party.opks.values()),
    )
    return EnigmoX3dhState.from_model(model, x3dh.IdentityKeyFormat.ED_25519, HashFunction.SHA_256, X3DH_INFO)


class RootKdf(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> DrHash:
        return DrHash.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return RATCHET_INFO


class ChainKdf(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> DrHash:
        return DrHash.SHA_256


class XChaChaAead(dr_aead.AEAD):
    @staticmethod
    async def encrypt(plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(24)
        return nonce + p.aead_encrypt(key, nonce, p.pad(plaintext), associated_data)

    @staticmethod
    async def decrypt(ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
        try:
            return p.unpad(p.aead_decrypt(key, ciphertext[:24], ciphertext[24:], associated_data))
        except Exception as exc:
            raise dr_aead.AuthenticationFailedException(str(exc)) from exc


class EnigmoDoubleRatchet(dr.DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: dr.Header) -> bytes:
        return associated_data + Header(header.ratchet_pub, header.previous_sending_chain_length,
                                        header.sending_chain_length).encode()


DR_CONFIG = dict(
    diffie_hellman_ratchet_class=diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet,
    root_chain_kdf=RootKdf, message_chain_kdf=ChainKdf, message_chain_constant=b"\x02\x01",
    dos_protection_threshold=1000, max_num_skipped_message_keys=2000, aead=XChaChaAead,
)


def to_theirs(message: bytes) -> dr.EncryptedMessage:
    header = Header.decode(message[:41])
    return dr.EncryptedMessage(dr.Header(header.dh, header.pn, header.n), message[41:])


def to_ours(message: dr.EncryptedMessage) -> bytes:
    h = message.header
    return Header(h.ratchet_pub, h.previous_sending_chain_length, h.sending_chain_length).encode() + message.ciphertext


@pytest.fixture
def parties() -> tuple[Party, Party]:
    return Party("alice", "1", 1, "alice"), Party("bob", "2", 3, "bob")


@pytest.mark.parametrize("opk_id", [100, None])
def test_x3dh_ours_initiates_theirs_responds(parties: tuple[Party, Party], opk_id: int | None) -> None:
    alice, bob = parties
    init = x3dh_initiate(alice.identity, bob.bundle(opk_id), bob.account.public, system_rng)
    header = x3dh.Header(identity_key=alice.identity.public, ephemeral_key=init.ephemeral_public,
                         signed_pre_key=bob.spk.public,
                         pre_key=None if opk_id is None else bob.opks[opk_id].public)
    sk, ad, _ = asyncio.run(x3dh_state_for(bob).get_shared_secret_passive(header, require_pre_key=False))
    assert (sk, ad) == (init.shared_secret, init.associated_data)


def test_x3dh_theirs_initiates_ours_responds(parties: tuple[Party, Party]) -> None:
    alice, bob = parties
    their_bundle = x3dh.Bundle(identity_key=bob.identity.public, signed_pre_key=bob.spk.public,
                               signed_pre_key_sig=bob.spk_sig, pre_keys=frozenset({bob.opks[101].public}))
    sk, ad, header = asyncio.run(x3dh_state_for(alice).get_shared_secret_active(their_bundle))
    assert header.pre_key == bob.opks[101].public
    ours = x3dh_respond(bob.identity, bob.spk, bob.opks[101], header.identity_key, header.ephemeral_key)
    assert ours == (sk, ad)


def test_x3dh_signatures_cross_verify(parties: tuple[Party, Party]) -> None:
    """Their XEdDSA-style signed prekey verifies with our Ed25519 check, and they accept ours (above)."""
    alice, _ = parties
    state = EnigmoX3dhState.create(x3dh.IdentityKeyFormat.ED_25519, HashFunction.SHA_256, X3DH_INFO,
                                   IdentityKeyPairSeed(alice.identity_seed))
    bundle = state.bundle
    assert bundle.identity_key == alice.identity.public
    signed_prekey_verify(bundle.identity_key, bundle.signed_pre_key, bundle.signed_pre_key_sig)


def test_double_ratchet_ours_initiates(parties: tuple[Party, Party]) -> None:
    """Our initiator ↔ their responder, several ratchet turns, out-of-order delivery both ways."""
    alice, bob = parties

    async def run() -> None:
        record = session_initiate(SessionRecord(), alice.identity, bob.bundle(100), bob.account.public, system_rng)
        a: RatchetState = record.active  # type: ignore[assignment]
        sk, ad = x3dh_respond(bob.identity, bob.spk, bob.opks[100], alice.identity.public, a.base_key)
        a, m1 = ratchet_encrypt(a, b"a1", system_rng)
        a, m2 = ratchet_encrypt(a, b"a2", system_rng)
        a, m3 = ratchet_encrypt(a, b"a3", system_rng)
        b, pt = await EnigmoDoubleRatchet.decrypt_initial_message(
            shared_secret=sk, own_ratchet_priv=bob.spk.secret, message=to_theirs(m2), associated_data=ad, **DR_CONFIG)
        assert pt == b"a2"
        assert await b.decrypt_message(to_theirs(m1), ad) == b"a1"
        r1 = await b.encrypt_message(b"b1", ad)
        r2 = await b.encrypt_message(b"b2", ad)
        a, pt = ratchet_decrypt(a, to_ours(r2), system_rng)
        assert pt == b"b2"
        a, m4 = ratchet_encrypt(a, b"a4", system_rng)
        assert await b.decrypt_message(to_theirs(m4), ad) == b"a4"
        assert await b.decrypt_message(to_theirs(m3), ad) == b"a3"
        a, pt = ratchet_decrypt(a, to_ours(r1), system_rng)
        assert pt == b"b1"
        for i in range(3):
            r = await b.encrypt_message(f"b-turn-{i}".encode(), ad)
            a, pt = ratchet_decrypt(a, to_ours(r), system_rng)
            assert pt == f"b-turn-{i}".encode()
            a, m = ratchet_encrypt(a, f"a-turn-{i}".encode(), system_rng)
            assert await b.decrypt_message(to_theirs(m), ad) == f"a-turn-{i}".encode()

    asyncio.run(run())


def test_double_ratchet_theirs_initiates_after_their_x3dh(parties: tuple[Party, Party]) -> None:
    """Their X3DH + their initiator ↔ our X3DH responder + our ratchet."""
    alice, bob = parties

    async def run() -> None:
        their_bundle = x3dh.Bundle(identity_key=bob.identity.public, signed_pre_key=bob.spk.public,
                                   signed_pre_key_sig=bob.spk_sig, pre_keys=frozenset({bob.opks[102].public}))
        sk, ad, header = await x3dh_state_for(alice).get_shared_secret_active(their_bundle)
        a, first = await EnigmoDoubleRatchet.encrypt_initial_message(
            shared_secret=sk, recipient_ratchet_pub=bob.spk.public, message=b"hello from theirs",
            associated_data=ad, **DR_CONFIG)
        a2 = await a.encrypt_message(b"second", ad)
        a3 = await a.encrypt_message(b"third", ad)
        my_sk, my_ad = x3dh_respond(bob.identity, bob.spk, bob.opks[102], header.identity_key, header.ephemeral_key)
        b = init_responder(my_sk, my_ad, bob.spk, header.identity_key, header.ephemeral_key)
        b, pt = ratchet_decrypt(b, to_ours(a3), system_rng)
        assert pt == b"third"
        b, pt = ratchet_decrypt(b, to_ours(first), system_rng)
        assert pt == b"hello from theirs"
        b, reply = ratchet_encrypt(b, b"reply from ours", system_rng)
        assert await a.decrypt_message(to_theirs(reply), ad) == b"reply from ours"
        b, pt = ratchet_decrypt(b, to_ours(a2), system_rng)
        assert pt == b"second"
        for i in range(3):
            m = await a.encrypt_message(f"t{i}".encode(), ad)
            b, pt = ratchet_decrypt(b, to_ours(m), system_rng)
            assert pt == f"t{i}".encode()
            b, r = ratchet_encrypt(b, f"o{i}".encode(), system_rng)
            assert await a.decrypt_message(to_theirs(r), ad) == f"o{i}".encode()

    asyncio.run(run())
