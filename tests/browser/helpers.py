"""Steps several browser tests share."""

from __future__ import annotations

from playwright.sync_api import expect


def chatting(people, alice=None, first="first hello"):
    """alice and bob registered, with a direct conversation open on both sides (`alice`: a
    person prepared before registering, e.g. with a clock or an init script)."""
    alice = (alice or people("alice")).register()
    bob = people("bob").register()
    alice.start_conversation("bob")
    alice.send(first)
    expect(bob.page.locator("#conversation-list button", has_text="alice")).to_be_visible(timeout=20000)
    bob.open_conversation("alice")
    try:
        expect(bob.message(first)).to_be_visible(timeout=20000)
    except AssertionError:
        for p in (alice, bob):
            p.screenshot(f"debug-{p.name}")
        raise AssertionError(f"alice: {alice.page.locator('#chat').inner_text()} {alice.errors}\nbob: {bob.page.locator('#chat').inner_text()} {bob.errors}") from None
    return alice, bob
