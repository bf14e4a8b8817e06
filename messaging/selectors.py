"""Reads of conversations, messages, media and calls that depend on who asks. Every access to a
conversation goes through `conversation_get_for_user`: missing and not-yours look the same."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, IntegerField, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from rest_framework.fields import DateTimeField

from keys.models import Device
from keys.selectors import active_device_ids
from messaging import errors, presence
from messaging.models import Call, Conversation, Delivery, Media, Message, Participant, PrivacySettings

_dt = DateTimeField()


def iso(value: datetime | None) -> str | None:
    """The one datetime format of REST answers and socket frames."""
    return _dt.to_representation(value) if value is not None else None


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


@functools.lru_cache(maxsize=16384)
def canonical_uuid(text: str) -> str:
    """A UUID's canonical text (lower case, hyphens), for ids a socket sees again and again;
    ValueError when `text` is not a UUID."""
    return str(uuid.UUID(text))


def conversation_get_for_user(*, user: Any, conversation_id: Any) -> Conversation:
    """The conversation with this public id if `user` participates; one query, one answer for
    "no such id" and "not yours"."""
    public_id = _uuid(conversation_id)
    conversation = (
        Conversation.objects.filter(public_id=public_id, participants__user=user).first() if public_id else None
    )
    if conversation is None:
        raise errors.ConversationNotFound()
    return conversation


def message_get_for_user(*, user: Any, message_id: Any) -> Message:
    """A live (not expired) message in one of `user`'s conversations, else not-found."""
    public_id = _uuid(message_id)
    message = (
        Message.objects.select_related("conversation", "sender_user", "sender_device")
        .filter(public_id=public_id, conversation__participants__user=user)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .first()
        if public_id
        else None
    )
    if message is None:
        raise errors.MessageNotFound()
    return message


def privacy_get(*, user_pk: int) -> PrivacySettings:
    return PrivacySettings.objects.filter(user_id=user_pk).first() or PrivacySettings(user_id=user_pk)


def _participants(conversation: Conversation) -> list[Participant]:
    return list(conversation.participants.select_related("user").order_by("joined_at", "id"))


def co_participant_user_pks(*, user_pk: int) -> set[int]:
    """Everyone who shares at least one conversation with this user (presence audience)."""
    mine = Participant.objects.filter(user_id=user_pk).values("conversation_id")
    return set(Participant.objects.filter(conversation_id__in=mine).values_list("user_id", flat=True))


def _unread_subquery(user: Any) -> Subquery:
    now = timezone.now()
    unread = (
        Message.objects.filter(
            conversation=OuterRef("conversation_id"),
            seq__gt=OuterRef("last_read_seq"),
            kind=Message.Kind.MESSAGE,
            deleted_at__isnull=True,
        )
        .exclude(sender_user=user)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .order_by()
        .values("conversation")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(unread, output_field=IntegerField()), 0)


def _conversation_summary(conversation: Conversation, participants: list[Participant], unread: int) -> dict[str, Any]:
    return {
        "id": str(conversation.public_id),
        "kind": conversation.kind,
        "participants": [{"user_id": p.user.username, "role": p.role} for p in participants],
        "unread_count": unread,
        "last_seq": conversation.last_seq,
        "last_activity_at": iso(conversation.last_activity_at),
        "disappearing_seconds": conversation.disappearing_seconds,
        "encrypted_meta": bytes(conversation.encrypted_meta) if conversation.encrypted_meta is not None else None,
    }


def conversation_list_for_user(*, user: Any) -> list[dict[str, Any]]:
    mine = list(
        Participant.objects.filter(user=user)
        .select_related("conversation")
        .annotate(unread=_unread_subquery(user))
        .order_by("-conversation__last_activity_at", "-conversation_id")
    )
    members: dict[int, list[Participant]] = {}
    for p in (
        Participant.objects.filter(conversation_id__in=[m.conversation_id for m in mine])
        .select_related("user")
        .order_by("joined_at", "id")
    ):
        members.setdefault(p.conversation_id, []).append(p)
    return [_conversation_summary(m.conversation, members.get(m.conversation_id, []), m.unread) for m in mine]


def conversation_detail_for_user(*, user: Any, conversation_id: Any) -> dict[str, Any]:
    """The summary plus every participant's active devices (the fan-out list) and presence."""
    conversation = conversation_get_for_user(user=user, conversation_id=conversation_id)
    participants = _participants(conversation)
    me = next(p for p in participants if p.user_id == user.pk)
    unread = Participant.objects.filter(pk=me.pk).annotate(unread=_unread_subquery(user)).values_list("unread", flat=True)[0]
    out = _conversation_summary(conversation, participants, unread)
    user_pks = [p.user_id for p in participants]
    device_pks = active_device_ids(user_ids=user_pks)
    device_ids = dict(Device.objects.filter(pk__in=[pk for pks in device_pks.values() for pk in pks]).values_list("pk", "device_id"))
    hidden = set(PrivacySettings.objects.filter(user_id__in=user_pks, presence=False).values_list("user_id", flat=True))
    seen = presence.presence_of(devices_by_user={pk: device_pks[pk] for pk in user_pks if pk not in hidden})
    rows = []
    for p in participants:
        online, last_seen = seen.get(p.user_id, (None, None))
        rows.append(
            {
                "user_id": p.user.username,
                "role": p.role,
                "devices": sorted(device_ids[pk] for pk in device_pks[p.user_id]),
                "online": online,
                "last_seen": iso(datetime.fromtimestamp(last_seen, tz=UTC)) if last_seen else None,
            }
        )
    out["participants"] = rows
    return out


def _live(qs: QuerySet[Message]) -> QuerySet[Message]:
    return qs.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))


def messages_list_for_device(*, device: Device, conversation_id: Any, after_seq: int, limit: int) -> dict[str, Any]:
    """History after `after_seq` with this device's ciphertext (null once acknowledged or for
    messages sent before the device existed). Expired messages are never served."""
    conversation = conversation_get_for_user(user=device.user, conversation_id=conversation_id)
    mine = Delivery.objects.filter(message=OuterRef("pk"), device=device)
    others = Delivery.objects.filter(message=OuterRef("pk")).exclude(device__user_id=device.user_id).order_by()
    rows = list(
        _live(Message.objects.filter(conversation=conversation, seq__gt=after_seq))
        .select_related("sender_user", "sender_device", "reply_to", "reaction_to")
        .annotate(
            my_ciphertext=Subquery(mine.values("ciphertext")[:1]),
            my_delivered_at=Subquery(mine.values("delivered_at")[:1]),
            my_read_at=Subquery(mine.values("read_at")[:1]),
            first_delivered_at=Subquery(others.values("message").annotate(t=Min("delivered_at")).values("t")[:1]),
            first_read_at=Subquery(others.values("message").annotate(t=Min("read_at")).values("t")[:1]),
        )
        .order_by("seq")[: limit + 1]
    )
    out = []
    for m in rows[:limit]:
        sent_by_me = m.sender_user_id == device.user_id
        out.append(
            {
                **envelope_fields(m),
                "deleted": m.deleted_at is not None,
                "ciphertext": bytes(m.my_ciphertext) if m.my_ciphertext is not None else None,
                "delivered_at": iso(m.first_delivered_at if sent_by_me else m.my_delivered_at),
                "read_at": iso(m.first_read_at if sent_by_me else m.my_read_at),
            }
        )
    return {"messages": out, "has_more": len(rows) > limit}


def envelope_fields(message: Message) -> dict[str, Any]:
    """Server metadata of an envelope, shared by the REST history and the socket frames."""
    return {
        "id": str(message.public_id),
        "conversation_id": str(message.conversation.public_id),
        "seq": message.seq,
        "sender": {
            "user_id": message.sender_user.username if message.sender_user else None,
            "device_id": message.sender_device.device_id if message.sender_device else None,
        },
        "kind": message.kind,
        "reply_to": str(message.reply_to.public_id) if message.reply_to_id else None,
        "reaction_to": str(message.reaction_to.public_id) if message.reaction_to_id else None,
        "created_at": iso(message.created_at),
        "expires_at": iso(message.expires_at),
    }


def conversation_heads(*, user_pk: int) -> dict[str, int]:
    """The last seq of every conversation this user is in (committed values only)."""
    return {str(cid): seq for cid, seq in Participant.objects.filter(user_id=user_pk).values_list("conversation__public_id", "conversation__last_seq")}


def pg_array(values: Iterable[int | uuid.UUID | None]) -> str:
    """A PostgreSQL array literal of integers or UUIDs (None is NULL), bound as one text
    parameter and cast in the SQL: psycopg's array dumper walks the elements in Python and
    leaves a reference cycle behind for every array (measured: most of the relay's garbage;
    for the drain's exclusion list, ~47 objects for the collector per drain, so a reconnect
    storm of 1,000 sockets left one young collection of 110-140 ms for the first envelopes
    after it)."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def _pending_rows_postgresql(device_pk: int, exclude: list[int], limit: int, now: datetime) -> list[tuple[Any, ...]]:
    """pending_page's query as one SQL string: the drain runs on every connect and every tick
    of every socket, and compiling the ORM query cost more than running it. The sender, its
    device and the replied-to and reacted-to messages are each one primary-key look-up by a
    scalar subquery (NULL when the reference is), not joins: a seven-table join took 1 ms to
    plan on an idle machine and 10-14 ms under a reconnect storm, for every drain
    (pg_stat_statements), and with
    statistics taken before a table grew it was planned to scan the whole message table once
    per envelope for the two self-joins (measured: 17 ms a page of 36)."""
    d, m, c = Delivery._meta.db_table, Message._meta.db_table, Conversation._meta.db_table
    u, dev = get_user_model()._meta.db_table, Device._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT d.id, d.ciphertext, m.public_id, c.public_id, m.seq, "
            f"(SELECT u.username FROM {u} u WHERE u.id = m.sender_user_id), (SELECT sd.device_id FROM {dev} sd WHERE sd.id = m.sender_device_id), m.kind, "
            f"(SELECT r.public_id FROM {m} r WHERE r.id = m.reply_to_id), (SELECT rt.public_id FROM {m} rt WHERE rt.id = m.reaction_to_id), "
            f"m.created_at, m.expires_at, m.sender_user_id FROM {d} d JOIN {m} m ON m.id = d.message_id JOIN {c} c ON c.id = m.conversation_id "
            "WHERE d.device_id = %s AND d.delivered_at IS NULL AND NOT (d.id = ANY(%s::bigint[])) "
            "AND (m.expires_at IS NULL OR m.expires_at > %s) ORDER BY d.id LIMIT %s",
            [device_pk, pg_array(exclude), now, limit],
        )
        return cursor.fetchall()


def pending_page(*, device_pk: int, exclude: list[int], limit: int) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """This device's next undelivered envelopes: [(delivery pk, frame)], has_more (see
    pending_page_with_senders)."""
    frames, has_more = pending_page_with_senders(device_pk=device_pk, exclude=exclude, limit=limit)
    return [(pk, frame) for pk, frame, _ in frames], has_more


def devices_pending_counts(*, device_pks: list[int]) -> dict[int, int]:
    """How many undelivered envelopes each of these devices has (sent on a socket and not yet
    acknowledged counts too); devices with none are left out."""
    if not device_pks:
        return {}
    now = timezone.now()
    return dict(
        Delivery.objects.filter(device_id__in=device_pks, delivered_at__isnull=True)
        .filter(Q(message__expires_at__isnull=True) | Q(message__expires_at__gt=now))
        .values("device_id")
        .annotate(n=Count("id"))
        .values_list("device_id", "n")
    )


def pending_page_with_senders(*, device_pk: int, exclude: list[int], limit: int) -> tuple[list[tuple[int, dict[str, Any], int | None]], bool]:
    """This device's next undelivered envelopes in Delivery.id order (= seq order within a
    conversation), skipping those already sent on this connection: [(delivery pk, frame, sender
    user pk)], has_more.
    Expired rows are filtered in the query itself (the purge removes them later): dropped after
    the fetch, a page of only expired rows would come back empty with has_more and the drain
    would ask for it again forever."""
    now = timezone.now()
    rows = _pending_rows_postgresql(device_pk, exclude, limit + 1, now) if connection.vendor == "postgresql" else list(
        Delivery.objects.filter(device_id=device_pk, delivered_at__isnull=True)
        .filter(Q(message__expires_at__isnull=True) | Q(message__expires_at__gt=now))
        .exclude(pk__in=exclude)
        .order_by("id")
        .values_list(
            "pk",
            "ciphertext",
            "message__public_id",
            "message__conversation__public_id",
            "message__seq",
            "message__sender_user__username",
            "message__sender_device__device_id",
            "message__kind",
            "message__reply_to__public_id",
            "message__reaction_to__public_id",
            "message__created_at",
            "message__expires_at",
            "message__sender_user_id",
        )[: limit + 1]
    )
    frames = []
    for pk, ciphertext, mid, cid, seq, user, device, kind, reply, reaction, created, expires, sender_pk in rows[:limit]:
        frames.append(
            (
                pk,
                {
                    "type": "envelope",
                    "id": str(mid),
                    "conversation_id": str(cid),
                    "seq": seq,
                    "sender": {"user_id": user, "device_id": device},
                    "kind": kind,
                    "reply_to": str(reply) if reply else None,
                    "reaction_to": str(reaction) if reaction else None,
                    "created_at": iso(created),
                    "expires_at": iso(expires),
                    "ciphertext": bytes(ciphertext) if ciphertext is not None else None,
                },
                sender_pk,
            )
        )
    return frames, len(rows) > limit


def media_get_for_user(*, user: Any, media_id: str) -> Media:
    """A blob of one of `user`'s conversations, else not-found; the attachment of an expired
    message is not found either, even before the purge removes it."""
    now = timezone.now()
    media = (
        Media.objects.filter(token=str(media_id)[:64], conversation__participants__user=user)
        .filter(Q(message__isnull=True) | Q(message__expires_at__isnull=True) | Q(message__expires_at__gt=now))
        .first()
    )
    if media is None:
        raise errors.MediaNotFound()
    return media


def calls_list_for_user(*, user: Any, limit: int = 200) -> list[dict[str, Any]]:
    calls = (
        Call.objects.filter(conversation__participants__user=user)
        .select_related("conversation", "caller_user", "caller_device")
        .order_by("-started_at", "-id")[:limit]
    )
    return [
        {
            "id": str(c.public_id),
            "conversation_id": str(c.conversation.public_id),
            "caller": {
                "user_id": c.caller_user.username if c.caller_user else None,
                "device_id": c.caller_device.device_id if c.caller_device else None,
            },
            "type": c.kind,
            "status": c.status,
            "started_at": iso(c.started_at),
            "answered_at": iso(c.answered_at),
            "ended_at": iso(c.ended_at),
        }
        for c in calls
    ]
