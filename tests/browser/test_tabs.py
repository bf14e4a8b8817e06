"""Two tabs of one browser logged in as the same user send at once: bob decrypts every message
(no ratchet fork), neither tab's CSRF token goes stale when the other logs in, and the keys the
tabs share live only sealed in IndexedDB under a non-extractable key, never in localStorage.
The lock itself is proven deterministically in tests/js/engine.test.mjs."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import TIMEOUT_MS

pytestmark = [pytest.mark.browser, pytest.mark.live]

# Run in the page: the vault's wrapping key as stored, every sealed row's fields, and the device
# seed decrypted with that key (WebCrypto may use a non-extractable key, it just never exports it).
STORAGE_PROBE = """async () => {
  const db = await new Promise((resolve, reject) => {
    const req = indexedDB.open("enigmo");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const read = (store, op) => new Promise((resolve, reject) => {
    const req = op(db.transaction(store).objectStore(store));
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const key = await read("meta", (s) => s.get("vault-key"));
  const rows = await read("sealed", (s) => s.getAll());
  let exported = "refused";
  try { await crypto.subtle.exportKey("raw", key); exported = "exported"; } catch {}
  const self = rows.find((r) => r.k === "self");
  const plain = await crypto.subtle.decrypt(
    { name: "AES-GCM", iv: self.iv, additionalData: new TextEncoder().encode("self") }, key, self.ct);
  const parsed = JSON.parse(new TextDecoder().decode(plain));
  const hex = (u8) => [...u8].map((b) => b.toString(16).padStart(2, "0")).join("");
  const b64ToHex = (t) => hex(Uint8Array.from(atob(t), (c) => c.charCodeAt(0)));
  const web = [];
  for (const store of [localStorage, sessionStorage]) {
    for (let i = 0; i < store.length; i++) web.push(store.key(i) + "=" + store.getItem(store.key(i)));
  }
  db.close();
  return {
    isCryptoKey: key instanceof CryptoKey, extractable: key.extractable, algorithm: key.algorithm.name,
    exported, rowFields: [...new Set(rows.map((r) => Object.keys(r).sort().join(",")))],
    rawRows: rows.map((r) => hex(r.ct)).join(""),
    seeds: [b64ToHex(parsed.deviceSeed.$b), b64ToHex(parsed.accountSeed.$b)],
    seedsB64: [parsed.deviceSeed.$b, parsed.accountSeed.$b],
    web,
  };
}"""


BURST_SIZE = 6
BURST = """({at, prefix, count}) => {
  setTimeout(() => {
    const input = document.getElementById("composer-input");
    const send = document.getElementById("send");
    for (let i = 0; i < count; i++) {
      input.value = `${prefix} ${i}`;
      send.click();
    }
  }, at - Date.now());
}"""


def test_two_tabs_of_one_user_send_at_once_and_bob_decrypts_every_message(people):
    alice = people("alice").register()
    bob = people("bob").register()
    alice.start_conversation("bob")
    tab2 = alice.context.new_page()
    errors: list[str] = []
    tab2.on("pageerror", lambda exc: errors.append(str(exc)))
    tab2.goto("/")
    tab2.wait_for_selector("body[data-ready=true]")
    tab2.locator("#conversation-list button", has_text="bob").first.click()
    tab2.wait_for_selector("#chat-view:not([hidden])")

    # Neither tab has a session with bob yet. At one agreed instant each tab sends a burst: both
    # start a session and encrypt while the other does.
    tabs = (alice.page, tab2)
    at = tab2.evaluate("Date.now()") + 1500
    for n, tab in enumerate(tabs, 1):
        tab.evaluate(BURST, {"at": at, "prefix": f"tab {n} says", "count": BURST_SIZE})
    alice.page.wait_for_timeout(2000)

    expect(bob.page.locator("#conversation-list button", has_text="alice")).to_be_visible(timeout=20000)
    bob.open_conversation("alice")
    log = bob.page.get_by_role("log", name="Messages")
    for i in range(BURST_SIZE):
        for n in (1, 2):
            expect(bob.message(f"tab {n} says {i}")).to_have_count(1, timeout=20000)
    assert "could not be decrypted" not in log.inner_text()
    # Each tab sees its own messages leave (no bubble stuck pending because the other tab sent it).
    for n, tab in enumerate(tabs, 1):
        for i in range(BURST_SIZE):
            bubble = tab.get_by_role("log", name="Messages").locator(".message").filter(
                has=tab.locator("p.body").filter(has_text=f"tab {n} says {i}"))
            expect(bubble.locator(".ticks")).not_to_have_attribute("data-status", "pending", timeout=TIMEOUT_MS)

    # The ratchet carries on in both directions after the race.
    bob.send("got them all")
    # Only one tab holds the device's socket (a second one replaces the first): either shows it.
    deadline = time.monotonic() + 20
    while not any(tab.get_by_role("log", name="Messages").get_by_text("got them all").count() for tab in tabs):
        assert time.monotonic() < deadline, "neither tab decrypted bob's reply"
        alice.page.wait_for_timeout(200)
    alice.send("and one more")
    expect(bob.message("and one more")).to_have_count(1, timeout=20000)
    assert "could not be decrypted" not in log.inner_text()

    for tab in tabs:
        probe = tab.evaluate(STORAGE_PROBE)
        assert probe["isCryptoKey"] and probe["algorithm"] == "AES-GCM"
        assert probe["extractable"] is False and probe["exported"] == "refused"
        assert probe["rowFields"] == ["ct,g,iv,k"]  # nothing stored beside the sealed blob
        for seed in probe["seeds"]:
            assert len(seed) == 64 and seed not in probe["rawRows"]
        stored = "".join(probe["web"])
        for secret in probe["seeds"] + probe["seedsB64"]:
            assert secret not in stored
        assert probe["web"] == [], "nothing at all in localStorage or sessionStorage"
    assert errors == [] and alice.errors == [] and bob.errors == []


def test_a_message_one_tab_could_not_send_is_sent_by_the_other_and_both_tabs_show_it_sent(people):
    """Tabs share the outbox: tab 1 writes a message while its requests fail, tab 2 sends it with
    its own. Tab 1's bubble leaves "pending" although tab 1 never got an answer, each tab shows
    the other's message, and bob gets each exactly once."""
    alice = people("alice").register()
    bob = people("bob").register()
    alice.start_conversation("bob")
    tab2 = alice.context.new_page()
    tab2.goto("/")
    tab2.wait_for_selector("body[data-ready=true]")
    tab2.locator("#conversation-list button", has_text="bob").first.click()
    tab2.wait_for_selector("#chat-view:not([hidden])")

    posts = []

    def is_send(request):
        return request.method == "POST" and request.url.rstrip("/").endswith("/messages")

    def cut(route):
        if is_send(route.request):
            posts.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    def hold(route):  # tab 2 cannot send either until tab 1's bubble is seen pending
        route.abort() if is_send(route.request) else route.continue_()

    alice.page.route("**/api/**", cut)
    tab2.route("**/api/**", hold)
    alice.send("written in tab 1")
    deadline = time.monotonic() + 20
    while not posts:  # tab 1 tried and failed: its message waits in the outbox
        assert time.monotonic() < deadline, "tab 1 never tried to send"
        alice.page.wait_for_timeout(100)
    mine = alice.message("written in tab 1")
    expect(mine.locator(".ticks")).to_have_attribute("data-status", "pending")
    tab2.unroute("**/api/**", hold)

    tab2.get_by_role("textbox", name="Message").fill("written in tab 2")
    tab2.get_by_role("button", name="Send").click()

    bob.open_conversation("alice")
    for text in ("written in tab 1", "written in tab 2"):
        expect(bob.message(text)).to_have_count(1, timeout=20000)
    # tab 1 never got the answer to its send, and its own retry finds the outbox empty
    expect(mine.locator(".ticks")).not_to_have_attribute("data-status", "pending", timeout=10000)
    expect(alice.message("written in tab 2")).to_have_count(1)
    in_tab2 = tab2.get_by_role("log", name="Messages").locator(".message").filter(
        has=tab2.locator("p.body").filter(has_text="written in tab 1"))
    expect(in_tab2).to_have_count(1)
    expect(in_tab2.locator(".ticks")).not_to_have_attribute("data-status", "pending")
    alice.page.wait_for_timeout(6000)  # past tab 1's retry: nothing is sent twice
    for text in ("written in tab 1", "written in tab 2"):
        expect(bob.message(text)).to_have_count(1)
    # the aborted requests are logged by Chromium; nothing else went wrong
    assert [e for e in alice.errors if "Failed to load resource" not in e] == [] and bob.errors == []
