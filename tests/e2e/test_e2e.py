"""End to end on a real server: alice, bob and bob's linked second device (plus carol for the
group, and dave through the CLI) talk through enigmo.client; afterwards the database, Redis and
the media directory hold none of the plaintexts and none of the private keys."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nacl.pwhash
import pytest

from enigmo.client.device import LocalDevice, Received
from enigmo.protocol import primitives as p
from enigmo.protocol.encoding import b64d
from tests.e2e.conftest import PRODUCTION
from tests.live import PYTHON, ROOT

pytestmark = pytest.mark.live

FAST_KDF = {"opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN, "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN}
PASSPHRASE = "correct horse battery staple"

PLAINTEXTS: list[bytes] = []  # everything any test sent
SECRETS: set[bytes] = set()  # every private key or ratchet secret any device ever held


def say(device: LocalDevice, conversation_id: str, text: str, **kw: Any) -> None:
    PLAINTEXTS.append(text.encode())
    device.send_text(conversation_id, text, **kw)
    snapshot(device)


def receive(device: LocalDevice, count: int, timeout: float = 15.0) -> list[Received]:
    got: list[Received] = []
    device.follow(got.append, stop=lambda: len(got) >= count, idle_timeout=timeout)
    snapshot(device)
    assert [g.error for g in got if g.error] == []
    return got


def bodies(received: list[Received]) -> list[str]:
    return [r.content.get("body") or r.content.get("caption", "") for r in received if r.content]


def snapshot(*devices: LocalDevice) -> None:
    """Remember every secret in these stores now: session secrets change with every message."""
    for device in devices:
        data = device.store.data
        for seed in (data.get("account_seed"), data.get("device_seed")):
            if seed:
                secret = p.ed25519_seed_keypair(b64d(seed))[1]
                SECRETS.update({b64d(seed), secret, p.ed25519_sk_to_x25519(secret)})
        SECRETS.update(b64d(s["secret"]) for s in data["signed_prekeys"])
        SECRETS.update(b64d(s) for s in data["one_time"].values())
        for record in data["sessions"].values():
            for state in [record["active"], *record["archived"]]:
                if state:
                    SECRETS.update(b64d(state[f]) for f in ("dhs", "rk", "cks", "ckr") if state[f])
                    SECRETS.update(b64d(mk) for _, _, mk in state["skipped"])


@pytest.fixture(scope="module")
def cast(live, tmp_path_factory):
    """alice, bob, bob's second device (linked through the provisioning exchange) and carol."""
    home = tmp_path_factory.mktemp("stores")

    def register(name: str) -> LocalDevice:
        return LocalDevice.register(home / f"{name}.json", PASSPHRASE, server=live.http_url, username=name, **FAST_KDF)

    alice, bob, carol = register("alice"), register("bob"), register("carol")
    bob2, code = LocalDevice.link_start(home / "bob2.json", PASSPHRASE, server=live.http_url,
                                        device_name="bob's laptop", **FAST_KDF)
    waiter = threading.Thread(target=bob2.link_wait, kwargs={"timeout": 20})
    waiter.start()
    bob.link_approve(code)
    waiter.join(30)
    assert (bob2.username, bob2.device_id) == ("bob", 2)
    assert {d["device_id"] for d in bob.devices()} == {1, 2}
    snapshot(alice, bob, bob2, carol)
    return {"alice": alice, "bob": bob, "bob2": bob2, "carol": carol, "home": home}


@pytest.fixture(scope="module")
def direct(cast):
    return cast["alice"].conversation_create("direct", ["bob"])["id"]


def test_first_prekey_message_then_replies_across_ratchet_turns(cast, direct):
    """The first message is a prekey message to both of bob's devices; after bob's reply alice
    sends plain ratchet messages, and every turn decrypts on every device."""
    alice, bob, bob2 = cast["alice"], cast["bob"], cast["bob2"]
    say(alice, direct, "hi bob, it's alice")
    [pending] = bob.api.messages(direct)["messages"]
    assert base64.b64decode(pending["ciphertext"])[0] == 0x02  # prekey message
    assert bodies(receive(bob, 1)) == ["hi bob, it's alice"]
    assert bodies(receive(bob2, 1)) == ["hi bob, it's alice"]

    turns = [(bob, "hello alice, from my phone"), (alice, "how are you?"), (bob2, "fine, from my laptop"),
             (alice, "great, glad to hear it"), (bob, "see you later")]
    for sender, text in turns:
        say(sender, direct, text)
        for device in (alice, bob, bob2):
            if device is sender:
                continue
            [got] = receive(device, 1)
            assert got.content["body"] == text
            assert got.mine == (device.username == sender.username)
    # After bob's reply, alice's messages are ratchet messages, not prekey messages.
    say(alice, direct, "no more prekeys")
    latest = bob.api.messages(direct, after_seq=0, limit=100)["messages"][-1]
    assert base64.b64decode(latest["ciphertext"])[0] == 0x01
    assert bodies(receive(bob, 1)) == ["no more prekeys"]
    receive(bob2, 1)
    assert [h["body"] for h in bob.history(direct)][-2:] == ["see you later", "no more prekeys"]


def test_out_of_order_delivery(cast, direct):
    """bob's phone decrypts four messages in a shuffled order; the laptop gets them in order."""
    alice, bob, bob2 = cast["alice"], cast["bob"], cast["bob2"]
    texts = [f"out of order #{i}" for i in range(1, 5)]
    for text in texts:
        say(alice, direct, text)
    waiting = [m for m in bob.api.messages(direct, limit=500)["messages"] if m["ciphertext"]]
    assert len(waiting) == 4
    shuffled = [waiting[i] for i in (2, 0, 3, 1)]
    got = [bob.receive({**m, "conversation_id": direct}) for m in shuffled]
    assert [g.content["body"] for g in got] == [texts[i] for i in (2, 0, 3, 1)]
    for m in waiting:
        bob.api.post(f"/messages/{m['id']}/delivered")
    assert [h["body"] for h in bob.history(direct)][-4:] == texts  # stored in seq order
    assert bodies(receive(bob2, 4)) == texts
    # A redelivered envelope is recognised, not decrypted twice.
    assert bob.receive({**waiting[0], "conversation_id": direct}).duplicate
    snapshot(bob)


def test_group_of_three(cast):
    alice, bob, bob2, carol = cast["alice"], cast["bob"], cast["bob2"], cast["carol"]
    group = alice.conversation_create("group", ["bob", "carol"], name="three")["id"]
    say(alice, group, "welcome to the group")
    say(carol, group, "thanks alice")
    say(bob2, group, "hi both, bob here")
    assert sorted(bodies(receive(alice, 2))) == ["hi both, bob here", "thanks alice"]
    # every member first learns the group's name, end to end, then the messages
    for device, count, expected in ((bob, 4, ["welcome to the group", "thanks alice", "hi both, bob here"]),
                                    (bob2, 3, ["welcome to the group", "thanks alice"]),
                                    (carol, 3, ["welcome to the group", "hi both, bob here"])):
        got = receive(device, count)
        assert (got[0].content["type"], got[0].content["name"]) == ("meta", "three")
        assert bodies(got[1:]) == expected
    assert carol.conversations() and {c["id"]: c["name"] for c in carol.conversations()}[group] == "three"
    cast["group"] = group


def test_attachment(cast):
    """A 150 KB file (three secretstream chunks) reaches every member's devices intact."""
    alice, bob, bob2, carol = cast["alice"], cast["bob"], cast["bob2"], cast["carol"]
    data = random.Random(7).randbytes(150_000)
    path = cast["home"] / "holiday.jpg"
    path.write_bytes(data)
    PLAINTEXTS.extend([data[:48], data[-48:], b"holiday photo caption"])
    alice.send_attachment(cast["group"], path, "holiday photo caption")
    snapshot(alice)
    for device in (bob, bob2, carol):
        [got] = receive(device, 1)
        attachment = got.content["attachment"]
        assert (attachment["name"], attachment["size"], attachment["mime"]) == ("holiday.jpg", 150_000, "image/jpeg")
        assert got.content["caption"] == "holiday photo caption"
        assert device.attachment_fetch(attachment) == data
        SECRETS.add(b64d(attachment["key"]))


def _database_query(live, sql: str) -> list[tuple]:
    url = live.database_url
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(urlsplit(url).path) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _purge(live) -> str:
    """Embedded profile: the server's own purge thread runs every second. Production profile: the
    purge task is run in a separate process with the live server's environment."""
    if not PRODUCTION:
        return "embedded purge thread"
    subprocess.run([PYTHON, "manage.py", "shell", "-c",
                    "from messaging.tasks import purge_expired; print(purge_expired())"],
                   cwd=ROOT, env=live.env, check=True, capture_output=True, timeout=60)
    return "manage.py shell -c purge_expired()"


def test_disappearing_messages(cast, live):
    """The timer travels E2EE; envelopes carry expires_at; the server deletes them, and so do the
    devices' local copies."""
    alice, bob, carol, bob2 = cast["alice"], cast["bob"], cast["carol"], cast["bob2"]
    group = cast["group"]
    alice.timer_set(group, 2)
    say(alice, group, "this message will self-destruct")
    for device in (bob, carol, bob2):
        got = receive(device, 2)
        assert got[0].content == {**got[0].content, "type": "timer", "seconds": 2}
        assert got[1].content["body"] == "this message will self-destruct" and got[1].expires_at
        assert device.store.data["conversations"][group]["timer"] == 2
    assert _database_query(live, "SELECT COUNT(*) FROM messaging_message WHERE expires_at IS NOT NULL")[0][0] == 2
    time.sleep(2.5)
    how = _purge(live)
    deadline = time.monotonic() + 15
    while _database_query(live, "SELECT COUNT(*) FROM messaging_message WHERE expires_at IS NOT NULL")[0][0]:
        assert time.monotonic() < deadline, f"expired messages were not purged by the {how}"
        time.sleep(0.5)
    assert "this message will self-destruct" not in [h["body"] for h in bob.history(group)]
    assert "welcome to the group" in [h["body"] for h in bob.history(group)]
    assert not [m for m in bob.api.messages(group)["messages"] if m["expires_at"]]
    alice.timer_set(group, 0)
    for device in (bob, carol, bob2):
        receive(device, 1)


# --- the command line, as subprocesses ---------------------------------------------------------


def cli(live, store: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENIGMO_PASSPHRASE": PASSPHRASE, "HOME": str(store.parent), "PYTHONPATH": str(ROOT)}
    env.pop("ENIGMO_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "enigmo.client", "--server", live.http_url, "--store", str(store), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_cli_register_link_send_follow_history_safety(cast, live):
    alice = cast["alice"]
    home = cast["home"]
    dave, dave2 = home / "dave.json", home / "dave2.json"
    assert "Registered dave (device 1)" in cli(live, dave, "register", "dave").stdout

    env = {**os.environ, "ENIGMO_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(ROOT)}
    linking = subprocess.Popen([sys.executable, "-m", "enigmo.client", "--server", live.http_url, "--store", str(dave2),
                                "link", "--device-name", "dave-laptop", "--timeout", "30"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    code = re.match(r"Link code: (\S+)", linking.stdout.readline()).group(1)
    assert "Approved device 2 (dave-laptop)" in cli(live, dave, "approve", code).stdout
    out, err = linking.communicate(timeout=30)
    assert linking.returncode == 0, err
    assert "device 2 of dave" in out
    assert len(cli(live, dave, "devices").stdout.strip().splitlines()) == 2

    conversation = cli(live, dave, "start", "alice").stdout.strip()
    PLAINTEXTS.append(b"hello alice, typed in a terminal")
    assert "to 2 device(s)" in cli(live, dave, "send", "alice", "hello alice, typed in a terminal").stdout
    [got] = receive(alice, 1)
    assert (got.sender, got.content["body"], got.conversation_id) == ("dave", "hello alice, typed in a terminal", conversation)
    say(alice, conversation, "hello dave, from the library")

    followed = cli(live, dave2, "follow", "--count", "2", "--json", "--idle", "20").stdout.splitlines()
    lines = [json.loads(line) for line in followed]
    assert [(m["sender"], m["mine"], m["content"]["body"]) for m in lines] == [
        ("dave", True, "hello alice, typed in a terminal"), ("alice", False, "hello dave, from the library")]

    history = cli(live, dave, "history", "alice").stdout
    assert "you: hello alice, typed in a terminal" in history and "alice: hello dave, from the library" in history

    report = home / "report.txt"
    report.write_bytes(b"quarterly numbers: 42\n")
    PLAINTEXTS.append(b"quarterly numbers: 42")
    cli(live, dave, "send", conversation[:8], "the report", "--attach", str(report))
    [got] = receive(alice, 1)
    assert alice.attachment_fetch(got.content["attachment"]) == b"quarterly numbers: 42\n"

    safety = cli(live, dave, "safety", "alice").stdout
    digits = "".join(re.findall(r"\d{5}", safety))
    assert len(digits) == 60 and digits == alice.safety("dave")["digits"]

    # Bad input and server errors: one line, non-zero, no traceback.
    for args, expected in [
        (("send", "nobody", "x"), "no conversation 'nobody'"),
        (("start", "nobody"), "user_not_found"),
        (("send",), "required"),
        (("approve", "NPQR2345-AAAAAAAA"), "link_not_found"),
        (("approve", "NPQR2345"), "Nothing was approved"),
        (("--server", "http://127.0.0.1:9", "conversations"), "cannot reach"),
    ]:
        failed = cli(live, dave, *args, check=False)
        assert failed.returncode != 0 and expected in failed.stderr, (args, failed.stderr)
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    wrong = subprocess.run([sys.executable, "-m", "enigmo.client", "--store", str(dave), "devices"], cwd=ROOT,
                           env={**env, "ENIGMO_PASSPHRASE": "wrong"}, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and wrong.stderr.strip() == "error: wrong passphrase, or the key store is damaged"
    for store in (dave, dave2):
        snapshot(LocalDevice.open(store, PASSPHRASE))
        assert b"hello alice" not in store.read_bytes()  # the key store is encrypted too


# --- what the server kept --------------------------------------------------------------------


def _forms(data: bytes) -> list[bytes]:
    """`data` raw, as hex (either case), and as base64 (standard and URL-safe, with and without
    padding) on its own."""
    std = base64.b64encode(data)
    url = base64.urlsafe_b64encode(data)
    return [data, data.hex().encode(), data.hex().upper().encode(), std, std.rstrip(b"="), url, url.rstrip(b"=")]


def _embedded_base64_forms(data: bytes) -> list[bytes]:
    """The base64 characters that `data` always produces inside a longer base64 string, for each
    of the three byte alignments it can start at (standard and URL-safe alphabets)."""
    out = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data)
        core = encoded[-(-shift * 8 // 6):(shift + len(data)) * 8 // 6]  # whole 6-bit groups of data only
        if len(core) >= 16:  # shorter runs could match by chance
            out += [core, core.translate(bytes.maketrans(b"+/", b"-_"))]
    return out


def _plaintext_forms(text: bytes) -> list[bytes]:
    return _forms(text) + _embedded_base64_forms(text)


def test_embedded_base64_forms_find_a_plaintext_at_any_alignment():
    text = b"a plaintext hidden in a longer base64 string"
    for prefix in (b"", b"x", b"xy", b"xyz"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            haystack = encode(prefix + text + b"tail")
            assert any(form in haystack for form in _embedded_base64_forms(text)), (prefix, encode)
    assert not any(form in base64.b64encode(b"x" + text[:-8]) for form in _embedded_base64_forms(text))


def _dump_database(live) -> bytes:
    """Every row as SQL (Python's sqlite3 `iterdump`, or `pg_dump` for PostgreSQL); for SQLite
    also the raw database, -wal and -shm files, which can still hold deleted rows."""
    url = live.database_url
    if url.startswith("sqlite"):
        import sqlite3

        path = Path(urlsplit(url).path)
        conn = sqlite3.connect(path, timeout=30)
        try:
            dump = "\n".join(conn.iterdump()).encode("utf-8", "surrogateescape")
        finally:
            conn.close()
        raw = b"".join(f.read_bytes() for f in path.parent.glob(path.name + "*"))  # the file, -wal and -shm
        return dump + raw
    return subprocess.run(["pg_dump", url], capture_output=True, check=True, timeout=60).stdout


@pytest.mark.skipif(PRODUCTION, reason="the SQLite dump; PostgreSQL is dumped with pg_dump")
def test_the_sqlite_dump_needs_no_sqlite3_binary(live, monkeypatch, tmp_path):
    """A fresh machine has Python's sqlite3 module but not necessarily the `sqlite3` program."""
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run on it
    dump = _dump_database(live)
    assert b"CREATE TABLE" in dump and b'INSERT INTO "keys_device"' in dump


def _dump_redis(live) -> bytes:
    env = live.env
    if not env.get("REDIS_URL"):
        return b""
    import redis

    client = redis.Redis.from_url(env["REDIS_URL"])
    out = []
    for key in client.scan_iter(match=env["ENIGMO_REDIS_PREFIX"] + "*", count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value = [client.get(key)]
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = list(client.smembers(key))
        elif kind == "zset":
            value = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "hash":
            value = [b for kv in client.hgetall(key).items() for b in kv]
        else:
            value = [client.dump(key) or b""]
        out.append(key + b"=" + b"|".join(v or b"" for v in value))
    return b"\n".join(out)


def test_server_holds_no_plaintext_and_no_private_keys(cast, live):
    snapshot(cast["alice"], cast["bob"], cast["bob2"], cast["carol"])
    database = _dump_database(live)
    assert b"INSERT INTO" in database or b"COPY " in database  # a real dump, with rows
    assert b"messaging_delivery" in database or b"messaging_message" in database
    redis_dump = _dump_redis(live)
    if PRODUCTION:
        assert redis_dump, "the production profile's Redis namespace should not be empty"
    media = b"".join(f.read_bytes() for f in Path(live.media_root).rglob("*") if f.is_file())
    assert len(PLAINTEXTS) > 20 and len(SECRETS) > 100
    for name, haystack in (("database", database), ("redis", redis_dump), ("media", media)):
        leaks = [text for text in PLAINTEXTS if any(form in haystack for form in _plaintext_forms(text))]
        assert not leaks, f"plaintext in the {name} dump: {leaks[:3]}"
        keys = [secret.hex()[:16] for secret in SECRETS if any(form in haystack for form in _forms(secret))]
        assert not keys, f"{len(keys)} private key(s) in the {name} dump, e.g. {keys[:3]}"
