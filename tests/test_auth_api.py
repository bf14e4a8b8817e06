"""Accounts with proof of key possession: challenge, register, login, logout."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from tests.support import Account, DjangoTransport, b64


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
def test_api_tokens_are_stored_only_as_their_hash(api, alice):
    """The Device row (and the session store) hold SHA-256 of the token, never the token itself."""
    import hashlib

    from django.contrib.sessions.models import Session
    from django.forms.models import model_to_dict

    from keys.models import Device

    alice.login(api)  # a second login: the stored hash follows the newest token
    device = Device.objects.get(user__username="alice", device_id=1)
    assert device.token_hash == hashlib.sha256(alice.token.encode()).hexdigest()
    stored = [str(v) for v in model_to_dict(device).values()] + [str(device.token_hash)]
    assert not any(alice.token in value for value in stored)
    for session in Session.objects.all():
        assert alice.token not in session.session_data and alice.token not in str(session.get_decoded())
        assert device.token_hash not in str(session.get_decoded())


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


def _browser_login(browser, account: Account) -> tuple[str, str]:
    """Register `account` from `browser`; returns (token, csrf token). The browser keeps the cookie."""
    nonce = account.challenge(_Bare(browser))
    response = browser.post("/api/v1/auth/register", account.register_payload(nonce), content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    return body["token"], body["csrf_token"]


def _token_get(path: str, token: str):
    from django.test import Client

    return Client().get(path, HTTP_AUTHORIZATION=f"Token {token}")


@pytest.mark.django_db
def test_logout_with_the_token_also_ends_the_session_cookie():
    """One login gives a token and a session cookie; logging out with the token ends both."""
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    token, _ = _browser_login(browser, Account("carol"))
    assert browser.get("/api/v1/devices").status_code == 200
    logout = Client().post("/api/v1/auth/logout", content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")
    assert logout.status_code == 204
    assert _token_get("/api/v1/devices", token).status_code == 401
    refused = browser.get("/api/v1/devices")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
def test_logout_with_the_session_also_ends_the_token():
    """Logging out from the browser (session + CSRF) ends the token issued by the same login."""
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    token, csrf = _browser_login(browser, Account("carol"))
    assert _token_get("/api/v1/devices", token).status_code == 200
    assert browser.post("/api/v1/auth/logout", content_type="application/json", HTTP_X_CSRFTOKEN=csrf).status_code == 204
    assert browser.get("/api/v1/devices").status_code == 401
    assert _token_get("/api/v1/devices", token).status_code == 401


@pytest.mark.django_db
def test_a_session_outlived_by_its_login_stays_dead_after_the_device_logs_in_again():
    """A stolen cookie from before a logout does not come back to life when the device logs in anew."""
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    carol = Account("carol")
    token, _ = _browser_login(browser, carol)
    old_cookie = browser.cookies[settings.SESSION_COOKIE_NAME].value
    Client().post("/api/v1/auth/logout", content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")
    carol.device.token = None
    carol.login(DjangoTransport(Client()))
    assert _token_get("/api/v1/devices", carol.token).status_code == 200
    thief = Client()
    thief.cookies[settings.SESSION_COOKIE_NAME] = old_cookie
    assert thief.get("/api/v1/devices").status_code == 401


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
