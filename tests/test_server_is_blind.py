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


@pytest.mark.django_db
def test_admin_pages_show_no_key_bytes_or_tokens(client, api, alice, bob):
    import uuid

    from keys.models import Device
    from messaging.models import Conversation, Delivery, Message

    ciphertext = b"CIPHERTEXT-MARKER-" + bytes(range(32))
    conversation = Conversation.objects.create(kind="direct", encrypted_meta=b"META-MARKER")
    message = Message.objects.create(conversation=conversation, seq=1, client_message_id=uuid.uuid4())
    Delivery.objects.create(message=message, device=Device.objects.get(user__username="bob"), ciphertext=ciphertext)
    admin = get_user_model().objects.create_superuser("root", "root@example.org", "pw-for-admin-test")
    client.force_login(admin)
    secrets = [
        base64.b64encode(bytes(alice.account_key.verify_key)).decode(),
        base64.b64encode(bytes(alice.device.identity.verify_key)).decode(),
        bytes(alice.device.identity.verify_key).hex(),
        alice.token,
        bob.token,
        "CIPHERTEXT-MARKER",
        base64.b64encode(ciphertext).decode(),
        ciphertext.hex(),
        "META-MARKER",
    ]
    visited = 0
    for model in _our_models():
        if not client.get(f"/admin/{model._meta.app_label}/{model._meta.model_name}/").status_code == 200:
            continue
        pages = [f"/admin/{model._meta.app_label}/{model._meta.model_name}/"]
        first = model.objects.first()
        if first is not None:
            pages.append(f"/admin/{model._meta.app_label}/{model._meta.model_name}/{first.pk}/change/")
        for page in pages:
            response = client.get(page)
            assert response.status_code == 200, page
            visited += 1
            html = response.content.decode()
            for secret in secrets:
                assert secret not in html, (page, "leaks key or token bytes")
    assert visited >= 8
    index = client.get("/admin/")
    assert index.status_code == 200 and "Devices" in index.content.decode()
