"""The conversation list while messages arrive elsewhere: unread counts that match what arrived
(also after a reload and for a brand-new conversation), previews decrypted in this browser, the
time of the last activity, filtering; and notifications without message text for a hidden tab."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import database_dump
from tests.browser.helpers import chatting

pytestmark = [pytest.mark.browser, pytest.mark.live]


def row(person, title):
    return person.page.locator("#conversation-list button", has_text=title)


def page_now_ms(person) -> float:
    return person.page.evaluate("Date.now()")


def test_unread_counts_previews_times_order_and_filter(server, people):
    alice, bob = chatting(people)  # alice and bob have their chat open
    carol = people("carol").register()
    carol.start_conversation("alice")
    carol.send("hi alice, carol here")
    # A brand-new conversation counts its first message once (the listing already has it).
    expect(row(alice, "carol").locator(".unread")).to_have_text("1", timeout=20000)
    before = page_now_ms(alice)
    carol.send("the second from carol")
    carol.send("and a third, the latest")
    carol_row = row(alice, "carol")
    expect(carol_row.locator(".unread")).to_have_text("3", timeout=20000)
    expect(carol_row).to_have_attribute("aria-label", re.compile(r"carol.*, 3 unread"))
    after = page_now_ms(alice)

    # The preview is the decrypted text of the last message; the server never had it.
    expect(carol_row.locator(".conv-preview")).to_have_text("and a third, the latest")
    expect(row(alice, "bob").locator(".conv-preview")).to_have_text("You: first hello")
    assert b"and a third, the latest" not in database_dump(server)
    # Last activity: a machine-readable time of the last message, shown as text.
    stamp = carol_row.locator("time.conv-time")
    shown_ms = datetime.fromisoformat(stamp.get_attribute("datetime").replace("Z", "+00:00")).timestamp() * 1000
    assert before - 1000 <= shown_ms <= after + 1000, (before, shown_ms, after)
    expect(stamp).to_have_text(re.compile(r"\d"))
    # The most recently active conversation comes first; the open one has no count.
    expect(alice.page.locator("#conversation-list button").first).to_contain_text("carol")
    expect(row(alice, "bob").locator(".unread")).to_have_count(0)

    # Opening it clears the count, here and (through mark-read) after a reload.
    alice.open_conversation("carol")
    expect(carol_row.locator(".unread")).to_have_count(0)
    expect(carol_row).not_to_have_attribute("aria-label", re.compile("unread"))

    # Messages that arrive while alice's page is closed are counted once: the listing on load
    # includes them, and the backlog delivered over the socket right after must not add them again.
    alice.page.goto("about:blank")
    bob.send("while you were away")
    bob.send("and once more")
    expect(bob.message("and once more").locator(".ticks")).to_have_attribute("data-status", "sent", timeout=20000)
    alice.open()
    alice.wait_ready()
    # The preview is decrypted from the backlog: once it shows the last one, both have been counted.
    expect(row(alice, "bob").locator(".conv-preview")).to_have_text("and once more", timeout=20000)
    expect(row(alice, "bob").locator(".unread")).to_have_text("2")
    expect(row(alice, "carol").locator(".unread")).to_have_count(0)

    # The search box filters the list by name; no match says so; clearing shows every conversation.
    search = alice.page.get_by_label("Search conversations")
    search.fill("car")
    expect(alice.page.locator("#conversation-list button")).to_have_count(1)
    expect(alice.page.locator("#conversation-list button")).to_contain_text("carol")
    search.fill("nobody by this name")
    expect(alice.page.locator("#conversation-list button")).to_have_count(0)
    expect(alice.page.locator("#conversation-list")).to_contain_text("No conversations match")
    search.fill("")
    expect(alice.page.locator("#conversation-list button")).to_have_count(2)
    alice.screenshot("14-conversation-list")


# Runs before the app: a tab whose visibility the test sets, and window.Notification replaced by a
# recorder (the permission itself is the real one, granted to the context).
HIDDEN_TAB_AND_NOTIFICATIONS = """(() => {
  let hidden = false;
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get: () => hidden });
  Object.defineProperty(Document.prototype, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
  window.__setHidden = (value) => {
    hidden = value;
    document.dispatchEvent(new Event("visibilitychange"));
  };
  const Real = window.Notification;
  window.__notifications = [];
  window.Notification = class {
    constructor(title, options = {}) {
      this.title = title;
      this.body = options.body || "";
      this.onclick = null;
      window.__notifications.push(this);
    }
    static get permission() { return Real.permission; }
    static requestPermission() { return Real.requestPermission(); }
  };
})()"""

NOTIFICATIONS = "() => window.__notifications.map((n) => ({ title: n.title, body: n.body }))"


def test_a_hidden_tab_notifies_without_the_text_and_reads_only_when_seen(server, people):
    alice = people("alice")
    alice.context.grant_permissions(["notifications"], origin=server.http_url)
    alice.context.add_init_script(HIDDEN_TAB_AND_NOTIFICATIONS)
    alice.register()
    expect(alice.page.locator("#notify-banner")).to_be_hidden()  # already allowed: nothing to ask
    bob = people("bob").register()
    alice.start_conversation("bob")
    alice.send("hello bob")
    expect(row(bob, "alice")).to_be_visible(timeout=20000)
    bob.open_conversation("alice")

    # Visible: the message shows, no notification.
    bob.send("you are looking at this")
    expect(alice.message("you are looking at this")).to_be_visible(timeout=20000)
    assert alice.page.evaluate(NOTIFICATIONS) == []

    # Hidden: a notification that says only that something came, and no read receipt yet.
    alice.page.evaluate("window.__setHidden(true)")
    secret = "the meeting moved to 6pm"
    bob.send(secret)
    alice.page.wait_for_function("() => window.__notifications.length === 1")
    shown = alice.page.evaluate(NOTIFICATIONS)[0]
    assert shown["title"] and shown["body"], shown
    for word in ("meeting", "6pm", secret):
        assert word not in shown["title"] and word not in shown["body"], shown
    expect(row(alice, "bob").locator(".unread")).to_have_text("1")
    ticks = bob.message(secret).locator(".ticks")
    expect(ticks).to_have_attribute("data-status", "delivered", timeout=20000)
    alice.page.wait_for_timeout(1000)
    expect(ticks).to_have_attribute("data-status", "delivered")

    # Back in view: read, and the count is gone.
    alice.page.evaluate("window.__setHidden(false)")
    expect(ticks).to_have_attribute("data-status", "read", timeout=20000)
    expect(row(alice, "bob").locator(".unread")).to_have_count(0)

    # Clicking a notification opens the conversation it is about.
    alice.page.get_by_role("button", name="New conversation").click()
    alice.page.get_by_label("People to add").fill("bob")
    alice.page.get_by_label("Group name").fill("Book club")
    alice.page.get_by_role("button", name="Start").click()
    expect(alice.page.locator("#chat-title")).to_have_text("Book club")
    alice.page.evaluate("window.__setHidden(true)")
    bob.send("are you there?")
    alice.page.wait_for_function("() => window.__notifications.length === 2")
    alice.page.evaluate("window.__setHidden(false)")
    alice.page.evaluate("window.__notifications[1].onclick()")
    expect(alice.page.locator("#chat-title")).to_have_text("bob")
    expect(alice.message("are you there?")).to_be_visible()
    expect(bob.message("are you there?").locator(".ticks")).to_have_attribute("data-status", "read", timeout=20000)


# Run in the page: whenever the mouse button goes down in the conversation list, the list is drawn
# again before the button comes up, as it is when a message arrives at that moment.
REDRAW_BETWEEN_PRESS_AND_RELEASE = """() => {
  const list = document.getElementById("conversation-list");
  const search = document.getElementById("conversation-search");
  list.addEventListener("mousedown", () => search.dispatchEvent(new Event("input")), true);
}"""


def test_a_click_on_a_conversation_opens_it_while_messages_redraw_the_list(people):
    alice, bob = chatting(people)
    carol = people("carol").register()
    carol.start_conversation("alice")
    carol.send("hello from carol")
    expect(row(alice, "carol").locator(".unread")).to_have_text("1", timeout=20000)

    alice.page.evaluate(REDRAW_BETWEEN_PRESS_AND_RELEASE)
    carol_row = row(alice, "carol")
    before = carol_row.element_handle()
    carol_row.click()
    expect(alice.page.locator("#chat-title")).to_have_text("carol")
    expect(alice.message("hello from carol")).to_be_visible()
    # The row is the same element, updated in place: nothing the user is pointing at is replaced.
    assert before.evaluate("(node) => node.isConnected")
    expect(carol_row).to_have_attribute("aria-current", "true")
    expect(row(alice, "bob")).to_have_attribute("aria-current", "false")

    # A message to the other conversation while carol's is open moves bob's row up, in place too.
    bob.send("bob again")
    expect(row(alice, "bob").locator(".unread")).to_have_text("1", timeout=20000)
    expect(alice.page.locator("#conversation-list button").first).to_contain_text("bob")
    assert before.evaluate("(node) => node.isConnected")
    row(alice, "bob").click()
    expect(alice.page.locator("#chat-title")).to_have_text("bob")
    expect(alice.message("bob again")).to_be_visible()
    expect(row(alice, "bob").locator(".unread")).to_have_count(0)
