"""One device of an Enigmo account, as a library: register, log in, link, keep prekeys topped up,
start sessions from verified bundles, fan a message out to every device (retrying on 409), and
receive, decrypt, store and acknowledge envelopes. Everything secret lives in the KeyStore; the
session state is saved before a ciphertext leaves this process."""

from __future__ import annotations

import mimetypes
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from enigmo.protocol import attachments as att
from enigmo.protocol import keys as k
from enigmo.protocol import linkcheck
from enigmo.protocol.content import content_build, content_parse
from enigmo.protocol.encoding import b64d, b64e
from enigmo.protocol.envelope import device_address, envelope_encrypt
from enigmo.protocol.errors import ProtocolError
from enigmo.protocol.rng import Rng, system_rng
from enigmo.protocol.safety import format_digits, safety_number
from enigmo.protocol.session import MemoryPreKeyStore, SessionRecord, session_decrypt, session_initiate
from enigmo.protocol.x3dh import PreKeyBundle

from . import provisioning
from .api import CLOSE_REPLACED, CLOSE_UNAUTHENTICATED, Api, ConnectionClosed, Relay
from .errors import ApiError, ClientError
from .store import MEMLIMIT, OPSLIMIT, KeyStore

SEND_ATTEMPTS = 4
SEEN_KEEP = 5000
LINK_POLL_SECONDS = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Received:
    """One envelope after decryption (or after a failure to decrypt, with `error` set)."""

    conversation_id: str
    id: str
    seq: int
    sender: str
    sender_device: int
    mine: bool
    content: dict[str, Any] | None = None
    error: str | None = None
    duplicate: bool = False
    new_session: bool = False
    expires_at: str | None = None

    @property
    def type(self) -> str:
        return self.content["type"] if self.content else "error"


@dataclass
class SendResult:
    id: str
    seq: int
    client_message_id: str
    expires_at: str | None
    recipients: int
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def _new_state(server: str, device_seed: bytes, device_name: str) -> dict[str, Any]:
    return {
        "server": server,
        "username": None,
        "device_id": None,
        "device_name": device_name,
        "account_seed": None,
        "device_seed": b64e(device_seed),
        "token": None,
        "signed_prekeys": [],
        "one_time": {},
        "next_one_time_id": 1,
        "sessions": {},
        "trust": {},
        "conversations": {},
        "history": {},
        "cursors": {},
        "seen": [],
    }


class LocalDevice:
    """This device. Build one with `register`, `link_start` or `open`."""

    def __init__(self, store: KeyStore, *, rng: Rng = system_rng, api_timeout: float = 30.0) -> None:
        self.store = store
        self.rng = rng
        self.api = Api(store.data["server"], store.data.get("token"), timeout=api_timeout)

    def __repr__(self) -> str:
        return f"LocalDevice({self.store.data.get('username')!r}, device_id={self.store.data.get('device_id')!r})"

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, passphrase: str, *, server: str | None = None, **kw: Any) -> "LocalDevice":
        store = KeyStore.open(path, passphrase)
        device = cls(store, **kw)
        if server:  # for this run only; the store keeps the server it registered with
            device.api = Api(server, store.data.get("token"), timeout=device.api.timeout)
        if not device.ready:
            raise ClientError(f"{path} holds an unfinished registration or link; run `link` again or remove it")
        return device

    @classmethod
    def register(cls, path: str | Path, passphrase: str, *, server: str, username: str, display_name: str = "",
                 device_name: str = "enigmo-cli", rng: Rng = system_rng, opslimit: int = OPSLIMIT,
                 memlimit: int = MEMLIMIT, **kw: Any) -> "LocalDevice":
        """Create the account and device keys, save them, then register and publish prekeys. The
        keys are on disk before the server hears of them, so a crash cannot lose the account."""
        try:
            k.user_id_bytes(username)
        except ValueError:
            raise ClientError("usernames are 3–32 characters of a–z, 0–9 and _") from None
        api = Api(server)
        account_seed, device_seed = rng(32), rng(32)
        state = _new_state(api.server, device_seed, device_name)
        state.update(username=username, account_seed=b64e(account_seed), pending="register")
        store = KeyStore.create(path, passphrase, state, opslimit=opslimit, memlimit=memlimit)
        try:
            account = k.SigningKeyPair.from_seed(account_seed)
            device = k.SigningKeyPair.from_seed(device_seed)
            issued = ts = now_ms()
            nonce = api.challenge()
            cert = k.device_certificate_sign(account, user_id=username, device_id=1, device_key=device.public,
                                             issued_ms=issued)
            answer = api.post("/auth/register", {
                "username": username,
                "display_name": display_name,
                "account_key": b64e(account.public),
                "device_key": b64e(device.public),
                "certificate": b64e(cert.signature),
                "issued_ms": issued,
                "device_name": device_name,
                "nonce": b64e(nonce),
                "timestamp_ms": ts,
                "signature": b64e(k.auth_sign(device, server_nonce=nonce, user_id=username, device_id=1, ts_ms=ts)),
            }, auth=False)
        except BaseException:
            store.path.unlink(missing_ok=True)
            raise
        with store.transaction() as data:
            data.update(device_id=answer["device_id"], token=answer["token"])
            data.pop("pending", None)
        self = cls(store, rng=rng, **kw)
        self.prekeys_refresh()
        return self

    @classmethod
    def link_start(cls, path: str | Path, passphrase: str, *, server: str, device_name: str = "enigmo-cli",
                   rng: Rng = system_rng, opslimit: int = OPSLIMIT, memlimit: int = MEMLIMIT,
                   **kw: Any) -> tuple["LocalDevice", str]:
        """The new device: announce a device key and a provisioning key; returns what to type on an
        existing device, `CODE-CHECK` (the check binds the code to these two keys). Finish with
        `link_wait`."""
        api = Api(server)
        device_seed = rng(32)
        prov = k.DhKeyPair.generate(rng)
        state = _new_state(api.server, device_seed, device_name)
        state["pending"] = "link"
        store = KeyStore.create(path, passphrase, state, opslimit=opslimit, memlimit=memlimit)
        try:
            started = api.post("/devices/link", {
                "device_key": b64e(k.SigningKeyPair.from_seed(device_seed).public),
                "provisioning_key": b64e(prov.public),
                "name": device_name,
            }, auth=False)
        except BaseException:
            store.path.unlink(missing_ok=True)
            raise
        with store.transaction() as data:
            data["link"] = {"secret": started["secret"], "provisioning": b64e(prov.secret), "code": started["code"]}
        device = cls(store, rng=rng, **kw)
        return device, device.link_code

    @classmethod
    def resume(cls, path: str | Path, passphrase: str, **kw: Any) -> "LocalDevice":
        """Open a store whatever its state (used to finish a link)."""
        return cls(KeyStore.open(path, passphrase), **kw)

    def _link_keys(self) -> tuple[str, bytes, bytes]:
        link = self.store.data.get("link")
        if not link:
            raise ClientError("this store is not waiting for a link")
        provisioning_public = k.DhKeyPair.from_secret(b64d(link["provisioning"])).public
        return link["code"], self.identity.public, provisioning_public

    @property
    def link_code(self) -> str:
        """`CODE-CHECK`, to be typed into the approving device."""
        return linkcheck.link_display(*self._link_keys())

    @property
    def link_qr(self) -> str:
        """`enigmo-link:CODE:<hex>`, the same with the full 256-bit check, for a QR code or a paste."""
        return linkcheck.link_qr_payload(*self._link_keys())

    def link_wait(self, timeout: float = 600.0) -> None:
        link = self.store.data.get("link")
        if not link:
            raise ClientError("this store is not waiting for a link")
        deadline = time.monotonic() + timeout
        while True:
            polled = self.api.post("/devices/link/poll", {"secret": link["secret"]}, auth=False)
            if polled["status"] == "approved":
                break
            if time.monotonic() > deadline:
                raise ClientError("the link was not approved in time; run `link` again")
            time.sleep(LINK_POLL_SECONDS)
        try:
            payload = provisioning.open_envelope(k.DhKeyPair.from_secret(b64d(link["provisioning"])),
                                                 b64d(polled["provisioning_envelope"]))
            account_seed = b64d(payload["account_seed"])
        except (ProtocolError, KeyError, ValueError) as exc:
            raise ClientError("the approving device sent an unreadable provisioning envelope") from exc
        username, device_id = polled["user_id"], int(polled["device_id"])
        with self.store.transaction() as data:
            data.update(username=username, device_id=device_id, account_seed=b64e(account_seed))
        self._authenticate()
        # Trust nothing the server says: our own certificate must verify under the account key we got.
        directory = self.directory(username)
        if (b64d(directory["account_key"]) != self.account.public
                or not self._certified(directory, device_id, self.identity.public)):
            raise ClientError("the server's directory does not match the provisioned account key; link refused")
        with self.store.transaction() as data:
            data.pop("link", None)
            data.pop("pending", None)
        self.prekeys_refresh()

    def link_approve(self, code: str) -> dict[str, Any]:
        """An existing device: check that the keys the server returns for the code are the ones the
        new device showed (`CODE-CHECK` or its QR payload), then certify the new device key and seal
        the account key to it. Only CODE goes to the server; on any mismatch nothing is approved."""
        try:
            given = linkcheck.link_input_parse(code)
        except ProtocolError as exc:
            raise ClientError(f"not a link code: {exc.detail}", code=exc.code) from None
        if given.check is None and given.full_hash is None:
            raise ClientError("type the whole code the new device shows, CODE-CHECK (for example "
                              "K7XQ2M9P-KY3DTKFC); the part after the dash proves the server did not swap "
                              "its keys. Nothing was approved.", code="link_check_missing")
        described = self._call("GET", f"/devices/link/{given.code}")
        if described["user_id"] != self.username:
            raise ClientError("that link code belongs to another account")
        try:
            device_key, provisioning_key = b64d(described["device_key"]), b64d(described["provisioning_key"])
            if described.get("code", given.code).upper() != given.code:
                raise ProtocolError("link_check_mismatch", "the server described another code")
            linkcheck.link_check_verify(given, device_key, provisioning_key)
        except (ProtocolError, ValueError, TypeError):
            raise ClientError("the check in the code does not match the keys the server returned for it: "
                              "a typo, or a server substituting another device. Nothing was approved; compare "
                              "the code with the one the new device shows and try again.",
                              code="link_check_mismatch") from None
        issued = now_ms()
        cert = k.device_certificate_sign(self.account, user_id=self.username, device_id=described["device_id"],
                                         device_key=device_key, issued_ms=issued)
        envelope = provisioning.seal(provisioning_key,
                                     {"account_seed": b64e(self.account_seed), "username": self.username}, self.rng)
        return self._call("POST", f"/devices/link/{given.code}", {
            "device_id": described["device_id"],
            "certificate": b64e(cert.signature),
            "issued_ms": issued,
            "provisioning_envelope": b64e(envelope),
        })

    # --- identity ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.store.data.get("device_id")) and "pending" not in self.store.data

    @property
    def username(self) -> str:
        return self.store.data["username"]

    @property
    def device_id(self) -> int:
        return int(self.store.data["device_id"])

    @property
    def account_seed(self) -> bytes:
        return b64d(self.store.data["account_seed"])

    @property
    def account(self) -> k.SigningKeyPair:
        return k.SigningKeyPair.from_seed(self.account_seed)

    @property
    def identity(self) -> k.SigningKeyPair:
        return k.SigningKeyPair.from_seed(b64d(self.store.data["device_seed"]))

    def login(self) -> None:
        """A fresh token (signed challenge), then the prekey top-up."""
        self._authenticate()
        self.prekeys_refresh()

    def _authenticate(self) -> None:
        nonce = self.api.challenge()
        ts = now_ms()
        answer = self.api.post("/auth/login", {
            "username": self.username,
            "device_id": self.device_id,
            "nonce": b64e(nonce),
            "timestamp_ms": ts,
            "signature": b64e(k.auth_sign(self.identity, server_nonce=nonce, user_id=self.username,
                                          device_id=self.device_id, ts_ms=ts)),
        }, auth=False)
        with self.store.transaction() as data:
            data["token"] = answer["token"]
        self.api.token = answer["token"]

    def _call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """An authenticated request; an expired or revoked token is replaced by a fresh login once."""
        try:
            return self.api.request(method, path, body, **kw)
        except ApiError as err:
            if err.status != 401:
                raise
        self._authenticate()
        return self.api.request(method, path, body, **kw)

    # --- prekeys ----------------------------------------------------------------------------

    def prekeys_refresh(self) -> int:
        """Rotate the signed prekey when due and top one-time prekeys up to 100 when fewer than 20
        remain. Private halves are saved before the public ones are uploaded. Returns the count."""
        now = now_ms()
        body: dict[str, Any] = {"one_time_prekeys": []}
        with self.store.transaction() as data:
            spks = data["signed_prekeys"]
            current = spks[-1] if spks else None
            if current is None or k.signed_prekey_due(current["created_ms"], now):
                key_id = current["key_id"] + 1 if current else 1
                spk = k.signed_prekey_generate(self.identity, key_id=key_id, created_ms=now, rng=self.rng)
                if current:
                    current["replaced_ms"] = now
                spks.append({"key_id": key_id, "secret": b64e(spk.pair.secret), "created_ms": now, "replaced_ms": None})
                data["signed_prekeys"] = [s for s in spks if s["replaced_ms"] is None
                                          or not k.signed_prekey_expired(s["replaced_ms"], now)]
                body["signed_prekey"] = {"key_id": key_id, "public_key": b64e(spk.pair.public),
                                         "signature": b64e(spk.signature)}
        remaining = self._call("POST", "/keys/prekeys", body)["one_time_prekeys_remaining"]
        needed = k.one_time_prekeys_needed(remaining)
        if not needed:
            return remaining
        with self.store.transaction() as data:
            start = data["next_one_time_id"]
            fresh = k.one_time_prekeys_generate(start_id=start, count=needed, rng=self.rng)
            data["next_one_time_id"] = start + needed
            for key_id, pair in fresh:
                data["one_time"][str(key_id)] = b64e(pair.secret)
        upload = [{"key_id": key_id, "public_key": b64e(pair.public)} for key_id, pair in fresh]
        return self._call("POST", "/keys/prekeys", {"one_time_prekeys": upload})["one_time_prekeys_remaining"]

    def _prekey_store(self, data: dict[str, Any]) -> MemoryPreKeyStore:
        return MemoryPreKeyStore(
            signed={s["key_id"]: k.DhKeyPair.from_secret(b64d(s["secret"])) for s in data["signed_prekeys"]},
            one_time={int(i): k.DhKeyPair.from_secret(b64d(s)) for i, s in data["one_time"].items()},
        )

    # --- trust and the key directory --------------------------------------------------------

    def directory(self, username: str) -> dict[str, Any]:
        return self._call("GET", f"/keys/identity/{username}")

    @staticmethod
    def _certified(directory: dict[str, Any], device_id: int, identity_key: bytes) -> bool:
        account_key = b64d(directory["account_key"])
        for d in directory["devices"]:
            if d["device_id"] == device_id and b64d(d["identity_key"]) == identity_key:
                cert = k.DeviceCertificate(directory["user_id"], device_id, identity_key, d["issued_ms"],
                                           b64d(d["certificate"]))
                try:
                    k.device_certificate_verify(account_key, cert)
                except ProtocolError:
                    return False
                return True
        return False

    def trust_observe(self, username: str, account_key: bytes) -> str:
        """Trust on first use. Returns "new", "ok" or "changed"; raises when sending must stop
        (a verified contact's key changed and the user has not accepted it)."""
        if username == self.username:
            if account_key != self.account.public:
                raise ClientError("the server presents another account key for you; refusing", code="key_changed")
            return "ok"
        with self.store.transaction() as data:
            trust = data["trust"].get(username)
            if trust is None:
                data["trust"][username] = {"account_key": b64e(account_key), "verified": False, "changed": False,
                                           "blocked": False}
                return "new"
            if b64d(trust["account_key"]) != account_key:
                data["trust"][username] = {"account_key": b64e(account_key), "previous": trust["account_key"],
                                           "verified": False, "changed": True,
                                           "blocked": trust["verified"] or trust.get("blocked", False)}
                # Sessions with the old key are archived; nothing pending is re-encrypted silently.
                for address, record in data["sessions"].items():
                    if address.startswith(f"{username}."):
                        rec = SessionRecord.from_dict(record)
                        if rec.active is not None:
                            data["sessions"][address] = SessionRecord(None, ([rec.active] + rec.archived)[:40]).to_dict()
                trust = data["trust"][username]
        # Raised after the transaction, so the recorded change is saved.
        if trust.get("blocked"):
            raise ClientError(f"{username}'s safety number changed; compare it (`safety {username}`) and accept "
                              f"it with `safety {username} --accept` before sending", code="key_changed")
        return "changed" if trust.get("changed") else "ok"

    def safety(self, username: str, *, verify: bool = False, accept: bool = False) -> dict[str, Any]:
        """The 60-digit safety number with `username`; `accept` clears a key-change block and
        `verify` marks the number as compared in person."""
        account_key = b64d(self.directory(username)["account_key"])
        if accept or verify:
            with self.store.transaction() as data:
                trust = data["trust"].get(username)
                if trust and b64d(trust["account_key"]) == account_key:
                    trust.update(changed=False, blocked=False)
        try:
            status = self.trust_observe(username, account_key)
        except ClientError:
            status = "blocked"
        if verify and username != self.username:
            with self.store.transaction() as data:
                data["trust"][username]["verified"] = True
        digits, qr = safety_number(self.account.public, self.username, account_key, username)
        trust = self.store.data["trust"].get(username, {})
        return {"digits": digits, "formatted": format_digits(digits), "qr": qr, "status": status,
                "verified": bool(trust.get("verified"))}

    # --- sessions ---------------------------------------------------------------------------

    def _record(self, data: dict[str, Any], address: str) -> SessionRecord:
        raw = data["sessions"].get(address)
        return SessionRecord.from_dict(raw) if raw else SessionRecord()

    def sessions_from_bundle(self, username: str, device_ids: Iterable[int]) -> None:
        """Fetch `username`'s bundle and start sessions with the listed devices (certificates and
        signed prekeys are verified by the protocol library before any DH)."""
        wanted = set(device_ids)
        bundle = self._call("GET", f"/keys/prekeys/{username}")
        account_key = b64d(bundle["account_key"])
        self.trust_observe(username, account_key)
        with self.store.transaction() as data:
            for d in bundle["devices"]:
                if d["device_id"] not in wanted:
                    continue
                if not d.get("signed_prekey"):
                    raise ClientError(f"{username}'s device {d['device_id']} has not published keys yet; try again shortly")
                identity_key = b64d(d["identity_key"])
                opk = d.get("one_time_prekey")
                pkb = PreKeyBundle(
                    user_id=username,
                    device_id=d["device_id"],
                    identity_key=identity_key,
                    certificate=k.DeviceCertificate(username, d["device_id"], identity_key, d["issued_ms"],
                                                    b64d(d["certificate"])),
                    signed_prekey_id=d["signed_prekey"]["key_id"],
                    signed_prekey=b64d(d["signed_prekey"]["public_key"]),
                    signed_prekey_signature=b64d(d["signed_prekey"]["signature"]),
                    one_time_prekey_id=opk["key_id"] if opk else None,
                    one_time_prekey=b64d(opk["public_key"]) if opk else None,
                )
                address = device_address(username, d["device_id"])
                try:
                    record = session_initiate(self._record(data, address), self.identity, pkb, account_key, self.rng)
                except ProtocolError as exc:
                    raise ClientError(f"{username}'s device {d['device_id']} failed verification ({exc.code}); "
                                      "nothing was sent", code=exc.code) from None
                data["sessions"][address] = record.to_dict()

    def _targets(self, detail: dict[str, Any]) -> list[tuple[str, int]]:
        targets = []
        for p in detail["participants"]:
            if self.store.data["trust"].get(p["user_id"], {}).get("blocked"):
                raise ClientError(f"{p['user_id']}'s safety number changed; compare it (`safety {p['user_id']}`) "
                                  f"and accept it with `safety {p['user_id']} --accept` before sending",
                                  code="key_changed")
            for device_id in p["devices"]:
                if p["user_id"] == self.username and device_id == self.device_id:
                    continue
                targets.append((p["user_id"], int(device_id)))
        return targets

    def _ensure_sessions(self, targets: list[tuple[str, int]]) -> None:
        missing: dict[str, list[int]] = {}
        sessions = self.store.data["sessions"]
        for user, device_id in targets:
            raw = sessions.get(device_address(user, device_id))
            if not raw or raw.get("active") is None:
                missing.setdefault(user, []).append(device_id)
        for user, device_ids in missing.items():
            self.sessions_from_bundle(user, device_ids)

    # --- conversations ----------------------------------------------------------------------

    def conversations(self) -> list[dict[str, Any]]:
        listed = self._call("GET", "/conversations")
        with self.store.transaction() as data:
            for c in listed:
                local = data["conversations"].setdefault(c["id"], {"name": None})
                local.update(kind=c["kind"], members=[p["user_id"] for p in c["participants"]],
                             timer=c.get("disappearing_seconds") or 0)
        for c in listed:
            c["name"] = self.store.data["conversations"].get(c["id"], {}).get("name")
        return listed

    def conversation_create(self, kind: str, members: list[str], name: str | None = None) -> dict[str, Any]:
        detail = self._call("POST", "/conversations", {"kind": kind, "members": members})
        with self.store.transaction() as data:
            local = data["conversations"].setdefault(detail["id"], {"name": None})
            local.update(kind=detail["kind"], members=[p["user_id"] for p in detail["participants"]],
                         timer=detail.get("disappearing_seconds") or 0)
            if name:
                local["name"] = name
        if name and detail["kind"] == "group":
            # Every member learns the name end-to-end; the server keeps only ciphertext.
            self.send_content(detail["id"], "meta", kind="control", name=name)
        return detail

    def resolve(self, ref: str) -> str:
        """A conversation id from an id, a unique id prefix, a local group name or a username
        (the direct conversation with that user)."""
        ref = ref.strip()
        listed = self.conversations()
        ids = [c["id"] for c in listed]
        if ref in ids:
            return ref
        by_name = [c["id"] for c in listed if c.get("name") == ref]
        if len(by_name) == 1:
            return by_name[0]
        direct = [c["id"] for c in listed if c["kind"] == "direct"
                  and {p["user_id"] for p in c["participants"]} == {self.username, ref.lower()}]
        if direct:
            return direct[0]
        prefixed = [i for i in ids if len(ref) >= 4 and i.startswith(ref.lower())]
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise ClientError(f"{ref!r} matches {len(prefixed)} conversations; give more of the id")
        raise ClientError(f"no conversation {ref!r}; see `conversations`, or `start USER`")

    # --- sending ----------------------------------------------------------------------------

    def send_content(self, conversation_id: str, content_type: str, *, kind: str = "message",
                     expires_in: int | None = None, attachments: list[str] | None = None,
                     reply_to: str | None = None, reaction_to: str | None = None,
                     client_message_id: str | None = None, **fields: Any) -> SendResult:
        """Encrypt one content object for every other device in the conversation and send it;
        on 409 device_mismatch refresh the device list and retry with the same message id."""
        cmid = client_message_id or str(uuid.uuid4())
        try:
            plaintext = content_build(content_type, id=cmid, sent_ms=now_ms(), **fields)
        except ProtocolError as exc:
            raise ClientError(f"cannot send: {exc.detail or exc.code}") from None
        last: ApiError | None = None
        for attempt in range(1, SEND_ATTEMPTS + 1):
            detail = self._call("GET", f"/conversations/{conversation_id}")
            targets = self._targets(detail)
            self._ensure_sessions(targets)
            with self.store.transaction() as data:
                records = [(u, d, self._record(data, device_address(u, d))) for u, d in targets]
                ciphertexts, new_records = envelope_encrypt(plaintext, records, self.rng)
                for address, record in new_records.items():
                    data["sessions"][address] = record.to_dict()
            # Saved above, before the ciphertexts leave.
            body: dict[str, Any] = {
                "client_message_id": cmid,
                "kind": kind,
                "recipients": [{"user_id": u, "device_id": d, "ciphertext": ciphertexts[device_address(u, d)]}
                               for u, d in targets],
            }
            if expires_in:
                body["expires_in"] = expires_in
            if attachments:
                body["attachments"] = attachments
            if reply_to:
                body["reply_to"] = reply_to
            if reaction_to:
                body["reaction_to"] = reaction_to
            try:
                answer = self._call("POST", f"/conversations/{conversation_id}/messages", body)
            except ApiError as err:
                if err.code != "device_mismatch":
                    raise
                last = err
                continue
            content = content_parse(plaintext)
            self._remember(conversation_id, answer["id"], answer["seq"], self.username, self.device_id, content,
                           answer.get("expires_at"), mine=True)
            return SendResult(answer["id"], answer["seq"], cmid, answer.get("expires_at"), len(targets), attempt)
        raise ClientError(f"not sent: the recipients' devices kept changing ({last.extra if last else ''}); try again")

    def send_text(self, conversation_id: str, text: str, **kw: Any) -> SendResult:
        if not text:
            raise ClientError("the message is empty")
        return self.send_content(conversation_id, "text", body=text, **kw)

    def send_attachment(self, conversation_id: str, path: str | Path, caption: str = "", **kw: Any) -> SendResult:
        path = Path(path).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
        key, digest, blob = att.encrypt_attachment(data, self.rng)
        uploaded = self._call("POST", f"/media/upload?conversation_id={conversation_id}", raw=blob)
        attachment = {"ref": uploaded["id"], "key": b64e(key), "digest": b64e(digest), "size": len(data),
                      "mime": mimetypes.guess_type(path.name)[0] or "application/octet-stream", "name": path.name[:200]}
        fields: dict[str, Any] = {"attachment": attachment}
        if caption:
            fields["caption"] = caption
        return self.send_content(conversation_id, "attachment", attachments=[uploaded["id"]], **fields, **kw)

    def timer_set(self, conversation_id: str, seconds: int) -> SendResult:
        """Disappearing messages: the server-visible timer (so envelopes get expires_at) and the
        E2EE control message that tells the other devices."""
        self._call("POST", f"/conversations/{conversation_id}/timer", {"seconds": seconds or None})
        with self.store.transaction() as data:
            data["conversations"].setdefault(conversation_id, {"name": None})["timer"] = seconds
        return self.send_content(conversation_id, "timer", kind="control", seconds=seconds)

    def attachment_fetch(self, attachment: dict[str, Any]) -> bytes:
        blob = self._call("GET", f"/media/{attachment['ref']}", want_bytes=True)
        try:
            return att.decrypt_attachment(blob, b64d(attachment["key"]), b64d(attachment["digest"]))
        except ProtocolError as exc:
            raise ClientError(f"the attachment failed its check ({exc.code})", code=exc.code) from None

    # --- receiving --------------------------------------------------------------------------

    def receive(self, frame: dict[str, Any]) -> Received:
        """Decrypt one envelope (a socket frame or a history item), store it locally and return it.
        The caller acknowledges it afterwards; a redelivered envelope is recognised by its id."""
        sender = frame.get("sender") or {}
        conversation_id = frame.get("conversation_id") or frame.get("_conversation_id", "")
        out = Received(conversation_id, frame["id"], frame["seq"], sender.get("user_id") or "?",
                       int(sender.get("device_id") or 0), sender.get("user_id") == self.username,
                       expires_at=frame.get("expires_at"))
        if not frame.get("ciphertext"):
            out.error = "no ciphertext for this device"
            return out
        with self.store.transaction() as data:
            if frame["id"] in data["seen"]:
                out.duplicate = True
                return out
            address = device_address(out.sender, out.sender_device)
            try:
                result = session_decrypt(self._record(data, address), b64d(frame["ciphertext"]), self.identity,
                                         self._prekey_store(data), self.rng)
                content = content_parse(result.plaintext)
            except ProtocolError as exc:
                out.error = exc.code
                self._seen(data, frame["id"])
                return out
            if result.new_session and not self._sender_certified(out.sender, out.sender_device, result.remote_identity):
                out.error = "uncertified_sender"
                self._seen(data, frame["id"])
                return out
            data["sessions"][address] = result.record.to_dict()
            if result.used_one_time_prekey_id is not None:
                data["one_time"].pop(str(result.used_one_time_prekey_id), None)
            out.content = content
            out.new_session = result.new_session
            self._seen(data, frame["id"])
            self._apply(data, out)
        return out

    def _sender_certified(self, username: str, device_id: int, identity_key: bytes) -> bool:
        """A new session's identity key must belong to that device under the account key we trust."""
        try:
            directory = self.directory(username)
            self.trust_observe(username, b64d(directory["account_key"]))
        except ClientError:
            return False
        return self._certified(directory, device_id, identity_key)

    @staticmethod
    def _seen(data: dict[str, Any], message_id: str) -> None:
        data["seen"].append(message_id)
        del data["seen"][:-SEEN_KEEP]

    def _apply(self, data: dict[str, Any], msg: Received) -> None:
        content = msg.content or {}
        kind = content.get("type")
        conv = data["conversations"].setdefault(msg.conversation_id, {"name": None})
        if kind in ("text", "attachment"):
            self._history_add(data, msg.conversation_id, msg.id, msg.seq, msg.sender, msg.sender_device, content,
                              msg.expires_at, msg.mine)
        elif kind == "timer":
            conv["timer"] = content["seconds"]
        elif kind == "meta":
            conv["name"] = content["name"]
        elif kind == "delete":
            history = data["history"].get(msg.conversation_id, [])
            data["history"][msg.conversation_id] = [h for h in history
                                                    if not (h["cid"] == content["target"] and h["sender"] == msg.sender)]

    def _remember(self, conversation_id: str, message_id: str, seq: int, sender: str, device_id: int,
                  content: dict[str, Any], expires_at: str | None, *, mine: bool) -> None:
        if content["type"] not in ("text", "attachment"):
            if content["type"] in ("timer", "meta"):
                with self.store.transaction() as data:
                    conv = data["conversations"].setdefault(conversation_id, {"name": None})
                    if content["type"] == "timer":
                        conv["timer"] = content["seconds"]
                    else:
                        conv["name"] = content["name"]
            return
        with self.store.transaction() as data:
            self._history_add(data, conversation_id, message_id, seq, sender, device_id, content, expires_at, mine)
            self._seen(data, message_id)

    @staticmethod
    def _history_add(data: dict[str, Any], conversation_id: str, message_id: str, seq: int, sender: str,
                     device_id: int, content: dict[str, Any], expires_at: str | None, mine: bool) -> None:
        entry = {"id": message_id, "cid": content["id"], "seq": seq, "sender": sender, "device": device_id,
                 "type": content["type"], "body": content.get("body") or content.get("caption") or "",
                 "attachment": content.get("attachment"), "sent_ms": content["sent_ms"], "expires_at": expires_at,
                 "mine": mine}
        history = data["history"].setdefault(conversation_id, [])
        if not any(h["id"] == message_id for h in history):
            history.append(entry)
            history.sort(key=lambda h: h["seq"])

    def mark_read(self, conversation_id: str, seq: int) -> int:
        """Tell the server this user has read CONV up to `seq` (it sends read receipts only if the
        user's privacy settings allow them)."""
        return self._call("POST", f"/conversations/{conversation_id}/mark-read", {"seq": seq})["seq"]

    def history(self, conversation_id: str) -> list[dict[str, Any]]:
        """This device's local copy of a conversation, after expired messages are removed."""
        now = time.time()
        with self.store.transaction() as data:
            history = data["history"].get(conversation_id, [])
            kept = [h for h in history if not h["expires_at"] or (_parse_time(h["expires_at"]) or 0) > now]
            if len(kept) != len(history):
                data["history"][conversation_id] = kept
            return list(kept)

    def catch_up(self, conversation_id: str, on_message: Callable[[Received], None] | None = None) -> int:
        """Read this device's not-yet-acknowledged envelopes of one conversation over HTTP,
        decrypt, store and acknowledge them; returns how many were new. (`follow` uses the socket.)"""
        count = 0
        after = int(self.store.data["cursors"].get(conversation_id, 0))
        while True:
            page = self._call("GET", f"/conversations/{conversation_id}/messages?after_seq={after}&limit=200")
            for m in page["messages"]:
                after = max(after, m["seq"])
                if not m.get("ciphertext"):
                    continue
                got = self.receive({**m, "conversation_id": conversation_id})
                if not got.duplicate:
                    count += 1
                    if on_message:
                        on_message(got)
                try:
                    self._call("POST", f"/messages/{m['id']}/delivered")
                except ApiError as err:
                    if err.status != 404:
                        raise
            with self.store.transaction() as data:
                data["cursors"][conversation_id] = after
            if not page["has_more"]:
                return count

    def follow(self, on_message: Callable[[Received], None], *, stop: Callable[[], bool] = lambda: False,
               idle_timeout: float | None = None, reconnect: bool = True,
               on_frame: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Receive over the relay socket until `stop()` is true or nothing arrives for
        `idle_timeout` seconds: each envelope is decrypted, stored, handed to `on_message`, then
        acknowledged. Reconnects after drops; a newer socket of this device ends the loop."""
        backoff = 0.5
        relogged = False
        while not stop():
            try:
                relay = self.api.socket()
            except ClientError:
                if not reconnect:
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            try:
                finished = self._follow_once(relay, on_message, stop, idle_timeout, on_frame)
                relogged = False
                backoff = 0.5
                if finished:
                    return
            except ConnectionClosed:
                code = relay.close_code()
                if code == CLOSE_REPLACED:
                    raise ClientError("another connection of this device took over; stopped", code="replaced") from None
                if code == CLOSE_UNAUTHENTICATED:
                    if relogged:
                        raise ClientError("the server no longer accepts this device (revoked?)",
                                          code="not_authenticated") from None
                    self._authenticate()
                    relogged = True
                    continue
                if not reconnect:
                    raise ClientError("the connection closed", code="closed") from None
                time.sleep(backoff)
                backoff = min(backoff * 2, 10)
            finally:
                relay.close()

    def _follow_once(self, relay: Relay, on_message: Callable[[Received], None], stop: Callable[[], bool],
                     idle_timeout: float | None, on_frame: Callable[[dict[str, Any]], None] | None) -> bool:
        pending_acks: set[int] = set()
        new_sessions = caught_up = False
        last = time.monotonic()
        while True:
            if stop():
                self._drain_acks(relay, pending_acks)
                return True
            frame = relay.recv(timeout=0.2)
            if frame is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    self._drain_acks(relay, pending_acks)
                    return True
                continue
            last = time.monotonic()
            kind = frame.get("type")
            if kind == "envelope":
                got = self.receive(frame)
                if got.content is not None or got.error:
                    if not got.duplicate:
                        on_message(got)
                new_sessions |= got.new_session
                pending_acks.add(relay.send({"type": "ack", "ids": [frame["id"]]}))
            elif kind == "ok":
                pending_acks.discard(frame.get("ref"))
            elif kind == "backlog":
                caught_up = not frame.get("has_more")
            elif on_frame is not None:
                on_frame(frame)
            if new_sessions and caught_up:
                # Prekey messages used one-time prekeys: top up once the backlog is drained.
                self.prekeys_refresh()
                new_sessions = False

    @staticmethod
    def _drain_acks(relay: Relay, pending: set[int], timeout: float = 5.0) -> None:
        """Wait until the server confirmed every ack, so nothing handled here is redelivered."""
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            frame = relay.recv(timeout=0.2)
            if frame and frame.get("type") in ("ok", "error"):
                pending.discard(frame.get("ref"))

    # --- devices ----------------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        return self._call("GET", "/devices")

