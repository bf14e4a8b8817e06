"""Deleting a device or a user (the admin can; the product itself only revokes devices and
removes members) first locks every conversation of that user, in id order, as the group commit
locks them. Django's delete runs these receivers inside its transaction before any of its
statements, so a send being stored to or from that user either commits first, and the delete
then removes or nulls what it stored, or waits and then finds the roster changed. The database
keeps no foreign-key constraint for it (see messaging.models.Message)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connections
from django.db.models.signals import pre_delete

from keys.models import Device


def lock_conversations_of(user_pk: int, using: str) -> None:
    """Lock (and raise the roster version of) every conversation `user_pk` is a member of, for
    the rest of the current transaction. SQLite's IMMEDIATE transactions already hold every
    other writer off from the start."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT enigmo_roster_bump_users(ARRAY[%s]::bigint[])", [user_pk])


def _device_deleted(sender: Any, instance: Device, using: str, **kwargs: Any) -> None:
    lock_conversations_of(instance.user_id, using)


def _user_deleted(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    lock_conversations_of(instance.pk, using)


def connect() -> None:
    pre_delete.connect(_device_deleted, sender=Device, dispatch_uid="enigmo_device_deleted")
    pre_delete.connect(_user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="enigmo_user_deleted")
