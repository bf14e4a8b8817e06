#!/usr/bin/env python3
"""Set up and run Enigmo with nothing but Python 3.11, Node/npm and git.

    python3 dev.py run     # venv + dependencies + migrate, then daphne on http://127.0.0.1:8000
    python3 dev.py test    # venv + dependencies, then the whole test suite (Python and JS)

Both are idempotent: dependencies are reinstalled only when their pinned files change.
The embedded default uses SQLite and an in-memory channel layer; set DATABASE_URL and
REDIS_URL for the production profile.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"


def say(message: str) -> None:
    print(f"[enigmo] {message}", flush=True)


def run(*args: str, **kwargs) -> None:
    subprocess.run(args, cwd=ROOT, check=True, **kwargs)


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()


def ensure_python_deps(requirements: str) -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"Enigmo needs Python 3.11 (Django 5.2 LTS); this is {sys.version.split()[0]}")
    if not PY.exists():
        say("creating .venv")
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{requirements}"
    wanted = digest(ROOT / "requirements.txt", ROOT / "requirements-test.txt")
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say(f"installing {requirements}")
    run(str(PY), "-m", "pip", "install", "-qq", "--disable-pip-version-check", "-r", requirements)
    stamp.write_text(wanted)


def ensure_node_deps() -> None:
    stamp = ROOT / "node_modules" / ".enigmo-installed"
    wanted = digest(ROOT / "package.json", ROOT / "package-lock.json")
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say("installing npm packages")
    run("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
    stamp.write_text(wanted)


def ensure_chromium() -> None:
    """The browser tests drive Debian's Chromium: Playwright cannot download its own browser
    here. Installed with apt when this is root on Debian, else a clear message and exit."""
    chromium = Path(os.environ.get("ENIGMO_CHROMIUM", "/usr/bin/chromium"))
    if chromium.exists():
        return
    if os.geteuid() == 0 and Path("/usr/bin/apt-get").exists():
        say("installing chromium (apt-get) for the browser tests")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, stdout=subprocess.DEVNULL)
        if chromium.exists():
            return
    sys.exit(f"The browser tests need Chromium at {chromium}: install Debian's chromium package "
             "(apt-get install chromium) or set ENIGMO_CHROMIUM to a Chromium binary.")


def manage(*args: str) -> None:
    run(str(PY), "manage.py", *args)


def cmd_run(argv: list[str]) -> int:
    ensure_python_deps("requirements.txt")
    ensure_node_deps()
    (ROOT / "var").mkdir(exist_ok=True)
    manage("migrate", "--no-input", "-v", "0")
    host = os.environ.get("ENIGMO_HOST", "127.0.0.1")
    port = os.environ.get("ENIGMO_PORT", "8000")
    say(f"serving on http://{host}:{port}  (Ctrl-C stops)")
    os.chdir(ROOT)
    os.execv(str(PY), [str(PY), "-m", "enigmo.serve", "-b", host, "-p", port, *argv])
    return 0


def cmd_test(argv: list[str]) -> int:
    ensure_python_deps("requirements-test.txt")
    ensure_node_deps()
    if not argv or any("browser" in arg for arg in argv):
        ensure_chromium()
    (ROOT / "var").mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ENIGMO_EMBEDDED_PURGE", "0")
    env.setdefault("PYTHONUNBUFFERED", "1")  # progress reaches a piped log as it happens
    profile = "production (PostgreSQL + Redis)" if env.get("DATABASE_URL") or env.get("REDIS_URL") else "embedded (SQLite + in-memory)"
    failures = 0
    js_tests = sorted((ROOT / "tests" / "js").glob("*.test.mjs"))
    if js_tests and not argv:
        say("JavaScript tests: node --test")
        failures += subprocess.run(["node", "--test", "--test-reporter=spec", *map(str, js_tests)], cwd=ROOT).returncode != 0
    say(f"Python tests on the {profile} profile")
    failures += subprocess.run([str(PY), "-m", "pytest", *argv], cwd=ROOT, env=env).returncode != 0
    return 1 if failures else 0


def main() -> int:
    commands = {"run": cmd_run, "test": cmd_test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
