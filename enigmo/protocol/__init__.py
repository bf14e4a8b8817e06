"""Enigmo's end-to-end encryption protocol (X3DH + Double Ratchet), shared by server and reference clients."""

from .errors import ProtocolError
from .keys import (DeviceCertificate, DhKeyPair, SigningKeyPair, auth_message, auth_sign, auth_verify,
                   device_certificate_message, device_certificate_sign, device_certificate_verify,
                   signed_prekey_message, signed_prekey_verify)

__all__ = [
    "DeviceCertificate",
    "DhKeyPair",
    "ProtocolError",
    "SigningKeyPair",
    "auth_message",
    "auth_sign",
    "auth_verify",
    "device_certificate_message",
    "device_certificate_sign",
    "device_certificate_verify",
    "signed_prekey_message",
    "signed_prekey_verify",
]
