"""Reads for accounts and keys that depend on who asks."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from keys import errors
from keys.models import Device, IdentityKey

User = get_user_model()


def device_list_for_user(*, user: Any) -> QuerySet[Device]:
    return Device.objects.filter(user=user, revoked_at__isnull=True).order_by("device_id")


def identity_directory_get(*, username: str) -> dict[str, Any]:
    """The account key and every active device's identity key and certificate."""
    user = User.objects.filter(username=username, is_active=True).first()
    account = IdentityKey.objects.filter(user=user, kind=IdentityKey.Kind.ACCOUNT).first() if user else None
    if user is None or account is None:
        raise errors.UserNotFound()
    devices = [
        {"device": d, "identity": d.identity_key}
        for d in Device.objects.filter(user=user, revoked_at__isnull=True).select_related("identity_key").order_by("device_id")
        if hasattr(d, "identity_key")
    ]
    return {"user": user, "account_key": account, "devices": devices}


def active_device_ids(*, user_ids: list[int]) -> dict[int, list[int]]:
    """user pk → device pks of its active devices with an identity key (recipients of envelopes)."""
    out: dict[int, list[int]] = {uid: [] for uid in user_ids}
    rows = Device.objects.filter(user_id__in=user_ids, revoked_at__isnull=True, identity_key__isnull=False).values_list("user_id", "pk")
    for user_id, pk in rows:
        out[user_id].append(pk)
    return out
