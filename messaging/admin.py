"""Admin for conversations and envelopes: counts and times only; ciphertext is never shown."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from messaging.models import Call, Conversation, Delivery, Message, Participant, Reaction


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ParticipantInline(admin.TabularInline):
    model = Participant
    fields = ("user", "role", "joined_at", "last_read_seq")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(_ReadOnly):
    list_display = ("public_id", "kind", "created_at", "last_activity_at", "last_seq", "participant_count")
    list_filter = ("kind",)
    fields = ("public_id", "kind", "created_by", "created_at", "last_activity_at", "last_seq", "disappearing_seconds")
    readonly_fields = fields
    inlines = [ParticipantInline]

    @admin.display(description="participants")
    def participant_count(self, obj: Conversation) -> int:
        return obj.participants.count()


@admin.register(Message)
class MessageAdmin(_ReadOnly):
    list_display = ("public_id", "conversation", "seq", "sender_user", "kind", "created_at", "expires_at", "deleted_at", "device_count")
    list_filter = ("kind",)
    fields = ("public_id", "conversation", "seq", "sender_user", "sender_device", "kind", "reply_to", "created_at", "expires_at", "deleted_at")
    readonly_fields = fields

    @admin.display(description="recipient devices")
    def device_count(self, obj: Message) -> int:
        return obj.deliveries.count()


@admin.register(Delivery)
class DeliveryAdmin(_ReadOnly):
    list_display = ("message", "device", "created_at", "delivered_at", "read_at")
    fields = ("message", "device", "created_at", "delivered_at", "read_at")
    readonly_fields = fields


@admin.register(Reaction)
class ReactionAdmin(_ReadOnly):
    list_display = ("message", "user", "created_at")
    fields = ("message", "user", "created_at")
    readonly_fields = fields


@admin.register(Call)
class CallAdmin(_ReadOnly):
    list_display = ("public_id", "conversation", "caller_user", "kind", "status", "started_at", "answered_at", "ended_at")
    list_filter = ("kind", "status")
    fields = list_display
    readonly_fields = fields
