"""Privacy switches, the "Not sent" state with Retry, and group members in a real browser."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import chatting

pytestmark = [pytest.mark.browser, pytest.mark.live]

SEND_ROUTE = "**/api/v1/conversations/*/messages"


def current_conversation(person) -> str:
    return person.page.locator("#conversation-list button[aria-current='true']").get_attribute("data-conversation")


def server_messages(person, conversation_id):
    """What the server holds for this conversation, as this person's device sees it."""
    return person.page.evaluate(
        """async (id) => {
            const ctl = new AbortController();
            const timer = setTimeout(() => ctl.abort(), 10000);
            try {
                const r = await fetch(`/api/v1/conversations/${id}/messages?limit=100`, {credentials: 'same-origin', signal: ctl.signal});
                return (await r.json()).messages;
            } finally { clearTimeout(timer); }
        }""",
        conversation_id,
    )


def ticks(person, text):
    return person.message(text).locator(".ticks")


def test_read_receipts_off_shows_delivered_never_read_and_the_switches_survive_a_reload(people):
    """With read receipts off, bob's reading sends nothing: alice's tick stays at delivered (and the
    server has no read time). Like Signal, bob then sees no read receipts from others either."""
    alice, bob = chatting(people)
    expect(ticks(alice, "first hello")).to_have_attribute("data-status", "read", timeout=20000)  # receipts on: read

    bob.page.get_by_role("button", name="Privacy settings").click()
    dialog = bob.page.get_by_role("dialog", name="Privacy")
    receipts = dialog.get_by_role("switch", name="Send read receipts")
    presence = dialog.get_by_role("switch", name="Show when I am online and last seen")
    expect(receipts).to_be_checked()
    expect(presence).to_be_checked()
    receipts.click()
    expect(dialog.get_by_role("status")).to_have_text("Saved.")
    presence.click()
    expect(dialog.get_by_role("status")).to_have_text("Saved.")
    expect(receipts).not_to_be_checked()
    expect(presence).not_to_be_checked()
    expect(presence).to_be_focused()  # focus stays on the switch just saved
    bob.screenshot("11-privacy-settings")
    assert bob.axe() == []
    bob.page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # The switches are the server's state: a reload shows them off.
    bob.page.reload()
    bob.wait_ready()
    bob.page.get_by_role("button", name="Privacy settings").click()
    expect(dialog.get_by_role("switch", name="Send read receipts")).not_to_be_checked()
    expect(dialog.get_by_role("switch", name="Show when I am online and last seen")).not_to_be_checked()
    bob.page.keyboard.press("Escape")
    bob.open_conversation("alice")

    # bob has the chat open, receives and reads: his client marks it read, the server tells nobody.
    with bob.page.expect_request(
        lambda r: r.method == "POST" and r.url.endswith("/mark-read") and (json.loads(r.post_data or "{}").get("seq") or 0) >= 2,
        timeout=20000,
    ) as marked:
        alice.send("receipts are off now")
        expect(bob.message("receipts are off now")).to_be_visible(timeout=20000)
    marked.value.response()
    expect(ticks(alice, "receipts are off now")).to_have_attribute("data-status", "delivered", timeout=20000)
    alice.page.wait_for_timeout(1500)  # receipts are live frames: give a wrong one time to arrive
    expect(ticks(alice, "receipts are off now")).to_have_attribute("data-status", "delivered")
    stored = [m for m in server_messages(alice, current_conversation(alice)) if m["seq"] == 2]
    assert len(stored) == 1 and stored[0]["delivered_at"] and stored[0]["read_at"] is None, stored

    # Reciprocity: alice reads bob's reply, but bob (who sends no read receipts) sees delivered only.
    bob.send("my reply")
    expect(alice.message("my reply")).to_be_visible(timeout=20000)
    expect(ticks(bob, "my reply")).to_have_attribute("data-status", "delivered", timeout=20000)
    bob.page.wait_for_timeout(1000)
    expect(ticks(bob, "my reply")).to_have_attribute("data-status", "delivered")


def test_a_send_that_fails_shows_not_sent_and_retry_delivers_it_exactly_once(people):
    """The first attempt reaches the server but its answer is lost behind a 502, and the automatic
    retries get 503: the message shows "Not sent" (also after a reload). Retry sends the same
    client_message_id, so the server answers with the stored message and bob has it once."""
    alice, bob = chatting(people)
    conversation = current_conversation(alice)
    posts = []

    def flaky_gateway(route):
        if route.request.method != "POST":
            route.continue_()
            return
        posts.append(route.request.post_data_json["client_message_id"])
        if len(posts) == 1:
            route.fetch(timeout=20000)  # stored by the server; the answer never reaches the browser
            route.fulfill(status=502, json={"error": {"code": "bad_gateway", "message": "Bad gateway."}})
        else:
            route.fulfill(status=503, json={"error": {"code": "unavailable", "message": "Service unavailable."}})

    alice.page.route(SEND_ROUTE, flaky_gateway)
    alice.send("answer got lost")
    expect(ticks(alice, "answer got lost")).to_have_attribute("data-status", "failed", timeout=20000)
    failed = alice.message("answer got lost")
    expect(failed.locator(".not-sent")).to_contain_text("Not sent")
    expect(failed.get_by_role("button", name="Retry")).to_be_visible()
    assert len(posts) == 3 and len(set(posts)) == 1, posts
    expect(bob.message("answer got lost")).to_have_count(1, timeout=20000)
    alice.screenshot("12-not-sent")
    assert alice.axe() == []

    # The failed message and its Retry survive a reload (the outbox item stays sealed in the vault).
    alice.page.reload()
    alice.wait_ready()
    alice.open_conversation("bob")
    expect(ticks(alice, "answer got lost")).to_have_attribute("data-status", "failed")

    alice.page.unroute(SEND_ROUTE)
    alice.message("answer got lost").get_by_role("button", name="Retry").click()
    expect(alice.page.get_by_role("textbox", name="Message")).to_be_focused()
    # The server answers with the stored message; its read time (bob has the chat open) is fetched.
    expect(ticks(alice, "answer got lost")).to_have_attribute("data-status", "read", timeout=20000)
    expect(alice.message("answer got lost").locator(".not-sent")).to_have_count(0)
    expect(bob.message("answer got lost")).to_have_count(1)
    assert len(server_messages(bob, conversation)) == 2  # "first hello" and this one: no duplicate
    # The discarded encryptions of the failed attempts leave a gap bob's ratchet skips over.
    alice.send("after the retry")
    expect(bob.message("after the retry")).to_be_visible(timeout=20000)

    # A refusal that retrying cannot fix fails at once; Discard removes it from this browser.
    alice.page.route(SEND_ROUTE, lambda route: route.fulfill(
        status=413, json={"error": {"code": "ciphertext_too_large", "message": "The ciphertext is too large."}}))
    alice.send("refused outright")
    expect(ticks(alice, "refused outright")).to_have_attribute("data-status", "failed", timeout=10000)
    expect(alice.message("refused outright")).to_contain_text("too large")
    alice.message("refused outright").get_by_role("button", name="Discard").click()
    expect(alice.message("refused outright")).to_have_count(0)
    alice.page.unroute(SEND_ROUTE)
    alice.page.reload()
    alice.wait_ready()
    alice.open_conversation("bob")
    expect(alice.message("answer got lost")).to_have_count(1)
    expect(alice.message("refused outright")).to_have_count(0)


def test_group_members_panel_adds_removes_and_leaves(people):
    """The admin removes and re-adds a member by username; a member leaves; every client follows."""
    alice = people("alice").register()
    bob = people("bob").register()
    carol = people("carol").register()
    alice.start_conversation("bob", "carol")
    alice.send("hello group")
    for person in (bob, carol):
        expect(person.page.locator("#conversation-list button", has_text="alice")).to_be_visible(timeout=20000)
        person.open_conversation("alice")
        expect(person.message("hello group")).to_be_visible(timeout=20000)

    alice.page.get_by_role("button", name="Members").click()
    dialog = alice.page.get_by_role("dialog", name="Members")
    members = dialog.get_by_role("list", name="Members of this group").get_by_role("listitem")
    expect(members).to_have_count(3, timeout=10000)
    expect(members.first).to_contain_text("alice · you · admin")
    alice.screenshot("13-members")
    assert alice.axe() == []

    dialog.get_by_role("button", name="Remove carol").click()
    alice.page.get_by_role("dialog", name="Remove carol?").get_by_role("button", name="Remove").click()
    expect(members).to_have_count(2)
    expect(carol.page.locator("#left-notice")).to_be_visible(timeout=20000)
    expect(carol.page.locator("#composer")).to_be_hidden()
    expect(alice.page.locator("#chat-subtitle")).to_have_text("2 members")

    dialog.get_by_label("Add a member").fill("carol")
    dialog.get_by_role("button", name="Add", exact=True).click()
    expect(dialog.get_by_role("status")).to_have_text("Added carol.")
    expect(members).to_have_count(3)
    expect(carol.page.locator("#composer")).to_be_visible(timeout=20000)
    alice.page.keyboard.press("Escape")
    alice.send("welcome back carol")
    expect(carol.message("welcome back carol")).to_be_visible(timeout=20000)

    # bob is no admin: no add or remove, but he can leave.
    bob.page.get_by_role("button", name="Members").click()
    bob_dialog = bob.page.get_by_role("dialog", name="Members")
    expect(bob_dialog.get_by_role("listitem")).to_have_count(3, timeout=10000)
    expect(bob_dialog.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)
    expect(bob_dialog.get_by_label("Add a member")).to_be_hidden()
    bob_dialog.get_by_role("button", name="Leave group").click()
    bob.page.get_by_role("dialog", name="Leave this group?").get_by_role("button", name="Leave").click()
    expect(bob.page.locator("#left-notice")).to_be_visible(timeout=10000)
    expect(bob.page.get_by_role("log", name="Messages")).to_contain_text("You left the group.")
    expect(alice.page.get_by_role("log", name="Messages")).to_contain_text("bob is no longer in the group.", timeout=20000)
    expect(alice.page.locator("#chat-subtitle")).to_have_text("2 members")
    alice.send("after bob left")
    expect(carol.message("after bob left")).to_be_visible(timeout=20000)
    expect(bob.message("after bob left")).to_have_count(0)
