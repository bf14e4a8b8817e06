"""Generates tests/vectors/*.json (`python -m enigmo.protocol.vectors [outdir]`): KATs, protocol functions, transcripts, negatives."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import nacl.bindings as nb

from . import attachments, primitives as p, safety
from .content import content_build
from .encoding import canonical_json
from .errors import ProtocolError
from .keys import (DhKeyPair, SigningKeyPair, auth_message, device_certificate_message, device_certificate_sign,
                   signed_prekey_message, signed_prekey_sign)
from .ratchet import Header, RatchetState, kdf_ck, kdf_rk, ratchet_decrypt, ratchet_encrypt, MAX_SKIP
from .rng import DeterministicRng
from .session import (MemoryPreKeyStore, PreKeyMessage, SessionRecord, session_decrypt, session_encrypt,
                      session_initiate)
from .x3dh import PreKeyBundle, x3dh_initiate, x3dh_respond

VECTOR_VERSION = 1
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "tests" / "vectors"
SMALL_ORDER_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def h(data: bytes) -> str:
    return data.hex()


def seed(label: str) -> bytes:
    return p.sha256(b"Enigmo vector seed: " + label.encode())


def expect(actual: bytes, expected_hex: str, what: str) -> str:
    if actual.hex() != expected_hex:
        raise AssertionError(f"{what}: {actual.hex()} != {expected_hex}")
    return expected_hex


# ---------------------------------------------------------------- primitives (published known answers)

RFC5869 = [
    ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    (bytes(range(0x00, 0x50)).hex(), bytes(range(0x60, 0xB0)).hex(), bytes(range(0xB0, 0x100)).hex(), 82,
     "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f"
     "09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
    ("0b" * 22, "", "", 42, "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]
RFC7748_52 = [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
]
RFC7748_61 = {
    "alice_private": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "alice_public": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "bob_private": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "bob_public": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
}
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe"
     "24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302a"
     "eeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed2"
     "8dc027beceea1ec40a"),
]
XCHACHA_A31 = {
    "key": bytes(range(0x80, 0xA0)).hex(),
    "nonce": "404142434445464748494a4b4c4d4e4f5051525354555657",
    "aad": "50515253c0c1c2c3c4c5c6c7",
    "plaintext": b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
                 b"sunscreen would be it.".hex(),
    "ciphertext": "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6"
                  "708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c9763"
                  "7da9768812f615c68b13b52e",
    "tag": "c0875924c1c7987947deafd8780acf49",
}
# libsignal rust/protocol/src/fingerprint.rs test vectors (Java testVectorsVersion1), 33-byte 0x05-prefixed keys.
SIGNAL_FINGERPRINT = {
    "alice_key": "0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868",
    "bob_key": "05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b",
    "alice_id": "+14152222222",
    "bob_id": "+14153333333",
    "iterations": 5200,
    "display": "300354477692869396892869876765458257569162576843440918079131",
    "alice_scannable": "080112220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b"
                       "6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d",
    "bob_scannable": "080112220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d1a220a201e301a0353dce3dbe76"
                     "84cb8336e85136cdc0ee96219494ada305d62a7bd61df",
}


def primitives_vectors() -> dict[str, Any]:
    hkdf = []
    for i, (ikm, salt, info, length, okm) in enumerate(RFC5869, 1):
        out = p.hkdf_sha256(bytes.fromhex(salt), bytes.fromhex(ikm), bytes.fromhex(info), length)
        hkdf.append({"name": f"RFC 5869 A.{i}", "ikm": ikm, "salt": salt, "info": info, "length": length,
                     "okm": expect(out, okm, "hkdf")})
    x25519 = [{"name": f"RFC 7748 5.2 #{i}", "scalar": k, "u": u, "out": expect(nb.crypto_scalarmult(
        bytes.fromhex(k), bytes.fromhex(u)), out, "x25519")} for i, (k, u, out) in enumerate(RFC7748_52, 1)]
    v = RFC7748_61
    expect(p.x25519_base(bytes.fromhex(v["alice_private"])), v["alice_public"], "x25519 alice pub")
    expect(p.x25519_base(bytes.fromhex(v["bob_private"])), v["bob_public"], "x25519 bob pub")
    expect(p.x25519(bytes.fromhex(v["alice_private"]), bytes.fromhex(v["bob_public"])), v["shared"], "x25519 dh")
    ed = []
    for i, (sk, pk, msg, sig) in enumerate(RFC8032, 1):
        pair = SigningKeyPair.from_seed(bytes.fromhex(sk))
        expect(pair.public, pk, "ed25519 pub")
        ed.append({"name": f"RFC 8032 7.1 TEST {i}", "seed": sk, "public": pk, "message": msg,
                   "signature": expect(pair.sign(bytes.fromhex(msg)), sig, "ed25519 sig")})
    x = XCHACHA_A31
    ct = p.aead_encrypt(bytes.fromhex(x["key"]), bytes.fromhex(x["nonce"]), bytes.fromhex(x["plaintext"]),
                        bytes.fromhex(x["aad"]))
    expect(ct, x["ciphertext"] + x["tag"], "xchacha")
    rng_cases = []
    for label, sizes in (("rng-a", [32, 24, 1, 64, 0, 33]), ("rng-b", [32, 32])):
        key = seed(label)
        rng = DeterministicRng(key)
        rng_cases.append({"seed_key": h(key), "calls": [{"n": n, "out": h(rng(n))} for n in sizes]})
    pads = [{"input": h(bytes(range(n))), "block": 64, "padded": h(p.pad(bytes(range(n))))} for n in (0, 1, 63, 64, 65)]
    return {
        "version": VECTOR_VERSION,
        "hkdf_sha256": hkdf,
        "x25519": x25519,
        "x25519_dh": [{"name": "RFC 7748 6.1", **v}],
        "ed25519": ed,
        "xchacha20poly1305": [{"name": "draft-irtf-cfrg-xchacha-03 A.3.1", **x}],
        "hmac_sha256": [{"key": h(seed("hmac-key")), "data": h(b"Enigmo"),
                         "mac": h(p.hmac_sha256(seed("hmac-key"), b"Enigmo"))}],
        "rng": rng_cases,
        "pad": pads,
    }


# ---------------------------------------------------------------- fixtures shared by protocol vectors

class Party:
    """A user's account key plus one device: identity key, certificate, signed and one-time prekeys."""

    def __init__(self, name: str, user_id: str, device_id: int, username: str, opk_count: int = 3) -> None:
        self.name, self.user_id, self.device_id, self.username = name, user_id, device_id, username
        self.account_seed = seed(f"{name}/account")
        self.identity_seed = seed(f"{name}/identity/{device_id}")
        self.account = SigningKeyPair.from_seed(self.account_seed)
        self.identity = SigningKeyPair.from_seed(self.identity_seed)
        self.issued_ms = 1_700_000_000_000
        self.cert = device_certificate_sign(self.account, user_id=user_id, device_id=device_id,
                                            device_key=self.identity.public, issued_ms=self.issued_ms)
        self.spk_id = 7
        self.spk = DhKeyPair.from_secret(seed(f"{name}/spk"))
        self.spk_sig = signed_prekey_sign(self.identity, self.spk.public)
        self.opks = {100 + i: DhKeyPair.from_secret(seed(f"{name}/opk/{i}")) for i in range(opk_count)}
        self.rng_seed = seed(f"{name}/rng")
        self.rng = DeterministicRng(self.rng_seed)
        self.store = MemoryPreKeyStore({self.spk_id: self.spk}, dict(self.opks))
        self.records: dict[str, SessionRecord] = {}

    def bundle(self, opk_id: int | None) -> PreKeyBundle:
        return PreKeyBundle(self.user_id, self.device_id, self.identity.public, self.cert, self.spk_id,
                            self.spk.public, self.spk_sig, opk_id,
                            None if opk_id is None else self.opks[opk_id].public)

    def describe(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id, "device_id": self.device_id, "username": self.username,
            "account_seed": h(self.account_seed), "identity_seed": h(self.identity_seed),
            "issued_ms": self.issued_ms, "spk_id": self.spk_id, "spk_secret": h(self.spk.secret),
            "opks": {str(k): h(v.secret) for k, v in self.opks.items()}, "rng_seed": h(self.rng_seed),
        }


def bundle_json(b: PreKeyBundle) -> dict[str, Any]:
    return {
        "user_id": b.user_id, "device_id": b.device_id, "identity_key": h(b.identity_key),
        "certificate": {"user_id": b.certificate.user_id, "device_id": b.certificate.device_id,
                        "device_key": h(b.certificate.device_key), "issued_ms": b.certificate.issued_ms,
                        "signature": h(b.certificate.signature)},
        "signed_prekey_id": b.signed_prekey_id, "signed_prekey": h(b.signed_prekey),
        "signed_prekey_signature": h(b.signed_prekey_signature),
        "one_time_prekey_id": b.one_time_prekey_id,
        "one_time_prekey": None if b.one_time_prekey is None else h(b.one_time_prekey),
    }


def state_json(state: RatchetState | SessionRecord) -> str:
    return canonical_json(state.to_dict()).decode()


def protocol_vectors() -> dict[str, Any]:
    alice = Party("alice", "1", 1, "alice")
    bob = Party("bob", "2", 3, "bob")
    out: dict[str, Any] = {"version": VECTOR_VERSION}

    out["keys"] = [{"seed": h(s), "ed25519_public": h(k.public), "x25519_public": h(k.x25519_public),
                    "x25519_secret": h(k.x25519_secret)}
                   for s, k in ((alice.identity_seed, alice.identity), (bob.account_seed, bob.account))]
    out["device_certificate"] = [{
        "account_seed": h(bob.account_seed), "user_id": bob.user_id, "device_id": bob.device_id,
        "device_key": h(bob.identity.public), "issued_ms": bob.issued_ms,
        "message": h(device_certificate_message(bob.user_id, bob.device_id, bob.identity.public, bob.issued_ms)),
        "signature": h(bob.cert.signature)}]
    out["signed_prekey"] = [{"identity_seed": h(bob.identity_seed), "spk_public": h(bob.spk.public),
                             "message": h(signed_prekey_message(bob.spk.public)), "signature": h(bob.spk_sig)}]
    nonce = seed("server-nonce")
    msg = auth_message(nonce, alice.user_id, alice.device_id, 1_700_000_123_456)
    out["auth"] = [{"identity_seed": h(alice.identity_seed), "server_nonce": h(nonce), "user_id": alice.user_id,
                    "device_id": alice.device_id, "ts_ms": 1_700_000_123_456, "message": h(msg),
                    "signature": h(alice.identity.sign(msg))}]
    rk, dh = seed("rk"), seed("dh")
    rk2, ck = kdf_rk(rk, dh)
    ck0 = seed("ck")
    ck1, mk = kdf_ck(ck0)
    out["kdf_rk"] = [{"rk": h(rk), "dh": h(dh), "rk_out": h(rk2), "ck_out": h(ck)}]
    out["kdf_ck"] = [{"ck": h(ck0), "ck_out": h(ck1), "mk": h(mk)}]
    out["header"] = [{"dh": h(seed("hdr")), "pn": pn, "n": n, "encoded": h(Header(seed("hdr"), pn, n).encode())}
                     for pn, n in ((0, 0), (3, 258), (0xFFFFFFFF, 1))]

    x3dh = []
    for opk_id in (100, None):
        rng = DeterministicRng(seed(f"x3dh/{opk_id}"))
        init = x3dh_initiate(alice.identity, bob.bundle(opk_id), bob.account.public, rng)
        sk_b, ad_b = x3dh_respond(bob.identity, bob.spk, None if opk_id is None else bob.opks[opk_id],
                                  alice.identity.public, init.ephemeral_public)
        assert (sk_b, ad_b) == (init.shared_secret, init.associated_data)
        x3dh.append({"alice": alice.describe(), "bob": bob.describe(), "bundle": bundle_json(bob.bundle(opk_id)),
                     "bob_account_public": h(bob.account.public), "rng_seed": h(seed(f"x3dh/{opk_id}")),
                     "ephemeral_public": h(init.ephemeral_public), "shared_secret": h(init.shared_secret),
                     "associated_data": h(init.associated_data)})
    out["x3dh"] = x3dh

    # Ratchet encrypt/decrypt on explicit states.
    rng = DeterministicRng(seed("ratchet"))
    record = session_initiate(SessionRecord(), alice.identity, bob.bundle(101), bob.account.public, rng)
    state0 = record.active
    assert state0 is not None
    state1, message = ratchet_encrypt(state0, b"ratchet vector", rng)
    out["ratchet_encrypt"] = [{"state": state_json(state0), "rng_seed": h(seed("ratchet/enc")),
                               "plaintext": h(b"ratchet vector"), **_enc(state0, b"ratchet vector", "ratchet/enc")}]
    sk_b, ad_b = x3dh_respond(bob.identity, bob.spk, bob.opks[101], alice.identity.public, state0.base_key)
    from .ratchet import init_responder
    bob_state = init_responder(sk_b, ad_b, bob.spk, alice.identity.public, state0.base_key)
    drng = DeterministicRng(seed("ratchet/dec"))
    bob_state2, pt = ratchet_decrypt(bob_state, message, drng)
    out["ratchet_decrypt"] = [{"state": state_json(bob_state), "rng_seed": h(seed("ratchet/dec")), "message": h(message),
                               "plaintext": h(pt), "state_after": state_json(bob_state2)}]
    pkm = PreKeyMessage(alice.identity.public, state0.base_key, 7, 101, message)
    pkm_none = PreKeyMessage(alice.identity.public, state0.base_key, 7, None, message)
    out["prekey_message"] = [
        {"identity_key": h(m.identity_key), "ephemeral_key": h(m.ephemeral_key), "signed_prekey_id": m.signed_prekey_id,
         "one_time_prekey_id": m.one_time_prekey_id, "message": h(m.message), "encoded": h(m.encode())}
        for m in (pkm, pkm_none)]
    del state1

    a, b = SIGNAL_FINGERPRINT["alice_key"], SIGNAL_FINGERPRINT["bob_key"]
    fa = safety.fingerprint(bytes.fromhex(a), SIGNAL_FINGERPRINT["alice_id"].encode())
    fb = safety.fingerprint(bytes.fromhex(b), SIGNAL_FINGERPRINT["bob_id"].encode())
    assert safety.display_string(fa, fb) == SIGNAL_FINGERPRINT["display"]
    expect(safety.scannable_encode(fa, fb), SIGNAL_FINGERPRINT["alice_scannable"], "signal scannable")
    expect(safety.scannable_encode(fb, fa), SIGNAL_FINGERPRINT["bob_scannable"], "signal scannable")
    digits, qr = safety.safety_number(alice.account.public, alice.username, bob.account.public, bob.username)
    digits_b, qr_b = safety.safety_number(bob.account.public, bob.username, alice.account.public, alice.username)
    assert digits == digits_b
    out["safety_number"] = {
        "signal_kat": {**SIGNAL_FINGERPRINT, "alice_fingerprint": h(fa), "bob_fingerprint": h(fb)},
        "enigmo": [{"local_account_key": h(alice.account.public), "local_username": alice.username,
                    "remote_account_key": h(bob.account.public), "remote_username": bob.username,
                    "local_fingerprint": h(safety.fingerprint(alice.account.public, b"alice")),
                    "digits": digits, "qr": h(qr), "remote_qr": h(qr_b)}],
    }

    att = []
    for label, size in (("empty", 0), ("small", 100), ("one-chunk", 65536), ("multi", 150_000)):
        rng = DeterministicRng(seed(f"attachment/{label}"))
        data = pattern(size)
        key, digest, blob = attachments.encrypt_attachment(data, rng)
        att.append({"name": label, "rng_seed": h(seed(f"attachment/{label}")), "plaintext_len": size,
                    "key": h(key), "digest": h(digest), "blob_len": len(blob),
                    "blob": h(blob) if size <= 100 else None})
    out["attachment"] = att

    out["content"] = [{"kind": kind, "fields": fields, "encoded": content_build(kind, **fields).decode()}
                      for kind, fields in CONTENT_SAMPLES]
    return out


CONTENT_SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("text", {"id": "m1", "sent_ms": 1_700_000_000_000, "body": "héllo 👋 \"quoted\"\n<b>"}),
    ("text", {"id": "m2", "sent_ms": 1, "body": "re", "reply_to": "m1"}),
    ("attachment", {"id": "m3", "sent_ms": 2, "attachment": {"ref": "att_1", "key": "AAAA", "digest": "BBBB",
                                                              "size": 100, "mime": "image/png", "name": "a.png"}}),
    ("reaction", {"id": "m4", "sent_ms": 3, "target": "m1", "emoji": "👍"}),
    ("reaction", {"id": "m5", "sent_ms": 4, "target": "m1", "emoji": "👍", "remove": True}),
    ("delete", {"id": "m6", "sent_ms": 5, "target": "m2"}),
    ("timer", {"id": "m7", "sent_ms": 6, "seconds": 3600}),
    ("receipt", {"id": "m8", "sent_ms": 7, "kind": "read", "targets": ["m1", "m2"]}),
    ("retry", {"id": "m9", "sent_ms": 8, "target": "m1"}),
]


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def _enc(state: RatchetState, plaintext: bytes, label: str) -> dict[str, str]:
    new_state, message = ratchet_encrypt(state, plaintext, DeterministicRng(seed(label)))
    return {"message": h(message), "state_after": state_json(new_state)}


# ---------------------------------------------------------------- transcripts

def run_transcript(name: str, parties: dict[str, Party], script: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Script ops: ("init", who, peer, opk_id) | ("send", who, peer, msg_id, text) | ("recv", who, peer, msg_id)."""
    wires: dict[str, bytes] = {}
    steps: list[dict[str, Any]] = []
    for op in script:
        kind, who, peer = op[0], parties[op[1]], parties[op[2]]
        record = who.records.get(peer.name, SessionRecord())
        if kind == "init":
            who.records[peer.name] = session_initiate(record, who.identity, peer.bundle(op[3]), peer.account.public,
                                                      who.rng)
            steps.append({"op": "init", "who": who.name, "peer": peer.name, "opk_id": op[3]})
        elif kind == "send":
            who.records[peer.name], wire = session_encrypt(record, op[4].encode(), who.rng)
            wires[op[3]] = wire
            steps.append({"op": "send", "who": who.name, "peer": peer.name, "id": op[3],
                          "plaintext": op[4], "wire": h(wire)})
        else:
            result = session_decrypt(record, wires[op[3]], who.identity, who.store, who.rng)
            who.records[peer.name] = result.record
            if result.used_one_time_prekey_id is not None:
                who.store.one_time.pop(result.used_one_time_prekey_id)
            steps.append({"op": "recv", "who": who.name, "peer": peer.name, "id": op[3],
                          "plaintext": result.plaintext.decode(), "new_session": result.new_session,
                          "used_one_time_prekey_id": result.used_one_time_prekey_id})
    final = {pname: {peer: state_json(rec) for peer, rec in sorted(party.records.items())}
             for pname, party in parties.items()}
    return {"name": name, "parties": {n: p_.describe() for n, p_ in parties.items()}, "steps": steps,
            "final_records": final}


def transcripts() -> dict[str, Any]:
    def pair() -> dict[str, Party]:
        return {"alice": Party("alice", "1", 1, "alice"), "bob": Party("bob", "2", 3, "bob")}

    out_of_order = [
        ("init", "alice", "bob", 100),
        ("send", "alice", "bob", "a1", "a1: hello bob"), ("send", "alice", "bob", "a2", "a2"),
        ("send", "alice", "bob", "a3", "a3"),
        ("recv", "bob", "alice", "a2"), ("recv", "bob", "alice", "a1"),
        ("send", "bob", "alice", "b1", "b1"), ("send", "bob", "alice", "b2", "b2: hi alice"),
        ("recv", "alice", "bob", "b2"),
        ("send", "alice", "bob", "a4", "a4"), ("send", "alice", "bob", "a5", "a5"),
        ("recv", "bob", "alice", "a5"), ("recv", "bob", "alice", "a3"), ("recv", "bob", "alice", "a4"),
        ("recv", "alice", "bob", "b1"),
        ("send", "bob", "alice", "b3", "b3 " + "x" * 200),
        ("send", "alice", "bob", "a6", "a6 ünïcödé ✓"),
        ("recv", "alice", "bob", "b3"), ("recv", "bob", "alice", "a6"),
        ("send", "bob", "alice", "b4", ""), ("send", "bob", "alice", "b5", "b5"),
        ("recv", "alice", "bob", "b5"), ("send", "alice", "bob", "a7", "a7"), ("recv", "bob", "alice", "a7"),
        ("recv", "alice", "bob", "b4"),
    ]
    simultaneous = [
        ("init", "alice", "bob", 100), ("init", "bob", "alice", 101),
        ("send", "alice", "bob", "a1", "a1 from alice"), ("send", "bob", "alice", "b1", "b1 from bob"),
        ("recv", "bob", "alice", "a1"), ("recv", "alice", "bob", "b1"),
        ("send", "alice", "bob", "a2", "a2"), ("recv", "bob", "alice", "a2"),
        ("send", "bob", "alice", "b2", "b2"), ("recv", "alice", "bob", "b2"),
        ("send", "alice", "bob", "a3", "a3"), ("recv", "bob", "alice", "a3"),
    ]
    no_opk = [
        ("init", "alice", "bob", None), ("send", "alice", "bob", "a1", "no one-time prekey"),
        ("recv", "bob", "alice", "a1"), ("send", "bob", "alice", "b1", "ok"), ("recv", "alice", "bob", "b1"),
    ]
    return {"version": VECTOR_VERSION, "transcripts": [
        run_transcript("out_of_order", pair(), out_of_order),
        run_transcript("simultaneous_initiation", pair(), simultaneous),
        run_transcript("no_one_time_prekey", pair(), no_opk),
    ]}


# ---------------------------------------------------------------- negative cases

def error_of(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except ProtocolError as exc:
        return exc.code
    raise AssertionError("expected a ProtocolError")


def negative_vectors() -> dict[str, Any]:
    alice = Party("alice", "1", 1, "alice")
    bob = Party("bob", "2", 3, "bob")
    cases: list[dict[str, Any]] = []

    def x3dh_case(name: str, bundle: PreKeyBundle) -> None:
        rng_seed = seed(f"neg/{name}")
        code = error_of(lambda: x3dh_initiate(alice.identity, bundle, bob.account.public, DeterministicRng(rng_seed)))
        cases.append({"name": name, "kind": "x3dh_initiate", "alice": alice.describe(), "bundle": bundle_json(bundle),
                      "account_public": h(bob.account.public), "rng_seed": h(rng_seed), "error": code})

    good = bob.bundle(100)
    bad_sig = bytearray(good.signed_prekey_signature)
    bad_sig[5] ^= 1
    x3dh_case("bad_signed_prekey_signature", PreKeyBundle(**{**good.__dict__, "signed_prekey_signature": bytes(bad_sig)}))
    bad_cert = bytearray(good.certificate.signature)
    bad_cert[0] ^= 0x80
    from .keys import DeviceCertificate
    x3dh_case("bad_certificate_signature", PreKeyBundle(**{**good.__dict__, "certificate": DeviceCertificate(
        **{**good.certificate.__dict__, "signature": bytes(bad_cert)})}))
    x3dh_case("certificate_for_other_device", PreKeyBundle(**{**good.__dict__, "device_id": 4}))
    small = PreKeyBundle(**{**good.__dict__, "signed_prekey": SMALL_ORDER_POINT,
                            "signed_prekey_signature": signed_prekey_sign(bob.identity, SMALL_ORDER_POINT)})
    x3dh_case("small_order_signed_prekey", small)

    # Session-level receive cases: bob receives bytes with a given record and prekey store.
    def first_message(opk_id: int | None, rng_label: str, text: bytes = b"first") -> tuple[SessionRecord, bytes]:
        rng = DeterministicRng(seed(rng_label))
        rec = session_initiate(SessionRecord(), alice.identity, bob.bundle(opk_id), bob.account.public, rng)
        return session_encrypt(rec, text, rng)

    def recv_case(name: str, wire: bytes, record: SessionRecord, opk_ids: list[int], spk_ids: list[int]) -> None:
        store = MemoryPreKeyStore({i: bob.spk for i in spk_ids}, {i: bob.opks[i] for i in opk_ids})
        rng_seed = seed(f"neg/{name}")
        code = error_of(lambda: session_decrypt(record, wire, bob.identity, store, DeterministicRng(rng_seed)))
        cases.append({"name": name, "kind": "session_decrypt", "bob": bob.describe(), "record": state_json(record),
                      "one_time_prekey_ids": opk_ids, "signed_prekey_ids": spk_ids, "rng_seed": h(rng_seed),
                      "wire": h(wire), "error": code})

    _, wire = first_message(100, "neg/first")
    recv_case("reused_one_time_prekey", wire, SessionRecord(), [101, 102], [7])
    pkm = PreKeyMessage.decode(wire)
    recv_case("unknown_one_time_prekey", PreKeyMessage(pkm.identity_key, pkm.ephemeral_key, 7, 999, pkm.message).encode(),
              SessionRecord(), [100, 101, 102], [7])
    recv_case("unknown_signed_prekey", wire, SessionRecord(), [100], [8])
    recv_case("small_order_ephemeral_key", PreKeyMessage(pkm.identity_key, SMALL_ORDER_POINT, 7, 100,
                                                         pkm.message).encode(), SessionRecord(), [100], [7])
    recv_case("forged_sender_identity", PreKeyMessage(bob.identity.public, pkm.ephemeral_key, 7, 100,
                                                      pkm.message).encode(), SessionRecord(), [100], [7])
    recv_case("truncated_message", wire[:60], SessionRecord(), [100], [7])
    recv_case("ratchet_message_without_session", pkm.message, SessionRecord(), [100], [7])

    # Established session for ratchet-level cases.
    a_rec, wire = first_message(100, "neg/established")
    store = MemoryPreKeyStore({7: bob.spk}, {100: bob.opks[100]})
    b_rec = session_decrypt(SessionRecord(), wire, bob.identity, store, DeterministicRng(seed("neg/established/b"))).record
    b_rec, reply = session_encrypt(b_rec, b"reply", DeterministicRng(seed("neg/established/b2")))
    a_rec = session_decrypt(a_rec, reply, alice.identity, store, DeterministicRng(seed("neg/established/a"))).record
    arng = DeterministicRng(seed("neg/established/a2"))
    a_rec, m1 = session_encrypt(a_rec, b"after reply", arng)
    tampered = bytearray(m1)
    tampered[40] ^= 1  # header n
    recv_case("tampered_header", bytes(tampered), b_rec, [], [7])
    tampered = bytearray(m1)
    tampered[-1] ^= 1
    recv_case("tampered_ciphertext", bytes(tampered), b_rec, [], [7])
    bad_ad = SessionRecord.from_dict(b_rec.to_dict())
    assert bad_ad.active is not None
    bad_ad.active.ad = bad_ad.active.ad[:-1] + bytes([bad_ad.active.ad[-1] ^ 1])
    recv_case("tampered_associated_data", m1, bad_ad, [], [7])
    small_hdr = Header(SMALL_ORDER_POINT, 0, 0).encode() + m1[41:]
    recv_case("small_order_ratchet_key", small_hdr, b_rec, [], [7])
    zero_hdr = Header(b"\x00" * 32, 0, 0).encode() + m1[41:]
    recv_case("zero_ratchet_key", zero_hdr, b_rec, [], [7])
    b_after = session_decrypt(b_rec, m1, bob.identity, store, DeterministicRng(seed("neg/dup"))).record
    recv_case("duplicate_message", m1, b_after, [], [7])
    skip_rec = a_rec
    for _ in range(MAX_SKIP + 2):  # bob has nr=1, so n=1002 skips 1001 keys
        skip_rec, far = session_encrypt(skip_rec, b"x", arng)
    recv_case("max_skip_plus_one", far, b_after, [], [7])

    # Attachments: a base blob from (rng_seed, plaintext_len) plus a mutation keeps the file small.
    def att_case(name: str, size: int, mutation: dict[str, Any]) -> None:
        rng_seed = seed(f"neg/attachment/{size}")
        key, digest, blob = attachments.encrypt_attachment(pattern(size), DeterministicRng(rng_seed))
        bad = attachment_mutate(blob, key, pattern(size), mutation)
        dg = bytes.fromhex(mutation["digest"]) if "digest" in mutation else p.sha256(bad)
        code = error_of(lambda: attachments.decrypt_attachment(bad, key, dg))
        cases.append({"name": name, "kind": "attachment_decrypt", "rng_seed": h(rng_seed), "plaintext_len": size,
                      "mutation": mutation, "mutated_digest": h(dg), "error": code})

    att_case("attachment_truncated_stream", 70_000, {"truncate_to": 24 + 65536 + 17 + 10})
    att_case("attachment_truncated_mid_chunk", 70_000, {"truncate_to": 24 + 65536 + 17 + 4000})
    att_case("attachment_missing_final_tag", 70_000, {"no_final": True})
    att_case("attachment_chunk_boundary_truncation", 140_000, {"truncate_to": 24 + 2 * (65536 + 17)})
    att_case("attachment_trailing_bytes", 65536, {"append_zeros": 40})
    att_case("attachment_appended_to_short_chunk", 1000, {"append_zeros": 40})
    att_case("attachment_digest_mismatch", 1000, {"digest": h(p.sha256(b"other"))})
    att_case("attachment_header_only", 1000, {"truncate_to": 24})

    for name, raw in (("content_unknown_type", b'{"v":1,"type":"poll","id":"x","sent_ms":1}'),
                      ("content_bad_version", b'{"v":2,"type":"text","id":"x","sent_ms":1,"body":"b"}'),
                      ("content_missing_body", b'{"v":1,"type":"text","id":"x","sent_ms":1}'),
                      ("content_bool_as_int", b'{"v":1,"type":"timer","id":"x","sent_ms":1,"seconds":true}'),
                      ("content_not_json", b"\xff\xfe")):
        from .content import content_parse
        cases.append({"name": name, "kind": "content_parse", "data": h(raw), "error": error_of(lambda: content_parse(raw))})
    return {"version": VECTOR_VERSION, "cases": cases}


def attachment_mutate(blob: bytes, key: bytes, data: bytes, mutation: dict[str, Any]) -> bytes:
    if mutation.get("no_final"):
        return _stream_without_final(data, key, blob[:attachments.HEADER_BYTES])
    if "truncate_to" in mutation:
        return blob[:mutation["truncate_to"]]
    if "append_zeros" in mutation:
        return blob + b"\x00" * mutation["append_zeros"]
    return blob


def _stream_without_final(data: bytes, key: bytes, header: bytes) -> bytes:
    state = attachments._push_state(key, header)
    parts = [header]
    for i in range(0, len(data), attachments.CHUNK):
        parts.append(nb.crypto_secretstream_xchacha20poly1305_push(state, data[i:i + attachments.CHUNK], None,
                                                                   attachments.TAG_MESSAGE))
    return b"".join(parts)


def build_all() -> dict[str, str]:
    files = {
        "primitives.json": primitives_vectors(),
        "protocol.json": protocol_vectors(),
        "transcripts.json": transcripts(),
        "negative.json": negative_vectors(),
    }
    return {name: json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n" for name, data in files.items()}


def main(argv: list[str]) -> None:
    outdir = Path(argv[1]) if len(argv) > 1 else DEFAULT_DIR
    outdir.mkdir(parents=True, exist_ok=True)
    for name, text in build_all().items():
        (outdir / name).write_text(text, encoding="utf-8")
        print(f"wrote {outdir / name} ({len(text)} bytes)")


if __name__ == "__main__":
    main(sys.argv)
