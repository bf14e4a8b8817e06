"""The server holds no secrets: no column may hold a private key, a ratchet key or plaintext,
and the admin shows metadata only."""

from __future__ import annotations

import base64
import re

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import models

# Every binary column on the server and why it is public or opaque.
ALLOWED_BINARY = {
    ("keys", "identitykey", "public_key"): "Ed25519 public key",
    ("keys", "identitykey", "certificate"): "signature over public data",
    ("keys", "signedprekey", "public_key"): "X25519 public key",
    ("keys", "signedprekey", "signature"): "signature over public data",
    ("keys", "onetimeprekey", "public_key"): "X25519 public key",
    ("messaging", "delivery", "ciphertext"): "per-device E2EE ciphertext",
    ("messaging", "conversation", "encrypted_meta"): "E2EE name/avatar blob",
}
FORBIDDEN_NAME = re.compile(r"(private|secret|ratchet|root_key|chain_key|plaintext|body|content|password_plain|seed)", re.I)


def _our_models():
    return [m for m in apps.get_models() if m._meta.app_label in ("keys", "messaging", "compat")]


def test_no_column_is_named_like_a_secret():
    offenders = [
        f"{m._meta.label}.{f.name}"
        for m in _our_models()
        for f in m._meta.get_fields()
        if isinstance(f, models.Field) and FORBIDDEN_NAME.search(f.name)
    ]
    assert offenders == []


def test_every_binary_or_free_text_column_is_accounted_for():
    """Binary columns are public keys, signatures or ciphertext; nothing else can carry key bytes."""
    unexpected = []
    for model in _our_models():
        for field in model._meta.get_fields():
            if isinstance(field, models.BinaryField):
                key = (model._meta.app_label, model._meta.model_name, field.name)
                if key not in ALLOWED_BINARY:
                    unexpected.append(".".join(key))
            if isinstance(field, models.TextField):
                unexpected.append(f"{model._meta.label}.{field.name} (TextField)")
    assert unexpected == []


# Python's rendering of raw bytes, as a template would print it (HTML-escaped or not):
# b'\x01…', bytearray(b'…') or a BinaryField's memoryview, "<memory at 0x…>".
RAW_BYTES_RENDERED = re.compile(r"""b(?:'|"|&#x27;|&#39;|&quot;)\\x[0-9a-f]{2}|bytearray\(|(?:<|&lt;)memory at """)


def _assert_shows_no_secrets(page: str, html: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in html, (page, "leaks key or token bytes")
    raw = RAW_BYTES_RENDERED.search(html)
    assert raw is None, (page, "renders raw bytes", html[max(0, raw.start() - 80) : raw.end() + 40])


def test_the_raw_bytes_pattern_catches_what_django_would_render():
    """The detector is only as good as its pattern: check it against real renderings."""
    from django.utils.html import escape

    for value in (b"\x00\x01key", memoryview(b"\x00\x01key"), bytearray(b"\x07k")):
        assert RAW_BYTES_RENDERED.search(str(value)) and RAW_BYTES_RENDERED.search(escape(str(value))), value
    assert RAW_BYTES_RENDERED.search("fingerprint 3fa2c1d0e9b8a7f6 at 12:00") is None


@pytest.mark.django_db
def test_admin_pages_show_no_key_bytes_or_tokens(client, api, alice, bob):
    import uuid

    from keys.models import Device, IdentityKey, OneTimePreKey, SignedPreKey
    from messaging.models import Conversation, Delivery, Message

    ciphertext = b"CIPHERTEXT-MARKER-" + bytes(range(32))
    conversation = Conversation.objects.create(kind="direct", encrypted_meta=b"META-MARKER")
    message = Message.objects.create(conversation=conversation, seq=1, client_message_id=uuid.uuid4())
    bob_device = Device.objects.get(user__username="bob")
    Delivery.objects.create(message=message, device=bob_device, ciphertext=ciphertext)
    admin = get_user_model().objects.create_superuser("root", "root@example.org", "pw-for-admin-test")
    client.force_login(admin)
    secrets = [
        base64.b64encode(bytes(alice.account_key.verify_key)).decode(),
        base64.b64encode(bytes(alice.device.identity.verify_key)).decode(),
        bytes(alice.device.identity.verify_key).hex(),
        alice.token,
        bob.token,
        Device.objects.get(user__username="alice").token_hash,
        "CIPHERTEXT-MARKER",
        base64.b64encode(ciphertext).decode(),
        ciphertext.hex(),
        "META-MARKER",
    ]
    visited = 0
    listings = [(m._meta.app_label, m._meta.model_name, m) for m in _our_models()]
    listings.append(("auth", "user", get_user_model()))
    for app_label, model_name, model in listings:
        if not client.get(f"/admin/{app_label}/{model_name}/").status_code == 200:
            continue
        pages = [f"/admin/{app_label}/{model_name}/"]
        first = model.objects.filter(username="alice").first() if model is get_user_model() else model.objects.first()
        if first is not None:
            pages.append(f"/admin/{app_label}/{model_name}/{first.pk}/change/")
        for page in pages:
            response = client.get(page)
            assert response.status_code == 200, page
            visited += 1
            _assert_shows_no_secrets(page, response.content.decode(), secrets)
    assert visited >= 10
    assert "/admin/auth/user/" in {f"/admin/{a}/{n}/" for a, n, _ in listings}
    index = client.get("/admin/")
    assert index.status_code == 200 and "Devices" in index.content.decode()

    # The revoke action: bob's device loses its token and keys, the row stays, alice is untouched.
    response = client.post(
        "/admin/keys/device/", {"action": "revoke", "_selected_action": [bob_device.pk]}, follow=True
    )
    assert response.status_code == 200 and "Revoked at" in response.content.decode()
    _assert_shows_no_secrets("/admin/keys/device/ (after revoke)", response.content.decode(), secrets)
    bob_device.refresh_from_db()
    assert bob_device.revoked_at is not None and bob_device.token_hash is None
    assert not IdentityKey.objects.filter(device=bob_device).exists()
    assert not SignedPreKey.objects.filter(device=bob_device).exists()
    assert not OneTimePreKey.objects.filter(device=bob_device).exists()
    assert api.get("/api/v1/devices", token=bob.token)[0] == 401
    assert api.get("/api/v1/devices", token=alice.token)[0] == 200
    assert Device.objects.get(user__username="alice").revoked_at is None
