"""Encrypted media blobs: upload with a cap, participant-only download, removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from messaging.models import Media
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
