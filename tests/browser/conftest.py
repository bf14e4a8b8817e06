"""Browser fixtures: a live daphne server, Debian's Chromium driven by Playwright, one browser
context per person, screenshots in test-artifacts/ and an axe check helper."""

from __future__ import annotations

import os
import signal
import threading
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("ENIGMO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",  # a small or full /dev/shm must not stall the renderer
]
TIMEOUT_MS = 30_000  # every Playwright wait has a bound; evaluate() has none of its own
CLOSE_SECONDS = 10  # Playwright's close calls have no timeout: past this the Chromium is killed
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := _parent_pid(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _chromium_main_pids() -> set[int]:
    """The main process of every Chromium this test process started (through Playwright's driver)."""
    mains = set()
    for pid in _descendants(os.getpid()):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            parent_exe = os.readlink(f"/proc/{_parent_pid(pid)}/exe")
        except (OSError, TypeError):
            continue
        if exe.endswith("/chromium") and not parent_exe.endswith("/chromium"):
            mains.add(pid)
    return mains


class Chromium:
    """The Chromium of one test module. One that hangs while closing is killed (its pending
    Playwright calls then fail at once) and the next person gets a freshly launched one."""

    def __init__(self, playwright):
        self.playwright = playwright
        self.browser = None
        self.pids: set[int] = set()
        self.generation = 0
        self.killed = False

    def get(self):
        if self.browser is None or self.killed or not self.browser.is_connected():
            before = _chromium_main_pids()
            self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
            self.pids = _chromium_main_pids() - before
            self.generation += 1
            self.killed = False
        return self.browser

    def kill(self, generation: int) -> None:
        """Called from a watchdog thread: signals only, no Playwright call."""
        if generation != self.generation:
            return
        self.killed = True
        self.generation += 1  # whoever still holds a context of it must not wait on it
        for pid in self.pids:
            for process in [*_descendants(pid), pid]:
                try:
                    os.kill(process, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pids = set()

    def bounded(self, generation: int, close) -> None:
        """Run a close call; if it has not returned after CLOSE_SECONDS, kill this Chromium."""
        from playwright.sync_api import Error as PlaywrightError

        if generation != self.generation:
            return  # killed already: its contexts went with it, and closing them could wait forever
        watchdog = threading.Timer(CLOSE_SECONDS, self.kill, args=(generation,))
        watchdog.start()
        try:
            close()
        except PlaywrightError:
            if generation == self.generation:
                raise  # a failure of its own, not the kill
        finally:
            watchdog.cancel()
        if generation != self.generation:
            warnings.warn(f"Chromium did not close within {CLOSE_SECONDS} s and was killed", stacklevel=2)

    def close(self) -> None:
        if self.browser is not None and not self.killed and self.browser.is_connected():  # closing a dead one waits forever
            self.bounded(self.generation, self.browser.close)


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api as playwright_api  # a missing Playwright is a failure, never a skip
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    with playwright_api.sync_playwright() as p:
        chromium = Chromium(p)
        chromium.get()
        yield chromium
        chromium.close()


@pytest.fixture
def server():
    """A live daphne on a port chosen first, so its own origin is on the WebSocket allow-list."""
    from tests.live import drop_database, free_port, start_live_server

    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    live = start_live_server(
        {
            "ENIGMO_WS_ALLOWED_ORIGINS": origin,
            "ENIGMO_CSRF_TRUSTED_ORIGINS": origin,
            "ENIGMO_EMBEDDED_PURGE": "1",
            "ENIGMO_PURGE_INTERVAL_SECONDS": "2",
            "ENIGMO_RELAY_TICK_SECONDS": "2",
        },
        port=port,
    )
    yield live
    live.stop()
    drop_database(live.database_url)


def database_dump(server) -> bytes:
    """Every byte the server stored, to search for plaintext: the SQLite file or a pg_dump-like
    export of every table through the ORM of a subprocess."""
    import subprocess
    import sys

    script = (
        "import django,json;django.setup();from django.apps import apps;out=[]\n"
        "for m in apps.get_models():\n"
        "    for row in m.objects.all().values():\n"
        "        out.append(repr(row))\n"
        "print('\\n'.join(out))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**server.env, "DJANGO_SETTINGS_MODULE": "enigmo.settings"},
                            capture_output=True, check=True, timeout=120)
    dump = result.stdout
    media = ROOT / "var" / "media"
    if media.exists():
        for f in media.rglob("*"):
            if f.is_file():
                dump += f.read_bytes()
    return dump


class Person:
    """One user in their own browser context (own cookies and IndexedDB)."""

    def __init__(self, chromium, server, name):
        self.name = name
        self.server = server
        self.chromium = chromium
        self.context = chromium.get().new_context(base_url=server.http_url)
        self.generation = chromium.generation
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.set_default_navigation_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)

    def open(self):
        self.page.goto("/")
        return self

    def wait_ready(self, timeout=30000):
        self.page.wait_for_selector("body[data-ready=true]", timeout=timeout)

    def register(self):
        self.open()
        self.page.get_by_label("Username").fill(self.name)
        self.page.get_by_role("button", name="Create account").click()
        self.wait_ready()
        return self

    def start_conversation(self, *usernames):
        page = self.page
        page.get_by_role("button", name="New conversation").click()
        page.get_by_label("People to add").fill(", ".join(usernames))
        page.get_by_role("button", name="Start").click()
        page.wait_for_selector("#chat-view:not([hidden])")
        page.wait_for_selector("#new-conversation-dialog", state="hidden")

    def open_conversation(self, title):
        self.page.locator("#conversation-list button", has_text=title).first.click()
        self.page.wait_for_selector("#chat-view:not([hidden])")

    def send(self, text):
        self.page.get_by_role("textbox", name="Message").fill(text)
        self.page.get_by_role("button", name="Send").click()

    def message(self, text):
        return self.page.get_by_role("log", name="Messages").locator(".message").filter(
            has=self.page.locator("p.body").filter(has_text=text)
        )

    def screenshot(self, name):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def axe(self):
        """Serious and critical axe violations on the current screen."""
        if not AXE.exists():
            pytest.fail("npm package axe-core is not installed (node_modules/axe-core/axe.min.js)")
        self.page.evaluate(AXE.read_text())  # evaluate is not subject to the page's CSP
        result = self.page.evaluate(
            """(ms) => Promise.race([
                axe.run(document, {resultTypes: ['violations']}),
                new Promise((_, reject) => setTimeout(() => reject(new Error('axe.run timed out')), ms)),
            ])""",
            TIMEOUT_MS,
        )
        return [
            {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]

    def close(self):
        """Pages one by one, then the context, without beforeunload handlers; a Chromium stuck in
        it (a revoked browser erasing its vault as it closes once hung here for minutes) is killed
        after CLOSE_SECONDS, so one browser never hangs the rest of the suite."""
        def close_all():
            for page in list(self.context.pages):
                page.close(run_before_unload=False)
            self.context.close()

        self.chromium.bounded(self.generation, close_all)


@pytest.fixture
def people(browser, server):
    created = []

    def make(name):
        person = Person(browser, server, name)
        created.append(person)
        return person

    yield make
    failures = []
    for person in created:  # every one, even after a failure
        try:
            person.close()
        except Exception as exc:  # noqa: BLE001 - reported below, after the others are closed
            failures.append(exc)
    if failures:
        raise failures[0]
