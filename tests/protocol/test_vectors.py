"""Every vector file is reproduced exactly by the generator and checked function by function."""

from __future__ import annotations

import json

import pytest

from enigmo.protocol import attachments, primitives as p, safety, vectors
from enigmo.protocol.content import content_build, content_parse
from enigmo.protocol.encoding import canonical_json
from enigmo.protocol.errors import ProtocolError
from enigmo.protocol.keys import (SigningKeyPair, auth_message, device_certificate_message, signed_prekey_message,
                                  signed_prekey_verify, device_certificate_verify, DeviceCertificate)
from enigmo.protocol.ratchet import Header, RatchetState, kdf_ck, kdf_rk, ratchet_decrypt, ratchet_encrypt
from enigmo.protocol.rng import DeterministicRng
from enigmo.protocol.session import (MemoryPreKeyStore, PreKeyMessage, SessionRecord, session_decrypt,
                                     session_encrypt, session_initiate)
from enigmo.protocol.x3dh import x3dh_initiate, x3dh_respond

from .helpers import VParty, bundle_from, load

PRIM = load("primitives.json")
PROTO = load("protocol.json")
TRANS = load("transcripts.json")
NEG = load("negative.json")


def test_vector_files_regenerate_identically() -> None:
    """A change to the library that alters any vector byte fails here (regenerate deliberately if intended)."""
    for name, text in vectors.build_all().items():
        assert (vectors.DEFAULT_DIR / name).read_text(encoding="utf-8") == text, name


def test_vector_files_are_versioned() -> None:
    for data in (PRIM, PROTO, TRANS, NEG):
        assert data["version"] == 1


@pytest.mark.parametrize("case", PRIM["hkdf_sha256"], ids=lambda c: c["name"])
def test_hkdf_rfc5869(case: dict) -> None:
    out = p.hkdf_sha256(bytes.fromhex(case["salt"]), bytes.fromhex(case["ikm"]), bytes.fromhex(case["info"]),
                        case["length"])
    assert out.hex() == case["okm"]


def test_x25519_rfc7748() -> None:
    for case in PRIM["x25519"]:
        assert p.x25519(bytes.fromhex(case["scalar"]), bytes.fromhex(case["u"])).hex() == case["out"]
    v = PRIM["x25519_dh"][0]
    assert p.x25519_base(bytes.fromhex(v["alice_private"])).hex() == v["alice_public"]
    assert p.x25519_base(bytes.fromhex(v["bob_private"])).hex() == v["bob_public"]
    assert p.x25519(bytes.fromhex(v["bob_private"]), bytes.fromhex(v["alice_public"])).hex() == v["shared"]


def test_ed25519_rfc8032() -> None:
    for case in PRIM["ed25519"]:
        pair = SigningKeyPair.from_seed(bytes.fromhex(case["seed"]))
        assert pair.public.hex() == case["public"]
        sig = pair.sign(bytes.fromhex(case["message"]))
        assert sig.hex() == case["signature"]
        assert p.ed25519_verify(pair.public, bytes.fromhex(case["message"]), sig)


def test_xchacha_draft_a31() -> None:
    x = PRIM["xchacha20poly1305"][0]
    key, nonce, aad = bytes.fromhex(x["key"]), bytes.fromhex(x["nonce"]), bytes.fromhex(x["aad"])
    ct = p.aead_encrypt(key, nonce, bytes.fromhex(x["plaintext"]), aad)
    assert ct.hex() == x["ciphertext"] + x["tag"]
    assert p.aead_decrypt(key, nonce, ct, aad).hex() == x["plaintext"]


def test_rng_hmac_pad() -> None:
    for case in PRIM["rng"]:
        rng = DeterministicRng(bytes.fromhex(case["seed_key"]))
        assert [rng(c["n"]).hex() for c in case["calls"]] == [c["out"] for c in case["calls"]]
    m = PRIM["hmac_sha256"][0]
    assert p.hmac_sha256(bytes.fromhex(m["key"]), bytes.fromhex(m["data"])).hex() == m["mac"]
    for case in PRIM["pad"]:
        assert p.pad(bytes.fromhex(case["input"])).hex() == case["padded"]
        assert p.unpad(bytes.fromhex(case["padded"])).hex() == case["input"]


def test_keys_certificates_prekeys_auth() -> None:
    for k in PROTO["keys"]:
        pair = SigningKeyPair.from_seed(bytes.fromhex(k["seed"]))
        assert (pair.public.hex(), pair.x25519_public.hex(), pair.x25519_secret.hex()) == (
            k["ed25519_public"], k["x25519_public"], k["x25519_secret"])
        assert p.x25519_base(pair.x25519_secret) == pair.x25519_public
    c = PROTO["device_certificate"][0]
    account = SigningKeyPair.from_seed(bytes.fromhex(c["account_seed"]))
    msg = device_certificate_message(c["user_id"], c["device_id"], bytes.fromhex(c["device_key"]), c["issued_ms"])
    assert msg.hex() == c["message"]
    assert msg.startswith(b"Enigmo-DeviceCert-v1\x00" + c["user_id"].encode())
    assert account.sign(msg).hex() == c["signature"]
    device_certificate_verify(account.public, DeviceCertificate(c["user_id"], c["device_id"],
                              bytes.fromhex(c["device_key"]), c["issued_ms"], bytes.fromhex(c["signature"])))
    s = PROTO["signed_prekey"][0]
    ident = SigningKeyPair.from_seed(bytes.fromhex(s["identity_seed"]))
    assert signed_prekey_message(bytes.fromhex(s["spk_public"])).hex() == s["message"] == "05" + s["spk_public"]
    assert ident.sign(bytes.fromhex(s["message"])).hex() == s["signature"]
    signed_prekey_verify(ident.public, bytes.fromhex(s["spk_public"]), bytes.fromhex(s["signature"]))
    a = PROTO["auth"][0]
    msg = auth_message(bytes.fromhex(a["server_nonce"]), a["user_id"], a["device_id"], a["ts_ms"])
    assert msg.hex() == a["message"]
    assert SigningKeyPair.from_seed(bytes.fromhex(a["identity_seed"])).sign(msg).hex() == a["signature"]


def test_kdfs_and_header() -> None:
    r = PROTO["kdf_rk"][0]
    assert [x.hex() for x in kdf_rk(bytes.fromhex(r["rk"]), bytes.fromhex(r["dh"]))] == [r["rk_out"], r["ck_out"]]
    c = PROTO["kdf_ck"][0]
    assert [x.hex() for x in kdf_ck(bytes.fromhex(c["ck"]))] == [c["ck_out"], c["mk"]]
    for hd in PROTO["header"]:
        enc = Header(bytes.fromhex(hd["dh"]), hd["pn"], hd["n"]).encode()
        assert enc.hex() == hd["encoded"]
        assert Header.decode(enc) == Header(bytes.fromhex(hd["dh"]), hd["pn"], hd["n"])


@pytest.mark.parametrize("case", PROTO["x3dh"], ids=lambda c: str(c["bundle"]["one_time_prekey_id"]))
def test_x3dh_both_sides(case: dict) -> None:
    alice, bob = VParty(case["alice"]), VParty(case["bob"])
    init = x3dh_initiate(alice.identity, bundle_from(case["bundle"]), bytes.fromhex(case["bob_account_public"]),
                         DeterministicRng(bytes.fromhex(case["rng_seed"])))
    assert init.ephemeral_public.hex() == case["ephemeral_public"]
    assert init.shared_secret.hex() == case["shared_secret"]
    assert init.associated_data.hex() == case["associated_data"]
    opk_id = case["bundle"]["one_time_prekey_id"]
    sk, ad = x3dh_respond(bob.identity, bob.spk, None if opk_id is None else bob.opks[opk_id], alice.identity.public,
                          init.ephemeral_public)
    assert (sk.hex(), ad.hex()) == (case["shared_secret"], case["associated_data"])


def test_ratchet_encrypt_decrypt_vectors() -> None:
    e = PROTO["ratchet_encrypt"][0]
    state = RatchetState.from_dict(json.loads(e["state"]))
    assert canonical_json(state.to_dict()).decode() == e["state"]
    new_state, msg = ratchet_encrypt(state, bytes.fromhex(e["plaintext"]), DeterministicRng(bytes.fromhex(e["rng_seed"])))
    assert msg.hex() == e["message"]
    assert canonical_json(new_state.to_dict()).decode() == e["state_after"]
    d = PROTO["ratchet_decrypt"][0]
    state = RatchetState.from_dict(json.loads(d["state"]))
    new_state, pt = ratchet_decrypt(state, bytes.fromhex(d["message"]), DeterministicRng(bytes.fromhex(d["rng_seed"])))
    assert pt.hex() == d["plaintext"]
    assert canonical_json(new_state.to_dict()).decode() == d["state_after"]
    for m in PROTO["prekey_message"]:
        pkm = PreKeyMessage(bytes.fromhex(m["identity_key"]), bytes.fromhex(m["ephemeral_key"]), m["signed_prekey_id"],
                            m["one_time_prekey_id"], bytes.fromhex(m["message"]))
        assert pkm.encode().hex() == m["encoded"]
        assert PreKeyMessage.decode(pkm.encode()) == pkm


def test_safety_numbers_signal_kat_and_enigmo() -> None:
    kat = PROTO["safety_number"]["signal_kat"]
    fa = safety.fingerprint(bytes.fromhex(kat["alice_key"]), kat["alice_id"].encode(), kat["iterations"])
    fb = safety.fingerprint(bytes.fromhex(kat["bob_key"]), kat["bob_id"].encode(), kat["iterations"])
    assert safety.display_string(fa, fb) == safety.display_string(fb, fa) == kat["display"]
    assert safety.scannable_encode(fa, fb).hex() == kat["alice_scannable"]
    assert safety.scannable_encode(fb, fa).hex() == kat["bob_scannable"]
    for v in PROTO["safety_number"]["enigmo"]:
        digits, qr = safety.safety_number(bytes.fromhex(v["local_account_key"]), v["local_username"],
                                          bytes.fromhex(v["remote_account_key"]), v["remote_username"])
        assert (digits, qr.hex()) == (v["digits"], v["qr"])
        assert len(digits) == 60 and digits.isdigit()
        local = safety.fingerprint(bytes.fromhex(v["local_account_key"]), v["local_username"].encode())
        remote = safety.fingerprint(bytes.fromhex(v["remote_account_key"]), v["remote_username"].encode())
        assert safety.scannable_matches(local, remote, bytes.fromhex(v["remote_qr"]))
        assert not safety.scannable_matches(local, remote, qr)


def test_attachment_vectors() -> None:
    for a in PROTO["attachment"]:
        data = vectors.pattern(a["plaintext_len"])
        key, digest, blob = attachments.encrypt_attachment(data, DeterministicRng(bytes.fromhex(a["rng_seed"])))
        assert (key.hex(), digest.hex(), len(blob)) == (a["key"], a["digest"], a["blob_len"])
        if a["blob"] is not None:
            assert blob.hex() == a["blob"]
        assert attachments.decrypt_attachment(blob, key, digest) == data


def test_content_vectors() -> None:
    for c in PROTO["content"]:
        assert content_build(c["kind"], **c["fields"]).decode() == c["encoded"]
        parsed = content_parse(c["encoded"].encode())
        assert parsed["type"] == c["kind"] and parsed["id"] == c["fields"]["id"]


@pytest.mark.parametrize("transcript", TRANS["transcripts"], ids=lambda t: t["name"])
def test_transcript_replay(transcript: dict) -> None:
    """Replaying the script byte for byte reproduces every wire message, plaintext and final session state."""
    parties = {name: VParty(d) for name, d in transcript["parties"].items()}
    records: dict[tuple[str, str], SessionRecord] = {}
    wires: dict[str, bytes] = {}
    for step in transcript["steps"]:
        who, peer = parties[step["who"]], parties[step["peer"]]
        key = (step["who"], step["peer"])
        record = records.get(key, SessionRecord())
        if step["op"] == "init":
            bundle = bundle_from(vectors.bundle_json(_bundle(peer, step["opk_id"])))
            records[key] = session_initiate(record, who.identity, bundle, peer.account.public, who.rng)
        elif step["op"] == "send":
            records[key], wire = session_encrypt(record, step["plaintext"].encode(), who.rng)
            assert wire.hex() == step["wire"], step["id"]
            wires[step["id"]] = wire
        else:
            result = session_decrypt(record, wires[step["id"]], who.identity, who.store, who.rng)
            assert result.plaintext.decode() == step["plaintext"]
            assert result.new_session == step["new_session"]
            assert result.used_one_time_prekey_id == step["used_one_time_prekey_id"]
            if result.used_one_time_prekey_id is not None:
                who.store.one_time.pop(result.used_one_time_prekey_id)
            records[key] = result.record
    for pname, peers in transcript["final_records"].items():
        for peer, state in peers.items():
            assert canonical_json(records[(pname, peer)].to_dict()).decode() == state


def _bundle(party: VParty, opk_id: int | None):
    from enigmo.protocol.keys import device_certificate_sign, signed_prekey_sign
    from enigmo.protocol.x3dh import PreKeyBundle
    d = party.d
    cert = device_certificate_sign(party.account, user_id=d["user_id"], device_id=d["device_id"],
                                   device_key=party.identity.public, issued_ms=d["issued_ms"])
    return PreKeyBundle(d["user_id"], d["device_id"], party.identity.public, cert, d["spk_id"], party.spk.public,
                        signed_prekey_sign(party.identity, party.spk.public), opk_id,
                        None if opk_id is None else party.opks[opk_id].public)


@pytest.mark.parametrize("case", NEG["cases"], ids=lambda c: c["name"])
def test_negative_cases(case: dict) -> None:
    with pytest.raises(ProtocolError) as info:
        _run_negative(case)
    assert info.value.code == case["error"]


def _run_negative(case: dict) -> None:
    kind = case["kind"]
    if kind == "x3dh_initiate":
        alice = VParty(case["alice"])
        x3dh_initiate(alice.identity, bundle_from(case["bundle"]), bytes.fromhex(case["account_public"]),
                      DeterministicRng(bytes.fromhex(case["rng_seed"])))
    elif kind == "session_decrypt":
        bob = VParty(case["bob"])
        store = MemoryPreKeyStore({i: bob.spk for i in case["signed_prekey_ids"]},
                                  {i: bob.opks[i] for i in case["one_time_prekey_ids"]})
        record = SessionRecord.from_dict(json.loads(case["record"]))
        before = canonical_json(record.to_dict())
        try:
            session_decrypt(record, bytes.fromhex(case["wire"]), bob.identity, store,
                            DeterministicRng(bytes.fromhex(case["rng_seed"])))
        finally:
            assert canonical_json(record.to_dict()) == before  # failure never mutates the stored state
    elif kind == "attachment_decrypt":
        size = case["plaintext_len"]
        key, _, blob = attachments.encrypt_attachment(vectors.pattern(size), DeterministicRng(bytes.fromhex(case["rng_seed"])))
        bad = vectors.attachment_mutate(blob, key, vectors.pattern(size), case["mutation"])
        attachments.decrypt_attachment(bad, key, bytes.fromhex(case["mutated_digest"]))
    elif kind == "content_parse":
        content_parse(bytes.fromhex(case["data"]))
    else:
        raise AssertionError(kind)
