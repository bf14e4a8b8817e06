"""Disappearing messages, 30-day expiry and the queue cap, purged by the Celery task."""

from __future__ import annotations

import pytest
from django.utils import timezone

from messaging import tasks
from messaging.models import Delivery, Media, Message, Reaction
from messaging.services import device_queue_take_trimmed, device_queue_trim, media_path, messages_purge_expired
from tests.messaging.helpers import send


def test_expired_message_is_physically_purged_within_a_minute(api, alice, bob, eve, chat, time_machine, settings, tmp_path, client):
    """Rows, ciphertexts, reactions and media blobs of an expired message go; others stay."""
    settings.MEDIA_ROOT = tmp_path
    time_machine.move_to("2026-03-01 12:00:00", tick=False)
    client.cookies.clear()
    media = client.post(f"/api/v1/media/upload?conversation_id={chat}", b"blob", content_type="application/octet-stream", HTTP_AUTHORIZATION=f"Token {alice.token}").json()
    _, keep = send(api, alice, chat, "keep")
    _, gone = send(api, alice, chat, "vanish", expires_in=30, attachments=[media["id"]])
    send(api, bob, chat, "like", kind="reaction", reaction_to=gone["id"])
    assert Reaction.objects.count() == 1
    time_machine.move_to("2026-03-01 12:00:29", tick=False)
    tasks.purge_expired()
    assert Message.objects.filter(public_id=gone["id"]).exists()
    time_machine.move_to("2026-03-01 12:01:30", tick=False)  # expiry + the purge interval
    assert tasks.purge_expired() > 0
    assert list(Message.objects.values_list("public_id", flat=True)) == [Message.objects.get(public_id=keep["id"]).public_id]
    assert Reaction.objects.count() == 0 and Media.objects.count() == 0 and not media_path(media["id"]).exists()
    assert Delivery.objects.count() == 1
    assert tasks.purge_expired() == 0  # safe to run twice


def test_conversation_timer_applies_when_no_expires_in(api, alice, bob, eve, chat, time_machine):
    time_machine.move_to("2026-03-01 12:00:00", tick=False)
    api.post(f"/api/v1/conversations/{chat}/timer", {"seconds": 10}, token=alice.token)
    send(api, alice, chat, "short")
    time_machine.move_to("2026-03-01 12:00:11", tick=False)
    messages_purge_expired(now=timezone.now())
    assert Message.objects.count() == 0


def test_undelivered_ciphertexts_expire_after_thirty_days(api, alice, bob, eve, chat, time_machine):
    time_machine.move_to("2026-03-01 12:00:00", tick=False)
    send(api, alice, chat, "old")
    time_machine.move_to("2026-03-31 12:00:01", tick=False)
    messages_purge_expired(now=timezone.now())
    assert Delivery.objects.count() == 0


def test_queue_cap_trims_oldest_first_and_counts(api, alice, bob, eve, chat, settings):
    settings.DEVICE_QUEUE_CAP = 3
    for i in range(5):
        send(api, alice, chat, f"m{i}")
    bob_device = Delivery.objects.first().device_id
    assert device_queue_trim() == 2
    assert list(Delivery.objects.order_by("id").values_list("message__seq", flat=True)) == [3, 4, 5]
    assert device_queue_take_trimmed(device_pk=bob_device) == 2
    assert device_queue_take_trimmed(device_pk=bob_device) == 0


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_purge_works_in_batches(api, alice, bob, eve, chat, time_machine, batch_size):
    time_machine.move_to("2026-03-01 12:00:00", tick=False)
    for i in range(3):
        send(api, alice, chat, f"m{i}", expires_in=5)
    time_machine.move_to("2026-03-01 12:00:06", tick=False)
    messages_purge_expired(now=timezone.now(), batch_size=batch_size)
    assert Message.objects.count() == 0
