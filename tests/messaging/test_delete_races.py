"""Deleting a device, a user or a conversation (the admin can) while a send to it is being
stored. The database keeps no foreign-key constraint from a message to its conversation and
sender or from a copy to its device (each was a per-row check on the relay's hot path), so the
deletion and the store must be ordered by the conversation's row lock instead: the delete
succeeds, and nothing it removes is left referenced by a message or a copy stored meanwhile."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import close_old_connections, connection, transaction

from keys.models import Device
from messaging import errors, services
from messaging.models import Conversation, Delivery, Message
from tests.messaging.helpers import open_direct, open_group

pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="two writers at once are PostgreSQL's; SQLite's IMMEDIATE transactions run one writer at a time"
)


def device(account, device_id=None):
    return Device.objects.get(user__username=account.username, device_id=device_id or account.device.device_id)


def item(sender, conversation_id, *to, device_ids=None):
    recipients = [
        services.RecipientInput(user_id=a.username, device_id=d, ciphertext=b"opaque")
        for a in to
        for d in (device_ids or {}).get(a.username, [a.device.device_id])
    ]
    return services.BatchSend(sender_device=device(sender), conversation_id=conversation_id, client_message_id=uuid.uuid4(), recipients=recipients)


def dangling():
    """Messages and copies that name a row that is gone."""
    User = get_user_model()
    return {
        "message.conversation": Message.objects.exclude(conversation_id__in=Conversation.objects.values("pk")).count(),
        "message.sender_user": Message.objects.filter(sender_user_id__isnull=False).exclude(sender_user_id__in=User.objects.values("pk")).count(),
        "message.sender_device": Message.objects.filter(sender_device_id__isnull=False).exclude(sender_device_id__in=Device.objects.values("pk")).count(),
        "delivery.device": Delivery.objects.exclude(device_id__in=Device.objects.values("pk")).count(),
    }


NONE_DANGLING = {"message.conversation": 0, "message.sender_user": 0, "message.sender_device": 0, "delivery.device": 0}


def in_thread(work):
    """Run work() on its own database connection; → (thread, outcome dict)."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = work()
        except Exception as exc:  # noqa: BLE001 - the test reads it
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def waiting_on_a_lock(thread, seconds=10.0):
    """True once another session of this database waits for a lock; False if the thread ended
    first (nothing made it wait) or after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and thread.is_alive():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.02)
    return False


def store_held_open(batch):
    """Store `batch` through the group commit in a transaction that stays open (its rows written,
    its conversation rows locked) until the returned event is set; → (thread, outcome, release)."""
    stored, release = threading.Event(), threading.Event()

    def work():
        with transaction.atomic():
            services.messages_send_batch(items=batch)
            stored.set()
            assert release.wait(30)

    thread, outcome = in_thread(work)
    assert stored.wait(30), outcome
    return thread, outcome, release


def chat_and_group_known(api, alice, bob, eve):
    """alice and bob's chat and a group of the three, each with one message stored, so the next
    batches to them skip the look-up (their rosters are remembered)."""
    chat = open_direct(api, alice, bob)
    group = open_group(api, alice, bob, eve)
    services.messages_send_batch(items=[item(alice, chat, bob), item(alice, group, bob, eve)])
    return chat, group


def send_deleting_after_first_check(monkeypatch, send, chat, delete):
    """message_send with `delete()` run right after its first recipient check, before it takes
    the conversation's lock."""
    real, calls = services._check_coverage, []

    def check_then_delete(*args):
        found = real(*args)
        calls.append(1)
        if len(calls) == 1:
            delete()
        return found

    monkeypatch.setattr(services, "_check_coverage", check_then_delete)
    services.message_send(sender_device=send.sender_device, conversation_id=chat, client_message_id=send.client_message_id, recipients=send.recipients)


def race(batch, delete):
    """The batch is stored but not committed; `delete` starts and must wait for it; then the
    batch commits and the delete finishes. → the delete's outcome."""
    sender, sent, release = store_held_open(batch)
    deleter, deleted = in_thread(delete)
    waited = waiting_on_a_lock(deleter)
    release.set()
    sender.join(30)
    deleter.join(30)
    close_old_connections()
    assert "error" not in sent, sent
    assert all(i.error is None for i in batch), [i.error for i in batch]
    assert waited, "the delete did not wait for the store holding the conversation"
    return deleted


@postgresql_only
def test_a_device_deleted_while_a_batch_to_it_commits_keeps_no_copy_for_it(api, alice, bob):
    chat = open_direct(api, alice, bob)
    laptop = bob.link_device(api, "laptop")
    to_both = {bob.username: [bob.device.device_id, laptop.device_id]}
    services.messages_send_batch(items=[item(alice, chat, bob, device_ids=to_both)])  # known: the next batch skips the look-up
    batch = [item(alice, chat, bob, device_ids=to_both)]

    deleted = race(batch, lambda: device(bob, laptop.device_id).delete())

    assert "error" not in deleted, deleted
    assert not Device.objects.filter(user__username=bob.username, device_id=laptop.device_id).exists()
    stored = Message.objects.get(public_id=batch[0].answer["id"])
    assert list(stored.deliveries.values_list("device_id", flat=True)) == [device(bob).pk]  # the phone's copy stays
    assert dangling() == NONE_DANGLING


@postgresql_only
def test_a_user_deleted_while_their_batch_commits_leaves_their_messages_without_a_sender(api, alice, bob, eve):
    chat, group = chat_and_group_known(api, alice, bob, eve)
    batch = [item(alice, chat, bob), item(alice, group, bob, eve)]
    User = get_user_model()

    deleted = race(batch, lambda: User.objects.get(username=alice.username).delete())

    assert "error" not in deleted, deleted
    assert not User.objects.filter(username=alice.username).exists()
    for sent in batch:
        stored = Message.objects.get(public_id=sent.answer["id"])
        assert (stored.sender_user_id, stored.sender_device_id) == (None, None)  # as for every earlier message of hers
    assert Message.objects.filter(sender_user__isnull=True).count() == 4
    assert dangling() == NONE_DANGLING


@postgresql_only
def test_a_conversation_deleted_while_a_batch_to_it_commits_is_deleted_with_that_batch(api, alice, bob, eve):
    chat, group = chat_and_group_known(api, alice, bob, eve)
    batch = [item(bob, chat, alice), item(alice, chat, bob), item(eve, group, alice, bob)]

    deleted = race(batch, lambda: Conversation.objects.filter(public_id=chat).delete())  # as the admin's bulk action does

    assert "error" not in deleted, deleted
    assert not Conversation.objects.filter(public_id=chat).exists()
    assert not Message.objects.filter(public_id__in=[s.answer["id"] for s in batch[:2]]).exists()
    assert Message.objects.filter(conversation__public_id=group).count() == 2  # the other conversation keeps its messages
    assert dangling() == NONE_DANGLING


@postgresql_only
def test_one_conversation_deleted_by_itself_waits_for_a_batch_to_it_too(api, alice, bob):
    chat = open_direct(api, alice, bob)
    services.messages_send_batch(items=[item(alice, chat, bob)])
    batch = [item(bob, chat, alice)]

    deleted = race(batch, lambda: Conversation.objects.get(public_id=chat).delete())  # as the admin's delete page does

    assert "error" not in deleted, deleted
    assert not Message.objects.exists() and not Delivery.objects.exists()
    assert dangling() == NONE_DANGLING


@postgresql_only
def test_a_device_deleted_between_a_batchs_look_up_and_its_store_gets_no_copy(api, alice, bob, monkeypatch):
    """The look-up and the store are two statements: a device deleted between them must make the
    store refuse the batch (the send is then answered on its own: the laptop is extra)."""
    chat = open_direct(api, alice, bob)
    laptop = bob.link_device(api, "laptop")
    real = services._batch_lookups

    def look_up_then_delete(items):
        found = real(items)
        device(bob, laptop.device_id).delete()
        return found

    monkeypatch.setattr(services, "_batch_lookups", look_up_then_delete)
    send = item(alice, chat, bob, device_ids={bob.username: [bob.device.device_id, laptop.device_id]})
    services.messages_send_batch(items=[send])

    assert send.answer is None and isinstance(send.error, errors.DeviceMismatch)
    assert send.error.extra["extra"] == [{"user_id": bob.username, "device_id": laptop.device_id}]
    assert not Message.objects.exists() and not Delivery.objects.exists()
    assert Conversation.objects.get(public_id=chat).last_seq == 0  # no number taken
    assert dangling() == NONE_DANGLING


def test_a_device_deleted_between_a_sends_checks_and_its_store_gets_no_copy(api, alice, bob, monkeypatch):
    """message_send checks the recipients before it takes the conversation's lock: it checks them
    again under the lock when they may have changed, so a device deleted in between gets no
    copy and the sender learns which device is extra (409), as for any other mismatch."""
    chat = open_direct(api, alice, bob)
    laptop = bob.link_device(api, "laptop")
    send = item(alice, chat, bob, device_ids={bob.username: [bob.device.device_id, laptop.device_id]})
    with pytest.raises(errors.DeviceMismatch) as refused:
        send_deleting_after_first_check(monkeypatch, send, chat, lambda: device(bob, laptop.device_id).delete())

    assert refused.value.extra["extra"] == [{"user_id": bob.username, "device_id": laptop.device_id}]
    assert not Message.objects.exists() and not Delivery.objects.exists()
    assert Conversation.objects.get(public_id=chat).last_seq == 0
    assert dangling() == NONE_DANGLING


def test_a_sender_deleted_between_a_sends_checks_and_its_store_stores_nothing(api, alice, bob, monkeypatch):
    chat = open_direct(api, alice, bob)
    send = item(alice, chat, bob)
    with pytest.raises(errors.ConversationNotFound):
        send_deleting_after_first_check(monkeypatch, send, chat, lambda: get_user_model().objects.filter(username=alice.username).delete())

    assert not Message.objects.exists() and not Delivery.objects.exists()
    assert dangling() == NONE_DANGLING


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the lock is PostgreSQL's; SQLite's IMMEDIATE transactions hold every other writer off")
@pytest.mark.parametrize("what", ["device", "user"])
def test_deleting_a_device_or_a_user_locks_their_conversations_before_it_deletes_or_nulls_anything(api, alice, bob, what):
    """What keeps a send from storing a copy for a device being deleted is order: the delete
    locks the conversations before its first write. Django's own order happens to reach a
    roster trigger early (the identity key's row); the delete must not depend on that."""
    from django.test.utils import CaptureQueriesContext

    open_direct(api, alice, bob)
    target = device(bob) if what == "device" else get_user_model().objects.get(username=bob.username)
    with CaptureQueriesContext(connection) as captured:
        target.delete()
    writes = [i for i, q in enumerate(captured.captured_queries) if q["sql"].lstrip().upper().startswith(("DELETE", "UPDATE"))]
    locks = [i for i, q in enumerate(captured.captured_queries) if "enigmo_roster_bump_users" in q["sql"]]
    assert writes and locks and locks[0] < writes[0], [q["sql"][:80] for q in captured.captured_queries]
