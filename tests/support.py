"""A small PyNaCl client of Enigmo's account and key APIs, used by tests to act as alice, bob
and eve. It holds private keys only in memory, exactly as a real client would."""

from __future__ import annotations

import base64
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from keys.signatures import auth_message, device_certificate_message, signed_prekey_message


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def unb64(value: str) -> bytes:
    return base64.b64decode(value)


class Transport(Protocol):
    def post(self, path: str, body: dict[str, Any] | None = None, *, token: str | None = None) -> tuple[int, Any]: ...

    def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]: ...


class DjangoTransport:
    """Requests through Django's test client (no network)."""

    def __init__(self, client: Any, remote_addr: str = "127.0.0.1"):
        self.client = client
        self.remote_addr = remote_addr

    def _headers(self, token: str | None) -> dict[str, str]:
        # Token-authenticated calls only: a session cookie left by a login must not authenticate.
        self.client.cookies.clear()
        headers = {"REMOTE_ADDR": self.remote_addr}
        if token:
            headers["HTTP_AUTHORIZATION"] = f"Token {token}"
        return headers

    def post(self, path: str, body: dict[str, Any] | None = None, *, token: str | None = None) -> tuple[int, Any]:
        response = self.client.post(path, body or {}, content_type="application/json", **self._headers(token))
        return response.status_code, _json(response)

    def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        response = self.client.get(path, **self._headers(token))
        return response.status_code, _json(response)

    def delete(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        response = self.client.delete(path, **self._headers(token))
        return response.status_code, _json(response)


def _json(response: Any) -> Any:
    if not response.get("Content-Type", "").startswith("application/json"):
        return None
    return response.json()


_prekey_ids = itertools.count(1)


@dataclass
class Device:
    device_id: int
    identity: SigningKey = field(default_factory=SigningKey.generate)
    token: str | None = None
    signed_prekey: PrivateKey = field(default_factory=PrivateKey.generate)
    one_time_prekeys: dict[int, PrivateKey] = field(default_factory=dict)


@dataclass
class Account:
    """One user: an account key and one or more devices."""

    username: str
    account_key: SigningKey = field(default_factory=SigningKey.generate)
    devices: list[Device] = field(default_factory=list)

    @property
    def device(self) -> Device:
        return self.devices[0]

    @property
    def token(self) -> str:
        assert self.device.token, "not logged in"
        return self.device.token

    def certificate(self, device_id: int, device_key: bytes, issued_ms: int) -> bytes:
        message = device_certificate_message(user_id=self.username, device_id=device_id, device_key=device_key, issued_ms=issued_ms)
        return self.account_key.sign(message).signature

    def register_payload(self, nonce: bytes, *, ts_ms: int | None = None) -> dict[str, Any]:
        device = Device(device_id=1)
        self.devices = [device]
        issued = int(time.time() * 1000)
        ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
        device_key = bytes(device.identity.verify_key)
        return {
            "username": self.username,
            "display_name": self.username.title(),
            "account_key": b64(bytes(self.account_key.verify_key)),
            "device_key": b64(device_key),
            "certificate": b64(self.certificate(1, device_key, issued)),
            "issued_ms": issued,
            "device_name": "test device",
            "nonce": b64(nonce),
            "timestamp_ms": ts,
            "signature": b64(device.identity.sign(auth_message(nonce=nonce, user_id=self.username, device_id=1, ts_ms=ts)).signature),
        }

    def login_payload(self, nonce: bytes, device: Device | None = None, *, ts_ms: int | None = None) -> dict[str, Any]:
        device = device or self.device
        ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
        message = auth_message(nonce=nonce, user_id=self.username, device_id=device.device_id, ts_ms=ts)
        return {
            "username": self.username,
            "device_id": device.device_id,
            "nonce": b64(nonce),
            "timestamp_ms": ts,
            "signature": b64(device.identity.sign(message).signature),
        }

    def prekeys_payload(self, device: Device | None = None, *, count: int = 10) -> dict[str, Any]:
        device = device or self.device
        spk_pub = bytes(device.signed_prekey.public_key)
        one_time = {}
        for _ in range(count):
            one_time[next(_prekey_ids)] = PrivateKey.generate()
        device.one_time_prekeys.update(one_time)
        return {
            "signed_prekey": {
                "key_id": 1,
                "public_key": b64(spk_pub),
                "signature": b64(device.identity.sign(signed_prekey_message(spk_pub)).signature),
            },
            "one_time_prekeys": [{"key_id": kid, "public_key": b64(bytes(k.public_key))} for kid, k in one_time.items()],
        }

    # -- flows over a transport --------------------------------------------------------------

    def challenge(self, api: Transport) -> bytes:
        status, body = api.post("/api/v1/auth/challenge")
        assert status == 200, body
        return unb64(body["nonce"])

    def register(self, api: Transport) -> dict[str, Any]:
        status, body = api.post("/api/v1/auth/register", self.register_payload(self.challenge(api)))
        assert status == 201, body
        self.device.token = body["token"]
        return body

    def login(self, api: Transport, device: Device | None = None) -> dict[str, Any]:
        device = device or self.device
        status, body = api.post("/api/v1/auth/login", self.login_payload(self.challenge(api), device))
        assert status == 200, body
        device.token = body["token"]
        return body

    def publish_prekeys(self, api: Transport, device: Device | None = None, *, count: int = 10) -> int:
        device = device or self.device
        status, body = api.post("/api/v1/keys/prekeys", self.prekeys_payload(device, count=count), token=device.token)
        assert status == 200, body
        return body["one_time_prekeys_remaining"]

    def link_device(self, api: Transport, name: str = "second") -> Device:
        """Link a new device through the provisioning exchange, approved by the first device."""
        new = Device(device_id=0)
        provisioning = PrivateKey.generate()
        status, started = api.post(
            "/api/v1/devices/link",
            {"device_key": b64(bytes(new.identity.verify_key)), "provisioning_key": b64(bytes(provisioning.public_key)), "name": name},
        )
        assert status == 201, started
        status, described = api.get(f"/api/v1/devices/link/{started['code']}", token=self.token)
        assert status == 200, described
        issued = int(time.time() * 1000)
        cert = self.certificate(described["device_id"], bytes(new.identity.verify_key), issued)
        from nacl.public import SealedBox

        envelope = SealedBox(provisioning.public_key).encrypt(bytes(self.account_key))
        status, approved = api.post(
            f"/api/v1/devices/link/{started['code']}",
            {"device_id": described["device_id"], "certificate": b64(cert), "issued_ms": issued, "provisioning_envelope": b64(envelope)},
            token=self.token,
        )
        assert status == 201, approved
        status, polled = api.post("/api/v1/devices/link/poll", {"secret": started["secret"]})
        assert status == 200 and polled["status"] == "approved", polled
        assert SealedBox(provisioning).decrypt(unb64(polled["provisioning_envelope"])) == bytes(self.account_key)
        new.device_id = polled["device_id"]
        self.devices.append(new)
        self.login(api, new)
        return new


class HttpTransport:
    """The same interface as DjangoTransport, over real HTTP to a live server."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def _request(self, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, Any]:
        import json
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Token {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
        return status, (json.loads(raw) if raw and ctype.startswith("application/json") else None)

    def post(self, path: str, body: dict[str, Any] | None = None, *, token: str | None = None) -> tuple[int, Any]:
        return self._request("POST", path, body, token)

    def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        return self._request("GET", path, None, token)

    def delete(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        return self._request("DELETE", path, None, token)
