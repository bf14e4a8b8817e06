"""Typed errors of accounts, devices and keys."""

from enigmo.errors import Conflict, EnigmoError, NotAuthenticated, NotFound, ValidationFailed


class ChallengeInvalid(NotAuthenticated):
    code, message = "challenge_invalid", "The challenge is unknown, expired or already used; request a new one."


class SignatureInvalid(NotAuthenticated):
    code, message = "signature_invalid", "The signature does not verify."


class TimestampOutOfRange(NotAuthenticated):
    code, message = "timestamp_out_of_range", "The signed timestamp is too far from the server's clock."


class CertificateInvalid(ValidationFailed):
    code, message = "certificate_invalid", "The device certificate does not verify against the account key."


class PreKeySignatureInvalid(ValidationFailed):
    code, message = "signed_prekey_invalid", "The signed prekey's signature does not verify against the device identity key."


class UsernameTaken(Conflict):
    code, message = "username_taken", "That username is taken."


class PreKeyConflict(Conflict):
    code, message = "prekey_conflict", "A prekey with this id already exists with different bytes."


class DeviceLimitReached(Conflict):
    code, message = "device_limit", "This account already has the maximum number of devices."


class UserNotFound(NotFound):
    code, message = "user_not_found", "No such user."


class DeviceNotFound(NotFound):
    code, message = "device_not_found", "No such device."


class LinkNotFound(NotFound):
    code, message = "link_not_found", "No such pending device link, or it expired."


class LoginFailed(EnigmoError):
    code, status, message = "login_failed", 401, "Unknown user or device, or the device was revoked."
