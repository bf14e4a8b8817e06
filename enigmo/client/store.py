"""The local key store: one JSON file whose contents (private keys, sessions, local history) are
sealed with a key derived from a passphrase by Argon2id and encrypted with SecretBox
(XSalsa20-Poly1305). Writes are atomic (temp file + rename, mode 0600) and serialised between
processes by an exclusive lock, so `follow` and `send` can share one store."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from .errors import ClientError

FORMAT = "enigmo-keystore"
VERSION = 1
OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
                                    opslimit=opslimit, memlimit=memlimit)


class KeyStore:
    """An open key store: `data` is the decrypted JSON object; `transaction()` reloads it under the
    lock, lets the caller change it and saves it before the lock is released."""

    def __init__(self, path: Path, key: bytes, kdf: dict[str, Any], data: dict[str, Any]) -> None:
        self.path = path
        self._key = key
        self._kdf = kdf
        self.data = data
        self._depth = 0
        self._lock_file: Any = None

    def __repr__(self) -> str:
        return f"KeyStore(path={str(self.path)!r})"

    @classmethod
    def create(cls, path: str | os.PathLike[str], passphrase: str, data: dict[str, Any], *,
               opslimit: int = OPSLIMIT, memlimit: int = MEMLIMIT) -> "KeyStore":
        path = Path(path).expanduser()
        if not passphrase:
            raise ClientError("the passphrase must not be empty")
        if path.exists():
            raise ClientError(f"{path} already exists; use another --store or --profile")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        kdf = {"alg": "argon2id13", "opslimit": opslimit, "memlimit": memlimit, "salt": _b64e(salt)}
        store = cls(path, _derive(passphrase, salt, opslimit, memlimit), kdf, data)
        with store._locked():
            store._write()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str) -> "KeyStore":
        path = Path(path).expanduser()
        header = cls._read_header(path)
        kdf = header["kdf"]
        try:
            salt = base64.b64decode(kdf["salt"], validate=True)
            key = _derive(passphrase, salt, int(kdf["opslimit"]), int(kdf["memlimit"]))
        except (KeyError, ValueError, TypeError, nacl.exceptions.CryptoError) as exc:
            raise ClientError(f"{path} is not a usable key store (bad KDF parameters)") from exc
        store = cls(path, key, kdf, {})
        store.data = store._decrypt(header)
        return store

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        return Path(path).expanduser().exists()

    @staticmethod
    def _read_header(path: Path) -> dict[str, Any]:
        try:
            header = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ClientError(f"no key store at {path}; run `register` or `link` first") from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ClientError(f"{path} is not a readable key store") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ClientError(f"{path} is not an Enigmo key store (version {VERSION})")
        return header

    def _decrypt(self, header: dict[str, Any]) -> dict[str, Any]:
        try:
            sealed = base64.b64decode(header["box"], validate=True)
            plaintext = nacl.secret.SecretBox(self._key).decrypt(sealed)
        except nacl.exceptions.CryptoError:
            raise ClientError("wrong passphrase, or the key store is damaged") from None
        except (KeyError, ValueError, TypeError) as exc:
            raise ClientError(f"{self.path} is damaged") from exc
        data = json.loads(plaintext.decode("utf-8"))
        if not isinstance(data, dict):
            raise ClientError(f"{self.path} is damaged")
        return data

    def _write(self) -> None:
        plaintext = json.dumps(self.data, sort_keys=True, separators=(",", ":")).encode("utf-8")
        sealed = nacl.secret.SecretBox(self._key).encrypt(plaintext)
        body = json.dumps({"format": FORMAT, "version": VERSION, "kdf": self._kdf, "box": _b64e(bytes(sealed))})
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._depth == 0:
            self._lock_file = open(str(self.path) + ".lock", "a+")
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
                self._lock_file.close()
                self._lock_file = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Reload, yield the data to change, save on a clean exit. Nested calls share one lock
        and one save at the outermost level; an exception discards the changes."""
        outermost = self._depth == 0
        with self._locked():
            if outermost:
                self.data = self._decrypt(self._read_header(self.path))
            try:
                yield self.data
            except BaseException:
                if outermost:
                    self.data = self._decrypt(self._read_header(self.path))
                raise
            if outermost:
                self._write()
