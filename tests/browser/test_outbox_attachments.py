"""Attachments go through the persistent outbox: the encrypted blob is sealed in the local store
with the outbox item and uploaded inside the send attempt, so going offline or reloading in the
middle of an upload delivers the image later, once."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import chatting
from tests.browser.test_features import PNG

pytestmark = [pytest.mark.browser, pytest.mark.live]


def images(person):
    return person.page.get_by_role("log", name="Messages").locator(".message .attachment img")


def attach(person, name):
    person.page.set_input_files("#attach-input", files=[{"name": name, "mimeType": "image/png", "buffer": PNG}])
    expect(person.page.locator("#attachment-preview")).to_be_visible()
    person.page.get_by_role("button", name="Send").click()


def test_an_image_sent_offline_or_cut_by_a_reload_is_delivered_once(people):
    alice, bob = chatting(people)

    # Offline: the image waits in the outbox (shown pending, with its local preview).
    alice.context.set_offline(True)
    attach(alice, "offline.png")
    bubble = alice.page.locator(".message").filter(has_text="offline.png")
    expect(bubble.locator(".ticks")).to_have_attribute("data-status", "pending")
    expect(alice.page.locator("#send-error")).to_have_text("")
    alice.page.wait_for_timeout(1500)
    alice.context.set_offline(False)
    expect(images(bob)).to_have_count(1, timeout=30000)
    expect(bob.page.get_by_role("log", name="Messages").get_by_text("offline.png")).to_have_count(1)
    expect(bubble.locator(".ticks")).not_to_have_attribute("data-status", "pending", timeout=20000)

    # The upload fails (network error) and the page is reloaded before it is retried: the sealed
    # blob is still in this browser, and the outbox sends it after the reload.
    uploads = []

    def refuse(route):
        uploads.append(route.request.url)
        route.abort("internetdisconnected")

    alice.page.route("**/media/upload**", refuse)
    attach(alice, "reloaded.png")
    for _ in range(100):
        if uploads:
            break
        alice.page.wait_for_timeout(100)
    assert uploads, "the outbox tried the upload"
    alice.page.unroute("**/media/upload**")
    alice.page.reload()
    alice.wait_ready()
    alice.open_conversation("bob")
    expect(images(bob)).to_have_count(2, timeout=30000)
    expect(bob.page.get_by_role("log", name="Messages").get_by_text("reloaded.png")).to_have_count(1)
    natural = images(bob).last.evaluate(
        "img => Promise.race([img.decode().then(() => img.naturalWidth),"
        " new Promise((_, reject) => setTimeout(() => reject(new Error('decode timed out')), 20000))])"
    )
    assert natural == 2
    # Exactly once each, also after the outbox had time to retry again.
    bob.page.wait_for_timeout(2000)
    expect(images(bob)).to_have_count(2)
    assert "could not be decrypted" not in bob.page.get_by_role("log", name="Messages").inner_text()
