"""The key directory: identity keys, signed and one-time prekeys, and bundles taken atomically."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from nacl.signing import SigningKey

from keys.models import Device, OneTimePreKey
from keys.services import prekey_bundle_claim
from tests.support import Account, b64, unb64

pytestmark = pytest.mark.django_db


def test_directory_lists_account_key_and_devices(api, alice, bob):
    status, body = api.get("/api/v1/keys/identity/alice", token=bob.token)
    assert status == 200
    assert unb64(body["account_key"]) == bytes(alice.account_key.verify_key)
    [device] = body["devices"]
    assert device["device_id"] == 1
    assert unb64(device["identity_key"]) == bytes(alice.device.identity.verify_key)
    assert len(unb64(device["certificate"])) == 64


def test_directory_of_unknown_user_is_404(api, alice):
    status, body = api.get("/api/v1/keys/identity/nobody", token=alice.token)
    assert status == 404 and body["error"]["code"] == "user_not_found"


def test_directory_needs_authentication(api, alice):
    assert api.get("/api/v1/keys/identity/alice")[0] == 401


def test_identity_key_can_be_replaced_with_a_valid_certificate(api, alice):
    new_key = SigningKey.generate()
    issued = 1_800_000_000_000
    body = {
        "identity_key": b64(bytes(new_key.verify_key)),
        "certificate": b64(alice.certificate(1, bytes(new_key.verify_key), issued)),
        "issued_ms": issued,
    }
    assert api.post("/api/v1/keys/identity", body, token=alice.token)[0] == 200
    _, directory = api.get("/api/v1/keys/identity/alice", token=alice.token)
    assert unb64(directory["devices"][0]["identity_key"]) == bytes(new_key.verify_key)


def test_identity_key_with_a_foreign_certificate_is_refused(api, alice, eve):
    """Eve's account key cannot certify a key for alice's device: the server cannot be used to inject one."""
    new_key = SigningKey.generate()
    body = {
        "identity_key": b64(bytes(new_key.verify_key)),
        "certificate": b64(eve.certificate(1, bytes(new_key.verify_key), 1)),
        "issued_ms": 1,
    }
    status, err = api.post("/api/v1/keys/identity", body, token=alice.token)
    assert status == 400 and err["error"]["code"] == "certificate_invalid"


def test_signed_prekey_with_bad_signature_is_400(api, alice):
    payload = alice.prekeys_payload()
    payload["signed_prekey"]["signature"] = b64(b"\x01" * 64)
    status, body = api.post("/api/v1/keys/prekeys", payload, token=alice.token)
    assert status == 400 and body["error"]["code"] == "signed_prekey_invalid"


def test_more_than_100_one_time_prekeys_is_400(api, alice):
    payload = alice.prekeys_payload(count=101)
    status, body = api.post("/api/v1/keys/prekeys", payload, token=alice.token)
    assert status == 400 and body["error"]["code"] == "invalid"


def test_identical_reupload_is_a_no_op_and_conflicts_are_409(api, alice):
    payload = alice.prekeys_payload(count=3)
    status, first = api.post("/api/v1/keys/prekeys", payload, token=alice.token)
    assert status == 200 and first["one_time_prekeys_remaining"] == 13
    status, again = api.post("/api/v1/keys/prekeys", payload, token=alice.token)
    assert status == 200 and again["one_time_prekeys_remaining"] == 13
    payload["one_time_prekeys"][0]["public_key"] = b64(b"\x09" * 32)
    status, body = api.post("/api/v1/keys/prekeys", payload, token=alice.token)
    assert status == 409 and body["error"]["code"] == "prekey_conflict"


def test_reusing_a_signed_prekey_id_with_other_bytes_is_409_and_keeps_the_original(api, alice, bob):
    """A validly signed prekey under a known key id but with another public key is a conflict,
    not a silent replacement: bundles keep serving the prekey first stored under that id."""
    from nacl.public import PrivateKey

    from keys.signatures import signed_prekey_message

    original = bytes(alice.device.signed_prekey.public_key)
    other = bytes(PrivateKey.generate().public_key)
    payload = {
        "signed_prekey": {
            "key_id": 1,  # the id alice's fixture upload used
            "public_key": b64(other),
            "signature": b64(alice.device.identity.sign(signed_prekey_message(other)).signature),
        }
    }
    status, body = api.post("/api/v1/keys/prekeys", payload, token=alice.token)
    assert status == 409 and body["error"]["code"] == "prekey_conflict"
    status, bundle = api.get("/api/v1/keys/prekeys/alice", token=bob.token)
    assert status == 200
    spk = bundle["devices"][0]["signed_prekey"]
    assert spk["key_id"] == 1 and unb64(spk["public_key"]) == original


def test_bundle_hands_out_each_one_time_prekey_once_oldest_first(api, alice, bob):
    uploaded = list(bob.device.one_time_prekeys)
    seen = []
    for _ in range(3):
        status, bundle = api.get("/api/v1/keys/prekeys/bob", token=alice.token)
        assert status == 200
        seen.append(bundle["devices"][0]["one_time_prekey"]["key_id"])
    assert seen == uploaded[:3]
    assert OneTimePreKey.objects.filter(device__user__username="bob", claimed_at__isnull=True).count() == len(uploaded) - 3


def test_bundle_signed_prekey_verifies_against_the_identity_key(api, alice, bob):
    from keys.signatures import signed_prekey_message, verify

    _, bundle = api.get("/api/v1/keys/prekeys/bob", token=alice.token)
    device = bundle["devices"][0]
    spk = device["signed_prekey"]
    assert verify(unb64(device["identity_key"]), signed_prekey_message(unb64(spk["public_key"])), unb64(spk["signature"]))


def test_bundle_without_one_time_prekeys_left(api, alice, settings):
    settings.RATE_LIMITS_ENABLED = False
    carol = Account("carol")
    carol.register(api)
    carol.publish_prekeys(api, count=1)
    first = api.get("/api/v1/keys/prekeys/carol", token=alice.token)[1]
    second = api.get("/api/v1/keys/prekeys/carol", token=alice.token)[1]
    assert first["devices"][0]["one_time_prekey"] is not None
    assert second["devices"][0]["one_time_prekey"] is None
    assert second["devices"][0]["signed_prekey"] is not None


def test_bundle_fetches_are_rate_limited_per_requester_and_target(api, alice, bob, eve):
    """Signal's limit: a burst of 6, then 429 with Retry-After (one per 10 minutes)."""
    for _ in range(6):
        assert api.get("/api/v1/keys/prekeys/bob", token=alice.token)[0] == 200
    status, body = api.get("/api/v1/keys/prekeys/bob", token=alice.token)
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert 500 <= body["error"]["retry_after"] <= 600
    response = api.client.get("/api/v1/keys/prekeys/bob", HTTP_AUTHORIZATION=f"Token {alice.token}")
    assert response.status_code == 429 and 500 <= int(response["Retry-After"]) <= 600
    # Another requester, or another target, has its own bucket.
    assert api.get("/api/v1/keys/prekeys/bob", token=eve.token)[0] == 200
    assert api.get("/api/v1/keys/prekeys/eve", token=alice.token)[0] == 200


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_fetches_hand_out_ten_keys_exactly_once(api, settings):
    """50 concurrent bundle claims against 10 one-time prekeys: exactly 10 distinct keys, none twice."""
    settings.RATE_LIMITS_ENABLED = False
    target, requester = Account("target"), Account("requester")
    for account in (target, requester):
        account.register(api)
    target.publish_prekeys(api, count=10)
    requester_device = Device.objects.get(user__username="requester")
    results: list[int | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def fetch() -> None:
        try:
            barrier.wait()
            bundle = prekey_bundle_claim(requester=requester_device, username="target")
            otk = bundle["devices"][0]["one_time_prekey"]
            with lock:
                results.append(otk.key_id if otk else None)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=fetch) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    handed_out = [r for r in results if r is not None]
    assert len(results) == 50
    assert len(handed_out) == 10 and len(set(handed_out)) == 10
    assert set(handed_out) == set(target.device.one_time_prekeys)
    assert OneTimePreKey.objects.filter(device__user__username="target", claimed_at__isnull=True).count() == 0


def test_out_of_range_key_ids_are_400_not_a_server_error(api, alice):
    payload = alice.prekeys_payload(count=1)
    payload["one_time_prekeys"][0]["key_id"] = 2**31
    status, body = api.post("/api/v1/keys/prekeys", payload, token=alice.token)
    assert status == 400 and body["error"]["code"] == "invalid"


def test_a_database_conflict_is_409_in_the_error_shape():
    """An IntegrityError (a concurrent request stored the same row first) is a conflict, never a 5xx."""
    from django.db import IntegrityError

    from enigmo.errors import api_exception_handler

    response = api_exception_handler(IntegrityError("duplicate key"), {})
    assert response.status_code == 409 and response.data["error"]["code"] == "conflict"
