"""Encrypted media blobs: upload with a cap, participant-only download, removal."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from django.contrib.auth import get_user_model

from enigmo.realtime import user_group
from messaging.models import Delivery, Media, Message, Reaction
from messaging.services import media_path
from tests.messaging.helpers import NOWHERE, send


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def upload(client, account, conversation_id, blob: bytes):
    client.cookies.clear()
    response = client.post(
        f"/api/v1/media/upload?conversation_id={conversation_id}",
        blob,
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Token {account.token}",
    )
    return response.status_code, response.json() if response["Content-Type"].startswith("application/json") else None


def download(client, account, media_id):
    client.cookies.clear()
    return client.get(f"/api/v1/media/{media_id}", HTTP_AUTHORIZATION=f"Token {account.token}")


def test_upload_then_participants_download(client, api, alice, bob, eve, chat):
    status, body = upload(client, alice, chat, b"\x00encrypted blob" * 100)
    assert status == 201 and body["size"] == 1500 and len(body["id"]) >= 40
    response = download(client, bob, body["id"])
    assert response.status_code == 200 and response["Content-Type"] == "application/octet-stream"
    assert "attachment" in response["Content-Disposition"]
    assert b"".join(response.streaming_content) == b"\x00encrypted blob" * 100


def test_over_the_cap_is_413_and_nothing_is_kept(client, api, alice, bob, eve, chat, settings):
    settings.MAX_MEDIA_BYTES = 1000
    status, body = upload(client, alice, chat, b"x" * 1001)
    assert status == 413 and body["error"]["code"] == "media_too_large"
    assert not Media.objects.exists()
    root = Path(settings.MEDIA_ROOT)
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]
    assert upload(client, alice, chat, b"x" * 1000)[0] == 201


def test_validation_and_unauthenticated(client, api, alice, bob, eve, chat):
    assert upload(client, alice, chat, b"")[0] == 400
    client.cookies.clear()
    assert client.post(f"/api/v1/media/upload?conversation_id={chat}", b"x", content_type="application/octet-stream").status_code == 401
    _, body = upload(client, alice, chat, b"blob")
    client.cookies.clear()
    assert client.get(f"/api/v1/media/{body['id']}").status_code == 401


def test_eve_gets_404_for_upload_and_download(client, api, alice, bob, eve, chat):
    assert upload(client, eve, chat, b"blob")[0] == 404
    assert upload(client, eve, NOWHERE, b"blob")[0] == 404
    _, body = upload(client, alice, chat, b"blob")
    assert download(client, eve, body["id"]).status_code == 404
    assert download(client, eve, "x" * 43).status_code == 404


def test_blob_goes_with_its_deleted_message(client, api, alice, bob, eve, chat, django_capture_on_commit_callbacks):
    _, media = upload(client, alice, chat, b"blob")
    status, sent = send(api, alice, chat, "see attachment", attachments=[media["id"]])
    assert status == 201
    path = media_path(media["id"])
    assert path.exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/messages/{sent['id']}", token=alice.token)[0] == 204
    assert not path.exists() and not Media.objects.exists()


def test_delete_for_everyone_takes_the_reactions_and_attachments_with_it(client, api, alice, bob, eve, chat, django_capture_on_commit_callbacks):
    """Deleting a message removes the reaction envelopes aimed at it (rows, per-device
    ciphertexts, Reaction rows) and its attachment, tells both participants, and it takes no
    new reactions; other messages keep theirs."""
    _, media = upload(client, alice, chat, b"blob")
    _, sent = send(api, alice, chat, "see attachment", attachments=[media["id"]])
    _, other = send(api, alice, chat, "keep me")
    _, reaction = send(api, bob, chat, "<e2ee emoji>", kind="reaction", reaction_to=sent["id"])
    _, kept = send(api, bob, chat, "<e2ee emoji>", kind="reaction", reaction_to=other["id"])
    assert Delivery.objects.filter(message__public_id=reaction["id"], ciphertext__isnull=False).exists()
    with mock.patch("messaging.services.publish") as publish, django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/messages/{sent['id']}", token=alice.token)[0] == 204
    assert not Message.objects.filter(public_id=reaction["id"]).exists()
    assert not Delivery.objects.filter(message__public_id=reaction["id"]).exists()
    assert not Delivery.objects.filter(message__public_id=sent["id"], ciphertext__isnull=False).exists()
    assert not Reaction.objects.filter(message__public_id=sent["id"]).exists()
    assert not Media.objects.exists() and not media_path(media["id"]).exists()
    [(groups, event)] = [c.args for c in publish.call_args_list]
    pks = dict(get_user_model().objects.values_list("username", "pk"))
    assert sorted(groups) == sorted(user_group(pks[name]) for name in ("alice", "bob"))
    assert event["frame"] == {"type": "deleted", "message_id": sent["id"], "conversation_id": chat}
    # the other message and its reaction are untouched; the tombstone takes no new reactions
    assert Reaction.objects.filter(message__public_id=other["id"], envelope__public_id=kept["id"]).exists()
    assert Delivery.objects.filter(message__public_id=kept["id"], ciphertext__isnull=False).exists()
    assert send(api, bob, chat, "<late emoji>", kind="reaction", reaction_to=sent["id"])[0] == 404
    page = api.get(f"/api/v1/conversations/{chat}/messages", token=bob.token)[1]["messages"]
    assert [(m["id"], m["deleted"]) for m in page] == [(sent["id"], True), (other["id"], False), (kept["id"], False)]


def test_the_attachment_of_an_expired_message_is_not_found(client, api, alice, bob, eve, chat, time_machine):
    """Once its message has expired, an attachment answers 404 exactly like a missing one, even
    before the purge has removed it; an attachment of a live message is still served."""
    from datetime import timedelta

    from django.utils import timezone

    time_machine.move_to(timezone.now(), tick=False)
    _, vanishing = upload(client, alice, chat, b"vanishing blob")
    _, lasting = upload(client, alice, chat, b"lasting blob")
    assert send(api, alice, chat, "gone soon", attachments=[vanishing["id"]], expires_in=30)[0] == 201
    assert send(api, alice, chat, "stays", attachments=[lasting["id"]])[0] == 201
    assert download(client, bob, vanishing["id"]).status_code == 200
    time_machine.shift(timedelta(seconds=31))
    missing = download(client, bob, "x" * 43)
    for account in (alice, bob):
        response = download(client, account, vanishing["id"])
        assert response.status_code == 404 and response.json() == missing.json() == {"error": {"code": "not_found", "message": "Not found."}}
    assert Media.objects.filter(token=vanishing["id"]).exists() and media_path(vanishing["id"]).exists()  # not purged yet
    response = download(client, bob, lasting["id"])
    assert response.status_code == 200 and b"".join(response.streaming_content) == b"lasting blob"
