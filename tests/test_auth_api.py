"""Accounts with proof of key possession: challenge, register, login, logout."""

from __future__ import annotations

import time

import pytest

from tests.support import Account, b64


@pytest.mark.django_db
def test_register_then_login_with_a_signed_challenge(api):
    """A new user registers with a signature over a fresh challenge and can log in again."""
    carol = Account("carol")
    body = carol.register(api)
    assert body["user_id"] == "carol" and body["device_id"] == 1 and body["token"]
    first_token = carol.token
    carol.login(api)
    assert carol.token != first_token
    status, devices = api.get("/api/v1/devices", token=carol.token)
    assert status == 200 and [d["device_id"] for d in devices] == [1]
    # The token from the first login was replaced by the second.
    assert api.get("/api/v1/devices", token=first_token)[0] == 401


@pytest.mark.django_db
def test_challenge_is_single_use(api):
    """Replaying a request with a used challenge is refused."""
    carol = Account("carol")
    carol.register(api)
    payload = carol.login_payload(carol.challenge(api))
    assert api.post("/api/v1/auth/login", payload)[0] == 200
    status, body = api.post("/api/v1/auth/login", payload)
    assert status == 401 and body["error"]["code"] == "challenge_invalid"


@pytest.mark.django_db
def test_unknown_challenge_is_refused(api):
    carol = Account("carol")
    status, body = api.post("/api/v1/auth/register", carol.register_payload(b"\x01" * 32))
    assert status == 401 and body["error"]["code"] == "challenge_invalid"


@pytest.mark.django_db
def test_expired_challenge_is_refused(api, settings, time_machine):
    time_machine.move_to("2026-01-01 12:00:00", tick=False)
    carol = Account("carol")
    nonce = carol.challenge(api)
    time_machine.move_to("2026-01-01 12:10:00", tick=False)
    payload = carol.register_payload(nonce, ts_ms=int(time.time() * 1000))
    status, body = api.post("/api/v1/auth/register", payload)
    assert status == 401 and body["error"]["code"] == "challenge_invalid"


@pytest.mark.django_db
def test_stale_signed_timestamp_is_refused(api):
    carol = Account("carol")
    payload = carol.register_payload(carol.challenge(api), ts_ms=int(time.time() * 1000) - 3_600_000)
    status, body = api.post("/api/v1/auth/register", payload)
    assert status == 401 and body["error"]["code"] == "timestamp_out_of_range"


@pytest.mark.django_db
def test_signature_by_another_key_is_refused(api, alice):
    """Eve cannot log in as alice's device with her own key."""
    mallory = Account("alice")
    mallory.devices = [type(alice.device)(device_id=1)]
    status, body = api.post("/api/v1/auth/login", mallory.login_payload(mallory.challenge(api)))
    assert status == 401 and body["error"]["code"] == "signature_invalid"


@pytest.mark.django_db
def test_forged_certificate_is_refused(api):
    carol = Account("carol")
    payload = carol.register_payload(carol.challenge(api))
    payload["certificate"] = b64(b"\x00" * 64)
    status, body = api.post("/api/v1/auth/register", payload)
    assert status == 400 and body["error"]["code"] == "certificate_invalid"


@pytest.mark.django_db
def test_malformed_fields_get_the_error_shape(api):
    status, body = api.post("/api/v1/auth/register", {"username": "A!", "account_key": "not base64!!", "nonce": 5})
    assert status == 400 and body["error"]["code"] == "invalid" and "account_key" in body["error"]["fields"]


@pytest.mark.django_db
def test_bad_username_is_refused(api):
    carol = Account("carol")
    payload = carol.register_payload(carol.challenge(api))
    payload["username"] = "Carol Smith"
    status, body = api.post("/api/v1/auth/register", payload)
    assert status == 400 and "username" in body["error"]["message"]


@pytest.mark.django_db
def test_username_is_unique(api, alice):
    again = Account("alice")
    status, body = api.post("/api/v1/auth/register", again.register_payload(again.challenge(api)))
    assert status == 409 and body["error"]["code"] == "username_taken"


@pytest.mark.django_db
def test_logout_revokes_the_token(api, alice):
    assert api.post("/api/v1/auth/logout", token=alice.token)[0] == 204
    status, body = api.get("/api/v1/devices", token=alice.token)
    assert status == 401 and body["error"]["code"] == "not_authenticated"
    alice.login(api)  # the device itself stays and can log in again
    assert api.get("/api/v1/devices", token=alice.token)[0] == 200


@pytest.mark.django_db
def test_unauthenticated_calls_are_refused(api):
    status, body = api.get("/api/v1/devices")
    assert status == 401 and body["error"]["code"] == "not_authenticated"
    assert api.get("/api/v1/devices", token="forged")[0] == 401


@pytest.mark.django_db
def test_browser_session_needs_csrf_for_writes(client):
    """The session cookie authenticates the browser, but a POST without the CSRF token is 403."""
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    carol = Account("carol")
    nonce = carol.challenge(_Bare(browser))
    response = browser.post("/api/v1/auth/register", carol.register_payload(nonce), content_type="application/json")
    assert response.status_code == 201
    csrf = response.json()["csrf_token"]
    assert browser.get("/api/v1/devices").status_code == 200
    refused = browser.post("/api/v1/auth/logout", content_type="application/json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] in ("csrf_failed", "forbidden")
    accepted = browser.post("/api/v1/auth/logout", content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert accepted.status_code == 204
    assert browser.get("/api/v1/devices").status_code == 401


class _Bare:
    def __init__(self, client):
        self.client = client

    def post(self, path, body=None, *, token=None):
        response = self.client.post(path, body or {}, content_type="application/json")
        return response.status_code, response.json()


@pytest.mark.django_db
def test_auth_failures_are_logged_with_user_and_ip_but_no_secrets(api, alice, caplog):
    payload = alice.login_payload(alice.challenge(api))
    payload["signature"] = b64(b"\x02" * 64)
    with caplog.at_level("WARNING", logger="enigmo.auth"):
        assert api.post("/api/v1/auth/login", payload)[0] == 401
        assert api.get("/api/v1/devices", token="not-a-real-token-123")[0] == 401
    text = caplog.text
    assert "auth refused code=signature_invalid user=alice ip=127.0.0.1" in text
    assert "token refused ip=127.0.0.1" in text
    for secret in (payload["signature"], payload["nonce"], alice.token, "not-a-real-token-123"):
        assert secret not in text
