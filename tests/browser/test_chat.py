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
    expect(alice.message("secret one").locator(".ticks")).to_have_attribute("data-status", re.compile("sent|delivered|read"))

    expect(bob.page.locator("#conversation-list button", has_text="alice")).to_be_visible(timeout=20000)
    bob.open_conversation("alice")
    expect(bob.message("Hello Bob, this is secret one")).to_be_visible(timeout=20000)
    bob.send("Hi Alice, secret two back")
    expect(alice.message("secret two back")).to_be_visible(timeout=20000)
    # bob has the chat open: alice's first message goes to read.
    expect(alice.message("secret one").locator(".ticks")).to_have_attribute("data-status", "read", timeout=20000)
    expect(alice.page.locator("#chat-lock")).to_contain_text("End-to-end encrypted")
    alice.screenshot("02-chat-alice")
    bob.screenshot("03-chat-bob")
    assert alice.axe() == []

    dump = database_dump(server)
    for text in (b"secret one", b"secret two", "Hello Bob".encode()):
        assert text not in dump
