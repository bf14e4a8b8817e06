"""Devices: list, revoke, link a second device through the provisioning exchange, the cap of six."""

from __future__ import annotations

import pytest

from keys.models import Device as DeviceRow
from tests.support import b64

pytestmark = pytest.mark.django_db


def test_link_a_second_device(api, alice):
    """The first device certifies the new one; the server relays an opaque envelope and never
    learns the account private key (the envelope is sealed to the new device)."""
    second = alice.link_device(api)
    assert second.device_id == 2
    status, devices = api.get("/api/v1/devices", token=second.token)
    assert status == 200 and [d["device_id"] for d in devices] == [1, 2]
    assert [d["current"] for d in devices] == [False, True]
    _, directory = api.get("/api/v1/keys/identity/alice", token=alice.token)
    assert [d["device_id"] for d in directory["devices"]] == [1, 2]


def test_link_approval_needs_a_valid_certificate(api, alice, eve):
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    status, started = api.post(
        "/api/v1/devices/link",
        {"device_key": b64(bytes(key.verify_key)), "provisioning_key": b64(bytes(PrivateKey.generate().public_key))},
    )
    assert status == 201
    _, described = api.get(f"/api/v1/devices/link/{started['code']}", token=alice.token)
    forged = eve.certificate(described["device_id"], bytes(key.verify_key), 1)
    status, body = api.post(
        f"/api/v1/devices/link/{started['code']}",
        {"device_id": described["device_id"], "certificate": b64(forged), "issued_ms": 1, "provisioning_envelope": b64(b"x")},
        token=alice.token,
    )
    assert status == 400 and body["error"]["code"] == "certificate_invalid"
    assert api.post("/api/v1/devices/link/poll", {"secret": started["secret"]})[1]["status"] == "pending"


def test_unknown_link_code_is_404(api, alice):
    status, body = api.get("/api/v1/devices/link/NOPE1234", token=alice.token)
    assert status == 404 and body["error"]["code"] == "link_not_found"
    assert api.post("/api/v1/devices/link/poll", {"secret": "nope"})[0] == 404


def test_at_most_six_devices(api, alice, settings):
    settings.RATE_LIMITS_ENABLED = False
    for _ in range(5):
        alice.link_device(api)
    assert DeviceRow.objects.filter(user__username="alice").count() == 6
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    _, started = api.post(
        "/api/v1/devices/link",
        {"device_key": b64(bytes(key.verify_key)), "provisioning_key": b64(bytes(PrivateKey.generate().public_key))},
    )
    _, described = api.get(f"/api/v1/devices/link/{started['code']}", token=alice.token)
    cert = alice.certificate(described["device_id"], bytes(key.verify_key), 1)
    status, body = api.post(
        f"/api/v1/devices/link/{started['code']}",
        {"device_id": described["device_id"], "certificate": b64(cert), "issued_ms": 1, "provisioning_envelope": b64(b"x")},
        token=alice.token,
    )
    assert status == 409 and body["error"]["code"] == "device_limit"


def test_revoke_a_device(api, alice):
    second = alice.link_device(api)
    assert api.delete("/api/v1/devices/2", token=alice.token)[0] == 204
    assert api.get("/api/v1/devices", token=second.token)[0] == 401
    _, directory = api.get("/api/v1/keys/identity/alice", token=alice.token)
    assert [d["device_id"] for d in directory["devices"]] == [1]
    # A revoked device cannot log in again.
    status, body = api.post("/api/v1/auth/login", alice.login_payload(alice.challenge(api), second))
    assert status == 401 and body["error"]["code"] == "login_failed"


def test_eve_cannot_revoke_alices_device(api, alice, eve):
    status, body = api.delete("/api/v1/devices/1", token=eve.token)
    assert status == 204  # eve revoked her own device 1, not alice's
    assert api.get("/api/v1/devices", token=alice.token)[0] == 200
    assert api.delete("/api/v1/devices/7", token=alice.token)[0] == 404
