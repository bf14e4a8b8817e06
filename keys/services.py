"""Writes for accounts, devices and keys: challenges, registration, login, logout, linking,
identity-key publication, prekey upload and the atomic bundle claim."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from enigmo import ratelimit
from enigmo.errors import ValidationFailed
from enigmo.realtime import notify_devices_closed
from keys import errors
from keys.models import Device, IdentityKey, OneTimePreKey, SignedPreKey
from keys.signatures import auth_message, device_certificate_message, signed_prekey_message, verify

User = get_user_model()

USERNAME_RE = re.compile(r"^[a-z0-9_]{3,32}$")
NONCE_BYTES = 32
MAX_ONE_TIME_PREKEYS_PER_UPLOAD = 100
LINK_TTL_SECONDS = 600


# --- challenges -----------------------------------------------------------------------------


def challenge_issue() -> tuple[bytes, int]:
    """A fresh single-use 32-byte nonce and its lifetime in seconds."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    ttl = settings.CHALLENGE_TTL_SECONDS
    # The deadline is stored too: the cache's own TTL is a clean-up, not the authority.
    cache.set(f"chal:{nonce.hex()}", time.time() + ttl, timeout=ttl)
    return nonce, ttl


def _challenge_consume(nonce: bytes) -> None:
    # delete() reports whether the key existed: Redis DEL is atomic, so a nonce works once.
    if len(nonce) != NONCE_BYTES:
        raise errors.ChallengeInvalid()
    key = f"chal:{nonce.hex()}"
    deadline = cache.get(key)
    if not cache.delete(key) or deadline is None or time.time() > deadline:
        raise errors.ChallengeInvalid()


def _check_timestamp(ts_ms: int) -> None:
    if abs(time.time() * 1000 - ts_ms) > settings.CHALLENGE_TTL_SECONDS * 1000:
        raise errors.TimestampOutOfRange()


def _issue_token(device: Device) -> str:
    token = secrets.token_urlsafe(32)
    Device.objects.filter(pk=device.pk).update(token_hash=Device.hash_token(token), last_seen_at=timezone.now())
    return token


# --- accounts -------------------------------------------------------------------------------


def _device_create(*, user: Any, device_id: int, name: str, device_key: bytes, certificate: bytes, issued_ms: int) -> Device:
    """A device row and its certified identity key (the caller has verified the certificate)."""
    device = Device.objects.create(user=user, device_id=device_id, name=name)
    IdentityKey.objects.create(
        user=user, device=device, kind=IdentityKey.Kind.DEVICE, public_key=device_key, certificate=certificate, issued_ms=issued_ms
    )
    return device


@dataclass(frozen=True)
class LoginResult:
    device: Device
    token: str


def account_register(
    *,
    username: str,
    display_name: str,
    account_key: bytes,
    device_key: bytes,
    certificate: bytes,
    issued_ms: int,
    device_name: str,
    nonce: bytes,
    timestamp_ms: int,
    signature: bytes,
    client_ip: str,
) -> LoginResult:
    """Create a user with its account key and first device (device id 1). The device proves it
    holds its key by signing the challenge; the account key proves itself by the certificate."""
    ratelimit.hit("register_ip", client_ip)
    if not USERNAME_RE.match(username):
        raise ValidationFailed("username must be 3–32 characters of a–z, 0–9 and _.")
    # Per requested name, whatever the IP: bounds squatting races and "is it taken?" probes.
    ratelimit.hit("register_account", username)
    _check_timestamp(timestamp_ms)
    _challenge_consume(nonce)
    cert_message = device_certificate_message(user_id=username, device_id=1, device_key=device_key, issued_ms=issued_ms)
    if not verify(account_key, cert_message, certificate):
        raise errors.CertificateInvalid()
    login_message = auth_message(nonce=nonce, user_id=username, device_id=1, ts_ms=timestamp_ms)
    if not verify(device_key, login_message, signature):
        raise errors.SignatureInvalid()
    try:
        with transaction.atomic():
            user = User.objects.create_user(username=username, first_name=display_name[:150])
            IdentityKey.objects.create(user=user, kind=IdentityKey.Kind.ACCOUNT, public_key=account_key)
            device = _device_create(
                user=user, device_id=1, name=device_name, device_key=device_key, certificate=certificate, issued_ms=issued_ms
            )
            token = _issue_token(device)
    except IntegrityError:
        raise errors.UsernameTaken() from None
    return LoginResult(device=device, token=token)


def device_login(
    *, username: str, device_id: int, nonce: bytes, timestamp_ms: int, signature: bytes, client_ip: str
) -> LoginResult:
    """A known, unrevoked device signs a fresh challenge with its identity key."""
    ratelimit.hit("login_ip", client_ip)
    ratelimit.hit("login_account", username)
    _check_timestamp(timestamp_ms)
    _challenge_consume(nonce)
    device = (
        Device.objects.select_related("user", "identity_key")
        .filter(user__username=username, device_id=device_id, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if device is None or not hasattr(device, "identity_key"):
        raise errors.LoginFailed()
    message = auth_message(nonce=nonce, user_id=username, device_id=device_id, ts_ms=timestamp_ms)
    if not verify(bytes(device.identity_key.public_key), message, signature):
        raise errors.SignatureInvalid()
    return LoginResult(device=device, token=_issue_token(device))


def device_logout(*, device: Device) -> None:
    """End this device's login: its token and every session bound to that login stop working
    (sessions are tied to the token hash, see keys.authentication), and its sockets close.
    The device stays and may log in again."""
    with transaction.atomic():
        Device.objects.filter(pk=device.pk).update(token_hash=None)
        notify_devices_closed([device.pk], "logout")


def device_revoke(*, actor: Device, device_id: int) -> None:
    """Revoke one of the actor's own devices: token, keys and sockets go; the record stays."""
    with transaction.atomic():
        target = (
            Device.objects.select_for_update()
            .filter(user_id=actor.user_id, device_id=device_id, revoked_at__isnull=True)
            .first()
        )
        if target is None:
            raise errors.DeviceNotFound()
        Device.objects.filter(pk=target.pk).update(revoked_at=timezone.now(), token_hash=None)
        IdentityKey.objects.filter(device=target).delete()
        SignedPreKey.objects.filter(device=target).delete()
        OneTimePreKey.objects.filter(device=target).delete()
        notify_devices_closed([target.pk], "revoked")


# --- linking a new device -------------------------------------------------------------------


def _link_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
    return "".join(secrets.choice(alphabet) for _ in range(8))


def device_link_start(*, device_key: bytes, provisioning_key: bytes, name: str, client_ip: str) -> dict[str, Any]:
    """The new device announces its identity key and an ephemeral X25519 provisioning key. It
    gets a short code to show (or a QR) and a secret to poll with."""
    ratelimit.hit("link", client_ip)
    if len(device_key) != 32 or len(provisioning_key) != 32:
        raise ValidationFailed("device_key and provisioning_key must be 32 bytes.")
    code = _link_code()
    secret = secrets.token_urlsafe(32)
    link = {
        "code": code,
        "device_key": device_key.hex(),
        "provisioning_key": provisioning_key.hex(),
        "name": name,
        "status": "pending",
        "secret_hash": Device.hash_token(secret),
    }
    cache.set(f"link:{code}", link, timeout=LINK_TTL_SECONDS)
    cache.set(f"linksecret:{Device.hash_token(secret)}", code, timeout=LINK_TTL_SECONDS)
    return {"code": code, "secret": secret, "expires_in": LINK_TTL_SECONDS}


def _link_get(code: str) -> dict[str, Any]:
    link = cache.get(f"link:{code.strip().upper()}")
    if not link:
        raise errors.LinkNotFound()
    return link


def device_link_describe(*, actor: Device, code: str) -> dict[str, Any]:
    """What the approving device needs to sign the certificate, including the device id that
    the new device will get."""
    link = _link_get(code)
    if link["status"] != "pending":
        raise errors.LinkNotFound()
    next_id = (Device.objects.filter(user_id=actor.user_id).order_by("-device_id").values_list("device_id", flat=True).first() or 0) + 1
    return {
        "code": link["code"],
        "device_key": bytes.fromhex(link["device_key"]),
        "provisioning_key": bytes.fromhex(link["provisioning_key"]),
        "name": link["name"],
        "device_id": next_id,
        "user_id": actor.user.username,
    }


def device_link_approve(
    *, actor: Device, code: str, device_id: int, certificate: bytes, issued_ms: int, provisioning_envelope: bytes
) -> Device:
    """Create the new device under the actor's account. The certificate must verify against the
    account key; the provisioning envelope is opaque (sealed to the new device's key)."""
    link = _link_get(code)
    if link["status"] != "pending":
        raise errors.LinkNotFound()
    if len(provisioning_envelope) > 4096:
        raise ValidationFailed("provisioning_envelope is too large.")
    device_key = bytes.fromhex(link["device_key"])
    user = actor.user
    with transaction.atomic():
        account = IdentityKey.objects.select_for_update().get(user=user, kind=IdentityKey.Kind.ACCOUNT)
        cert_message = device_certificate_message(
            user_id=user.username, device_id=device_id, device_key=device_key, issued_ms=issued_ms
        )
        if not verify(bytes(account.public_key), cert_message, certificate):
            raise errors.CertificateInvalid()
        if Device.objects.filter(user=user, revoked_at__isnull=True).count() >= settings.MAX_DEVICES_PER_ACCOUNT:
            raise errors.DeviceLimitReached()
        if Device.objects.filter(user=user, device_id=device_id).exists():
            raise ValidationFailed("device_id is already used on this account; describe the link again.")
        device = _device_create(
            user=user, device_id=device_id, name=link["name"], device_key=device_key, certificate=certificate, issued_ms=issued_ms
        )
    link.update(
        status="approved",
        user_id=user.username,
        device_id=device_id,
        provisioning_envelope=provisioning_envelope.hex(),
    )
    cache.set(f"link:{link['code']}", link, timeout=LINK_TTL_SECONDS)
    return device


def device_link_poll(*, secret: str) -> dict[str, Any]:
    """The new device learns whether it was approved, its user and device id, and receives the
    opaque provisioning envelope (once)."""
    code = cache.get(f"linksecret:{Device.hash_token(secret)}") if secret else None
    if not code:
        raise errors.LinkNotFound()
    link = _link_get(code)
    if link["status"] != "approved":
        return {"status": "pending"}
    cache.delete(f"link:{code}")
    cache.delete(f"linksecret:{Device.hash_token(secret)}")
    return {
        "status": "approved",
        "user_id": link["user_id"],
        "device_id": link["device_id"],
        "provisioning_envelope": bytes.fromhex(link["provisioning_envelope"]),
    }


# --- keys -----------------------------------------------------------------------------------


def identity_key_publish(*, device: Device, identity_key: bytes, certificate: bytes, issued_ms: int) -> IdentityKey:
    """Publish or replace this device's identity key; the certificate must verify against the
    account key. Replacing the key drops the prekeys signed by the old one."""
    user = device.user
    with transaction.atomic():
        account = IdentityKey.objects.get(user=user, kind=IdentityKey.Kind.ACCOUNT)
        message = device_certificate_message(
            user_id=user.username, device_id=device.device_id, device_key=identity_key, issued_ms=issued_ms
        )
        if not verify(bytes(account.public_key), message, certificate):
            raise errors.CertificateInvalid()
        current = IdentityKey.objects.select_for_update().filter(device=device).first()
        if current is not None and bytes(current.public_key) == identity_key:
            if current.issued_ms != issued_ms:
                current.certificate, current.issued_ms = certificate, issued_ms
                current.save(update_fields=["certificate", "issued_ms", "updated_at"])
            return current
        if current is not None:
            SignedPreKey.objects.filter(device=device).delete()
            OneTimePreKey.objects.filter(device=device, claimed_at__isnull=True).delete()
            current.public_key, current.certificate, current.issued_ms = identity_key, certificate, issued_ms
            current.save(update_fields=["public_key", "certificate", "issued_ms", "updated_at"])
            return current
        return IdentityKey.objects.create(
            user=user,
            device=device,
            kind=IdentityKey.Kind.DEVICE,
            public_key=identity_key,
            certificate=certificate,
            issued_ms=issued_ms,
        )


@dataclass(frozen=True)
class PreKeyInput:
    key_id: int
    public_key: bytes
    signature: bytes | None = None


def prekeys_upload(
    *, device: Device, signed_prekey: PreKeyInput | None, one_time_prekeys: list[PreKeyInput]
) -> int:
    """Store a signed prekey (verified first) and up to 100 one-time prekeys. Identical
    re-uploads are no-ops; a known id with other bytes is a PreKeyConflict. Returns how many
    unclaimed one-time prekeys the device has."""
    if len(one_time_prekeys) > MAX_ONE_TIME_PREKEYS_PER_UPLOAD:
        raise ValidationFailed(f"At most {MAX_ONE_TIME_PREKEYS_PER_UPLOAD} one-time prekeys per upload.")
    if len({k.key_id for k in one_time_prekeys}) != len(one_time_prekeys):
        raise ValidationFailed("one_time_prekeys contains a key_id twice.")
    identity = IdentityKey.objects.filter(device=device).first()
    if identity is None:
        raise ValidationFailed("Publish this device's identity key before its prekeys.")
    with transaction.atomic():
        if signed_prekey is not None:
            if not verify(bytes(identity.public_key), signed_prekey_message(signed_prekey.public_key), signed_prekey.signature or b""):
                raise errors.PreKeySignatureInvalid()
            existing = SignedPreKey.objects.filter(device=device, key_id=signed_prekey.key_id).first()
            if existing is None:
                SignedPreKey.objects.create(
                    device=device,
                    key_id=signed_prekey.key_id,
                    public_key=signed_prekey.public_key,
                    signature=signed_prekey.signature,
                )
            elif bytes(existing.public_key) != signed_prekey.public_key or bytes(existing.signature) != signed_prekey.signature:
                raise errors.PreKeyConflict()
        if one_time_prekeys:
            known = {
                row.key_id: bytes(row.public_key)
                for row in OneTimePreKey.objects.filter(device=device, key_id__in=[k.key_id for k in one_time_prekeys])
            }
            fresh = []
            for key in one_time_prekeys:
                if key.key_id in known:
                    if known[key.key_id] != key.public_key:
                        raise errors.PreKeyConflict()
                    continue
                fresh.append(OneTimePreKey(device=device, key_id=key.key_id, public_key=key.public_key))
            OneTimePreKey.objects.bulk_create(fresh)
        return OneTimePreKey.objects.filter(device=device, claimed_at__isnull=True).count()


def _claim_one_time_prekey(device: Device) -> OneTimePreKey | None:
    # A conditional UPDATE is atomic on both databases: if another request claimed the row
    # first, our update matches nothing and we take the next oldest.
    while True:
        candidate = OneTimePreKey.objects.filter(device=device, claimed_at__isnull=True).order_by("id").first()
        if candidate is None:
            return None
        if OneTimePreKey.objects.filter(pk=candidate.pk, claimed_at__isnull=True).update(claimed_at=timezone.now()):
            return candidate


def prekey_bundle_claim(*, requester: Device, username: str) -> dict[str, Any]:
    """One bundle per active device of `username`, each with one one-time prekey taken
    atomically (oldest first, never twice) or none when its pool is empty."""
    target = User.objects.filter(username=username, is_active=True).first()
    if target is None:
        raise errors.UserNotFound()
    ratelimit.hit("bundle", requester.user_id, target.pk)
    account = IdentityKey.objects.filter(user=target, kind=IdentityKey.Kind.ACCOUNT).first()
    devices = []
    for device in Device.objects.filter(user=target, revoked_at__isnull=True).select_related("identity_key").order_by("device_id"):
        if not hasattr(device, "identity_key"):
            continue
        signed = SignedPreKey.objects.filter(device=device).order_by("-created_at", "-id").first()
        one_time = _claim_one_time_prekey(device) if signed is not None else None
        devices.append({"device": device, "identity": device.identity_key, "signed_prekey": signed, "one_time_prekey": one_time})
    return {"user": target, "account_key": account, "devices": devices}
