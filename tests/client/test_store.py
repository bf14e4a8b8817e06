"""The passphrase-sealed key store: round trip, wrong passphrase, nothing readable on disk,
atomic saves, rollback on error, and one lock shared by nested transactions."""

from __future__ import annotations

import json
import stat

import nacl.pwhash
import pytest

from enigmo.client.errors import ClientError
from enigmo.client.store import KeyStore

FAST = {"opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN, "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN}


def test_round_trip_with_the_right_passphrase(tmp_path):
    path = tmp_path / "a" / "alice.json"
    KeyStore.create(path, "pw", {"secret": "s3cr3t-value", "n": 1}, **FAST)
    assert KeyStore.open(path, "pw").data == {"secret": "s3cr3t-value", "n": 1}


def test_the_file_is_sealed_with_argon2id_and_private_to_the_user(tmp_path):
    path = tmp_path / "alice.json"
    KeyStore.create(path, "pw", {"secret": "s3cr3t-value"}, **FAST)
    raw = path.read_bytes()
    assert b"s3cr3t-value" not in raw
    header = json.loads(raw)
    assert header["kdf"]["alg"] == "argon2id13" and header["kdf"]["opslimit"] == FAST["opslimit"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_kdf_cost_is_argon2id_interactive(tmp_path):
    KeyStore.create(tmp_path / "s.json", "pw", {})
    kdf = json.loads((tmp_path / "s.json").read_text())["kdf"]
    assert (kdf["opslimit"], kdf["memlimit"]) == (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
                                                  nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE)


def test_wrong_passphrase_is_a_clear_error(tmp_path):
    KeyStore.create(tmp_path / "s.json", "pw", {}, **FAST)
    with pytest.raises(ClientError, match="wrong passphrase"):
        KeyStore.open(tmp_path / "s.json", "not it")


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(ClientError, match="no key store"):
        KeyStore.open(tmp_path / "nope.json", "pw")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ClientError, match="not an Enigmo key store"):
        KeyStore.open(tmp_path / "other.json", "pw")
    (tmp_path / "junk.json").write_bytes(b"\xff\x00")
    with pytest.raises(ClientError, match="not a readable key store"):
        KeyStore.open(tmp_path / "junk.json", "pw")


def test_a_tampered_box_is_refused(tmp_path):
    path = tmp_path / "s.json"
    KeyStore.create(path, "pw", {"x": 1}, **FAST)
    header = json.loads(path.read_text())
    box = bytearray(header["box"].encode())
    box[-5] = ord("A") if box[-5] != ord("A") else ord("B")
    header["box"] = box.decode()
    path.write_text(json.dumps(header))
    with pytest.raises(ClientError):
        KeyStore.open(path, "pw")


def test_create_refuses_to_overwrite_and_empty_passphrases(tmp_path):
    KeyStore.create(tmp_path / "s.json", "pw", {}, **FAST)
    with pytest.raises(ClientError, match="already exists"):
        KeyStore.create(tmp_path / "s.json", "pw", {}, **FAST)
    with pytest.raises(ClientError, match="empty"):
        KeyStore.create(tmp_path / "t.json", "", {}, **FAST)


def test_transactions_save_on_success_and_roll_back_on_error(tmp_path):
    path = tmp_path / "s.json"
    store = KeyStore.create(path, "pw", {"n": 0}, **FAST)
    with store.transaction() as data:
        data["n"] = 1
        with store.transaction() as inner:  # nested: same lock, one save
            inner["m"] = 2
    assert KeyStore.open(path, "pw").data == {"n": 1, "m": 2}
    with pytest.raises(RuntimeError):
        with store.transaction() as data:
            data["n"] = 99
            raise RuntimeError("boom")
    assert store.data["n"] == 1 and KeyStore.open(path, "pw").data["n"] == 1


def test_a_transaction_sees_what_another_process_saved(tmp_path):
    path = tmp_path / "s.json"
    first = KeyStore.create(path, "pw", {"n": 0}, **FAST)
    second = KeyStore.open(path, "pw")
    with second.transaction() as data:
        data["n"] = 5
    with first.transaction() as data:
        assert data["n"] == 5
        data["n"] += 1
    assert KeyStore.open(path, "pw").data["n"] == 6
    assert not list(tmp_path.glob("*.tmp"))
