"""The relay's group commit (services.messages_send_batch): many socket sends stored in one go
must give each sender exactly what message_send would, and store exactly that. Run without a
test transaction around it (transactional_db), as the relay runs it: on PostgreSQL the store is
one statement in its own transaction."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from enigmo.errors import EnigmoError
from keys.models import Device, IdentityKey
from messaging import services
from messaging.models import Conversation, Delivery, Message
from tests.messaging.helpers import open_direct, open_group

pytestmark = pytest.mark.django_db(transaction=True)


def device(account):
    return Device.objects.get(user__username=account.username, device_id=account.device.device_id)


def item(sender, conversation_id, *to, client_message_id=None, **extra):
    recipients = [
        services.RecipientInput(user_id=a.username, device_id=a.device.device_id, ciphertext=f"{a.username}:{uuid.uuid4()}:".encode() + bytes(range(256))) for a in to
    ]
    return services.BatchSend(
        sender_device=device(sender), conversation_id=conversation_id, client_message_id=client_message_id or uuid.uuid4(), recipients=recipients, **extra
    )


def lifetime(answer):
    return (parse_datetime(answer["expires_at"]) - parse_datetime(answer["created_at"])).total_seconds()


def stored(answer):
    return Message.objects.get(public_id=answer["id"])


def test_one_batch_numbers_stores_and_answers_every_send_like_message_send(api, alice, bob, eve):
    chat = open_direct(api, alice, bob)
    group = open_group(api, alice, bob, eve)
    assert api.post(f"/api/v1/conversations/{group}/timer", {"seconds": 60}, token=alice.token)[0] == 200
    first = item(alice, chat, bob)
    batch = [
        first,
        item(bob, chat, alice),
        item(alice, group, bob, eve),  # no expires_in: the conversation's timer
        item(alice, chat, bob, expires_in=30),
        item(alice, chat, bob, client_message_id=first.client_message_id),  # a repeat in the same batch
        item(eve, chat, alice),  # eve is not in alice and bob's conversation
        item(alice, chat, eve),  # recipients that are not the conversation's devices
    ]
    services.messages_send_batch(items=batch)
    a1, b1, g1, a2, repeat, eves, wrong = batch

    assert [a1.answer["seq"], b1.answer["seq"], a2.answer["seq"]] == [1, 2, 3]  # in the order sent
    assert g1.answer["seq"] == 1
    ids = [a1.answer["id"], b1.answer["id"], g1.answer["id"], a2.answer["id"]]  # random, canonical, distinct
    assert len(set(ids)) == 4 and all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert repeat.answer == a1.answer and repeat.error is None  # idempotent: the first answer again
    assert eves.answer is None and isinstance(eves.error, EnigmoError) and eves.error.code == "not_found"
    assert wrong.answer is None and isinstance(wrong.error, EnigmoError)
    assert Message.objects.filter(conversation__public_id=chat).count() == 3
    assert Conversation.objects.get(public_id=chat).last_seq == 3
    assert Conversation.objects.get(public_id=group).last_seq == 1

    created = parse_datetime(a1.answer["created_at"])
    assert abs(created - timezone.now()) < timedelta(seconds=30)
    assert a1.answer["expires_at"] is None and stored(a1.answer).expires_at is None
    assert lifetime(a2.answer) == pytest.approx(30, abs=0.5)
    assert stored(a2.answer).expires_at == parse_datetime(a2.answer["expires_at"])
    assert lifetime(g1.answer) == pytest.approx(60, abs=0.5)
    assert stored(g1.answer).sender_device_id == device(alice).pk and stored(b1.answer).sender_user_id == device(bob).user_id

    # Every recipient device holds its own ciphertext, and the live push names that row.
    for sent in (a1, b1, g1, a2):
        copies = {d.device_id: d for d in Delivery.objects.filter(message=stored(sent.answer))}
        expected = {device_for(sent, r).pk: r.ciphertext for r in sent.recipients}
        assert {pk: bytes(d.ciphertext) for pk, d in copies.items()} == expected
        assert sorted((pk, delivery) for pk, delivery, _ in sent.pushes) == sorted((pk, d.pk) for pk, d in copies.items())
        for pk, _, frame in sent.pushes:
            assert frame["id"] == sent.answer["id"] and frame["seq"] == sent.answer["seq"] and frame["ciphertext"] == expected[pk]
            assert frame["sender"] == {"user_id": sent.sender_device.user.username, "device_id": sent.sender_device.device_id}
            assert frame["expires_at"] == sent.answer["expires_at"]


def device_for(sent, recipient):
    return Device.objects.get(user__username=recipient.user_id, device_id=recipient.device_id)


def test_a_repeat_stored_meanwhile_by_another_process_is_answered_not_duplicated(api, alice, bob, monkeypatch):
    """Two processes can store the same client message id between one batch's look-up and its
    insert: the unique constraint refuses the batch's row, and each send is then answered on its
    own, the repeat with the stored message, the others stored normally."""
    chat = open_direct(api, alice, bob)
    racer, other = item(alice, chat, bob), item(alice, chat, bob)
    services.messages_send_batch(items=[item(alice, chat, bob, client_message_id=racer.client_message_id)])
    winner = Message.objects.get(client_message_id=racer.client_message_id)
    real = services._batch_lookups
    monkeypatch.setattr(services, "_batch_lookups", lambda items: (lambda found: (*found[:2], set(), found[3]))(real(items)))  # the look-up missed it

    services.messages_send_batch(items=[racer, other])

    assert racer.error is None and racer.answer["id"] == str(winner.public_id) and racer.answer["seq"] == 1
    assert other.error is None and other.answer["seq"] == 2
    assert Message.objects.filter(conversation__public_id=chat).count() == 2
    assert Conversation.objects.get(public_id=chat).last_seq == 2  # the refused batch took no numbers


def test_an_ack_marks_only_the_acking_devices_copies_delivered_and_drops_their_ciphertext(api, alice, bob, eve):
    chat = open_direct(api, alice, bob)
    group = open_group(api, alice, bob, eve)
    direct, to_group = item(alice, chat, bob), item(alice, group, bob, eve)
    services.messages_send_batch(items=[direct, to_group])
    copies = {(sent.answer["id"], device_pk): pk for sent in (direct, to_group) for device_pk, pk, _ in sent.pushes}

    def acked(account, *sent):
        return [(copies[(s.answer["id"], device(account).pk)], s.answer["id"], s.conversation_id, device(alice).user_id) for s in sent]

    bobs_group_copy = acked(bob, to_group)
    services.deliveries_ack_sent_many(acks=[(device(eve), bobs_group_copy)])  # not eve's copy: nothing changes
    assert not Delivery.objects.filter(delivered_at__isnull=False).exists()

    services.deliveries_ack_sent_many(acks=[(device(bob), acked(bob, direct, to_group))])

    done = Delivery.objects.filter(delivered_at__isnull=False)
    assert sorted(done.values_list("pk", flat=True)) == sorted([copies[(direct.answer["id"], device(bob).pk)], bobs_group_copy[0][0]])
    assert all(d.ciphertext is None for d in done)
    eves = Delivery.objects.get(pk=copies[(to_group.answer["id"], device(eve).pk)])
    assert eves.delivered_at is None and bytes(eves.ciphertext) == to_group.recipients[1].ciphertext


def test_a_batch_expects_exactly_each_members_current_devices(api, alice, bob, eve):
    """The batch's look-up decides which devices a send must cover: every device of every member
    that is neither revoked nor without keys, and a member with none still counts as a member."""
    group = open_group(api, alice, bob, eve)
    old_phone = bob.link_device(api, "old phone")
    assert api.delete(f"/api/v1/devices/{old_phone.device_id}", token=bob.token)[0] == 204
    Device.objects.create(user=device(bob).user, device_id=8, name="never keyed", token_hash=Device.hash_token("y" * 43))
    Device.objects.filter(pk=device(eve).pk).update(revoked_at=timezone.now())  # eve: a member without a current device

    def to(*targets):
        recipients = [services.RecipientInput(user_id=u, device_id=d, ciphertext=b"opaque") for u, d in targets]
        return services.BatchSend(sender_device=device(alice), conversation_id=group, client_message_id=uuid.uuid4(), recipients=recipients)

    bob_now = (bob.username, bob.device.device_id)
    exact, with_revoked, with_unkeyed, with_eve = to(bob_now), to(bob_now, (bob.username, old_phone.device_id)), to(bob_now, (bob.username, 8)), to(bob_now, (eve.username, eve.device.device_id))
    services.messages_send_batch(items=[exact, with_revoked, with_unkeyed, with_eve])

    assert exact.error is None and exact.answer["seq"] == 1
    assert [pk for pk, _, _ in exact.pushes] == [device(bob).pk]
    for refused in (with_revoked, with_unkeyed, with_eve):
        assert refused.answer is None and isinstance(refused.error, EnigmoError), refused.error
    assert Message.objects.filter(conversation__public_id=group).count() == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's; SQLite stores through the ORM")
def test_the_group_commit_is_planned_once_per_connection_and_answers_the_same_every_time(api, alice, bob):
    """The group commit's statements (the look-up, and the store that checks what was looked
    up) are prepared on the connection the first time and reused after
    (planning them for every batch of one or two envelopes was most of PostgreSQL's CPU); the
    reused statements still number and store correctly, and the acknowledgements still land.
    The acknowledgement is planned on each call (its table grows), and Django's own queries are
    never prepared (client-side binding), so only these two named statements live on a
    connection."""
    chat = open_direct(api, alice, bob)
    answers = []
    for _ in range(3):
        send = item(alice, chat, bob)
        services.messages_send_batch(items=[send])
        (_, delivery_pk, _), = send.pushes
        services.deliveries_ack_sent_many(acks=[(device(bob), [(delivery_pk, send.answer["id"], send.conversation_id, device(alice).user_id)])])
        answers.append(send.answer)

    assert [a["seq"] for a in answers] == [1, 2, 3]
    copies = Delivery.objects.filter(message__conversation__public_id=chat)
    assert copies.count() == 3 and not copies.filter(delivered_at__isnull=True).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
        prepared = [row[0] for row in cursor.fetchall()]
    hot = {services._batch_lookup_sql(), services._store_batch_sql()}
    assert len(prepared) == 2, prepared  # each once, not once per batch
    # the group commit's two, told apart by their text up to the first parameter ($n in PostgreSQL's copy)
    assert sorted(statement.split("$")[0] for statement in prepared) == sorted(sql.split("%")[0] for sql in hot), prepared


@pytest.mark.skipif(connection.vendor != "postgresql", reason="only PostgreSQL's group commit skips the look-up for known conversations")
def test_a_conversation_known_from_an_earlier_batch_is_checked_again_in_the_statement_that_stores(api, alice, bob, eve, monkeypatch):
    """A batch whose conversations were looked up before skips the look-up, and its store checks
    that the members and devices are still those: a device linked, a member removed, or a
    repeat since then stores nothing and the batch is looked up again, so every send is
    answered exactly as with a fresh look-up and no sequence number is lost."""
    chat = open_direct(api, alice, bob)
    group = open_group(api, alice, bob, eve)
    lookups = []
    real = services._batch_lookups
    monkeypatch.setattr(services, "_batch_lookups", lambda items: lookups.append(len(items)) or real(items))

    services.messages_send_batch(items=[item(alice, chat, bob), item(alice, group, bob, eve)])
    known = [item(bob, chat, alice), item(alice, group, bob, eve)]
    services.messages_send_batch(items=known)
    assert lookups == [2]  # the second batch was not looked up
    assert [s.answer["seq"] for s in known] == [2, 2] and all(s.error is None for s in known)

    laptop = bob.link_device(api, "laptop")  # bob's devices changed since the last look-up
    old_cover = item(alice, chat, bob)
    services.messages_send_batch(items=[old_cover])
    assert lookups == [2, 1]  # the check failed, the batch was looked up again
    assert old_cover.answer is None and isinstance(old_cover.error, EnigmoError)  # bob's laptop is not covered
    both = services.BatchSend(
        sender_device=device(alice),
        conversation_id=chat,
        client_message_id=uuid.uuid4(),
        recipients=[services.RecipientInput(user_id=bob.username, device_id=d, ciphertext=b"opaque") for d in (bob.device.device_id, laptop.device_id)],
    )
    services.messages_send_batch(items=[both])
    assert both.error is None and both.answer["seq"] == 3 and len(both.pushes) == 2

    assert api.delete(f"/api/v1/conversations/{group}/members/{eve.username}", token=alice.token)[0] == 204
    to_eve, from_eve = item(alice, group, bob, eve), item(eve, group, alice, bob)
    services.messages_send_batch(items=[to_eve, from_eve])
    assert to_eve.answer is None and isinstance(to_eve.error, EnigmoError)  # eve is no longer a member
    assert from_eve.answer is None and isinstance(from_eve.error, EnigmoError) and from_eve.error.code == "not_found"

    def to_bob_everywhere(client_message_id=None):
        recipients = [services.RecipientInput(user_id=bob.username, device_id=d, ciphertext=b"opaque") for d in (bob.device.device_id, laptop.device_id)]
        return services.BatchSend(sender_device=device(alice), conversation_id=group, client_message_id=client_message_id or uuid.uuid4(), recipients=recipients)

    first = to_bob_everywhere()
    services.messages_send_batch(items=[first])
    assert first.error is None and first.answer["seq"] == 3
    looked_up = len(lookups)
    repeat, fresh = to_bob_everywhere(first.client_message_id), to_bob_everywhere()
    services.messages_send_batch(items=[repeat, fresh])
    assert len(lookups) == looked_up + 1  # the idempotency index refused the batch, which was looked up again
    assert repeat.error is None and repeat.answer == first.answer  # a repeat: the first answer again
    assert fresh.error is None and fresh.answer["seq"] == 4

    assert Conversation.objects.get(public_id=chat).last_seq == 3 == Message.objects.filter(conversation__public_id=chat).count()
    assert Conversation.objects.get(public_id=group).last_seq == 4 == Message.objects.filter(conversation__public_id=group).count()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="deadlock detection is PostgreSQL's")
def test_a_store_broken_by_a_deadlock_is_stored_again_and_a_real_failure_is_not_hidden(api, alice, bob, monkeypatch):
    """PostgreSQL ends a deadlock by failing one statement, which then stored nothing: the
    group commit stores the batch another way (a fresh look-up, then each send on its own), so
    no sender sees an error and no seq is lost. Any other database failure still reaches the
    senders."""
    import psycopg
    from django.db import OperationalError

    chat = open_direct(api, alice, bob)
    services.messages_send_batch(items=[item(alice, chat, bob)])  # the conversation is known now
    real = services._store_batch_postgresql
    failures = []

    def failing(error):
        def store(*args, **kwargs):
            if len(failures) < 2:
                failures.append(error)
                raise OperationalError(str(error)) from error
            return real(*args, **kwargs)

        return store

    monkeypatch.setattr(services, "_store_batch_postgresql", failing(psycopg.errors.DeadlockDetected("deadlock detected")))
    sends = [item(alice, chat, bob), item(bob, chat, alice)]
    services.messages_send_batch(items=sends)
    assert len(failures) == 2  # the known store, then the looked-up store; then one by one
    assert all(s.error is None for s in sends) and sorted(s.answer["seq"] for s in sends) == [2, 3]

    failures.clear()
    monkeypatch.setattr(services, "_store_batch_postgresql", failing(psycopg.errors.DiskFull("no space left")))
    with pytest.raises(OperationalError):
        services.messages_send_batch(items=[item(alice, chat, bob)])
    assert Conversation.objects.get(public_id=chat).last_seq == 3 == Message.objects.filter(conversation__public_id=chat).count()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the roster triggers are PostgreSQL's, as is the group commit that checks them")
def test_every_change_to_who_a_send_must_cover_raises_the_roster_version_of_exactly_those_conversations(api, alice, bob, eve):
    """The known-conversation check trusts one number per conversation, so every way its roster
    can change must raise it, in the database, whatever made the change: a member added or
    removed, a device linked, revoked (also by a queryset update, which sends no signal) or
    deleted, an identity key removed, a username changed. Conversations the change does not
    touch keep their version (their batches keep skipping the look-up)."""
    chat = open_direct(api, alice, bob)
    group = open_group(api, alice, eve)  # bob is not in it
    User = get_user_model()

    def versions():
        return dict(Conversation.objects.filter(public_id__in=[chat, group]).values_list("public_id", "roster_version"))

    def raises(change, touched):
        before = versions()
        change()
        after = versions()
        for public_id in (chat, group):
            moved = after[uuid.UUID(public_id)] > before[uuid.UUID(public_id)]
            assert moved == (public_id in touched), (change.__doc__, public_id == chat, before, after)

    laptop = None

    def link():
        """bob links a laptop"""
        nonlocal laptop
        laptop = bob.link_device(api, "laptop")

    def revoke_by_update():
        """bob's laptop revoked by a queryset update"""
        Device.objects.filter(user__username=bob.username, device_id=laptop.device_id).update(revoked_at=timezone.now())

    def unkey():
        """bob's phone loses its identity key"""
        IdentityKey.objects.filter(device=device(bob)).delete()

    def delete_device():
        """bob's laptop deleted"""
        Device.objects.filter(user__username=bob.username, device_id=laptop.device_id).delete()

    def add_member():
        """bob added to the group"""
        assert api.post(f"/api/v1/conversations/{group}/members", {"add": [bob.username]}, token=alice.token)[0] == 200

    def remove_member():
        """eve removed from the group"""
        assert api.delete(f"/api/v1/conversations/{group}/members/{eve.username}", token=alice.token)[0] == 204

    def rename():
        """alice's username changed"""
        User.objects.filter(username=alice.username).update(username=alice.username + "x")

    def touch_nothing_of_the_roster():
        """a message sent, eve's device renamed, a conversation's timer set"""
        services.messages_send_batch(items=[item(alice, chat, bob)])
        Device.objects.filter(pk=device(eve).pk).update(name="renamed")
        Conversation.objects.filter(public_id=group).update(disappearing_seconds=60)

    raises(link, {chat})
    raises(revoke_by_update, {chat})
    raises(delete_device, {chat})
    raises(unkey, {chat})
    raises(add_member, {group})
    raises(remove_member, {group})
    raises(touch_nothing_of_the_roster, set())
    raises(rename, {chat, group})


@pytest.mark.skipif(connection.vendor != "postgresql", reason="only PostgreSQL's group commit skips the look-up for known conversations")
def test_a_client_message_id_is_a_repeat_only_for_the_device_that_sent_it(api, alice, bob, monkeypatch):
    """Client message ids are each device's own: alice sending the id bob used, and bob the one
    alice used, are two new messages, stored by the checked statement in one go without a
    look-up (the idempotency index keys sender and id as a pair), while alice's own id again is
    a repeat, answered with her first message."""
    chat = open_direct(api, alice, bob)
    first = [item(alice, chat, bob), item(bob, chat, alice)]
    services.messages_send_batch(items=first)
    lookups = []
    real = services._batch_lookups
    monkeypatch.setattr(services, "_batch_lookups", lambda items: lookups.append(len(items)) or real(items))

    crossed = [item(alice, chat, bob, client_message_id=first[1].client_message_id), item(bob, chat, alice, client_message_id=first[0].client_message_id)]
    services.messages_send_batch(items=crossed)

    assert lookups == []  # the check passed: nothing in the batch repeats its own sender's id
    assert all(s.error is None for s in crossed) and sorted(s.answer["seq"] for s in crossed) == [3, 4]
    assert {s.answer["id"] for s in crossed}.isdisjoint(s.answer["id"] for s in first)
    again = item(alice, chat, bob, client_message_id=first[0].client_message_id)
    services.messages_send_batch(items=[again])
    assert again.error is None and again.answer == first[0].answer
    assert Conversation.objects.get(public_id=chat).last_seq == 4 == Message.objects.filter(conversation__public_id=chat).count()


def test_a_fresh_batch_tells_each_devices_repeats_from_another_devices_ids(api, alice, bob):
    """On both profiles, in a batch that takes the look-up (PostgreSQL's statement, the ORM on
    SQLite): alice reusing bob's client message id and bob alice's are new messages, while
    alice's own id again is a repeat, answered with her first message."""
    chat = open_direct(api, alice, bob)
    first = [item(alice, chat, bob), item(bob, chat, alice)]
    services.messages_send_batch(items=first)
    services._known.clear()  # the next batch is looked up

    batch = [
        item(alice, chat, bob, client_message_id=first[1].client_message_id),
        item(bob, chat, alice, client_message_id=first[0].client_message_id),
        item(alice, chat, bob, client_message_id=first[0].client_message_id),
    ]
    services.messages_send_batch(items=batch)

    crossed, again = batch[:2], batch[2]
    assert all(s.error is None for s in batch)
    assert sorted(s.answer["seq"] for s in crossed) == [3, 4]
    assert again.answer == first[0].answer
    assert Conversation.objects.get(public_id=chat).last_seq == 4 == Message.objects.filter(conversation__public_id=chat).count()


def test_message_ids_stay_distinct_across_batches_threads_and_a_forked_process():
    """The store draws message ids from a per-thread pool of random bytes; none may come twice,
    also not in a child forked after the parent drew some (a Celery worker, a daphne fork)."""
    import os
    import threading

    drawn = [i for n in (1, 3, 255, 1, 600, 7, 0, 2) for i in services._random_uuids(n)]
    other: list[str] = []
    worker = threading.Thread(target=lambda: other.extend(services._random_uuids(300)))
    worker.start()
    worker.join()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only writes its ids back
        os.write(write, " ".join(services._random_uuids(50)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    forked = os.read(read, 1 << 16).decode().split()
    os.close(read)
    drawn += other + forked + services._random_uuids(50)
    assert len(drawn) == 869 + 300 + 100 and len(set(drawn)) == len(drawn)
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in drawn)


@pytest.mark.django_db(transaction=False)
async def test_a_group_is_never_split_between_two_batches_that_may_run_side_by_side():
    """The relay's batcher cuts batches at max_items, but a socket's group of sends (stored in
    order) stays whole: two batches run side by side, and the second could take its
    conversation's sequence numbers first."""
    import asyncio

    from messaging.relay import Batcher

    batches: list[list[str]] = []
    release = asyncio.Event()

    async def run(items):
        batches.append(items)
        await release.wait()

    batcher = Batcher(run, parallel=2, max_items=3)
    futures = [batcher.submit("a"), *batcher.submit_group(["b", "c", "d"]), batcher.submit("e"), *batcher.submit_group(["f", "g"])]
    for _ in range(10):  # the batches start on the next turns of the loop
        await asyncio.sleep(0)
    assert batches == [["a", "b", "c", "d"], ["e", "f", "g"]]  # the cut after c moved to the group's end
    release.set()
    await asyncio.gather(*futures)
    batches.clear()
    futures = [*batcher.submit_group(["h", "i"]), *batcher.submit_group(["j", "k"])]
    await asyncio.gather(*futures)
    assert batches == [["h", "i", "j", "k"]]  # a cut inside the second group: both whole, one batch
