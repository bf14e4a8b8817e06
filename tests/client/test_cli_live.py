"""Two people talk through the command line itself: every step runs `python -m enigmo.client` as
a subprocess against a live server, with passphrases from $ENIGMO_PASSPHRASE or --passphrase-file
as docs/cli.md says. Errors are one line on stderr with the documented exit status."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import ROOT

pytestmark = pytest.mark.live

PASSPHRASES = {"alice": "alice's long passphrase", "bob": "bob's other passphrase", "carol": "carol's"}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Terminal:
    """One person's shell: their own HOME and --profile; bob reads his passphrase from a file."""

    def __init__(self, live, home: Path, name: str) -> None:
        self.name = name
        self.env = {**os.environ, "HOME": str(home), "ENIGMO_SERVER": live.http_url, "PYTHONPATH": str(ROOT)}
        for var in ("ENIGMO_PASSPHRASE", "ENIGMO_DEBUG", "ENIGMO_PROFILE"):
            self.env.pop(var, None)
        self.global_args = ["--profile", name]
        if name == "bob":
            secret = home / "bob-passphrase.txt"
            secret.write_text(PASSPHRASES[name] + "\n")
            self.global_args += ["--passphrase-file", str(secret)]
        else:
            self.env["ENIGMO_PASSPHRASE"] = PASSPHRASES.get(name, "pw")

    def with_env(self, **changes: str | None) -> "Terminal":
        """The same person with some environment variables changed (None removes one)."""
        other = copy.copy(self)
        other.env = {k: v for k, v in {**self.env, **changes}.items() if v is not None}
        return other

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "enigmo.client", *self.global_args, *args]

    def run(self, *args: str, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(self.argv(*args), cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, (args, done.stderr)
        return done

    def out(self, *args: str) -> str:
        return self.run(*args).stdout

    def follow_json(self, count: int) -> list[dict]:
        lines = self.out("follow", "--count", str(count), "--idle", "20", "--json").splitlines()
        assert len(lines) == count, lines
        return [json.loads(line) for line in lines]

    def fails(self, *args: str, status: int, says: str) -> str:
        done = self.run(*args, ok=False)
        err = done.stderr.strip()
        assert done.returncode == status, (args, done.returncode, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and says in err, (args, err)
        return err


@pytest.fixture(scope="module")
def people(live, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    people = {name: Terminal(live, home, name) for name in ("alice", "bob", "carol")}
    for name, person in people.items():
        assert f"Registered {name} (device 1) on {live.http_url}." in person.out("register", name)
        assert (home / ".enigmo" / f"{name}.json").exists()
    return people


def test_alice_and_bob_talk(people):
    alice, bob = people["alice"], people["bob"]
    assert "Logged in as alice (device 1)." in alice.out("login")
    assert "No conversations yet" in bob.out("conversations")

    conversation = alice.out("start", "bob").strip()
    assert re.fullmatch(UUID, conversation)
    assert bob.out("start", "alice").strip() == conversation  # the same direct conversation
    assert alice.out("send", "bob", "hello bob, from alice's terminal").strip() == "Sent #1 to 1 device(s)."

    followed = bob.run("follow", "--count", "1", "--idle", "20")
    assert re.fullmatch(rf"\d\d:\d\d:\d\d \[{conversation[:8]}\] alice: hello bob, from alice's terminal\n",
                        followed.stdout), followed.stdout
    assert "Following as bob (device 1)" in followed.stderr

    bob.out("send", conversation[:8], "hi alice, bob here")
    [reply] = alice.follow_json(1)
    assert (reply["conversation_id"], reply["sender"], reply["mine"]) == (conversation, "bob", False)
    assert reply["content"]["type"] == "text" and reply["content"]["body"] == "hi alice, bob here"

    [row] = alice.out("conversations").splitlines()
    assert row.startswith(f"{conversation}  direct bob  unread 1")
    history = alice.out("history", "bob").splitlines()
    assert [re.sub(r"^#(\d+)\s+\d\d:\d\d:\d\d ", r"#\1 ", line) for line in history] == [
        "#1 you: hello bob, from alice's terminal", "#2 bob: hi alice, bob here"]
    assert "unread 0" in alice.out("conversations")  # history marked it read

    safety = [re.findall(r"\d{5}", person.out("safety", other)) for person, other in ((alice, "bob"), (bob, "alice"))]
    assert len(safety[0]) == 12 and safety[0] == safety[1]


def test_a_group_with_a_timer_and_an_expiring_message(people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    group = alice.out("group", "friends", "bob", "carol").strip()
    assert re.fullmatch(UUID, group)
    assert "to 2 device(s)" in alice.out("send", "friends", "hello friends")
    for person in (bob, carol):  # the group's name first, end-to-end encrypted, then the message
        meta, got = person.follow_json(2)
        assert (meta["conversation_id"], meta["content"]["type"], meta["content"]["name"]) == (group, "meta", "friends")
        assert (got["conversation_id"], got["sender"], got["content"]["body"]) == (group, "alice", "hello friends")

    sent = bob.out("send", group, "this one disappears", "--expires", "300")
    assert re.fullmatch(r"Sent #3 to 2 device\(s\), disappears at \S+\.\n", sent), sent  # #1 is the name
    for person in (alice, carol):
        [got] = person.follow_json(1)
        assert got["content"]["body"] == "this one disappears" and got["expires_at"]
    assert "bob: this one disappears  (disappearing)" in alice.out("history", "friends")

    assert alice.out("timer", "friends", "3600").strip() == "Disappearing messages set to 3600s."
    for person in (bob, carol):
        [got] = person.follow_json(1)
        assert got["content"]["type"] == "timer" and got["content"]["seconds"] == 3600
    listed = {line.split()[0]: line for line in carol.out("conversations").splitlines()}
    assert listed[group].endswith("disappearing 3600s") and " group " in listed[group]
    assert " group  friends  unread" in listed[group], listed[group]  # carol learnt the name from alice


def test_linking_a_second_device_checks_the_code(people, live, tmp_path):
    """`link` shows CODE-CHECK; `approve` refuses a bare code or a wrong check, then accepts the
    right one typed in lower case with spaces; messages then reach both of bob's devices."""
    bob, alice = people["bob"], people["alice"]
    laptop = copy.copy(bob)
    laptop.global_args = ["--store", str(tmp_path / "laptop.json"), "--passphrase-file", bob.global_args[-1]]
    linking = subprocess.Popen(laptop.argv("link", "--device-name", "bob-laptop", "--timeout", "60"), cwd=ROOT,
                               env=laptop.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        shown = re.fullmatch(r"Link code: ([A-Z2-9]{8})-([A-Z2-9]{8})\n", linking.stdout.readline())
        assert shown, "no link code"
        code, check = shown.groups()
        assert f"approve {code}-{check}" in linking.stdout.readline()
        assert re.search(rf"enigmo-link:{code}:[0-9a-f]{{64}}", linking.stdout.readline())

        bob.fails("approve", code, status=1, says="Nothing was approved")
        wrong = check[:-1] + ("A" if check[-1] != "A" else "B")
        bob.fails("approve", f"{code}-{wrong}", status=1, says="does not match")
        bob.fails("approve", f"{code}-{check}!", status=1, says="not a link code")
        assert len(bob.out("devices").splitlines()) == 1  # nothing was approved

        spaced = f"{code[:4]} {code[4:]} - {check[:4]} {check[4:]}".lower()
        assert "Approved device 2 (bob-laptop) for bob." in bob.out("approve", *spaced.split())
        out, err = linking.communicate(timeout=60)
    finally:
        linking.kill() if linking.poll() is None else None
    assert linking.returncode == 0, err
    assert "Linked: this is device 2 of bob." in out
    assert len(bob.out("devices").splitlines()) == 2
    assert "to 2 device(s)" in alice.out("send", "bob", "to both of bob's devices")
    for device in (bob, laptop):
        [got] = device.follow_json(1)
        assert got["content"]["body"] == "to both of bob's devices"


def test_errors_are_one_line_with_the_documented_status(people, tmp_path):
    alice = people["alice"]
    alice.fails("start", "nobody", status=3, says="no such user [404 user_not_found]")
    alice.fails("start", "alice", status=3, says="A direct conversation has exactly one other member. [400 invalid]")
    alice.fails("group", "solo", "nobody", status=3, says="[404 user_not_found]")
    alice.fails("send", "nobody", "x", status=1, says="no conversation 'nobody'")
    alice.fails("send", "bob", "", status=1, says="the message is empty")
    alice.fails("send", "bob", "x", "--attach", str(tmp_path / "missing.bin"), status=1, says="cannot read")
    alice.fails("send", "bob", "x", "--expires", "0", status=2, says="--expires must be a positive")
    too_long = alice.fails("send", "bob", "x", "--expires", "999999999999", status=3, says="[400 invalid]")
    assert "server said" not in too_long
    alice.fails("timer", "bob", "soon", status=2, says="invalid int value")
    alice.fails("approve", "NPQR2345-AAAAAAAA", status=3, says="[404 link_not_found]")
    alice.fails("safety", "alice", status=2, says="that is you")
    alice.fails("register", "alice", status=1, says="already exists")
    alice.fails("--profile", "newcomer", "register", "bob", status=3, says="that username is taken [409 username_taken]")
    alice.fails("--profile", "nobody-here", "devices", status=1, says="run `register` or `link` first")
    alice.fails("--server", "http://127.0.0.1:9", "conversations", status=1, says="cannot reach http://127.0.0.1:9")
    alice.fails("frobnicate", status=2, says="invalid choice")
    alice.with_env(ENIGMO_PASSPHRASE="not alice's passphrase").fails("devices", status=1, says="wrong passphrase")
    alice.with_env(ENIGMO_PASSPHRASE=None).fails("devices", status=2, says="use --passphrase-file or set ENIGMO_PASSPHRASE")
