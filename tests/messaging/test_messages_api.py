"""Sending envelopes and reading history: coverage, idempotency, limits, order, delete."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection
from django.test import Client

from messaging.models import Delivery, Message, Reaction
from tests.messaging.helpers import NOWHERE, fanout, open_group, send
from tests.support import Account, DjangoTransport, b64, unb64


def test_send_and_read_history(api, alice, bob, eve, chat):
    """bob reads alice's envelope with his own ciphertext; the answer carries server seq and time."""
    status, sent = send(api, alice, chat, "hello")
    assert status == 201 and sent["seq"] == 1 and sent["created_at"] and sent["expires_at"] is None
    status, page = api.get(f"/api/v1/conversations/{chat}/messages?after_seq=0", token=bob.token)
    assert status == 200 and page["has_more"] is False
    [m] = page["messages"]
    assert m["id"] == sent["id"] and m["sender"] == {"user_id": "alice", "device_id": 1}
    assert unb64(m["ciphertext"]) == b"hello|bob.1" and m["deleted"] is False and m["kind"] == "message"
    # the sender has no copy for herself (no other device)
    assert api.get(f"/api/v1/conversations/{chat}/messages", token=alice.token)[1]["messages"][0]["ciphertext"] is None


def test_coverage_mismatch_lists_missing_and_extra(api, alice, bob, eve, chat):
    """Recipients must be exactly the other devices: 409 names what is missing and extra."""
    alice.link_device(api)
    bob.link_device(api)
    recipients = [r for r in fanout(api, alice, chat, "x") if r["device_id"] != 2 or r["user_id"] != "bob"]
    recipients.append({"user_id": "eve", "device_id": 1, "ciphertext": b64(b"x")})
    recipients.append({"user_id": "alice", "device_id": 1, "ciphertext": b64(b"x")})  # the sender itself
    status, body = api.post(f"/api/v1/conversations/{chat}/messages", {"client_message_id": str(uuid.uuid4()), "recipients": recipients}, token=alice.token)
    assert status == 409 and body["error"]["code"] == "device_mismatch"
    assert body["error"]["missing"] == [{"user_id": "bob", "device_id": 2}]
    assert body["error"]["extra"] == [{"user_id": "alice", "device_id": 1}, {"user_id": "eve", "device_id": 1}]
    assert Message.objects.count() == 0
    # the sender's other device is a required recipient
    status, sent = send(api, alice, chat, "ok")
    assert status == 201
    assert Delivery.objects.filter(message__public_id=sent["id"]).count() == 3


def test_client_message_id_is_an_idempotency_key(api, alice, bob, eve, chat):
    body = {"client_message_id": str(uuid.uuid4()), "recipients": fanout(api, alice, chat, "once")}
    status, first = api.post(f"/api/v1/conversations/{chat}/messages", body, token=alice.token)
    assert status == 201
    status, again = api.post(f"/api/v1/conversations/{chat}/messages", body, token=alice.token)
    assert status == 200 and again == first
    assert Message.objects.count() == 1 and Delivery.objects.count() == 1


def test_a_retry_gets_its_first_answer_even_after_the_rate_limit_is_spent(api, alice, bob, eve, chat, settings):
    """A repeat of a stored (device, client_message_id) is answered with the original id and seq
    and spends no token; only new envelopes count against the burst."""
    settings.RATE_LIMITS_ENABLED = True
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message": "2/600"}
    url = f"/api/v1/conversations/{chat}/messages"
    body = {"client_message_id": str(uuid.uuid4()), "recipients": fanout(api, alice, chat, "once")}
    status, first = api.post(url, body, token=alice.token)
    assert status == 201
    assert api.post(url, body, token=alice.token) == (200, first)  # free: the second token is still there
    assert send(api, alice, chat, "second")[0] == 201
    status, err = send(api, alice, chat, "third")
    assert status == 429 and err["error"]["code"] == "rate_limited"
    status, again = api.post(url, body, token=alice.token)
    assert status == 200 and again == first and again["seq"] == 1
    assert Message.objects.count() == 2


def test_forged_sender_fields_are_ignored(api, alice, bob, eve, chat):
    """The sender is the authenticated device, whatever the body says."""
    forged = {
        "client_message_id": str(uuid.uuid4()),
        "recipients": fanout(api, alice, chat, "x"),
        "sender": {"user_id": "bob", "device_id": 1},
        "sender_user": "bob",
        "seq": 99,
        "created_at": "2000-01-01T00:00:00Z",
        "device_id": 7,
    }
    status, sent = api.post(f"/api/v1/conversations/{chat}/messages", forged, token=alice.token)
    assert status == 201 and sent["seq"] == 1 and not sent["created_at"].startswith("2000")
    m = Message.objects.get(public_id=sent["id"])
    assert m.sender_user.username == "alice" and m.sender_device.device_id == 1


def test_ciphertext_over_the_cap_is_413(api, alice, bob, eve, chat, settings):
    settings.MAX_CIPHERTEXT_BYTES = 1024
    body = {"client_message_id": str(uuid.uuid4()), "recipients": [{"user_id": "bob", "device_id": 1, "ciphertext": b64(b"x" * 1025)}]}
    status, err = api.post(f"/api/v1/conversations/{chat}/messages", body, token=alice.token)
    assert status == 413 and err["error"]["code"] == "ciphertext_too_large"
    body["recipients"][0]["ciphertext"] = b64(b"x" * 1024)
    assert api.post(f"/api/v1/conversations/{chat}/messages", body, token=alice.token)[0] == 201


def test_validation_failures(api, alice, bob, eve, chat):
    url = f"/api/v1/conversations/{chat}/messages"
    assert api.post(url, {"recipients": []}, token=alice.token)[0] == 400
    assert api.post(url, {"client_message_id": "nope", "recipients": []}, token=alice.token)[0] == 400
    bad = {"client_message_id": str(uuid.uuid4()), "recipients": [{"user_id": "bob", "device_id": 1, "ciphertext": "***"}]}
    assert api.post(url, bad, token=alice.token)[0] == 400
    assert api.get(url + "?limit=0", token=alice.token)[0] == 400
    status, body = send(api, alice, chat, "r", reply_to=NOWHERE)
    assert status == 404
    status, body = send(api, alice, chat, "r", kind="reaction")
    assert status == 400


def test_unauthenticated(api, alice, bob, eve, chat):
    assert api.get(f"/api/v1/conversations/{chat}/messages")[0] == 401
    assert api.post(f"/api/v1/conversations/{chat}/messages", {})[0] == 401


def test_eve_gets_404_on_every_message_route(api, alice, bob, eve, chat):
    status, sent = send(api, alice, chat, "secret")
    mid = sent["id"]
    not_found = {"error": {"code": "not_found", "message": "Not found."}}
    for cid in (chat, NOWHERE):
        assert api.get(f"/api/v1/conversations/{cid}/messages", token=eve.token) == (404, not_found)
        body = {"client_message_id": str(uuid.uuid4()), "recipients": []}
        assert api.post(f"/api/v1/conversations/{cid}/messages", body, token=eve.token) == (404, not_found)
    for target in (mid, str(uuid.uuid4())):
        assert api.delete(f"/api/v1/messages/{target}", token=eve.token) == (404, not_found)
        assert api.post(f"/api/v1/messages/{target}/delivered", token=eve.token) == (404, not_found)
        assert api.post(f"/api/v1/messages/{target}/read", token=eve.token) == (404, not_found)


def test_history_pages_with_has_more(api, alice, bob, eve, chat):
    for i in range(5):
        send(api, alice, chat, f"m{i}")
    status, page = api.get(f"/api/v1/conversations/{chat}/messages?after_seq=0&limit=2", token=bob.token)
    assert [m["seq"] for m in page["messages"]] == [1, 2] and page["has_more"] is True
    status, page = api.get(f"/api/v1/conversations/{chat}/messages?after_seq=4&limit=2", token=bob.token)
    assert [m["seq"] for m in page["messages"]] == [5] and page["has_more"] is False


def test_replies_and_reactions_reference_their_targets(api, alice, bob, eve, chat):
    _, first = send(api, alice, chat, "question")
    status, reply = send(api, bob, chat, "answer", reply_to=first["id"])
    assert status == 201
    status, reaction = send(api, bob, chat, "<e2ee emoji>", kind="reaction", reaction_to=first["id"])
    assert status == 201
    status, again = send(api, bob, chat, "<another emoji>", kind="reaction", reaction_to=first["id"])
    assert Reaction.objects.filter(message__public_id=first["id"]).count() == 1  # one per (message, user)
    assert str(Reaction.objects.get().envelope.public_id) == again["id"]
    page = api.get(f"/api/v1/conversations/{chat}/messages", token=alice.token)[1]["messages"]
    assert page[1]["reply_to"] == first["id"] and page[2]["kind"] == "reaction" and page[2]["reaction_to"] == first["id"]


def test_delete_for_everyone_leaves_a_tombstone(api, alice, bob, eve, chat):
    _, sent = send(api, alice, chat, "oops")
    assert api.delete(f"/api/v1/messages/{sent['id']}", token=bob.token)[1]["error"]["code"] == "not_sender"
    assert api.delete(f"/api/v1/messages/{sent['id']}", token=alice.token)[0] == 204
    [m] = api.get(f"/api/v1/conversations/{chat}/messages", token=bob.token)[1]["messages"]
    assert m["deleted"] is True and m["ciphertext"] is None
    assert not Delivery.objects.filter(ciphertext__isnull=False).exists()


def test_expired_messages_are_never_served(api, alice, bob, eve, chat, time_machine):
    time_machine.move_to("2026-03-01 12:00:00", tick=False)
    send(api, alice, chat, "keep")
    send(api, alice, chat, "vanish", expires_in=30)
    time_machine.move_to("2026-03-01 12:00:31", tick=False)
    page = api.get(f"/api/v1/conversations/{chat}/messages", token=bob.token)[1]["messages"]
    assert [m["seq"] for m in page] == [1]


@pytest.mark.django_db(transaction=True)
def test_order_under_ten_concurrent_senders(transactional_db):
    """Ten members send at once: seq is gap-free and each device's queue follows seq order."""
    api = DjangoTransport(Client())
    members = []
    for i in range(10):
        a = Account(f"user{i}")
        a.register(api)
        members.append(a)
    group = open_group(api, members[0], *members[1:])
    errors: list[object] = []

    def run(member: Account) -> None:
        own = DjangoTransport(Client())
        try:
            for n in range(5):
                status, body = send(own, member, group, f"{member.username}-{n}")
                if status != 201:
                    errors.append(body)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(Message.objects.values_list("seq", flat=True)) == list(range(1, 51))
    for member in members:
        seqs = list(Delivery.objects.filter(device__user__username=member.username).order_by("id").values_list("message__seq", flat=True))
        assert seqs == sorted(seqs) and len(seqs) == 45
