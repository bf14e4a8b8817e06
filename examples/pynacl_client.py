#!/usr/bin/env python3
"""A minimal Enigmo client for native-app and bot developers: register, log in, publish prekeys,
fetch and verify a prekey bundle.

Standalone on purpose: it needs only PyNaCl (`pip install pynacl`) and the standard library, and
imports nothing from the Enigmo repository, so you can copy it into your own project.

    python3 examples/pynacl_client.py                       # against http://127.0.0.1:8000
    python3 examples/pynacl_client.py https://chat.example.org --username mybot
    python3 examples/pynacl_client.py --peer alice          # fetch alice's bundle instead of our own

What it does, step by step (byte layouts: docs/protocol.md §1; all integers big-endian):

1. POST /api/v1/auth/challenge            -> a single-use 32-byte nonce
2. POST /api/v1/auth/register             -> the account key certifies device 1, device 1 signs the nonce
3. POST /api/v1/auth/challenge + /login   -> a fresh challenge, signed again: a new token replaces the old
4. POST /api/v1/keys/prekeys              -> one signed prekey and a batch of one-time prekeys
5. GET  /api/v1/keys/prekeys/<user>       -> a bundle per device; we verify certificate and signature

Private keys stay in this process's memory and are never sent. A real client must store them
(encrypted) and must pin the peer's account key (compare safety numbers) instead of trusting the
copy in the bundle, as this demo does.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import struct
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

# Domain separation (docs/protocol.md §1): every signature has its own prefix.
CERT_CONTEXT = b"Enigmo-DeviceCert-v1\x00"
AUTH_CONTEXT = b"Enigmo-Auth-v1\x00"
SIGNED_PREKEY_PREFIX = b"\x05"


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def now_ms() -> int:
    return int(time.time() * 1000)


def b64(value: bytes) -> str:
    """Standard base64 with padding; the server also accepts URL-safe and unpadded input."""
    return base64.b64encode(value).decode()


def unb64(value: str) -> bytes:
    value = value.replace("-", "+").replace("_", "/")
    return base64.b64decode(value + "=" * (-len(value) % 4))


def device_certificate_message(user_id: str, device_id: int, device_key: bytes, issued_ms: int) -> bytes:
    return CERT_CONTEXT + user_id.encode() + u32(device_id) + device_key + u64(issued_ms)


def auth_message(nonce: bytes, user_id: str, device_id: int, ts_ms: int) -> bytes:
    return AUTH_CONTEXT + nonce + user_id.encode() + u32(device_id) + u64(ts_ms)


def signed_prekey_message(spk_public: bytes) -> bytes:
    return SIGNED_PREKEY_PREFIX + spk_public


def verified(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
        return True
    except (BadSignatureError, ValueError):
        return False


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status} {error.get('code', '?')}: {error.get('message', body)}")
        self.status, self.body = status, body


class Api:
    """JSON over HTTP with stdlib urllib. Errors arrive as {"error": {"code", "message"}}."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Token {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiError(exc.code, parsed) from None
        return json.loads(raw) if raw else None


class Device:
    """One device of one account: the keys it holds and what it does with them."""

    def __init__(self, api: Api, username: str):
        self.api = api
        self.username = username
        self.device_id = 1  # the first device of a new account is always 1
        self.account_key = SigningKey.generate()  # Ed25519, signs device certificates
        self.identity_key = SigningKey.generate()  # Ed25519 device identity key (DIK)
        self.signed_prekey = PrivateKey.generate()  # X25519
        self.signed_prekey_id = 1
        self.one_time_prekeys: dict[int, PrivateKey] = {}

    def challenge(self) -> bytes:
        return unb64(self.api.call("POST", "/api/v1/auth/challenge")["nonce"])

    def _login_proof(self, nonce: bytes) -> dict[str, Any]:
        ts = now_ms()
        signature = self.identity_key.sign(auth_message(nonce, self.username, self.device_id, ts)).signature
        return {"nonce": b64(nonce), "timestamp_ms": ts, "signature": b64(signature)}

    def register(self) -> dict[str, Any]:
        device_key = bytes(self.identity_key.verify_key)
        issued = now_ms()
        certificate = self.account_key.sign(device_certificate_message(self.username, self.device_id, device_key, issued)).signature
        body = {
            "username": self.username,
            "display_name": self.username,
            "account_key": b64(bytes(self.account_key.verify_key)),
            "device_key": b64(device_key),
            "certificate": b64(certificate),
            "issued_ms": issued,
            "device_name": "pynacl example",
            **self._login_proof(self.challenge()),
        }
        answer = self.api.call("POST", "/api/v1/auth/register", body)
        self.api.token = answer["token"]
        return answer

    def login(self) -> dict[str, Any]:
        body = {"username": self.username, "device_id": self.device_id, **self._login_proof(self.challenge())}
        answer = self.api.call("POST", "/api/v1/auth/login", body)
        self.api.token = answer["token"]
        return answer

    def publish_prekeys(self, count: int) -> dict[str, Any]:
        spk_public = bytes(self.signed_prekey.public_key)
        first = max(self.one_time_prekeys, default=0) + 1
        fresh = {key_id: PrivateKey.generate() for key_id in range(first, first + count)}
        self.one_time_prekeys.update(fresh)
        body = {
            "signed_prekey": {
                "key_id": self.signed_prekey_id,
                "public_key": b64(spk_public),
                "signature": b64(self.identity_key.sign(signed_prekey_message(spk_public)).signature),
            },
            "one_time_prekeys": [{"key_id": k, "public_key": b64(bytes(v.public_key))} for k, v in fresh.items()],
        }
        return self.api.call("POST", "/api/v1/keys/prekeys", body)

    def fetch_bundle(self, user_id: str) -> dict[str, Any]:
        """Each fetch takes one one-time prekey per device (never handed out twice)."""
        return self.api.call("GET", f"/api/v1/keys/prekeys/{user_id}")


def check_bundle(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Verify each device's certificate (account key) and signed prekey (device identity key).
    A client that finds either invalid must refuse to start a session with that device."""
    account_key = unb64(bundle["account_key"])
    checked = []
    for device in bundle["devices"]:
        identity = unb64(device["identity_key"])
        cert_ok = verified(
            account_key,
            device_certificate_message(bundle["user_id"], device["device_id"], identity, device["issued_ms"]),
            unb64(device["certificate"]),
        )
        spk = device["signed_prekey"]
        spk_ok = spk is not None and verified(identity, signed_prekey_message(unb64(spk["public_key"])), unb64(spk["signature"]))
        one_time = device["one_time_prekey"]
        checked.append(
            {
                "device_id": device["device_id"],
                "certificate_valid": cert_ok,
                "signed_prekey_id": spk["key_id"] if spk else None,
                "signed_prekey_valid": spk_ok,
                "one_time_prekey_id": one_time["key_id"] if one_time else None,
            }
        )
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("server", nargs="?", default="http://127.0.0.1:8000", help="base URL (default: %(default)s)")
    parser.add_argument("--username", default=None, help="3-32 of a-z, 0-9, _ (default: a random bot_ name)")
    parser.add_argument("--peer", default=None, help="whose bundle to fetch (default: our own)")
    parser.add_argument("--one-time-prekeys", type=int, default=5, metavar="N", help="how many to upload, at most 100")
    args = parser.parse_args(argv)

    api = Api(args.server)
    username = args.username or f"bot_{secrets.token_hex(4)}"
    me = Device(api, username)
    try:
        registered = me.register()
        first_token = api.token
        print(f"registered {registered['user_id']} device {registered['device_id']} on {api.base_url}")
        me.login()
        print(f"logged in again with a fresh challenge (new token: {api.token != first_token})")
        uploaded = me.publish_prekeys(args.one_time_prekeys)
        print(
            f"published signed prekey {me.signed_prekey_id} and one-time prekeys {sorted(me.one_time_prekeys)}"
            f" ({uploaded['one_time_prekeys_remaining']} unclaimed on the server)"
        )
        target = args.peer or username
        bundle = me.fetch_bundle(target)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {api.base_url}: {exc.reason}", file=sys.stderr)
        return 1

    devices = check_bundle(bundle)
    for device in devices:
        print(
            f"bundle of {bundle['user_id']} device {device['device_id']}: certificate "
            f"{'valid' if device['certificate_valid'] else 'INVALID'}, signed prekey {device['signed_prekey_id']} "
            f"{'valid' if device['signed_prekey_valid'] else 'INVALID'}, one-time prekey {device['one_time_prekey_id']}"
        )
    ok = bool(devices) and all(d["certificate_valid"] and d["signed_prekey_valid"] for d in devices)
    summary = {
        "ok": ok,
        "username": username,
        "uploaded_one_time_prekeys": sorted(me.one_time_prekeys),
        "bundle_user": bundle["user_id"],
        "bundle_devices": devices,
    }
    print("summary: " + json.dumps(summary))
    if not ok:
        print("error: the bundle did not verify; do not start a session with it", file=sys.stderr)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
