"""Nudges through the channel layer, sent only after the database commit. The layer is
at-most-once; the database stays the source of truth (BRIEF §4)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger("enigmo.realtime")


def device_group(device_pk: int) -> str:
    return f"dev.{device_pk}"


def user_group(user_pk: int) -> str:
    return f"usr.{user_pk}"


def _send(groups: list[str], event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, event)
        except Exception as exc:  # a lost nudge is recovered from the database on the next read
            logger.warning("channel layer send failed group=%s error=%s", group, type(exc).__name__)


def send_after_commit(groups: Iterable[str], event: dict[str, Any]) -> None:
    """Publish `event` to `groups` once the surrounding transaction commits (now if none)."""
    targets = list(groups)
    transaction.on_commit(lambda: _send(targets, event))


def notify_devices_closed(device_pks: Iterable[int], reason: str) -> None:
    """Ask every socket of these devices to close (logout, revocation)."""
    send_after_commit([device_group(pk) for pk in device_pks], {"type": "device.closed", "reason": reason})
