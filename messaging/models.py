"""Conversations and opaque envelopes. The server routes by participant rows; every message
body is a per-device ciphertext it cannot read."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models, transaction

from keys.models import Device


class ConversationQuerySet(models.QuerySet):
    def delete(self) -> tuple[int, dict[str, int]]:
        """Lock the conversations (in id order, as the group commit does) before Django collects
        their messages, so a batch being stored to one either commits first and is collected
        with the rest, or waits and then finds the conversation gone (see Message)."""
        with transaction.atomic(using=self.db, savepoint=False):
            pks = list(self.order_by("pk").select_for_update(of=("self",)).values_list("pk", flat=True))
            return self.model._base_manager.using(self.db).filter(pk__in=pks).delete()


class Conversation(models.Model):
    """A direct or group conversation. Its name and avatar live in `encrypted_meta`, an E2EE blob."""

    class Kind(models.TextChoices):
        DIRECT = "direct", "Direct"
        GROUP = "group", "Group"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # "<low user id>:<high user id>" for direct conversations, so a pair has only one.
    direct_key = models.CharField(max_length=64, unique=True, null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # not indexed: the group commit updates it with last_seq on every batch, and without an index
    # on it that update is HOT (no index entries written); lists reach it through Participant
    last_activity_at = models.DateTimeField(auto_now_add=True)
    last_seq = models.BigIntegerField(default=0)
    # Raised by PostgreSQL triggers (migration 0004) whenever a participant, a member's device
    # or its identity key, or a member's username changes: the group commit's store checks this
    # one number instead of its members and devices (services._known). Unused on SQLite.
    roster_version = models.BigIntegerField(default=0, editable=False)
    disappearing_seconds = models.PositiveIntegerField(null=True, blank=True)
    encrypted_meta = models.BinaryField(null=True, blank=True)

    objects = ConversationQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.kind} conversation {self.public_id}"

    def delete(self, using: str | None = None, keep_parents: bool = False) -> tuple[int, dict[str, int]]:
        """As ConversationQuerySet.delete: the row is locked before its messages are collected."""
        if self.pk is None:
            return super().delete(using=using, keep_parents=keep_parents)  # Django's error for an unsaved row
        deleted = type(self).objects.using(using or self._state.db).filter(pk=self.pk).delete()
        self.pk = None  # as Django's delete leaves the instance
        return deleted


class Participant(models.Model):
    """Membership: who may read and post, with a role and a read marker."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="participations")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)
    last_read_seq = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "user"], name="participant_unique")]
        indexes = [models.Index(fields=["user", "conversation"])]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.conversation_id} ({self.role})"


class Message(models.Model):
    """Server metadata of one envelope: who sent it (the authenticated device), where, in which
    order, and when it expires. The ciphertexts live in Delivery, one per recipient device."""

    class Kind(models.TextChoices):
        MESSAGE = "message", "Message"
        REACTION = "reaction", "Reaction"
        CONTROL = "control", "Control"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # No database foreign-key constraint from a message to its conversation, sender user or
    # sender device, nor from a copy (Delivery) to its device: each was a per-row check with a
    # row lock on the parent, a third of PostgreSQL's time per envelope under load (measured,
    # docs/performance.md). Django still cascades and nulls on delete; what the constraint
    # guarded, a row stored for a parent deleted meanwhile, is prevented by order instead:
    # every store of messages holds its conversation's row lock and checks the roster under it
    # (the group commit's roster version, message_send's check under the lock), and every
    # delete of a conversation, device or user first locks the conversations it touches
    # (ConversationQuerySet.delete, messaging.deletion). tests/messaging/test_delete_races.py.
    # Every index is written on every insert, so none is kept twice: message_seq_unique leads with
    # the conversation and message_idempotency with the sender device, and the optional references
    # are indexed only where set (a message wrote 10 index entries, now 5).
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False, db_constraint=False)
    seq = models.BigIntegerField()
    sender_user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+", db_constraint=False)
    sender_device = models.ForeignKey(Device, on_delete=models.SET_NULL, null=True, related_name="+", db_index=False, db_constraint=False)
    client_message_id = models.UUIDField()
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.MESSAGE)
    reply_to = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_index=False)
    reaction_to = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True, related_name="+", db_index=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="message_seq_unique"),
            models.UniqueConstraint(fields=["sender_device", "client_message_id"], name="message_idempotency"),
        ]
        indexes = [
            models.Index(fields=["reply_to"], condition=models.Q(reply_to__isnull=False), name="message_reply_to_set"),
            models.Index(fields=["reaction_to"], condition=models.Q(reaction_to__isnull=False), name="message_reaction_to_set"),
            models.Index(fields=["expires_at"], condition=models.Q(expires_at__isnull=False), name="message_expires_at_set"),
        ]

    def __str__(self) -> str:
        return f"message {self.seq} in {self.conversation_id}"


class Delivery(models.Model):
    """One recipient device's ciphertext of a message, and its receipts. Acknowledged rows lose
    their ciphertext; undelivered rows expire after 30 days."""

    # indexed through delivery_unique (message, device) and the (device, delivered_at, id) index
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="deliveries", db_index=False, db_constraint=False)  # see Message
    ciphertext = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "device"], name="delivery_unique")]
        indexes = [models.Index(fields=["device", "delivered_at", "id"])]

    def __str__(self) -> str:
        return f"delivery of {self.message_id} to {self.device_id}"


class Reaction(models.Model):
    """That a user reacted to a message. The emoji itself travels E2EE in `envelope`."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reactions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    envelope = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="reaction_unique_per_user")]

    def __str__(self) -> str:
        return f"reaction of {self.user_id} to {self.message_id}"


class Call(models.Model):
    """Call history. Offers, answers and ICE candidates are opaque E2EE payloads never stored."""

    class Kind(models.TextChoices):
        AUDIO = "audio", "Audio"
        VIDEO = "video", "Video"

    class Status(models.TextChoices):
        RINGING = "ringing", "Ringing"
        ANSWERED = "answered", "Answered"
        ENDED = "ended", "Ended"
        MISSED = "missed", "Missed"
        DECLINED = "declined", "Declined"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="calls")
    caller_device = models.ForeignKey(Device, on_delete=models.SET_NULL, null=True, related_name="+")
    caller_user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.RINGING)
    started_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} call {self.public_id} ({self.status})"


class PrivacySettings(models.Model):
    """Per-user switches: whether others see this user's read receipts and presence."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+")
    read_receipts = models.BooleanField(default=True)
    presence = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"privacy of {self.user_id}"


class DeviceQueue(models.Model):
    """Per-device queue bookkeeping: envelopes dropped by the queue cap and not yet reported."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, primary_key=True, related_name="+")
    trimmed_unreported = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"queue of {self.device_id} ({self.trimmed_unreported} trimmed)"


class Media(models.Model):
    """An already-encrypted attachment blob on disk. The key and digest travel E2EE inside the
    message; the server knows only the size, the conversation and the uploader."""

    token = models.CharField(max_length=64, unique=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="media")
    uploader_device = models.ForeignKey(Device, on_delete=models.SET_NULL, null=True, related_name="+")
    uploader_user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="media")
    size = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"media {self.token[:8]}… ({self.size} bytes)"
