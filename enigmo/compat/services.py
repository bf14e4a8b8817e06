"""Writes and reads of the compatibility surfaces. Messages go through messaging.services
(message_send, deliveries_ack, message_read) so they are stored, queued per device and purged
exactly like native envelopes; only identities, pair conversations and auth replay state are ours."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import VerifyKey

from enigmo import ratelimit
from enigmo.compat.models import EnigmoWsUser, UsedAuthSignature, V03Identity
from enigmo.errors import EnigmoError, NotFound, ValidationFailed
from keys.models import Device, IdentityKey
from messaging import presence
from messaging import services as messaging_services
from messaging.models import Conversation, Delivery, Message, Participant
from messaging.selectors import co_participant_user_pks, iso, pending_page, pending_page_with_senders

User = get_user_model()

V03_PREFIX = "v03."
EWS_PREFIX = "ews."
AUTH_WINDOW = timedelta(seconds=60)
# An `auth` timestamp without an offset is local time in a zone the server cannot know: it is
# accepted if it is within AUTH_WINDOW of server time shifted by a whole number of quarter hours
# of at most ZONE_REACH (every real zone offset is a multiple of 15 minutes within ±14 h).
ZONE_STEP = timedelta(minutes=15)
ZONE_REACH = timedelta(hours=14)
# Such a timestamp fits some zone for 2 × ZONE_REACH + 2 × AUTH_WINDOW of wall time, so a used
# signature must be remembered at least that long to stay single-use.
USED_SIGNATURE_RETENTION = 2 * ZONE_REACH + 2 * AUTH_WINDOW + timedelta(minutes=5)
V03_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
V03_KEY_RE = re.compile(r"^[A-Za-z0-9+/=_\-.: \r\n]{16,4096}$")
EWS_ID_RE = re.compile(r"^[0-9A-F]{16}$")
V03_AUTH_CONTEXT = b"Enigmo-V03-Auth-v1\x00"


class CompatError(EnigmoError):
    """A failure reported to a compat client in its own error shape."""


class UnknownUser(CompatError):
    code, status, message = "user_not_found", 404, "User not found"


class AuthFailed(CompatError):
    code, status, message = "auth_failed", 401, "Authentication failed: invalid signature or timestamp"


class Replayed(CompatError):
    code, status, message = "auth_replayed", 401, "Authentication failed: this signature was already used"


def compat_max_frame_bytes() -> int:
    """Largest compat WebSocket frame accepted (ENIGMO_COMPAT_MAX_FRAME_BYTES, default 128 KiB)."""
    return int(settings.COMPAT_MAX_FRAME_BYTES)


def v03_strict() -> bool:
    """Strict mode: a v0.3 socket must sign a server challenge with the key behind its userId."""
    return bool(settings.COMPAT_ENIGMA_V03_STRICT)


def _decode_key32(text: str) -> bytes | None:
    """32 raw key bytes from standard/URL-safe base64 or hex, else None."""
    candidates: list[bytes] = []
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        candidates.append(bytes.fromhex(text))
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            padded = text.strip() + "=" * (-len(text.strip()) % 4)
            candidates.append(decoder(padded.encode("ascii")))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
    return next((c for c in candidates if len(c) == 32), None)


def _compat_user_create(*, username: str, device_name: str, identity_key: bytes) -> tuple[Any, Device]:
    """An inactive Django user (invisible to native lookups) with one device and its key."""
    user = User(username=username, is_active=False)
    user.set_unusable_password()
    user.save()
    device = Device.objects.create(user=user, device_id=1, name=device_name)
    IdentityKey.objects.create(user=user, device=device, kind=IdentityKey.Kind.DEVICE, public_key=identity_key)
    return user, device


def pair_conversation_get_or_create(*, a: Any, b: Any) -> Conversation:
    """The one direct conversation of two compat users (same direct_key scheme as native)."""
    low, high = sorted([a.pk, b.pk])
    key = f"{low}:{high}"
    existing = Conversation.objects.filter(direct_key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            conversation = Conversation.objects.create(kind=Conversation.Kind.DIRECT, direct_key=key, created_by=a)
            Participant.objects.bulk_create(
                [
                    Participant(conversation=conversation, user=a, role=Participant.Role.ADMIN),
                    Participant(conversation=conversation, user=b, role=Participant.Role.MEMBER),
                ]
            )
            return conversation
    except IntegrityError:
        return Conversation.objects.get(direct_key=key)


def _send(*, sender_device: Device, recipient_username: str, conversation: Conversation, payload: bytes) -> dict[str, Any]:
    answer, _ = messaging_services.message_send(
        sender_device=sender_device,
        conversation_id=conversation.public_id,
        client_message_id=uuid.uuid4(),
        recipients=[messaging_services.RecipientInput(user_id=recipient_username, device_id=1, ciphertext=payload)],
    )
    return answer


def _strip(username: str | None, prefix: str) -> str | None:
    if username and username.startswith(prefix):
        return username[len(prefix):]
    return None


# --- Enigma Protocol v0.3 ------------------------------------------------------------------------


def v03_login(*, public_key: str, client_ip: str) -> V03Identity:
    """Store a public key and return its identity; the same key always gets the same userId."""
    if not V03_KEY_RE.match(public_key):
        raise ValidationFailed("Invalid public key")
    digest = hashlib.sha256(public_key.encode()).hexdigest()
    existing = V03Identity.objects.filter(public_key_sha256=digest).first()
    if existing is not None:
        return existing
    ratelimit.hit("register_ip", client_ip)
    try:
        with transaction.atomic():
            public_id = secrets.token_hex(8)
            user, device = _compat_user_create(username=V03_PREFIX + public_id, device_name="enigma-v0.3", identity_key=public_key.encode())
            return V03Identity.objects.create(user=user, device=device, public_id=public_id, public_key=public_key, public_key_sha256=digest)
    except IntegrityError:
        return V03Identity.objects.get(public_key_sha256=digest)


def v03_identity_get(*, public_id: str) -> V03Identity:
    identity = V03Identity.objects.select_related("user", "device").filter(public_id=public_id).first() if V03_ID_RE.match(public_id or "") else None
    if identity is None:
        raise UnknownUser()
    return identity


def v03_challenge_verify(*, identity: V03Identity, nonce: bytes, signature_b64: Any) -> None:
    """Strict mode: Ed25519 signature by the key behind the userId over
    "Enigmo-V03-Auth-v1" 0x00 ‖ nonce(32) ‖ userId (ASCII)."""
    key = _decode_key32(identity.public_key)
    if key is None:
        raise AuthFailed("Strict mode needs an Ed25519 public key (32 bytes, base64 or hex) behind the userId")
    try:
        signature = base64.b64decode(str(signature_b64), validate=True)
        VerifyKey(key).verify(V03_AUTH_CONTEXT + nonce + identity.public_id.encode(), signature)
    except (binascii.Error, ValueError, BadSignatureError, NaclValueError, TypeError):
        raise AuthFailed("Authentication failed: invalid signature") from None


def v03_message_send(*, sender: V03Identity, to: Any, payload: Any) -> None:
    """Queue `payload` for `to`. The sender is the connection's identity, never the frame's `from`."""
    if not isinstance(to, str) or not isinstance(payload, str):
        raise ValidationFailed("Invalid message format: 'to' and 'payload' must be strings")
    raw = payload.encode()
    if len(raw) > settings.MAX_CIPHERTEXT_BYTES:
        raise ValidationFailed(f"Payload too large (max {settings.MAX_CIPHERTEXT_BYTES} bytes)")
    recipient = v03_identity_get(public_id=to)
    if recipient.pk == sender.pk:
        raise ValidationFailed("Cannot send a message to yourself")
    conversation = pair_conversation_get_or_create(a=sender.user, b=recipient.user)
    _send(sender_device=sender.device, recipient_username=recipient.user.username, conversation=conversation, payload=raw)


def v03_pending_take(*, identity_device_pk: int, own_id: str, limit: int = 100) -> tuple[list[dict[str, Any]], list[str], bool]:
    """The next queued frames for a v0.3 device, in order, with the message ids to acknowledge
    once they are written to the socket."""
    page, has_more = pending_page(device_pk=identity_device_pk, exclude=[], limit=limit)
    frames, ids = [], []
    for _, frame in page:
        ids.append(frame["id"])
        if frame["ciphertext"] is None:
            continue
        sender = _strip(frame["sender"]["user_id"], V03_PREFIX)
        frames.append({"from": sender, "to": own_id, "payload": frame["ciphertext"].decode("utf-8", "replace")})
    return frames, ids, has_more


def deliveries_acknowledge(*, device_pk: int, message_ids: list[str]) -> None:
    if message_ids:
        messaging_services.deliveries_ack(device=Device.objects.select_related("user").get(pk=device_pk), message_ids=message_ids)


# --- Enigmo (Flutter/Dart) WebSocket --------------------------------------------------------------


def ews_public_id(signing_key_b64: str) -> str:
    """The Dart server's rule: the first 16 hex digits (upper case) of SHA-256 of the key string."""
    return hashlib.sha256(signing_key_b64.encode()).hexdigest()[:16].upper()


def ews_user_json(user: EnigmoWsUser, *, online: bool | None = None, last_seen: float | None = None) -> dict[str, Any]:
    seen = datetime.fromtimestamp(last_seen, tz=UTC) if last_seen else user.created_at
    return {
        "id": user.public_id,
        "publicSigningKey": user.public_signing_key,
        "publicEncryptionKey": user.public_encryption_key,
        "lastSeen": iso(seen),
        "isOnline": bool(online),
        "nickname": user.nickname or user.public_id,
    }


def ews_register(*, signing_key: Any, encryption_key: Any, nickname: Any, client_ip: str) -> EnigmoWsUser:
    """Register (or re-register with the same keys) an Enigmo user. A signing key already
    registered with another encryption key is refused: keys are pinned."""
    if not isinstance(signing_key, str) or not isinstance(encryption_key, str):
        raise ValidationFailed("Missing required fields")
    if nickname is not None and (not isinstance(nickname, str) or len(nickname) > 64 or not nickname.isprintable()):
        raise ValidationFailed("Invalid nickname (at most 64 printable characters)")
    signing_raw = _decode_key32(signing_key) if len(signing_key) <= 64 else None
    if signing_raw is None or len(encryption_key) > 64 or _decode_key32(encryption_key) is None:
        raise ValidationFailed("Invalid keys: publicSigningKey and publicEncryptionKey must be 32-byte keys in base64")
    public_id = ews_public_id(signing_key)
    existing = EnigmoWsUser.objects.filter(public_id=public_id).first()
    if existing is not None:
        if existing.public_signing_key == signing_key and existing.public_encryption_key == encryption_key:
            return existing
        raise ValidationFailed("Registration error: this signing key is already registered with other keys")
    ratelimit.hit("register_ip", client_ip)
    try:
        with transaction.atomic():
            user, device = _compat_user_create(username=EWS_PREFIX + public_id, device_name="enigmo-ws", identity_key=signing_raw)
            return EnigmoWsUser.objects.create(
                user=user,
                device=device,
                public_id=public_id,
                public_signing_key=signing_key,
                public_encryption_key=encryption_key,
                nickname=nickname or "",
            )
    except IntegrityError:
        raise ValidationFailed("Registration error: could not create user") from None


def ews_user_get(*, public_id: Any) -> EnigmoWsUser:
    user = (
        EnigmoWsUser.objects.select_related("user", "device").filter(public_id=public_id).first()
        if isinstance(public_id, str) and EWS_ID_RE.match(public_id)
        else None
    )
    if user is None:
        raise UnknownUser()
    return user


def _parse_timestamp(value: str) -> datetime:
    """An ISO-8601 instant; without an offset it is taken as UTC (history's `before`)."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def auth_timestamp_fresh(*, timestamp: str, now: datetime) -> bool:
    """Whether an `auth` timestamp is fresh. With an offset (or Z) it names an instant, which
    must be within ±AUTH_WINDOW of `now`. Without one it is the client's local wall-clock time
    (the Flutter app sends `DateTime.now().toIso8601String()`): it must be within ±AUTH_WINDOW
    of `now` in some zone whose offset is a whole number of quarter hours within ±ZONE_REACH."""
    try:
        parsed = datetime.fromisoformat(timestamp)
    except ValueError:
        return False
    if parsed.tzinfo is not None:
        return abs(now - parsed) <= AUTH_WINDOW
    skew = parsed.replace(tzinfo=UTC) - now  # = the client's zone offset, plus clock error
    quarters = round(skew / ZONE_STEP)
    if abs(quarters * ZONE_STEP) > ZONE_REACH:
        return False
    return abs(skew - quarters * ZONE_STEP) <= AUTH_WINDOW


def ews_authenticate(*, public_id: Any, signature_b64: Any, timestamp: Any) -> EnigmoWsUser:
    """Ed25519 signature of the user's signing key over the UTF-8 timestamp string; the timestamp
    must be fresh (auth_timestamp_fresh) and each signature is accepted once."""
    if not all(isinstance(v, str) and v for v in (public_id, signature_b64, timestamp)) or len(timestamp) > 64:
        raise ValidationFailed("Missing required fields for authentication")
    user = ews_user_get(public_id=public_id)
    ratelimit.hit("login_account", user.user_id)
    now = timezone.now()
    if not auth_timestamp_fresh(timestamp=timestamp, now=now):
        raise AuthFailed()
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        VerifyKey(_decode_key32(user.public_signing_key) or b"").verify(timestamp.encode(), signature)
    except (binascii.Error, ValueError, BadSignatureError, NaclValueError, TypeError):
        raise AuthFailed() from None
    try:
        with transaction.atomic():
            UsedAuthSignature.objects.filter(used_at__lt=now - USED_SIGNATURE_RETENTION).delete()
            UsedAuthSignature.objects.create(signature_sha256=hashlib.sha256(signature).hexdigest(), user=user.user)
    except IntegrityError:
        raise Replayed() from None
    return user


def _payload_encode(*, encrypted_content: Any, signature: Any, message_type: Any, metadata: Any) -> bytes:
    if not isinstance(encrypted_content, str) or not isinstance(signature, str):
        raise ValidationFailed("Missing required fields for sending a message")
    if message_type is not None and message_type not in ("text", "image", "file", "voice", "video", "system"):
        raise ValidationFailed("Invalid messageType")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationFailed("Invalid metadata: must be an object")
    raw = json.dumps(
        {"encryptedContent": encrypted_content, "signature": signature, "type": message_type or "text", "metadata": metadata},
        separators=(",", ":"),
    ).encode()
    if len(raw) > settings.MAX_CIPHERTEXT_BYTES:
        raise ValidationFailed(f"Message too large (max {settings.MAX_CIPHERTEXT_BYTES} bytes)")
    return raw


def _message_json(*, message_id: str, sender_id: str | None, receiver_id: str | None, payload: bytes | None, created_at: str | None, status: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(payload) if payload else {}
    return {
        "id": message_id,
        "senderId": sender_id,
        "receiverId": receiver_id,
        "encryptedContent": body.get("encryptedContent", ""),
        "signature": body.get("signature", ""),
        "type": body.get("type", "text"),
        "timestamp": created_at,
        "status": status,
        "metadata": body.get("metadata"),
    }


def ews_message_send(*, sender: EnigmoWsUser, frame: dict[str, Any]) -> dict[str, Any]:
    receiver_id = frame.get("receiverId")
    if not isinstance(receiver_id, str):
        raise ValidationFailed("Missing required fields for sending a message")
    payload = _payload_encode(
        encrypted_content=frame.get("encryptedContent"),
        signature=frame.get("signature"),
        message_type=frame.get("messageType"),
        metadata=frame.get("metadata"),
    )
    receiver = ews_user_get(public_id=receiver_id)
    if receiver.pk == sender.pk:
        raise ValidationFailed("Cannot send a message to yourself")
    conversation = pair_conversation_get_or_create(a=sender.user, b=receiver.user)
    answer = _send(sender_device=sender.device, recipient_username=receiver.user.username, conversation=conversation, payload=payload)
    return _message_json(
        message_id=answer["id"], sender_id=sender.public_id, receiver_id=receiver.public_id, payload=payload, created_at=answer["created_at"], status="sent"
    )


def ews_pending_page(*, user: EnigmoWsUser, exclude: list[int], limit: int = 100) -> tuple[list[tuple[int, dict[str, Any], tuple[int, str, str, int | None]]], bool]:
    """Queued messages not yet written to this socket, as `new_message` bodies: [(delivery pk,
    message, what ews_deliveries_settle needs once it is written)], has_more."""
    page, has_more = pending_page_with_senders(device_pk=user.device_id, exclude=exclude, limit=limit)
    out = []
    for delivery_pk, frame, sender_pk in page:
        message = _message_json(
            message_id=frame["id"],
            sender_id=_strip(frame["sender"]["user_id"], EWS_PREFIX),
            receiver_id=user.public_id,
            payload=frame["ciphertext"],
            created_at=frame["created_at"],
            status="delivered",
        )
        out.append((delivery_pk, message, (delivery_pk, frame["id"], frame["conversation_id"], sender_pk)))
    return out, has_more


def ews_deliveries_settle(*, user: EnigmoWsUser, sent: list[tuple[int, str, str, int | None]]) -> None:
    """Messages written to the recipient's socket are delivered, as in the Dart server (which
    marked a message delivered once it was pushed to a connected socket): they are acknowledged,
    their ciphertext leaves the server and no later connection pushes them again (the Flutter
    client does not deduplicate)."""
    if sent:
        device = Device.objects.select_related("user").get(pk=user.device_id)
        messaging_services.deliveries_ack_sent(device=device, sent=sent)


def ews_history(*, user: EnigmoWsUser, other_id: Any, limit: Any, before: Any) -> list[dict[str, Any]]:
    """The last `limit` messages of the pair, oldest first. The server holds a message's
    ciphertext only until it is delivered to its recipient; after that `encryptedContent` and
    `signature` are empty (clients keep their own history)."""
    other = ews_user_get(public_id=other_id)
    if not isinstance(limit, int) or isinstance(limit, bool):
        limit = 50
    limit = max(1, min(limit, 200))
    low, high = sorted([user.user_id, other.user_id])
    conversation = Conversation.objects.filter(direct_key=f"{low}:{high}").first()
    if conversation is None:
        return []
    messages = Message.objects.filter(conversation=conversation, deleted_at__isnull=True)
    if isinstance(before, str):
        try:
            messages = messages.filter(created_at__lt=_parse_timestamp(before))
        except ValueError:
            raise ValidationFailed("Invalid 'before' timestamp") from None
    rows = list(messages.order_by("-seq")[:limit])
    deliveries = {d.message_id: d for d in Delivery.objects.filter(message__in=rows)}
    names = {user.user_id: user.public_id, other.user_id: other.public_id}
    out = []
    for m in reversed(rows):
        d = deliveries.get(m.pk)
        receiver = other.public_id if m.sender_user_id == user.user_id else user.public_id
        status = "read" if d is not None and d.read_at else ("delivered" if d is not None and d.delivered_at else "sent")
        out.append(
            _message_json(
                message_id=str(m.public_id),
                sender_id=names.get(m.sender_user_id),
                receiver_id=receiver,
                payload=bytes(d.ciphertext) if d is not None and d.ciphertext is not None else None,
                created_at=iso(m.created_at),
                status=status,
            )
        )
    return out


def ews_mark_read(*, user: EnigmoWsUser, message_id: Any) -> bool:
    """The recipient read this message (and everything before it in the chat): receipts go to
    the sender, and any copy not yet pushed to a socket is acknowledged too (it was read
    elsewhere, e.g. through history), so its ciphertext leaves the server."""
    if not isinstance(message_id, str) or len(message_id) > 64:
        raise ValidationFailed("Missing message ID")
    delivery = (
        Delivery.objects.select_related("message").filter(device_id=user.device_id, message__public_id=_uuid_or_none(message_id)).first()
        if _uuid_or_none(message_id)
        else None
    )
    if delivery is None:
        return False  # not a message addressed to this user: the Dart server answers success=false
    device = Device.objects.select_related("user").get(pk=user.device_id)
    messaging_services.message_read(device=device, message_id=message_id)
    up_to = list(
        Delivery.objects.filter(
            device_id=user.device_id, delivered_at__isnull=True, message__conversation_id=delivery.message.conversation_id, message__seq__lte=delivery.message.seq
        ).values_list("message__public_id", flat=True)
    )
    messaging_services.deliveries_ack(device=device, message_ids=[str(u) for u in up_to])
    return True


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


def _shares_chat(a: EnigmoWsUser, b: EnigmoWsUser) -> bool:
    low, high = sorted([a.user_id, b.user_id])
    return Conversation.objects.filter(direct_key=f"{low}:{high}").exists()


def _online(users: list[EnigmoWsUser]) -> dict[int, tuple[bool, float | None]]:
    return presence.presence_of(devices_by_user={u.user_id: [u.device_id] for u in users})


def ews_contacts(*, user: EnigmoWsUser) -> list[dict[str, Any]]:
    """`get_users`: only the users who share a chat with this one (never the whole directory)."""
    others = list(EnigmoWsUser.objects.filter(user_id__in=co_participant_user_pks(user_pk=user.user_id) - {user.user_id}).order_by("public_id"))
    seen = _online(others)
    return [ews_user_json(o, online=seen[o.user_id][0], last_seen=seen[o.user_id][1]) for o in others]


def ews_chat_add(*, user: EnigmoWsUser, target_id: Any) -> tuple[EnigmoWsUser, dict[str, Any]]:
    """Open a chat with another Enigmo user (the pair conversation); from now on they see each
    other's presence and may call each other."""
    if not isinstance(target_id, str):
        raise ValidationFailed("User ID to add to chat not provided")
    target = ews_user_get(public_id=target_id)
    if target.pk == user.pk:
        raise ValidationFailed("Cannot add yourself to chat")
    pair_conversation_get_or_create(a=user.user, b=target.user)
    online, last_seen = _online([target])[target.user_id]
    info = ews_user_json(target, online=online, last_seen=last_seen)
    return target, {"id": target.public_id, "nickname": info["nickname"], "isOnline": online, "lastSeen": info["lastSeen"]}


@dataclass(frozen=True)
class CallRoute:
    target_user_pk: int
    target_device_pk: int


def ews_call_peer(*, user: EnigmoWsUser, peer_id: Any, require_online: bool) -> CallRoute:
    """Call signalling goes only between users who share a chat (and, to ring, are online)."""
    peer = ews_user_get(public_id=peer_id)
    if peer.pk == user.pk:
        raise ValidationFailed("Cannot call yourself")
    if not _shares_chat(user, peer):
        raise UnknownUser("Recipient not found")
    if require_online and not _online([peer])[peer.user_id][0]:
        raise NotFound("Recipient is offline")
    return CallRoute(target_user_pk=peer.user_id, target_device_pk=peer.device_id)


def ews_presence(*, user: EnigmoWsUser, online: bool) -> None:
    device = Device.objects.select_related("user").get(pk=user.device_id)
    messaging_services.presence_publish(device=device, online=online)


def ews_presence_refresh(*, user: EnigmoWsUser) -> None:
    presence.device_online(user_pk=user.user_id, device_pk=user.device_id)


def ews_id_for_username(username: str | None) -> str | None:
    return _strip(username, EWS_PREFIX)


CALL_TTL_SECONDS = 3600


def _call_key(call_id: str) -> str:
    return "compat:ews:call:" + hashlib.sha256(call_id.encode()).hexdigest()


def ews_call_route(*, user: EnigmoWsUser, action: str, frame: dict[str, Any]) -> tuple[CallRoute, str]:
    """Where a call frame goes. An offer names its callee (`to`) and opens the call id; later
    frames name only the call id and reach the other party of that call, nobody else."""
    from django.core.cache import cache

    call_id = frame.get("call_id")
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128:
        raise ValidationFailed("Missing required field: call_id")
    key = _call_key(call_id)
    if action == "offer":
        route = ews_call_peer(user=user, peer_id=frame.get("to"), require_online=True)
        state = cache.get(key)
        if state is not None and set(state) != {user.user_id, route.target_user_pk}:
            raise ValidationFailed("This call_id is already in use")
        cache.set(key, [user.user_id, route.target_user_pk], CALL_TTL_SECONDS)
        return route, call_id
    state = cache.get(key)
    if not state or user.user_id not in state:
        raise NotFound("Call not found")
    peer_pk = state[1] if state[0] == user.user_id else state[0]
    peer = EnigmoWsUser.objects.filter(user_id=peer_pk).first()
    if peer is None:
        raise NotFound("Call not found")
    if action == "end":
        cache.delete(key)
    return CallRoute(target_user_pk=peer.user_id, target_device_pk=peer.device_id), call_id
