"""Celery tasks: one-line shims around services, safe to run twice."""

from celery import shared_task
from django.utils import timezone

from messaging.services import messages_purge_expired


@shared_task(name="messaging.tasks.purge_expired")
def purge_expired() -> int:
    return messages_purge_expired(now=timezone.now(), batch_size=1000)
