"""Public keys and device records. No column here ever holds a private key or a secret."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models


class Device(models.Model):
    """A logged-in device ("device session"): owner, per-user device id, name, times, revocation.

    The API token is stored only as its SHA-256 hash; the session cookie maps to the device
    through the Django session.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="devices")
    device_id = models.PositiveIntegerField()
    name = models.CharField(max_length=64, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "device_id"], name="device_unique_per_user")]
        indexes = [models.Index(fields=["user", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.user_id}.{self.device_id}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()


class IdentityKey(models.Model):
    """An Ed25519 public key: the user's account key (device is null) or a device identity key
    with its certificate (the account key's signature over the device key)."""

    class Kind(models.TextChoices):
        ACCOUNT = "account", "Account key"
        DEVICE = "device", "Device identity key"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity_keys")
    device = models.OneToOneField(Device, on_delete=models.CASCADE, null=True, blank=True, related_name="identity_key")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    public_key = models.BinaryField(max_length=32)
    certificate = models.BinaryField(max_length=64, null=True, blank=True)
    issued_ms = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(kind="account"), name="one_account_key_per_user"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} key of {self.user_id} ({self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(bytes(self.public_key)).hexdigest()[:16]


class SignedPreKey(models.Model):
    """A device's current signed prekey (X25519 public) and its Ed25519 signature."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="signed_prekeys")
    key_id = models.PositiveIntegerField()
    public_key = models.BinaryField(max_length=32)
    signature = models.BinaryField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "key_id"], name="signed_prekey_unique_id")]

    def __str__(self) -> str:
        return f"signed prekey {self.key_id} of {self.device}"


class OneTimePreKey(models.Model):
    """A one-time prekey (X25519 public). Handed out once: claimed_at is set atomically and the
    row kept as a tombstone so its id can never be reused with other bytes."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="one_time_prekeys")
    key_id = models.PositiveIntegerField()
    public_key = models.BinaryField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "key_id"], name="one_time_prekey_unique_id")]
        indexes = [models.Index(fields=["device", "claimed_at", "id"])]

    def __str__(self) -> str:
        return f"one-time prekey {self.key_id} of {self.device}"
