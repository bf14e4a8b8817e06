"""Real server processes for tests that need real sockets: daphne started as a subprocess on
its own database (a fresh SQLite file, or a fresh PostgreSQL database in the production
profile), killable with SIGKILL and restartable on the same data."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database_url() -> str:
    """A new empty database of the active profile's kind."""
    base = os.environ.get("DATABASE_URL", "")
    if base.startswith(("postgres://", "postgresql://")):
        import psycopg

        name = f"enigmo_live_{secrets.token_hex(4)}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(base)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    path = Path(tempfile.mkdtemp(prefix="enigmo-live-")) / "db.sqlite3"
    return f"sqlite:///{path}"


def drop_database(url: str) -> None:
    if url.startswith(("postgres://", "postgresql://")):
        import psycopg

        parts = urlsplit(url)
        admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, parts.fragment))
        name = parts.path.lstrip("/")
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass


def live_redis_url() -> str | None:
    """Live servers use their own Redis database, so they never see the unit tests' keys."""
    url = os.environ.get("REDIS_URL")
    if not url:
        return None
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/2", parts.query, parts.fragment))


@dataclass
class LiveServer:
    database_url: str
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="enigmo-live-", suffix=".log")[1]))

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.pop("REDIS_URL", None)
        env["DATABASE_URL"] = self.database_url
        redis_url = live_redis_url()
        if redis_url:
            env["REDIS_URL"] = redis_url
        # Servers on the same database share one Redis namespace; others never see it.
        env["ENIGMO_REDIS_PREFIX"] = "live" + hashlib.sha1(self.database_url.encode()).hexdigest()[:10]
        env.setdefault("ENIGMO_RATE_LIMITS", "0")
        env["ENIGMO_EMBEDDED_PURGE"] = env.get("ENIGMO_EMBEDDED_PURGE", "0")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env_overrides)
        return env

    def migrate(self) -> None:
        subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=self.env, check=True)

    def shell(self, code: str) -> str:
        """Run Python in a Django shell against this server's database and Redis; returns stdout."""
        result = subprocess.run(
            [PYTHON, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        return result.stdout

    def start(self, timeout: float = 30.0) -> LiveServer:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "enigmo.serve", "-b", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http_url + "/api/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not become healthy in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush; whatever was committed must survive."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()


def start_live_server(
    env_overrides: dict[str, str] | None = None, database_url: str | None = None, port: int | None = None
) -> LiveServer:
    """Start daphne on `port` (default: a free one). Without `database_url`, a fresh database is
    created and migrated; pass another server's `database_url` to run a second process on the
    same data."""
    fresh = database_url is None
    server = LiveServer(database_url=database_url or fresh_database_url(), env_overrides=dict(env_overrides or {}), port=port or free_port())
    if fresh:
        server.migrate()
    return server.start()
