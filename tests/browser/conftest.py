"""Browser fixtures: a live daphne server, Debian's Chromium driven by Playwright, one browser
context per person, screenshots in test-artifacts/ and an axe check helper."""

from __future__ import annotations

import os
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
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api as playwright_api  # a missing Playwright is a failure, never a skip
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        if browser.is_connected():  # closing a browser whose process died waits forever
            browser.close()


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

    def __init__(self, browser, server, name):
        self.name = name
        self.server = server
        self.context = browser.new_context(base_url=server.http_url)
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
        self.context.close()


@pytest.fixture
def people(browser, server):
    created = []

    def make(name):
        person = Person(browser, server, name)
        created.append(person)
        return person

    yield make
    for person in created:
        person.close()
