"""The two-command promise on a real process: the server starts, migrates, serves health,
and a PyNaCl client can register, log in, publish prekeys and fetch a bundle over HTTP."""

from __future__ import annotations

import pytest

from tests.support import Account, HttpTransport


@pytest.mark.live
def test_a_pynacl_client_talks_to_a_running_server(live_server_factory):
    server = live_server_factory()
    api = HttpTransport(server.http_url)
    status, health = api.get("/api/health")
    assert status == 200 and health["status"] == "ok"
    alice, bob = Account("alice"), Account("bob")
    for account in (alice, bob):
        account.register(api)
        account.login(api)
        assert account.publish_prekeys(api, count=5) == 5
    status, bundle = api.get("/api/v1/keys/prekeys/bob", token=alice.token)
    assert status == 200
    [device] = bundle["devices"]
    assert device["one_time_prekey"]["key_id"] in bob.device.one_time_prekeys
    # Survives a SIGKILL: the account and its keys are in the database.
    server.kill()
    server.start()
    alice.login(api)
    status, again = api.get("/api/v1/keys/prekeys/bob", token=alice.token)
    assert status == 200 and again["devices"][0]["one_time_prekey"]["key_id"] != device["one_time_prekey"]["key_id"]
