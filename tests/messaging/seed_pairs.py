"""Seed N sender/receiver pairs with a direct conversation straight into a live server's
database (the load test and the benchmark need 1,000 devices faster than registering each
through the API). Run as: DATABASE_URL=… python -m tests.messaging.seed_pairs N TAG;
prints JSON [[sender_token, receiver_token, conversation_id, sender, receiver], …]."""

from __future__ import annotations

import json
import os
import secrets
import sys


def main(count: int, tag: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enigmo.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from keys.models import Device, IdentityKey
    from messaging.models import Conversation, Participant

    User = get_user_model()
    with transaction.atomic():
        users = User.objects.bulk_create([User(username=f"{role}{tag}{i}") for i in range(count) for role in ("s", "r")])
        tokens = [secrets.token_urlsafe(32) for _ in users]
        devices = Device.objects.bulk_create(
            [Device(user=u, device_id=1, name="load", token_hash=Device.hash_token(t)) for u, t in zip(users, tokens, strict=True)]
        )
        IdentityKey.objects.bulk_create(
            [IdentityKey(user=d.user, device=d, kind=IdentityKey.Kind.DEVICE, public_key=secrets.token_bytes(32), certificate=secrets.token_bytes(64), issued_ms=0) for d in devices]
        )
        conversations = Conversation.objects.bulk_create(
            [
                Conversation(kind=Conversation.Kind.DIRECT, direct_key=f"{users[2 * i].pk}:{users[2 * i + 1].pk}", created_by=users[2 * i])
                for i in range(count)
            ]
        )
        Participant.objects.bulk_create(
            [Participant(conversation=c, user=users[2 * i + k], role="admin" if k == 0 else "member") for i, c in enumerate(conversations) for k in (0, 1)]
        )
    out = [
        [tokens[2 * i], tokens[2 * i + 1], str(conversations[i].public_id), users[2 * i].username, users[2 * i + 1].username]
        for i in range(count)
    ]
    print(json.dumps(out))


def seed(database_url: str, count: int, tag: str, env: dict[str, str] | None = None) -> list[list[str]]:
    """Run this module against a live server's database; returns the pairs."""
    import subprocess

    from tests.live import ROOT

    full_env = {**os.environ, **(env or {}), "DATABASE_URL": database_url, "ENIGMO_EMBEDDED_PURGE": "0"}
    out = subprocess.run([sys.executable, "-m", "tests.messaging.seed_pairs", str(count), tag], cwd=ROOT, env=full_env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
