"""X3DH key agreement with Ed25519 device identity keys converted to X25519 for the DH steps."""

from __future__ import annotations

from dataclasses import dataclass

from . import primitives as p
from .keys import DeviceCertificate, DhKeyPair, SigningKeyPair, device_certificate_verify, signed_prekey_verify
from .errors import ProtocolError
from .rng import Rng

X3DH_INFO = b"Enigmo_X3DH_v1"
X3DH_SALT = b"\x00" * 32
X3DH_PREFIX = b"\xff" * 32


@dataclass(frozen=True)
class PreKeyBundle:
    """What the server hands out for one device; `certificate` binds the identity key to the account key."""

    user_id: str
    device_id: int
    identity_key: bytes
    certificate: DeviceCertificate
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    one_time_prekey_id: int | None = None
    one_time_prekey: bytes | None = None


@dataclass(frozen=True, repr=False)
class X3dhInitiation:
    shared_secret: bytes
    associated_data: bytes
    ephemeral_public: bytes
    signed_prekey_id: int
    signed_prekey: bytes
    one_time_prekey_id: int | None

    def __repr__(self) -> str:
        return f"X3dhInitiation(ephemeral_public={self.ephemeral_public.hex()}, shared_secret=<hidden>)"


def x3dh_kdf(dh_outputs: list[bytes]) -> bytes:
    return p.hkdf_sha256(X3DH_SALT, X3DH_PREFIX + b"".join(dh_outputs), X3DH_INFO, 32)


def bundle_verify(bundle: PreKeyBundle, account_public: bytes) -> None:
    """Abort unless the certificate names this device and key and the signed prekey is signed by it."""
    cert = bundle.certificate
    if (cert.device_key != bundle.identity_key or cert.user_id != str(bundle.user_id)
            or cert.device_id != bundle.device_id):
        raise ProtocolError("bad_certificate", "certificate does not match the bundle")
    device_certificate_verify(account_public, cert)
    signed_prekey_verify(bundle.identity_key, bundle.signed_prekey, bundle.signed_prekey_signature)


def x3dh_initiate(identity: SigningKeyPair, bundle: PreKeyBundle, account_public: bytes, rng: Rng) -> X3dhInitiation:
    bundle_verify(bundle, account_public)
    if (bundle.one_time_prekey is None) != (bundle.one_time_prekey_id is None):
        raise ProtocolError("bad_message", "one-time prekey id without key or vice versa")
    remote_ik = p.ed25519_pk_to_x25519(bundle.identity_key)
    ephemeral = DhKeyPair.generate(rng)
    dh = [
        p.x25519(identity.x25519_secret, bundle.signed_prekey),
        p.x25519(ephemeral.secret, remote_ik),
        p.x25519(ephemeral.secret, bundle.signed_prekey),
    ]
    if bundle.one_time_prekey is not None:
        dh.append(p.x25519(ephemeral.secret, bundle.one_time_prekey))
    return X3dhInitiation(
        shared_secret=x3dh_kdf(dh),
        associated_data=identity.public + bundle.identity_key,
        ephemeral_public=ephemeral.public,
        signed_prekey_id=bundle.signed_prekey_id,
        signed_prekey=bundle.signed_prekey,
        one_time_prekey_id=bundle.one_time_prekey_id,
    )


def x3dh_respond(
    identity: SigningKeyPair,
    signed_prekey: DhKeyPair,
    one_time_prekey: DhKeyPair | None,
    sender_identity: bytes,
    ephemeral_public: bytes,
) -> tuple[bytes, bytes]:
    """Return (shared secret, associated data) for the receiving side."""
    remote_ik = p.ed25519_pk_to_x25519(sender_identity)
    dh = [
        p.x25519(signed_prekey.secret, remote_ik),
        p.x25519(identity.x25519_secret, ephemeral_public),
        p.x25519(signed_prekey.secret, ephemeral_public),
    ]
    if one_time_prekey is not None:
        dh.append(p.x25519(one_time_prekey.secret, ephemeral_public))
    return x3dh_kdf(dh), sender_identity + identity.public
