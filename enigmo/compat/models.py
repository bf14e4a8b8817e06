"""What the compatibility surfaces need beside the native tables: the public key behind an
Enigma v0.3 userId, an Enigmo-WS user's public keys, and auth signatures already used.

Every compat user is a Django user with `is_active=False` (native lookups by username only see
active users, so native users can never address one) and a username containing "." (which a
native username can never contain), with exactly one keys.Device (device_id 1)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from keys.models import Device


class V03Identity(models.Model):
    """An Enigma Protocol v0.3 user: the server-issued userId and the public key it stands for."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="+")
    public_id = models.CharField(max_length=32, unique=True)
    # The client's public key exactly as it sent it (PEM, base64, hex …): public material only.
    public_key = models.CharField(max_length=4096)
    public_key_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"v0.3 user {self.public_id}"


class EnigmoWsUser(models.Model):
    """An Enigmo (Flutter/Dart) user: userId = first 16 hex digits of SHA-256 of its signing key."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="+")
    public_id = models.CharField(max_length=16, unique=True)
    # Base64 of the Ed25519 public signing key and of the X25519 public encryption key.
    public_signing_key = models.CharField(max_length=64)
    public_encryption_key = models.CharField(max_length=64)
    nickname = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"enigmo-ws user {self.public_id}"


class UsedAuthSignature(models.Model):
    """An `auth` signature already accepted: each one works once (replay protection). Rows older
    than the timestamp window are useless and purged."""

    signature_sha256 = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    used_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"used auth signature {self.signature_sha256[:12]}…"
