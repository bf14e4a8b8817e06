"""Two people in two browser contexts: end-to-end encrypted chat through the real relay."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import database_dump

pytestmark = [pytest.mark.browser, pytest.mark.live]


def test_alice_and_bob_chat_both_ways_and_the_server_holds_no_plaintext(server, people):
    alice = people("alice").register()
    bob = people("bob").register()

    alice.start_conversation("bob")
    alice.send("Hello Bob, this is secret one")
    ticks = alice.message("secret one").locator(".ticks")
    expect(ticks).to_have_attribute("data-status", re.compile("sent|delivered"))

    # bob's browser received it (it is in his list) but he has not opened the chat: delivered, not read.
    expect(bob.page.locator("#conversation-list button", has_text="alice")).to_be_visible(timeout=20000)
    expect(ticks).to_have_attribute("data-status", "delivered", timeout=20000)
    bob.page.wait_for_timeout(1000)
    expect(ticks).to_have_attribute("data-status", "delivered")
    bob.open_conversation("alice")
    expect(bob.message("Hello Bob, this is secret one")).to_be_visible(timeout=20000)
    bob.send("Hi Alice, secret two back")
    expect(alice.message("secret two back")).to_be_visible(timeout=20000)
    # bob has the chat open: alice's first message goes to read.
    expect(ticks).to_have_attribute("data-status", "read", timeout=20000)
    expect(alice.page.locator("#chat-lock")).to_contain_text("End-to-end encrypted")
    alice.screenshot("02-chat-alice")
    bob.screenshot("03-chat-bob")
    assert alice.axe() == []

    dump = database_dump(server)
    for text in (b"secret one", b"secret two", b"Hello Bob"):
        assert text not in dump


def test_a_group_name_reaches_every_member_end_to_end_encrypted(server, people):
    """The name travels in an E2EE `meta` control message: bob's list shows it, the server has no copy."""
    alice = people("alice").register()
    bob = people("bob").register()

    page = alice.page
    page.get_by_role("button", name="New conversation").click()
    page.get_by_label("People to add").fill("bob")
    page.get_by_label("Group name").fill("Hiking")
    page.get_by_role("button", name="Start").click()
    page.wait_for_selector("#chat-view:not([hidden])")
    expect(page.locator("#conversation-list button", has_text="Hiking")).to_be_visible()

    expect(bob.page.locator("#conversation-list button", has_text="Hiking")).to_be_visible(timeout=20000)
    bob.page.reload()  # kept in bob's vault, not only in memory
    bob.wait_ready()
    expect(bob.page.locator("#conversation-list button", has_text="Hiking")).to_be_visible()
    bob.open_conversation("Hiking")
    alice.send("Boots on at seven")
    expect(bob.message("Boots on at seven")).to_be_visible(timeout=20000)

    dump = database_dump(server)
    assert b"Hiking" not in dump and b"Boots on" not in dump


def test_presence_dots_show_right_after_load_without_a_presence_event(people):
    """Who is online comes with the conversation detail on connect, not only from later events."""
    alice = people("alice").register()
    bob = people("bob").register()
    alice.start_conversation("bob")
    alice.send("ping")
    expect(bob.page.locator("#conversation-list button", has_text="alice")).to_be_visible(timeout=20000)

    alice.page.reload()  # bob stays online throughout: no presence event about him reaches alice
    alice.wait_ready()
    row = alice.page.locator("#conversation-list button", has_text="bob")
    expect(row.locator(".presence")).to_have_count(1, timeout=10000)
    expect(row).to_have_attribute("aria-label", re.compile("bob, online"))


def test_a_press_on_reply_survives_a_receipt_and_keyboard_focus_stays_on_the_control(people):
    """A receipt or a reaction draws a message again. A press on its Reply button held while that
    happens still replies when released, and a control focused from the keyboard keeps focus."""
    alice = people("alice").register()
    bob = people("bob").register()
    alice.start_conversation("bob")
    alice.send("press and hold")
    held = alice.message("press and hold")
    ticks = held.locator(".ticks")
    expect(bob.page.locator("#conversation-list button", has_text="alice")).to_be_visible(timeout=20000)
    expect(ticks).to_have_attribute("data-status", "delivered", timeout=20000)

    box = held.get_by_role("button", name="Reply").bounding_box()
    alice.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    alice.page.mouse.down()
    bob.open_conversation("alice")  # bob reads it: alice's message is drawn again, "read"
    expect(bob.message("press and hold")).to_be_visible(timeout=20000)
    alice.page.wait_for_timeout(1500)  # the read receipt has reached alice's page by now
    alice.page.mouse.up()
    expect(alice.page.locator("#reply-text")).to_have_text("Replying to yourself: press and hold")
    expect(ticks).to_have_attribute("data-status", "read", timeout=20000)  # drawn once released
    alice.page.get_by_role("button", name="Cancel reply").click()

    # Keyboard: focus on a message's React button; bob's reaction draws it again.
    held.get_by_role("button", name="React").focus()
    bob.message("press and hold").get_by_role("button", name="React").click()
    bob.page.get_by_role("button", name="React 👍").click()
    expect(held.locator(".reactions")).to_contain_text("👍", timeout=20000)
    focused = alice.page.locator(":focus")
    expect(focused).to_have_attribute("aria-label", "React")
    assert focused.evaluate("(node) => node.closest('.message').querySelector('.body').textContent") == "press and hold"
