"""`approve` binds the link code to the new device's keys: it sends only CODE to the server,
recomputes the check from the keys the server returns, and approves nothing when a (malicious)
server substitutes a key or when the check is missing. No server: the API calls are faked."""

from __future__ import annotations

import nacl.pwhash
import pytest

from enigmo.client import cli, provisioning
from enigmo.client.device import LocalDevice, _new_state
from enigmo.client.errors import ClientError
from enigmo.client.store import KeyStore
from enigmo.protocol import primitives as p
from enigmo.protocol.encoding import b64d, b64e
from enigmo.protocol.keys import DhKeyPair, SigningKeyPair, device_certificate_message
from enigmo.protocol.linkcheck import link_display, link_qr_payload
from enigmo.protocol.rng import system_rng

FAST = {"opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN, "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN}
CODE = "K7XQ2M9P"


@pytest.fixture
def bob(tmp_path):
    state = _new_state("http://127.0.0.1:9", system_rng(32), "phone")
    state.update(username="bob", device_id=1, account_seed=b64e(system_rng(32)), token="t")
    return LocalDevice(KeyStore.create(tmp_path / "bob.json", "pw", state, **FAST))


@pytest.fixture
def laptop():
    """What the new device announced to the server."""
    return SigningKeyPair.generate(system_rng), DhKeyPair.generate(system_rng)


class FakeServer:
    """Answers GET/POST /devices/link/CODE; `substitute` replaces a field of the description."""

    def __init__(self, device_key: bytes, provisioning_key: bytes, substitute: dict | None = None) -> None:
        self.described = {"code": CODE, "device_key": b64e(device_key), "provisioning_key": b64e(provisioning_key),
                          "name": "laptop", "device_id": 2, "user_id": "bob", **(substitute or {})}
        self.calls: list[tuple[str, str, object]] = []

    def __call__(self, method, path, body=None, **kw):
        self.calls.append((method, path, body))
        if method == "GET":
            return self.described
        return {"device_id": body["device_id"], "name": "laptop"}


def test_the_matching_check_approves_and_sends_only_the_code(bob, laptop, monkeypatch):
    identity, prov = laptop
    server = FakeServer(identity.public, prov.public)
    monkeypatch.setattr(bob, "_call", server)
    typed = link_display(CODE, identity.public, prov.public).lower().replace("-", " - ")
    assert bob.link_approve(typed)["device_id"] == 2
    assert [(m, path) for m, path, _ in server.calls] == [("GET", f"/devices/link/{CODE}"),
                                                          ("POST", f"/devices/link/{CODE}")]
    body = server.calls[1][2]
    message = device_certificate_message("bob", 2, identity.public, body["issued_ms"])
    assert p.ed25519_verify(bob.account.public, message, b64d(body["certificate"]))
    opened = provisioning.open_envelope(prov, b64d(body["provisioning_envelope"]))
    assert b64d(opened["account_seed"]) == bob.account_seed


def test_the_qr_payload_approves_too(bob, laptop, monkeypatch):
    identity, prov = laptop
    server = FakeServer(identity.public, prov.public)
    monkeypatch.setattr(bob, "_call", server)
    bob.link_approve(link_qr_payload(CODE, identity.public, prov.public))
    assert server.calls[0][1] == f"/devices/link/{CODE}" and len(server.calls) == 2


@pytest.mark.parametrize("field", ["provisioning_key", "device_key"])
@pytest.mark.parametrize("form", ["typed", "qr"])
def test_a_substituted_key_is_refused_and_nothing_is_approved(bob, laptop, monkeypatch, field, form):
    """The server swaps in its own key (so it could read the account key, or own the new device)."""
    identity, prov = laptop
    server = FakeServer(identity.public, prov.public, {field: b64e(DhKeyPair.generate(system_rng).public)})
    monkeypatch.setattr(bob, "_call", server)
    shown = (link_display if form == "typed" else link_qr_payload)(CODE, identity.public, prov.public)
    with pytest.raises(ClientError, match="Nothing was approved") as err:
        bob.link_approve(shown)
    assert err.value.code == "link_check_mismatch"
    assert [m for m, _, _ in server.calls] == ["GET"]


def test_a_missing_check_is_refused_before_asking_the_server(bob, laptop, monkeypatch):
    server = FakeServer(laptop[0].public, laptop[1].public)
    monkeypatch.setattr(bob, "_call", server)
    with pytest.raises(ClientError, match="CODE-CHECK") as err:
        bob.link_approve(CODE)
    assert err.value.code == "link_check_missing" and server.calls == []
    with pytest.raises(ClientError, match="not a link code"):
        bob.link_approve("K7XQ2M9P-TOOSHORT!")
    assert server.calls == []


def test_the_cli_prints_one_line_and_fails(bob, laptop, monkeypatch, capsys):
    identity, prov = laptop
    server = FakeServer(identity.public, bytes(32))
    monkeypatch.setattr(LocalDevice, "_call", lambda self, *a, **kw: server(*a, **kw))
    monkeypatch.setenv("ENIGMO_PASSPHRASE", "pw")
    code = cli.main(["--store", str(bob.store.path), "approve", CODE, "-", link_display(CODE, identity.public,
                                                                                          prov.public)[-8:]])
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_ERROR and err.startswith("error: the check in the code does not match")
    assert len(err.splitlines()) == 1 and [m for m, _, _ in server.calls] == ["GET"]


def test_the_new_device_shows_code_dash_check(tmp_path, monkeypatch):
    """link_start returns CODE-CHECK computed from the keys it sent to POST /devices/link."""
    sent = {}

    def fake_post(self, path, body=None, **kw):
        sent.update(body)
        return {"code": CODE, "secret": "s", "expires_in": 600}

    monkeypatch.setattr("enigmo.client.api.Api.post", fake_post)
    device, shown = LocalDevice.link_start(tmp_path / "new.json", "pw", server="http://127.0.0.1:9", **FAST)
    assert shown == device.link_code == link_display(CODE, b64d(sent["device_key"]), b64d(sent["provisioning_key"]))
    assert device.link_qr == link_qr_payload(CODE, b64d(sent["device_key"]), b64d(sent["provisioning_key"]))
