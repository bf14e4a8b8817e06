"""LocalDevice against a real server: the 409 device-mismatch retry, the prekey top-up, a fresh
login when the token is gone, sending blocked after a verified contact's key changed, and a link
refused when the server substitutes the new device's keys."""

from __future__ import annotations

import nacl.pwhash
import pytest

from enigmo.client.device import LocalDevice
from enigmo.client.errors import ApiError, ClientError
from enigmo.protocol.encoding import b64e
from enigmo.protocol.keys import DhKeyPair
from enigmo.protocol.rng import system_rng

pytestmark = pytest.mark.live
FAST = {"opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN, "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN}


@pytest.fixture(scope="module")
def pair(live, tmp_path_factory):
    home = tmp_path_factory.mktemp("stores")
    alice = LocalDevice.register(home / "alice.json", "pw", server=live.http_url, username="alice", **FAST)
    bob = LocalDevice.register(home / "bob.json", "pw", server=live.http_url, username="bob", **FAST)
    conversation = alice.conversation_create("direct", ["bob"])["id"]
    return alice, bob, conversation


def test_register_publishes_a_signed_prekey_and_a_full_batch(pair):
    alice, _, _ = pair
    assert alice.prekeys_refresh() == 100
    assert len(alice.store.data["one_time"]) == 100 and len(alice.store.data["signed_prekeys"]) == 1


def test_a_device_mismatch_is_refreshed_and_retried(pair, monkeypatch):
    alice, bob, conversation = pair
    real = LocalDevice._targets
    calls = []

    def stale_first(self, detail):
        targets = real(self, detail)
        calls.append(targets)
        return [] if len(calls) == 1 else targets  # the first attempt forgets bob's device

    monkeypatch.setattr(LocalDevice, "_targets", stale_first)
    sent = alice.send_text(conversation, "second time lucky")
    assert sent.attempts == 2 and sent.recipients == 1
    monkeypatch.undo()
    got = []
    bob.follow(got.append, stop=lambda: bool(got), idle_timeout=10)
    assert [g.content["body"] for g in got] == ["second time lucky"]


def test_one_time_prekeys_are_topped_up_below_twenty(pair):
    alice, bob, _ = pair
    for _ in range(85):
        alice.api.get("/keys/prekeys/bob")
    assert bob.prekeys_refresh() == 100


def test_a_lost_token_is_replaced_by_a_fresh_login(pair):
    _, bob, _ = pair
    old = bob.api.token
    bob.api.post("/auth/logout")
    with pytest.raises(ApiError) as err:
        bob.api.get("/devices")
    assert err.value.status == 401
    assert [d["device_id"] for d in bob.devices()] == [1]
    assert bob.api.token != old and bob.store.data["token"] == bob.api.token


def test_a_verified_contacts_key_change_blocks_sending_until_accepted(pair):
    alice, bob, conversation = pair
    assert alice.safety("bob", verify=True)["verified"]
    assert alice.safety("bob")["digits"] == bob.safety("alice")["digits"]
    with alice.store.transaction() as data:  # as if bob's account key had been different before
        data["trust"]["bob"]["account_key"] = b64e(b"\x01" * 32)
    assert alice.safety("bob")["status"] == "blocked"
    with pytest.raises(ClientError, match="safety number changed"):
        alice.send_text(conversation, "blocked?")
    assert alice.safety("bob", accept=True)["status"] == "ok"
    assert alice.send_text(conversation, "after accepting").recipients == 1


def test_a_server_substituting_the_provisioning_key_gets_nothing_approved(pair, live, tmp_path):
    """A man in the middle swaps the new device's provisioning key in the link description:
    approve refuses, the link stays pending, and the genuine code then links the device."""
    _, bob, _ = pair
    laptop, shown = LocalDevice.link_start(tmp_path / "laptop.json", "pw", server=live.http_url, **FAST)
    real = bob.api.request

    def substituting(method, path, body=None, **kw):
        answer = real(method, path, body, **kw)
        if method == "GET" and path.startswith("/devices/link/"):
            answer = {**answer, "provisioning_key": b64e(DhKeyPair.generate(system_rng).public)}
        return answer

    bob.api.request = substituting
    try:
        with pytest.raises(ClientError, match="Nothing was approved"):
            bob.link_approve(shown)
    finally:
        bob.api.request = real
    secret = laptop.store.data["link"]["secret"]
    assert laptop.api.post("/devices/link/poll", {"secret": secret}, auth=False)["status"] == "pending"
    assert [d["device_id"] for d in bob.devices()] == [1]
    with pytest.raises(ClientError, match="CODE-CHECK"):
        bob.link_approve(shown.split("-")[0])
    assert bob.link_approve(shown)["device_id"] == 2
    laptop.link_wait(timeout=10)
    assert (laptop.username, laptop.device_id) == ("bob", 2)
