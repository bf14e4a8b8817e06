"""Disappearing messages are purged by a real scheduler: Celery beat + worker over the Redis
broker in the production profile, the in-process thread in the embedded default."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.live import ROOT

SEED_EXPIRED = """
import uuid
from datetime import timedelta
from django.utils import timezone
from django.contrib.auth import get_user_model
from keys.models import Device
from messaging.models import Conversation, Message, Delivery
user = get_user_model().objects.create_user(username="purge_" + uuid.uuid4().hex[:8])
device = Device.objects.create(user=user, device_id=1)
conversation = Conversation.objects.create(kind="group")
message = Message.objects.create(conversation=conversation, seq=1, client_message_id=uuid.uuid4(),
                                 expires_at=timezone.now() + timedelta(seconds=8))
Delivery.objects.create(message=message, device=device, ciphertext=b"opaque")
print(message.public_id)
"""


def _remaining(server, public_id: str) -> int:
    out = server.shell(
        f"from messaging.models import Message, Delivery; "
        f"print(Message.objects.filter(public_id='{public_id}').count() + Delivery.objects.filter(message__public_id='{public_id}').count())"
    )
    return int(out.strip().splitlines()[-1])


def _wait_gone(server, public_id: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _remaining(server, public_id) == 0:
            return time.monotonic() - start
        time.sleep(1)
    pytest.fail(f"message {public_id} was not purged within {timeout}s")


@pytest.mark.live
def test_embedded_default_purges_without_a_broker(live_server_factory, settings):
    if settings.REDIS_URL:
        pytest.skip("the embedded purge thread is the embedded profile's scheduler")
    server = live_server_factory({"ENIGMO_EMBEDDED_PURGE": "1", "ENIGMO_PURGE_INTERVAL_SECONDS": "1"})
    public_id = server.shell(SEED_EXPIRED).strip().splitlines()[-1]
    assert _remaining(server, public_id) == 2
    elapsed = _wait_gone(server, public_id, timeout=30)
    print(f"embedded purge removed the expired message {elapsed:.1f}s after seeding")


@pytest.mark.live
@pytest.mark.production
def test_celery_beat_and_worker_purge_over_redis(live_server_factory, settings):
    if not settings.REDIS_URL:
        pytest.skip("Celery with a Redis broker is the production profile")
    server = live_server_factory({"ENIGMO_PURGE_INTERVAL_SECONDS": "1"})
    env = server.env
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "enigmo", "worker", "--loglevel", "WARNING", "--concurrency", "1", "--pool", "solo"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "enigmo", "beat", "--loglevel", "WARNING", "--schedule", str(server.log_path) + ".beat"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        public_id = server.shell(SEED_EXPIRED).strip().splitlines()[-1]
        assert _remaining(server, public_id) == 2
        elapsed = _wait_gone(server, public_id, timeout=60)
        print(f"celery beat + worker purged the expired message {elapsed:.1f}s after seeding")
        assert worker.poll() is None and beat.poll() is None
    finally:
        for process in (beat, worker):
            process.terminate()
        for process in (beat, worker):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
