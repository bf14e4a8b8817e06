"""Writes for conversations, envelopes, receipts, typing, presence, media and calls. Every event
is published only after the database commit (enigmo.realtime); the database stays the truth."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from enigmo import ratelimit
from enigmo.errors import Conflict, EnigmoError
from enigmo.realtime import device_group, user_group
from keys.models import Device, IdentityKey
from keys.selectors import active_device_ids
from messaging import errors, presence
from messaging.events import publish, publish_each
from messaging.models import (
    Call,
    Conversation,
    Delivery,
    DeviceQueue,
    Media,
    Message,
    Participant,
    PrivacySettings,
    Reaction,
)
from messaging.selectors import (
    _uuid,
    canonical_uuid,
    co_participant_user_pks,
    conversation_get_for_user,
    iso,
    message_get_for_user,
    pg_array,
    privacy_get,
)

logger = logging.getLogger("enigmo.messaging")
User = get_user_model()

UNDELIVERED_TTL = timedelta(days=30)
MEDIA_TTL = timedelta(days=30)
TYPING_TTL_SECONDS = 6
MAX_GROUP_MEMBERS = 100
MAX_EXPIRES_SECONDS = 365 * 86400
NUDGE = {"type": "relay.nudge"}


def device_queue_cap() -> int:
    """Undelivered envelopes kept per device before the oldest are trimmed (ENIGMO_DEVICE_QUEUE_CAP)."""
    return int(settings.DEVICE_QUEUE_CAP)


def _event(frame: dict[str, Any], *, skip_device: int | None = None) -> dict[str, Any]:
    """A frame for consumers to forward verbatim (optionally not to the device that caused it)."""
    return {"type": "relay.event", "frame": frame, "skip_device": skip_device}


def _users_by_name(usernames: Iterable[str]) -> dict[str, Any]:
    names = set(usernames)
    found = {u.username: u for u in User.objects.filter(username__in=names, is_active=True)}
    unknown = sorted(names - set(found))
    if unknown:
        raise errors.UserNotFound(extra={"users": unknown})
    return found


def _participant_user_pks(conversation: Conversation) -> list[int]:
    return list(conversation.participants.values_list("user_id", flat=True))


def _notify_conversation_changed(conversation: Conversation, user_pks: Iterable[int]) -> None:
    frame = {"type": "conversation", "conversation_id": str(conversation.public_id)}
    publish([user_group(pk) for pk in user_pks], _event(frame))


# --- conversations ------------------------------------------------------------------------------


def conversation_create(*, creator: Any, kind: str, members: list[str], encrypted_meta: bytes | None) -> tuple[Conversation, bool]:
    """Create a conversation with the creator as admin. A direct conversation is unique per
    pair: asking again returns the existing one (created=False)."""
    others = _users_by_name(m for m in members if m != creator.username)
    if kind == Conversation.Kind.DIRECT and len(others) != 1:
        raise errors.InvalidRequest("A direct conversation has exactly one other member.")
    if not others:
        raise errors.InvalidRequest("A conversation needs at least one other member.")
    if len(others) + 1 > MAX_GROUP_MEMBERS:
        raise errors.InvalidRequest(f"A group has at most {MAX_GROUP_MEMBERS} members.")
    direct_key = None
    if kind == Conversation.Kind.DIRECT:
        other = next(iter(others.values()))
        low, high = sorted([creator.pk, other.pk])
        direct_key = f"{low}:{high}"
        existing = Conversation.objects.filter(direct_key=direct_key).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            conversation = Conversation.objects.create(
                kind=kind, direct_key=direct_key, created_by=creator, encrypted_meta=encrypted_meta
            )
            Participant.objects.create(conversation=conversation, user=creator, role=Participant.Role.ADMIN)
            Participant.objects.bulk_create(
                [Participant(conversation=conversation, user=u, role=Participant.Role.MEMBER) for u in others.values()]
            )
            _notify_conversation_changed(conversation, [u.pk for u in others.values()])
    except IntegrityError:
        existing = Conversation.objects.filter(direct_key=direct_key).first() if direct_key else None
        if existing is None:
            raise
        return existing, False
    return conversation, True


def _require_admin(conversation: Conversation, user: Any) -> None:
    if not conversation.participants.filter(user=user, role=Participant.Role.ADMIN).exists():
        raise errors.NotAdmin()


def conversation_members_add(*, actor: Any, conversation_id: Any, usernames: list[str]) -> Conversation:
    conversation = conversation_get_for_user(user=actor, conversation_id=conversation_id)
    _require_admin(conversation, actor)
    if conversation.kind == Conversation.Kind.DIRECT:
        raise errors.InvalidRequest("Members cannot be added to a direct conversation; create a group.")
    users = _users_by_name(usernames)
    with transaction.atomic():
        present = set(conversation.participants.values_list("user_id", flat=True))
        new = [u for u in users.values() if u.pk not in present]
        if len(present) + len(new) > MAX_GROUP_MEMBERS:
            raise errors.InvalidRequest(f"A group has at most {MAX_GROUP_MEMBERS} members.")
        Participant.objects.bulk_create([Participant(conversation=conversation, user=u) for u in new])
        _notify_conversation_changed(conversation, present | {u.pk for u in new})
    return conversation


def conversation_member_remove(*, actor: Any, conversation_id: Any, username: str) -> None:
    """An admin removes anyone; anyone removes themself (leaves). The last admin to leave hands
    the role to the longest-standing member."""
    conversation = conversation_get_for_user(user=actor, conversation_id=conversation_id)
    if username != actor.username:
        _require_admin(conversation, actor)
    with transaction.atomic():
        target = conversation.participants.filter(user__username=username).first()
        if target is None:
            raise errors.UserNotFound(extra={"users": [username]})
        before = _participant_user_pks(conversation)
        target.delete()
        remaining = conversation.participants.order_by("joined_at", "id")
        if remaining.exists() and not remaining.filter(role=Participant.Role.ADMIN).exists():
            first = remaining.first()
            Participant.objects.filter(pk=first.pk).update(role=Participant.Role.ADMIN)
        _notify_conversation_changed(conversation, before)


def conversation_timer_set(*, actor: Any, conversation_id: Any, seconds: int | None) -> Conversation:
    conversation = conversation_get_for_user(user=actor, conversation_id=conversation_id)
    with transaction.atomic():
        Conversation.objects.filter(pk=conversation.pk).update(disappearing_seconds=seconds)
        conversation.disappearing_seconds = seconds
        _notify_conversation_changed(conversation, _participant_user_pks(conversation))
    return conversation


# --- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipientInput:
    user_id: str
    device_id: int
    ciphertext: bytes


def _send_answer(message: Message) -> dict[str, Any]:
    return {"id": str(message.public_id), "seq": message.seq, "created_at": iso(message.created_at), "expires_at": iso(message.expires_at)}


def _replay(sender_device: Device, client_message_id: uuid.UUID, conversation: Conversation) -> dict[str, Any] | None:
    existing = Message.objects.filter(sender_device=sender_device, client_message_id=client_message_id).first()
    if existing is None:
        return None
    if existing.conversation_id != conversation.pk:
        raise Conflict("This client_message_id was already used in another conversation.")
    return _send_answer(existing)


def _check_coverage(conversation: Conversation, sender_device: Device, recipients: list[RecipientInput]) -> dict[tuple[str, int], int]:
    """Map (username, device_id) → device pk if the recipients are exactly the current devices
    of every other participant plus the sender's other devices; else 409 with both lists."""
    rows = Device.objects.filter(
        user__participations__conversation=conversation, revoked_at__isnull=True, identity_key__isnull=False
    ).values_list("pk", "user__username", "device_id")
    expected = {(username, did): pk for pk, username, did in rows if pk != sender_device.pk}
    given = [(r.user_id, r.device_id) for r in recipients]
    if len(set(given)) != len(given):
        raise errors.InvalidRequest("Each recipient device may appear only once.")
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        raise errors.DeviceMismatch(
            extra={
                "missing": [{"user_id": u, "device_id": d} for u, d in missing],
                "extra": [{"user_id": u, "device_id": d} for u, d in extra],
            }
        )
    return expected


def _referenced(conversation: Conversation, message_id: Any) -> Message:
    public_id = _uuid(message_id)
    target = Message.objects.filter(public_id=public_id, conversation=conversation).first() if public_id else None
    if target is None:
        raise errors.MessageNotFound()
    return target


def _next_seq(conversation_pk: int, now: datetime) -> tuple[int, int | None, int] | None:
    """Take the next sequence number: one UPDATE … RETURNING that also holds the row lock until
    commit (PostgreSQL), so Delivery ids follow seq order; SQLite's IMMEDIATE transactions
    already serialise writers. → (seq, timer, roster version), None if the conversation is gone."""
    table = Conversation._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_seq = last_seq + 1, last_activity_at = %s WHERE id = %s RETURNING last_seq, disappearing_seconds, roster_version",
            [now, conversation_pk],
        )
        return cursor.fetchone()


def _check_roster_locked(conversation: Conversation, sender_device: Device, recipients: list[RecipientInput], version: int) -> dict[tuple[str, int], int] | None:
    """message_send's checks of the sender and the recipients again, now that the conversation's
    row is locked, when they may have changed since they were made: on PostgreSQL when the
    roster version moved (every change raises it, in its own transaction), on SQLite always
    (the first checks ran before the transaction began). No device, member or conversation can
    be deleted while the lock is held (messaging.deletion), and the database keeps no foreign
    key to refuse a copy for one deleted before (messaging.models.Message). → the recipients'
    device pks as _check_coverage maps them, None if nothing can have changed."""
    if connection.vendor == "postgresql" and version == conversation.roster_version:
        return None
    if not Device.objects.filter(pk=sender_device.pk, user__participations__conversation=conversation).exists():
        raise errors.ConversationNotFound()
    return _check_coverage(conversation, sender_device, recipients)


def message_send(
    *,
    sender_device: Device,
    conversation_id: Any,
    client_message_id: uuid.UUID,
    recipients: list[RecipientInput],
    kind: str = Message.Kind.MESSAGE,
    reply_to: Any = None,
    reaction_to: Any = None,
    expires_in: int | None = None,
    attachments: list[str] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store one envelope (one ciphertext per recipient device) with the next sequence number,
    then nudge the recipient devices. The same (device, client_message_id) is stored once: a
    repeat returns the first answer and created=False."""
    sender = sender_device.user
    conversation = conversation_get_for_user(user=sender, conversation_id=conversation_id)
    # A retry of a stored envelope is answered as before, ahead of every check that could now
    # refuse it: devices changed since, or the rate limit spent (a retry costs no token).
    answer = _replay(sender_device, client_message_id, conversation)
    if answer is not None:
        return answer, False
    cap = settings.MAX_CIPHERTEXT_BYTES
    if any(len(r.ciphertext) > cap for r in recipients):
        raise errors.CiphertextTooLarge(extra={"max_bytes": cap})
    targets = _check_coverage(conversation, sender_device, recipients)
    if settings.RATE_LIMITS_ENABLED:
        for other_pk in _participant_user_pks(conversation):
            if other_pk != sender.pk:
                ratelimit.hit("message", sender.pk, other_pk)
    if kind == Message.Kind.REACTION and reaction_to is None:
        raise errors.InvalidRequest("A reaction names the message it reacts to (reaction_to).")
    reply = _referenced(conversation, reply_to) if reply_to is not None else None
    target = _referenced(conversation, reaction_to) if reaction_to is not None else None
    if target is not None and target.deleted_at is not None:
        raise errors.MessageNotFound()  # a deleted message takes no more reactions
    try:
        with transaction.atomic():
            now = timezone.now()
            taken = _next_seq(conversation.pk, now)
            if taken is None:
                raise errors.ConversationNotFound()
            seq, timer, version = taken
            rechecked = _check_roster_locked(conversation, sender_device, recipients, version)
            targets = targets if rechecked is None else rechecked
            lifetime = expires_in or timer
            message = Message.objects.create(
                conversation=conversation,
                seq=seq,
                sender_user=sender,
                sender_device=sender_device,
                client_message_id=client_message_id,
                kind=kind,
                reply_to=reply,
                reaction_to=target,
                expires_at=now + timedelta(seconds=lifetime) if lifetime else None,
            )
            Delivery.objects.bulk_create(
                [Delivery(message=message, device_id=targets[(r.user_id, r.device_id)], ciphertext=r.ciphertext) for r in recipients]
            )
            if target is not None:
                Reaction.objects.update_or_create(message=target, user=sender, defaults={"envelope": message})
            if attachments:
                linked = Media.objects.filter(
                    token__in=attachments, conversation=conversation, uploader_user=sender, message__isnull=True
                ).update(message=message)
                if linked != len(set(attachments)):
                    raise errors.MediaNotFound()
            publish([device_group(pk) for pk in targets.values()], NUDGE)
    except IntegrityError:
        answer = _replay(sender_device, client_message_id, conversation)
        if answer is None:
            raise
        return answer, False
    message.conversation = conversation
    return _send_answer(message), True


# --- receipts -----------------------------------------------------------------------------


def _receipt(message_public_id: Any, conversation_public_id: Any, device: Device, status: str, **more: Any) -> dict[str, Any]:
    frame = {
        "type": "receipt",
        "message_id": str(message_public_id),
        "conversation_id": str(conversation_public_id),
        "user_id": device.user.username,
        "device_id": device.device_id,
        "status": status,
    }
    frame.update(more)
    return frame


def deliveries_ack(*, device: Device, message_ids: list[Any]) -> tuple[list[int], list[str]]:
    """Mark this device's copies delivered and drop their ciphertext; the senders' devices get a
    delivered receipt. Returns (acknowledged delivery pks, ids that are not this device's)."""
    wanted = {u for u in (_uuid(m) for m in message_ids) if u is not None}
    rows = list(
        Delivery.objects.filter(device=device, message__public_id__in=wanted).values_list(
            "pk", "delivered_at", "message__public_id", "message__conversation__public_id", "message__sender_user_id"
        )
    )
    unknown = sorted({str(m) for m in message_ids} - {str(r[2]) for r in rows})
    fresh = [r for r in rows if r[1] is None]
    if fresh:
        with transaction.atomic():
            Delivery.objects.filter(pk__in=[r[0] for r in fresh], delivered_at__isnull=True).update(
                delivered_at=timezone.now(), ciphertext=None
            )
            for _, _, message_id, conversation_id, sender_pk in fresh:
                if sender_pk and sender_pk != device.user_id:
                    publish([user_group(sender_pk)], _event(_receipt(message_id, conversation_id, device, "delivered")))
    return [r[0] for r in rows], unknown


def deliveries_ack_sent(*, device: Device, sent: list[tuple[int, str, str, int | None]]) -> None:
    """The socket's fast path: acknowledge envelopes it sent on this connection, known by
    (delivery pk, message id, conversation id, sender user pk): one UPDATE, then receipts."""
    Delivery.objects.filter(pk__in=[pk for pk, _, _, _ in sent], device=device, delivered_at__isnull=True).update(
        delivered_at=timezone.now(), ciphertext=None
    )
    for _, message_id, conversation_id, sender_pk in sent:
        if sender_pk and sender_pk != device.user_id:
            publish([user_group(sender_pk)], _event(_receipt(message_id, conversation_id, device, "delivered")))


@functools.cache
def _ack_sql() -> str:
    return (
        f"UPDATE {Delivery._meta.db_table} AS d SET delivered_at = %s, ciphertext = NULL "
        "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, device) WHERE d.id = v.id AND d.device_id = v.device AND d.delivered_at IS NULL"
    )


def ack_statement(acks: list[tuple[Device, list[tuple[int, str, str, int | None]]]]) -> tuple[str, list[Any]]:
    """deliveries_ack_sent_many's UPDATE on PostgreSQL as (SQL, parameters), also for a caller
    that runs it on a connection of its own (the relay, on its event loop, which never touches
    Django's `connection`: each task's context would build a DatabaseWrapper of its own,
    measured as most of the relay's garbage). Planned on every call (run it with
    prepare=False), unlike the group commit's statements: it reads the deliveries table, which
    grows between statistics updates, and a plan cached while that table was small scans all of
    it (measured: PostgreSQL's CPU climbing through a 30 s run)."""
    pks = [pk for _, sent in acks for pk, _, _, _ in sent]  # each copy with its own device
    return _ack_sql(), [timezone.now(), pg_array(pks), pg_array([device.pk for device, sent in acks for _ in sent])]


def ack_receipts(acks: list[tuple[Device, list[tuple[int, str, str, int | None]]]]) -> list[tuple[str, dict[str, Any]]]:
    """The "delivered" receipts of acknowledged copies, for their senders (none to oneself)."""
    return [
        (user_group(sender_pk), _event(_receipt(message_id, conversation_id, device, "delivered")))
        for device, sent in acks
        for _, message_id, conversation_id, sender_pk in sent
        if sender_pk and sender_pk != device.user_id
    ]


def deliveries_ack_sent_many(*, acks: list[tuple[Device, list[tuple[int, str, str, int | None]]]]) -> None:
    """deliveries_ack_sent for many sockets at once: one UPDATE for every acknowledged copy
    (each pk paired with the device it was sent to), then the receipts."""
    if not any(sent for _, sent in acks):
        return
    if connection.vendor == "postgresql":  # no ORM compile per batch
        statement = ack_statement(acks)
        with _bound_cursor(statement[0]) as cursor:
            cursor.execute(*statement, prepare=False)
    else:
        Delivery.objects.filter(
            pk__in=[pk for _, sent in acks for pk, _, _, _ in sent], device_id__in={device.pk for device, _ in acks}, delivered_at__isnull=True
        ).update(delivered_at=timezone.now(), ciphertext=None)
    publish_each(ack_receipts(acks))


def message_delivered(*, device: Device, message_id: Any) -> None:
    message = message_get_for_user(user=device.user, message_id=message_id)
    deliveries_ack(device=device, message_ids=[message.public_id])


def _mark_read(device: Device, conversation: Conversation, up_to_seq: int) -> None:
    with transaction.atomic():
        Participant.objects.filter(conversation=conversation, user_id=device.user_id, last_read_seq__lt=up_to_seq).update(
            last_read_seq=up_to_seq
        )
        if not privacy_get(user_pk=device.user_id).read_receipts:
            return  # read state stays private: no read_at others could see, no events
        rows = list(
            Delivery.objects.filter(
                device=device, read_at__isnull=True, message__conversation=conversation, message__seq__lte=up_to_seq
            ).values_list("pk", "message__seq", "message__public_id", "message__sender_user_id")
        )
        if not rows:
            return
        Delivery.objects.filter(pk__in=[r[0] for r in rows]).update(read_at=timezone.now())
        # One receipt per sender: their latest message now read (everything before it is read too).
        latest: dict[int, tuple[int, Any]] = {}
        for _, seq, public_id, sender_pk in rows:
            if sender_pk and sender_pk != device.user_id and seq >= latest.get(sender_pk, (-1, None))[0]:
                latest[sender_pk] = (seq, public_id)
        for sender_pk, (seq, public_id) in latest.items():
            frame = _receipt(public_id, conversation.public_id, device, "read", up_to_seq=seq)
            publish([user_group(sender_pk)], _event(frame))


def message_read(*, device: Device, message_id: Any) -> Message:
    message = message_get_for_user(user=device.user, message_id=message_id)
    _mark_read(device, message.conversation, message.seq)
    return message


def conversation_mark_read(*, device: Device, conversation_id: Any, seq: int) -> int:
    conversation = conversation_get_for_user(user=device.user, conversation_id=conversation_id)
    up_to = min(seq, conversation.last_seq)
    _mark_read(device, conversation, up_to)
    return up_to


# --- delete for everyone ---------------------------------------------------------------------


def _remove_media_files(tokens: Iterable[str]) -> None:
    for token in tokens:
        try:
            media_path(token).unlink(missing_ok=True)
        except OSError:
            logger.warning("could not remove media blob %s…", token[:8])


def message_delete(*, device: Device, message_id: Any) -> Message:
    """Tombstone: the row stays (seq, times) but every ciphertext and attachment goes,
    undelivered copies are dropped, the reactions to it go entirely (their envelopes, per-device
    ciphertexts and attachments), and every participant is told."""
    message = message_get_for_user(user=device.user, message_id=message_id)
    if message.sender_user_id != device.user_id:
        raise errors.NotSender()
    if message.deleted_at is not None:
        return message
    with transaction.atomic():
        message.deleted_at = timezone.now()
        Message.objects.filter(pk=message.pk).update(deleted_at=message.deleted_at)
        Delivery.objects.filter(message=message, delivered_at__isnull=True).delete()
        Delivery.objects.filter(message=message).update(ciphertext=None)
        reactions = list(Message.objects.filter(reaction_to=message).values_list("pk", flat=True))
        media = Media.objects.filter(Q(message=message) | Q(message_id__in=reactions))
        tokens = list(media.values_list("token", flat=True))
        media.delete()
        # Deleting the reaction envelopes cascades to their Delivery and Reaction rows.
        Message.objects.filter(pk__in=reactions).delete()
        Reaction.objects.filter(message=message).delete()
        transaction.on_commit(lambda: _remove_media_files(tokens))
        frame = {"type": "deleted", "message_id": str(message.public_id), "conversation_id": str(message.conversation.public_id)}
        publish([user_group(pk) for pk in _participant_user_pks(message.conversation)], _event(frame))
    return message


# --- typing, presence, privacy --------------------------------------------------------------


def typing_send(*, device: Device, conversation_id: Any, state: str) -> None:
    """Ephemeral: straight to the participants' live sockets, never stored or queued."""
    conversation = conversation_get_for_user(user=device.user, conversation_id=conversation_id)
    frame = {
        "type": "typing",
        "conversation_id": str(conversation.public_id),
        "user_id": device.user.username,
        "device_id": device.device_id,
        "state": state,
        "expires_in": TYPING_TTL_SECONDS,
    }
    publish([user_group(pk) for pk in _participant_user_pks(conversation)], _event(frame, skip_device=device.pk))


def presence_publish(*, device: Device, online: bool) -> None:
    """Record this device's presence and tell the people who share a conversation with its
    user (unless the user hides presence)."""
    if online:
        presence.device_online(user_pk=device.user_id, device_pk=device.pk)
    else:
        presence.device_offline(user_pk=device.user_id, device_pk=device.pk)
    if not privacy_get(user_pk=device.user_id).presence:
        return
    state = presence.presence_of(devices_by_user={device.user_id: active_device_ids(user_ids=[device.user_id])[device.user_id]})
    is_online, last_seen = state[device.user_id]
    frame = {
        "type": "presence",
        "user_id": device.user.username,
        "online": is_online,
        "last_seen": iso(datetime.fromtimestamp(last_seen, tz=UTC)) if last_seen else None,
    }
    audience = co_participant_user_pks(user_pk=device.user_id) - {device.user_id}
    publish([user_group(pk) for pk in audience], _event(frame))


def privacy_set(*, user: Any, read_receipts: bool | None = None, presence: bool | None = None) -> PrivacySettings:
    current, _ = PrivacySettings.objects.get_or_create(user=user)
    if read_receipts is not None:
        current.read_receipts = read_receipts
    if presence is not None:
        current.presence = presence
    current.save()
    return current


# --- media ----------------------------------------------------------------------------------


def media_path(token: str) -> Path:
    return Path(settings.MEDIA_ROOT) / token[:2] / token


def media_store(*, device: Device, conversation_id: Any, stream: IO[bytes], content_length: int | None) -> Media:
    """Stream an encrypted blob to a temporary file and rename it into place only when it is
    complete and under the cap; above the cap nothing is kept (413)."""
    conversation = conversation_get_for_user(user=device.user, conversation_id=conversation_id)
    cap = settings.MAX_MEDIA_BYTES
    if content_length is not None and content_length > cap:
        raise errors.MediaTooLarge(extra={"max_bytes": cap})
    ratelimit.hit("media", device.user_id)
    token = secrets.token_urlsafe(32)
    final = media_path(token)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=final.parent)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(64 * 1024):
                size += len(chunk)
                if size > cap:
                    raise errors.MediaTooLarge(extra={"max_bytes": cap})
                out.write(chunk)
        if size == 0:
            raise errors.InvalidRequest("The blob is empty.")
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:
        return Media.objects.create(token=token, conversation=conversation, uploader_device=device, uploader_user=device.user, size=size)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


# --- calls ----------------------------------------------------------------------------------


def call_signal(
    *,
    device: Device,
    conversation_id: Any,
    action: str,
    to: list[tuple[str, int]],
    payload: str,
    call_id: Any = None,
    media: str | None = None,
) -> Call:
    """Record the call's state and forward the opaque payload to the addressed devices that
    belong to participants; other addresses are dropped."""
    conversation = conversation_get_for_user(user=device.user, conversation_id=conversation_id)
    now = timezone.now()
    with transaction.atomic():
        if call_id is None:
            if action != "offer":
                raise errors.InvalidRequest("Only an offer may start a call without call_id.")
            call = Call.objects.create(
                conversation=conversation, caller_device=device, caller_user=device.user, kind=media or Call.Kind.AUDIO
            )
        else:
            public_id = _uuid(call_id)
            call = Call.objects.select_for_update().filter(public_id=public_id, conversation=conversation).first() if public_id else None
            if call is None:
                raise errors.CallNotFound()
            update: dict[str, Any] = {}
            if action == "answer" and call.status == Call.Status.RINGING:
                update = {"status": Call.Status.ANSWERED, "answered_at": now}
            elif action == "decline" and call.status == Call.Status.RINGING:
                update = {"status": Call.Status.DECLINED, "ended_at": now}
            elif action == "end" and call.status in (Call.Status.RINGING, Call.Status.ANSWERED):
                ended = Call.Status.ENDED if call.status == Call.Status.ANSWERED else Call.Status.MISSED
                update = {"status": ended, "ended_at": now}
            if update:
                Call.objects.filter(pk=call.pk).update(**update)
                for name, value in update.items():
                    setattr(call, name, value)
        participants = dict(conversation.participants.values_list("user__username", "user_id"))
        addressed = Q(pk__in=[])
        for username, device_id in to:
            if username in participants:
                addressed |= Q(user_id=participants[username], device_id=device_id)
        targets = list(Device.objects.filter(addressed, revoked_at__isnull=True).exclude(pk=device.pk).values_list("pk", flat=True))
        frame = {
            "type": "call",
            "call_id": str(call.public_id),
            "conversation_id": str(conversation.public_id),
            "action": action,
            "media": call.kind,
            "from": {"user_id": device.user.username, "device_id": device.device_id},
            "payload": payload,
        }
        publish([device_group(pk) for pk in targets], _event(frame))
    return call


# --- queue cap and purge ----------------------------------------------------------------------


def device_queue_trim(*, device_pk: int | None = None, cap: int | None = None) -> int:
    """Drop the oldest undelivered envelopes of every device (or one) above the cap and remember
    how many, to tell the device when it next connects."""
    cap = device_queue_cap() if cap is None else cap
    pending = Delivery.objects.filter(delivered_at__isnull=True)
    if device_pk is not None:
        pending = pending.filter(device_id=device_pk)
    over = list(pending.values("device_id").annotate(n=Count("pk")).filter(n__gt=cap).values_list("device_id", "n"))
    trimmed = 0
    for dev_pk, n in over:
        with transaction.atomic():
            oldest = list(
                Delivery.objects.filter(device_id=dev_pk, delivered_at__isnull=True).order_by("id").values_list("pk", flat=True)[: n - cap]
            )
            dropped = Delivery.objects.filter(pk__in=oldest).delete()[0]
            DeviceQueue.objects.get_or_create(device_id=dev_pk)
            DeviceQueue.objects.filter(device_id=dev_pk).update(trimmed_unreported=F("trimmed_unreported") + dropped)
        trimmed += dropped
    return trimmed


def device_queue_take_trimmed(*, device_pk: int) -> int:
    """How many envelopes were trimmed since the device was last told; resets the count."""
    with transaction.atomic():
        queue = DeviceQueue.objects.select_for_update().filter(device_id=device_pk).first()
        if queue is None or not queue.trimmed_unreported:
            return 0
        count = queue.trimmed_unreported
        DeviceQueue.objects.filter(device_id=device_pk).update(trimmed_unreported=0)
        return count


def _delete_media(qs: Any) -> int:
    tokens = list(qs.values_list("token", flat=True))
    removed = qs.model.objects.filter(token__in=tokens).delete()[0]
    _remove_media_files(tokens)
    return removed


def messages_purge_expired(*, now: datetime, batch_size: int = 1000) -> int:
    """Physically delete expired messages (rows, per-device ciphertexts, reactions, media
    blobs), undelivered ciphertexts older than 30 days, media older than 30 days, and trim
    device queues over the cap; in bounded batches. Returns how many rows went."""
    removed = 0
    while True:
        ids = list(Message.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        removed += _delete_media(Media.objects.filter(message_id__in=ids))
        removed += Message.objects.filter(pk__in=ids).delete()[0]
    while True:
        ids = list(
            Delivery.objects.filter(delivered_at__isnull=True, created_at__lte=now - UNDELIVERED_TTL).values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            break
        removed += Delivery.objects.filter(pk__in=ids).delete()[0]
    while True:
        tokens = list(Media.objects.filter(created_at__lte=now - MEDIA_TTL).values_list("token", flat=True)[:batch_size])
        if not tokens:
            break
        removed += _delete_media(Media.objects.filter(token__in=tokens))
    removed += device_queue_trim()
    return removed


# --- the relay's group commit -------------------------------------------------------------------


@dataclass
class BatchSend:
    """One socket send waiting for the next group commit."""

    sender_device: Device
    conversation_id: str
    client_message_id: uuid.UUID
    recipients: list[RecipientInput]
    kind: str = Message.Kind.MESSAGE
    expires_in: int | None = None
    # filled in by messages_send_batch
    answer: dict[str, Any] | None = None
    error: BaseException | None = None
    # (recipient device pk, delivery pk, frame) of a stored envelope, for live sockets
    pushes: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    counted: bool = False  # its rate limits were hit already (it can be partitioned twice)


def _lock_and_take_seqs(counts: dict[int, int], now: datetime) -> dict[int, tuple[int, int | None]]:
    """Take k sequence numbers per conversation, in id order (so two batches never deadlock);
    each row stays locked until commit like _next_seq. → pk: (last seq, timer). The portable
    group commit's; on PostgreSQL _store_batch_statement does this inside its one statement."""
    table = Conversation._meta.db_table
    out = {}
    with connection.cursor() as cursor:
        for pk in sorted(counts):
            cursor.execute(
                f"UPDATE {table} SET last_seq = last_seq + %s, last_activity_at = %s WHERE id = %s RETURNING last_seq, disappearing_seconds",
                [counts[pk], now, pk],
            )
            out[pk] = cursor.fetchone()
    return out


def _send_one_by_one(items: list[BatchSend]) -> None:
    for item in items:
        try:
            item.answer, _ = message_send(
                sender_device=item.sender_device,
                conversation_id=item.conversation_id,
                client_message_id=item.client_message_id,
                recipients=item.recipients,
                kind=item.kind,
                expires_in=item.expires_in,
            )
        except Exception as exc:  # noqa: BLE001 - handed back to the socket that sent it
            item.error = exc


# members by conversation public id, devices by conversation pk, stored repeats, and (PostgreSQL)
# each conversation's roster version as the look-up read it, by pk
Lookups = tuple[dict[Any, tuple[int, set[int]]], dict[int, list[tuple[int, str, int]]], set[tuple[int, Any]], dict[int, int]]


def _batch_lookups(items: list[BatchSend]) -> Lookups:
    """What messages_send_batch checks against, for a whole batch: conversation public id →
    (pk, member user pks); conversation pk → its members' active devices (pk, username,
    device id); the (sender device pk, client message id) pairs already stored; on PostgreSQL
    conversation pk → roster version, read in the same statement."""
    if connection.vendor == "postgresql":
        sql, params = _batch_lookup_statement(items)
        with _bound_cursor(sql) as cursor:
            cursor.execute(sql, params)
            return _batch_lookup_results(cursor.fetchall())
    public_ids = {_uuid(i.conversation_id) for i in items} - {None}
    members: dict[Any, tuple[int, set[int]]] = {}
    devices: dict[int, list[tuple[int, str, int]]] = {}
    for public_id, conv_pk, user_pk in Participant.objects.filter(conversation__public_id__in=public_ids).values_list(
        "conversation__public_id", "conversation_id", "user_id"
    ):
        members.setdefault(public_id, (conv_pk, set()))[1].add(user_pk)
    for conv_pk, pk, username, did in Device.objects.filter(
        user__participations__conversation_id__in=[pk for pk, _ in members.values()], revoked_at__isnull=True, identity_key__isnull=False
    ).values_list("user__participations__conversation_id", "pk", "user__username", "device_id"):
        devices.setdefault(conv_pk, []).append((pk, username, did))
    return members, devices, _stored_repeats(items), {}


def _stored_repeats(items: list[BatchSend]) -> set[tuple[int, Any]]:
    """The portable form of _repeats_sql: the (sender device pk, client message id) pairs of
    `items` already stored, each device asked only for its own ids (the two sets asked
    separately probe every combination, as on PostgreSQL), at most 200 devices a query."""
    ids: dict[int, set[Any]] = {}
    for item in items:
        ids.setdefault(item.sender_device.pk, set()).add(item.client_message_id)
    senders = list(ids)
    seen: set[tuple[int, Any]] = set()
    for start in range(0, len(senders), 200):
        pairs = Q()
        for pk in senders[start : start + 200]:
            pairs |= Q(sender_device_id=pk, client_message_id__in=ids[pk])
        seen.update(Message.objects.filter(pairs).values_list("sender_device_id", "client_message_id"))
    return seen


def _members_devices_sql() -> str:
    """For each participant row `p`: its user `u` and each of that user's current devices `d`
    (not revoked, with an identity key; NULL columns when there is none). The roster triggers
    (migration 0004) raise a conversation's roster_version when any row read here changes."""
    u, d, ik = get_user_model()._meta.db_table, Device._meta.db_table, IdentityKey._meta.db_table
    return (
        f"JOIN {u} u ON u.id = p.user_id LEFT JOIN LATERAL (SELECT d.id, d.device_id FROM {d} d WHERE d.user_id = p.user_id "
        f"AND d.revoked_at IS NULL AND EXISTS (SELECT 1 FROM {ik} ik WHERE ik.device_id = d.id)) d ON true"
    )


@functools.cache
def _batch_lookup_sql() -> str:
    c, p = Conversation._meta.db_table, Participant._meta.db_table
    return (
        f"SELECT c.public_id, c.id, p.user_id, d.id, u.username, d.device_id, NULL::uuid, c.roster_version FROM {c} c JOIN {p} p ON p.conversation_id = c.id "
        f"{_members_devices_sql()} WHERE c.public_id = ANY(%s::uuid[]) "
        f"UNION ALL SELECT NULL, NULL, NULL, m.sender_device_id, NULL, NULL, m.client_message_id, NULL FROM {_repeats_sql('%s', '%s')}"
    )


def _repeats_sql(devices: str, keys: str) -> str:
    """The stored messages whose (sender device, client message id) is one of the pairs given
    as two arrays, as `… m`: matched pair by pair, one index probe each. Matching the two arrays
    separately (`= ANY(devices) AND = ANY(keys)`) probes every combination: 250,000 probes, most
    of a 500-send batch's statement time, measured."""
    return f"unnest({devices}::bigint[], {keys}::uuid[]) AS r(d, k) JOIN {Message._meta.db_table} m ON m.sender_device_id = r.d AND m.client_message_id = r.k"


def _batch_lookup_statement(items: list[BatchSend]) -> tuple[str, list[Any]]:
    """_batch_lookups on PostgreSQL as one statement, no ORM query compiled per batch: the
    members with their active devices (a member without one comes back once, with NULL device
    columns) and the conversation's roster version, then the repeats (rows with a NULL
    conversation)."""
    public_ids = list({_uuid(i.conversation_id) for i in items} - {None})
    return _batch_lookup_sql(), [pg_array(public_ids), pg_array([i.sender_device.pk for i in items]), pg_array([i.client_message_id for i in items])]


def _batch_lookup_results(rows: list[tuple[Any, ...]]) -> Lookups:
    members: dict[Any, tuple[int, set[int]]] = {}
    devices: dict[int, list[tuple[int, str, int]]] = {}
    seen: set[tuple[int, Any]] = set()
    versions: dict[Any, int] = {}
    for public_id, conv_pk, user_pk, device_pk, username, device_id, client_message_id, version in rows:
        if public_id is None:
            seen.add((device_pk, client_message_id))
            continue
        members.setdefault(public_id, (conv_pk, set()))[1].add(user_pk)
        versions[public_id] = version
        if device_pk is not None:
            devices.setdefault(conv_pk, []).append((device_pk, username, device_id))
    _remember(versions, members, devices)
    return members, devices, seen, {members[public_id][0]: version for public_id, version in versions.items()}


# --- what this process last found of a conversation (PostgreSQL) --------------------------------
#
# The look-up is a round trip, a statement and a hand-back per batch, and what it reads (members
# and their current devices) rarely changes. The process keeps what it last found, per
# conversation, with the conversation's roster version read in the same snapshot, and a batch of
# known conversations skips the look-up: it is partitioned against what was found, and its store
# statement checks, under the conversations' row locks, that each roster version is still the
# one found (a send repeating a stored one is refused by the idempotency index, and the batch
# is looked up again, which finds it). The roster triggers (migration 0004) raise the
# version on any change to a participant, a member's device, its identity key or a username, in
# the transaction that makes it. If anything differs nothing is stored (no sequence number
# taken), the conversation is forgotten, and the batch takes the look-up as before. What is kept
# is never trusted, only checked. (Re-reading the members and devices to check them was about
# 40 % of the store's time per call, most of it PostgreSQL planning it; measured.)

Known = tuple[int, set[int], list[tuple[int, str, int]], int]  # conversation pk, members, devices, roster version

_known: dict[Any, Known] = {}
KNOWN_MAX = 10_000  # conversations; past it the memory starts again


def _remember(versions: dict[Any, int], members: dict[Any, tuple[int, set[int]]], devices: dict[int, list[tuple[int, str, int]]]) -> None:
    if len(_known) + len(versions) > KNOWN_MAX:
        _known.clear()
    for public_id, version in versions.items():  # kept as built: nothing changes them after the look-up
        conv_pk, users = members[public_id]
        _known[public_id] = (conv_pk, users, devices.get(conv_pk, []), version)


def _forget(fast: list[FastSend]) -> None:
    for item, _, _ in fast:
        _known.pop(_uuid(item.conversation_id), None)


def _known_lookups(items: list[BatchSend]) -> Lookups | None:
    """_batch_lookups from what was last found, when every conversation of the batch is known
    (its roster versions are what the store must check), else None."""
    members: dict[Any, tuple[int, set[int]]] = {}
    devices: dict[int, list[tuple[int, str, int]]] = {}
    versions: dict[int, int] = {}
    for item in items:
        public_id = _uuid(item.conversation_id)
        known = _known.get(public_id)
        if known is None:
            return None
        conv_pk, users, conv_devices, versions[conv_pk] = known
        members[public_id], devices[conv_pk] = (conv_pk, users), conv_devices
    return members, devices, set(), versions


FastSend = tuple[BatchSend, int, dict[tuple[str, int], int]]  # (item, conversation pk, (user id, device id) → device pk)


def message_limit_buckets(item: BatchSend, member_pks: Iterable[int]) -> list[tuple[int, int]]:
    """The "message" rate limit's buckets a send counts against: sender and each other member."""
    return [(item.sender_device.user_id, pk) for pk in member_pks if pk != item.sender_device.user_id]


def _batch_partition(
    items: list[BatchSend],
    members: dict[Any, tuple[int, set[int]]],
    devices: dict[int, list[tuple[int, str, int]]],
    seen: set[tuple[int, Any]],
    count: bool = True,
) -> tuple[list[FastSend], list[BatchSend]]:
    """Which sends the group commit stores (member, every current device covered once, sizes
    within the cap, under the rate limit, not a repeat) and which go through message_send on
    their own (it answers a repeat, a not-found or a mismatch exactly as a single send would).
    A send over the rate limit gets its error here and is in neither list (`count=False`: the
    caller counts the rate limit)."""
    cap = settings.MAX_CIPHERTEXT_BYTES
    fast: list[FastSend] = []
    slow: list[BatchSend] = []
    for item in items:
        key = (item.sender_device.pk, item.client_message_id)
        conv = members.get(_uuid(item.conversation_id))
        if key in seen or conv is None or item.sender_device.user_id not in conv[1] or any(len(r.ciphertext) > cap for r in item.recipients):
            slow.append(item)  # a repeat, not-found or too large: message_send answers it
            continue
        seen.add(key)
        expected = {(u, d): pk for pk, u, d in devices.get(conv[0], []) if pk != item.sender_device.pk}
        given = [(r.user_id, r.device_id) for r in item.recipients]
        if len(set(given)) != len(given) or set(given) != set(expected):
            slow.append(item)
            continue
        if count and settings.RATE_LIMITS_ENABLED and not item.counted:
            item.counted = True
            try:
                for bucket in message_limit_buckets(item, conv[1]):
                    ratelimit.hit("message", *bucket)
            except EnigmoError as exc:
                item.error = exc
                continue
        fast.append((item, conv[0], expected))
    return fast, slow


def _batch_refused(fast: list[FastSend]) -> list[BatchSend]:
    """The database refused the batch (a concurrent repeat hit the unique constraint): nothing
    of it was stored, and each send is answered on its own."""
    for item, _, _ in fast:
        item.answer, item.pushes = None, []
    return [item for item, _, _ in fast]


@dataclass
class KnownBatch:
    """A batch the group commit can check without reading the database (see known_batch)."""

    fast: list[FastSend]
    versions: dict[int, int]  # conversation pk → the roster version its store must find
    limits: list[tuple[BatchSend, list[tuple[int, int]]]]  # sends not yet counted against the "message" limit, with their buckets


def known_batch(items: list[BatchSend]) -> KnownBatch | None:
    """messages_send_batch's checks on PostgreSQL for a caller that runs the store statement on
    a connection of its own (the relay, on its event loop; see ack_statement), when they need no
    database read: every conversation known from an earlier look-up (_known, checked again by
    the statement), every send one the group commit stores. The "message" rate limit is left to
    the caller (`limits`): its store may be one the caller reaches without blocking. None:
    anything else, for messages_send_batch."""
    lookups = _known_lookups(items)
    if lookups is None:
        return None
    fast, slow = _batch_partition(items, *lookups[:3], count=False)
    if slow:
        return None
    members = lookups[0]
    limits = []
    if settings.RATE_LIMITS_ENABLED:
        limits = [(item, message_limit_buckets(item, members[_uuid(item.conversation_id)][1])) for item, _, _ in fast if not item.counted]
    return KnownBatch(fast, lookups[3], limits)


def known_batch_statement(batch: KnownBatch) -> tuple[str, dict[str, Any], Callable[[list[tuple[Any, ...]]], bool]]:
    """The store of a known batch (its sends refused by a rate limit left out) as one statement
    in its own transaction (run it outside any), and what answers the sends from its rows: False
    when nothing was stored because a roster changed since the look-up (the conversations are
    forgotten; messages_send_batch looks them up again)."""
    fast = [send for send in batch.fast if send[0].error is None]
    now = timezone.now()
    sql, params, public_ids = _store_batch_statement(fast, now, batch.versions)

    def answer(rows: list[tuple[Any, ...]]) -> bool:
        if not rows:
            _forget(fast)
            return False
        _batch_answer(fast, _store_batch_results(rows, public_ids, fast, now))
        return True

    return sql, params, answer


def messages_send_batch(*, items: list[BatchSend]) -> None:
    """Store many plain envelopes (no reply, reaction or attachment) in one transaction: the
    same checks as message_send (membership, coverage, size, rate limit, idempotency) with a
    few queries per batch instead of per envelope, k sequence numbers per conversation in one
    UPDATE, and one bulk insert each for messages and deliveries. On PostgreSQL that is two
    round trips per batch: the look-ups together, then one statement that stores it all (it
    was nine, each a wait for the database thread under load). Every item gets its answer
    (or error) only after the commit. Anything unusual — a repeat, a mismatch, a constraint
    race — goes through message_send on its own, which answers exactly as before."""
    if connection.vendor != "postgresql":
        _send_one_by_one(_send_batch_portable(items))
        return
    # The store always checks, under the conversations' row locks, that each roster version is
    # still the one its look-up read, whether that look-up was this batch's or an earlier one's
    # (_known): a member or device changed or deleted between the two stores nothing.
    lookups = _known_lookups(items)
    looked_up = lookups is None
    if lookups is None:
        lookups = _batch_lookups(items)
    fast, slow = _batch_partition(items, *lookups[:3])
    while fast and not _store_known(fast, lookups[3]):
        # A roster changed since the look-up, a send repeats a stored one, or PostgreSQL broke a
        # deadlock: nothing was stored. Look up what was remembered; after a fresh look-up,
        # each send on its own.
        _forget(fast)
        if looked_up:
            slow.extend(_batch_refused(fast))
            break
        again = [item for item, _, _ in fast]
        lookups, looked_up = _batch_lookups(again), True
        fast, more = _batch_partition(again, *lookups[:3])
        slow.extend(more)
    _send_one_by_one(slow)


def _send_batch_portable(items: list[BatchSend]) -> list[BatchSend]:
    """messages_send_batch on SQLite: the look-up and the store in one IMMEDIATE transaction, so
    no other writer (a delete) comes between them. → the sends to answer one by one."""
    with transaction.atomic():
        fast, slow = _batch_partition(items, *_batch_lookups(items)[:3])
        if fast:
            try:
                _store_batch(fast, {})
            except IntegrityError:  # a repeat the look-up missed: nothing stored, each on its own
                slow.extend(_batch_refused(fast))
    return slow


def _nothing_stored(exc: Exception) -> bool:
    """The store statement failed as a whole and can be tried another way: a repeat refused by
    the idempotency index, or PostgreSQL breaking a deadlock or a serialization conflict (a
    roster change by a statement that locks several conversations in its own order, as the
    admin's bulk delete of users does, can deadlock with the group commit's id order)."""
    return isinstance(exc, IntegrityError) or getattr(exc.__cause__, "sqlstate", None) in ("40P01", "40001")


def _store_known(fast: list[FastSend], versions: dict[int, int]) -> bool:
    """_store_batch checked against the roster versions a look-up read; False if nothing was
    stored because a roster changed since, because a send repeats a stored one (a look-up
    finds which), or because PostgreSQL broke a deadlock."""
    try:
        return _store_batch(fast, versions)
    except (IntegrityError, OperationalError) as exc:
        if not _nothing_stored(exc):
            raise
        return False


_cursors = threading.local()


def _pg_text_array(values: Iterable[str]) -> str:
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _pg_bytea_array(values: Iterable[bytes]) -> str:
    return "{" + ",".join('"\\\\x' + v.hex() + '"' for v in values) + "}"


@contextmanager
def _bound_cursor(sql: str) -> Iterator[Any]:
    """A psycopg cursor with server-side binding on the connection Django holds (inside its
    transaction), for running `sql` (one constant string): the arrays
    go to PostgreSQL as parameters instead of being quoted into the SQL text element by element
    in Python (client-side binding, Django's default, was ~10 % of the process under load).
    The cursor is kept per thread and statement, so psycopg reuses its adapters instead of
    building a new set for each call (each set was a reference cycle: garbage-collector work
    on every batch, measured). Errors are Django's, as from connection.cursor()."""
    import psycopg

    connection.ensure_connection()
    cache = getattr(_cursors, "by_sql", None)
    if cache is None or getattr(_cursors, "connection", None) is not connection.connection:
        cache = _cursors.by_sql = {}
        _cursors.connection = connection.connection
    cursor = cache.get(sql)
    if cursor is None or cursor.closed:
        cursor = cache[sql] = psycopg.Cursor(connection.connection)
    with connection.wrap_database_errors:
        yield cursor


_random_pool = threading.local()


def _random_uuids(n: int) -> list[str]:
    """n random (version 4) UUIDs as text. uuid4() reads the system's random source once per
    UUID, and each read lets go of the GIL: a database thread storing a batch waited for the
    event loop's thread once per message (measured: a tenth of that thread's samples under
    load). Here each thread reads 256 UUIDs' worth at a time and uses each byte once (a forked
    child reads its own)."""
    pool = getattr(_random_pool, "bytes", b"")
    if len(pool) < 16 * n or getattr(_random_pool, "pid", None) != os.getpid():
        pool, _random_pool.pid = os.urandom(16 * max(n, 256)), os.getpid()
    _random_pool.bytes = pool[16 * n :]
    # uuid.UUID(bytes=…, version=4) in text, without an object per id: the version nibble
    # becomes 4 and the variant's two top bits 10 (RFC 4122); the other 122 bits stay random.
    h = pool[: 16 * n].hex()
    return [
        f"{h[at : at + 8]}-{h[at + 8 : at + 12]}-4{h[at + 13 : at + 16]}-{_VARIANT[h[at + 16]]}{h[at + 17 : at + 20]}-{h[at + 20 : at + 32]}"
        for at in range(0, 32 * n, 32)
    ]


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


@functools.cache
def _store_batch_sql() -> str:
    """The group commit's statement. It stores only if the batch's conversations all still exist
    with the roster versions given (%(rv)s, in the order of %(pks)s), read from the locked rows,
    so a change committed since the look-up is seen (see _known), a deleted device or member
    too (the database has no foreign key to refuse it, messaging.models.Message). A repeat among the sends
    is refused by the idempotency index (IntegrityError, nothing stored): looking for repeats
    in the statement itself read the message table, and the plan PostgreSQL cached for that
    while the table was small scanned all of it as it grew (measured: 1.5 ms a batch)."""
    c, m, d = Conversation._meta.db_table, Message._meta.db_table, Delivery._meta.db_table
    # both arrays in id order; a conversation deleted meanwhile makes them differ too
    gate = "AND (SELECT array_agg(roster_version ORDER BY id) FROM locked) = %(rv)s::bigint[] "
    return (
        f"WITH locked AS MATERIALIZED (SELECT id, roster_version FROM {c} WHERE id = ANY(%(pks)s::bigint[]) ORDER BY id FOR UPDATE), "
        f"taken AS (UPDATE {c} AS c SET last_seq = c.last_seq + v.k, last_activity_at = %(now)s "
        f"FROM unnest(%(pks)s::bigint[], %(ks)s::bigint[]) AS v(id, k) WHERE c.id = v.id AND c.id IN (SELECT id FROM locked) {gate}"
        "RETURNING c.id, c.last_seq - v.k AS base, NULLIF(c.disappearing_seconds, 0) AS timer), "
        f"msg AS (INSERT INTO {m} (public_id, conversation_id, seq, sender_user_id, sender_device_id, client_message_id, kind, created_at, expires_at) "
        "SELECT t.p, t.c, taken.base + t.o, t.u, t.d, t.k, t.n, %(now)s, "
        "%(now)s + make_interval(secs => COALESCE(t.e, taken.timer)) "
        "FROM unnest(%(p)s::uuid[], %(c)s::bigint[], %(o)s::bigint[], %(u)s::bigint[], %(d)s::bigint[], %(k)s::uuid[], %(n)s::varchar[], %(e)s::bigint[]) "
        "AS t(p, c, o, u, d, k, n, e) JOIN taken ON taken.id = t.c RETURNING id, public_id, seq, expires_at), "
        f"dl AS (INSERT INTO {d} (message_id, device_id, ciphertext, created_at) SELECT msg.id, x.d, x.ct, %(now)s "
        "FROM unnest(%(dm)s::uuid[], %(dd)s::bigint[], %(dc)s::bytea[]) AS x(p, d, ct) JOIN msg ON msg.public_id = x.p "
        "RETURNING id, message_id, device_id) "
        # the messages' rows, then the deliveries' (matched in Python: a join of the two here was
        # planned as a nested loop over every pair, the CTEs being estimated at one row each)
        "SELECT msg.id, msg.public_id::text, msg.seq, msg.expires_at, NULL::bigint FROM msg UNION ALL SELECT dl.message_id, NULL, dl.id, NULL, dl.device_id FROM dl"
    )


def _store_batch_statement(fast: list[FastSend], now: datetime, versions: dict[int, int]) -> tuple[str, dict[str, Any], list[str]]:
    """The whole group commit as one PostgreSQL statement, so one round trip and, outside a
    transaction, its own: lock the batch's conversations in id order (two batches never deadlock), take
    k sequence numbers per conversation, insert the messages and their deliveries over unnest()
    arrays (bound server-side). → (SQL, parameters, the messages' public ids in item order)."""
    counts: dict[int, int] = {}
    ordinals = []
    for _, conv_pk, _ in fast:
        counts[conv_pk] = counts.get(conv_pk, 0) + 1
        ordinals.append(counts[conv_pk])
    pks = sorted(counts)
    public_ids = _random_uuids(len(fast))  # text: the statement returns them as text
    d_message, d_device, d_ciphertext = [], [], []
    for public_id, (item, _, expected) in zip(public_ids, fast, strict=True):
        for r in item.recipients:
            d_message.append(public_id)
            d_device.append(expected[(r.user_id, r.device_id)])
            d_ciphertext.append(r.ciphertext)
    params = {
        "pks": pg_array(pks),
        "ks": pg_array([counts[pk] for pk in pks]),
        "now": now,
        "p": pg_array(public_ids),
        "c": pg_array([conv_pk for _, conv_pk, _ in fast]),
        "o": pg_array(ordinals),
        "u": pg_array([item.sender_device.user_id for item, _, _ in fast]),
        "d": pg_array([item.sender_device.pk for item, _, _ in fast]),
        "k": pg_array([item.client_message_id for item, _, _ in fast]),
        "n": _pg_text_array([str(item.kind) for item, _, _ in fast]),
        "e": pg_array([item.expires_in for item, _, _ in fast]),
        "dm": pg_array(d_message),
        "dd": pg_array(d_device),
        "dc": _pg_bytea_array(d_ciphertext),
        "rv": pg_array([versions[pk] for pk in pks]),
    }
    return _store_batch_sql(), params, public_ids


StoredSend = tuple[Any, int, datetime, datetime | None, list[tuple[int, int, bytes]]]  # public id, seq, created, expires, [(delivery pk, device pk, ciphertext)]


def _store_batch_results(rows: list[tuple[Any, ...]], public_ids: list[str], fast: list[FastSend], now: datetime) -> list[StoredSend]:
    """_store_batch_statement's rows, matched back by public id (not by RETURNING order): a
    message's row (pk, public id, seq, expires, NULL) or a delivery's (message pk, NULL, its pk,
    NULL, device pk)."""
    stored: dict[Any, tuple[int, datetime | None, dict[int, int]]] = {}
    by_message: dict[int, dict[int, int]] = {}  # message pk → device pk → delivery pk
    for message_pk, public_id, seq_or_pk, expires_at, device_pk in rows:
        if public_id is not None:
            stored[public_id] = (seq_or_pk, expires_at, by_message.setdefault(message_pk, {}))
        else:
            by_message.setdefault(message_pk, {})[device_pk] = seq_or_pk
    out = []
    for public_id, (item, _, expected) in zip(public_ids, fast, strict=True):
        seq, expires_at, by_device = stored[public_id]  # a missing row is a KeyError: the batch fails
        copies = []
        for r in item.recipients:
            device_pk = expected[(r.user_id, r.device_id)]
            copies.append((by_device[device_pk], device_pk, r.ciphertext))
        out.append((public_id, seq, now, expires_at, copies))
    return out


def _store_batch_postgresql(fast: list[FastSend], now: datetime, versions: dict[int, int]) -> list[StoredSend] | None:
    """→ what was stored; None if the roster versions given were not the database's (nothing stored)."""
    sql, params, public_ids = _store_batch_statement(fast, now, versions)
    # Inside an outer transaction (a test's) a savepoint keeps a constraint error recoverable.
    with transaction.atomic() if connection.in_atomic_block else nullcontext(), _bound_cursor(sql) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:  # the check failed (a stored batch returns a row per message)
        return None
    return _store_batch_results(rows, public_ids, fast, now)


def _store_batch_portable(fast: list[FastSend], now: datetime) -> list[StoredSend]:
    """_store_batch_postgresql's result through the ORM, in one transaction (SQLite)."""
    counts: dict[int, int] = {}
    for _, conv_pk, _ in fast:
        counts[conv_pk] = counts.get(conv_pk, 0) + 1
    with transaction.atomic():
        taken = _lock_and_take_seqs(counts, now)
        next_seq = {pk: last - counts[pk] + 1 for pk, (last, _) in taken.items()}
        messages = []
        for item, conv_pk, _ in fast:
            seq = next_seq[conv_pk]
            next_seq[conv_pk] = seq + 1
            lifetime = item.expires_in or taken[conv_pk][1]
            messages.append(
                Message(
                    conversation_id=conv_pk,
                    seq=seq,
                    sender_user_id=item.sender_device.user_id,
                    sender_device_id=item.sender_device.pk,
                    client_message_id=item.client_message_id,
                    kind=item.kind,
                    created_at=now,
                    expires_at=now + timedelta(seconds=lifetime) if lifetime else None,
                )
            )
        Message.objects.bulk_create(messages)
        rows = [
            Delivery(message_id=message.pk, device_id=expected[(r.user_id, r.device_id)], ciphertext=r.ciphertext, created_at=now)
            for (item, _, expected), message in zip(fast, messages, strict=True)
            for r in item.recipients
        ]
        Delivery.objects.bulk_create(rows)
    copies = iter(rows)
    return [
        (message.public_id, message.seq, message.created_at, message.expires_at, [(c.pk, c.device_id, c.ciphertext) for c in (next(copies) for _ in item.recipients)])
        for (item, _, _), message in zip(fast, messages, strict=True)
    ]


def _store_batch(fast: list[FastSend], versions: dict[int, int]) -> bool:
    """Store and answer; False if the roster `versions` (PostgreSQL; SQLite's are {}) were no
    longer the database's: nothing stored."""
    now = timezone.now()
    stored = _store_batch_postgresql(fast, now, versions) if connection.vendor == "postgresql" else _store_batch_portable(fast, now)
    if stored is None:
        return False
    _batch_answer(fast, stored)
    return True


def _batch_answer(fast: list[FastSend], stored: list[StoredSend]) -> None:
    """Each stored send's answer for its sender and its envelope frames for the live sockets."""
    text = functools.lru_cache(maxsize=None)(iso)  # a batch shares its created_at, and mostly its expiry
    for (item, _, _), (public_id, seq, created_at, expires_at, copies) in zip(fast, stored, strict=True):
        created, expires = text(created_at), text(expires_at)
        item.answer = {"id": str(public_id), "seq": seq, "created_at": created, "expires_at": expires}
        sender = {"user_id": item.sender_device.user.username, "device_id": item.sender_device.device_id}
        conversation_id = canonical_uuid(str(item.conversation_id))
        for delivery_pk, device_pk, ciphertext in copies:
            frame = {
                "type": "envelope",
                "id": item.answer["id"],
                "conversation_id": conversation_id,
                "seq": seq,
                "sender": sender,
                "kind": item.kind,
                "reply_to": None,
                "reaction_to": None,
                "created_at": created,
                "expires_at": expires,
                "ciphertext": ciphertext,
            }
            item.pushes.append((device_pk, delivery_pk, frame))
