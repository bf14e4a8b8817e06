"""Admin for accounts, devices and keys: metadata and fingerprints only, never key bytes or tokens."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from keys.models import Device, IdentityKey, OneTimePreKey, SignedPreKey


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("user", "device_id", "name", "created_at", "last_seen_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name")
    fields = ("user", "device_id", "name", "created_at", "last_seen_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke selected devices (tokens, keys and sockets go)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        from keys.services import device_revoke

        for device in queryset.filter(revoked_at__isnull=True):
            device_revoke(actor=device, device_id=device.device_id)
        self.message_user(request, f"Revoked at {timezone.now():%Y-%m-%d %H:%M}.")


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(IdentityKey)
class IdentityKeyAdmin(_ReadOnly):
    list_display = ("user", "device", "kind", "fingerprint", "created_at", "updated_at")
    fields = ("user", "device", "kind", "fingerprint", "issued_ms", "created_at", "updated_at")
    readonly_fields = fields


@admin.register(SignedPreKey)
class SignedPreKeyAdmin(_ReadOnly):
    list_display = ("device", "key_id", "created_at")
    fields = ("device", "key_id", "created_at")
    readonly_fields = fields


@admin.register(OneTimePreKey)
class OneTimePreKeyAdmin(_ReadOnly):
    list_display = ("device", "key_id", "created_at", "claimed_at")
    list_filter = ("claimed_at",)
    fields = ("device", "key_id", "created_at", "claimed_at")
    readonly_fields = fields
