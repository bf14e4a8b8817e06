"""Typed errors of conversations, messages, media and calls."""

from enigmo.errors import Conflict, Forbidden, NotFound, PayloadTooLarge, ValidationFailed


class ConversationNotFound(NotFound):
    """Missing and not-yours answer the same, so ids cannot be probed."""

    code, message = "not_found", "Not found."


class MessageNotFound(NotFound):
    code, message = "not_found", "Not found."


class MediaNotFound(NotFound):
    code, message = "not_found", "Not found."


class CallNotFound(NotFound):
    code, message = "not_found", "Not found."


class UserNotFound(NotFound):
    code, message = "user_not_found", "No such user."


class DeviceMismatch(Conflict):
    code, message = "device_mismatch", "The recipients are not exactly the conversation's current devices; refresh and retry."


class CiphertextTooLarge(PayloadTooLarge):
    code, message = "ciphertext_too_large", "A per-device ciphertext exceeds the size limit."


class MediaTooLarge(PayloadTooLarge):
    code, message = "media_too_large", "The blob exceeds the media size limit."


class NotAdmin(Forbidden):
    code, message = "not_admin", "Only an admin of this conversation can do this."


class NotSender(Forbidden):
    code, message = "not_sender", "Only the sender can delete a message."


class InvalidRequest(ValidationFailed):
    code = "invalid"
