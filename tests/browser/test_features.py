"""The chat features in a real browser: typing, images, history across reloads, search, the
offline outbox, replies, reactions, delete for everyone, disappearing messages, key changes."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import chatting

from tests.browser.conftest import ROOT, database_dump
from tests.browser.test_settings_and_retry import server_messages

pytestmark = [pytest.mark.browser, pytest.mark.live]

# A 2x2 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg=="
)




def test_typing_image_history_search_outbox_reply_reaction_delete_timer(server, people):
    alice, bob = chatting(people)

    # typing indicator
    alice.page.get_by_role("textbox", name="Message").press_sequentially("typ", delay=50)
    expect(bob.page.locator("#typing")).to_have_text("alice is typing…", timeout=10000)
    alice.page.get_by_role("textbox", name="Message").fill("")

    # an image round-trips, encrypted, with a preview made in the browser
    alice.page.set_input_files("#attach-input", files=[{"name": "dot.png", "mimeType": "image/png", "buffer": PNG}])
    expect(alice.page.locator("#attachment-preview")).to_be_visible()
    alice.page.get_by_role("button", name="Send").click()
    expect(bob.page.locator(".message .attachment img")).to_be_visible(timeout=20000)
    natural = bob.page.locator(".message .attachment img").evaluate(
        "img => Promise.race([img.decode().then(() => img.naturalWidth),"
        " new Promise((_, reject) => setTimeout(() => reject(new Error('decode timed out')), 20000))])"
    )
    assert natural == 2
    bob.screenshot("04-image")

    # reply and reaction
    bob.message("first hello").hover()
    bob.message("first hello").get_by_role("button", name="Reply").click()
    bob.send("a reply to you")
    expect(alice.message("a reply to you").locator(".quote")).to_contain_text("first hello", timeout=20000)
    alice.message("a reply to you").hover()
    alice.message("a reply to you").get_by_role("button", name="React").click()
    alice.page.get_by_role("button", name="React 👍").click()
    expect(bob.message("a reply to you").locator(".reactions")).to_contain_text("👍", timeout=20000)

    # history survives a reload (local encrypted store), and search finds decrypted text
    bob.page.reload()
    bob.wait_ready()
    bob.open_conversation("alice")
    expect(bob.message("first hello")).to_be_visible()
    bob.page.get_by_label("Search conversations").fill("reply to")
    expect(bob.page.locator("#search-result-list")).to_contain_text("a reply to you")
    bob.page.get_by_label("Search conversations").fill("")

    # a message composed offline is delivered after reconnect, once
    alice.context.set_offline(True)
    alice.send("written while offline")
    expect(alice.message("written while offline").locator(".ticks")).to_have_attribute("data-status", "pending")
    alice.page.wait_for_timeout(1500)
    alice.context.set_offline(False)
    expect(bob.message("written while offline")).to_have_count(1, timeout=30000)
    expect(alice.message("written while offline").locator(".ticks")).to_have_attribute("data-status", "read", timeout=20000)

    # delete for everyone
    alice.message("written while offline").hover()
    alice.message("written while offline").get_by_role("button", name="Delete for everyone").click()
    alice.page.locator("#confirm-yes").click()
    expect(bob.message("This message was deleted")).to_be_visible(timeout=20000)
    expect(bob.message("written while offline")).to_have_count(0)

    # disappearing messages
    alice.page.get_by_label("Disappearing messages").select_option("5")
    expect(bob.page.get_by_role("log", name="Messages")).to_contain_text("disappearing messages to 5 seconds", timeout=20000)
    alice.send("this one vanishes")
    expect(bob.message("this one vanishes")).to_be_visible(timeout=20000)
    bob.screenshot("05-disappearing")
    expect(bob.message("this one vanishes")).to_have_count(0, timeout=20000)
    expect(alice.message("this one vanishes")).to_have_count(0, timeout=20000)

    # help dialog and the main screens pass axe
    bob.page.locator("#message-list").focus()
    bob.page.keyboard.press("?")
    expect(bob.page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
    bob.screenshot("06-help")
    assert bob.axe() == []
    bob.page.keyboard.press("Escape")

    dump = database_dump(server)
    for text in (b"first hello", b"a reply to you", b"written while offline", b"this one vanishes", PNG):
        assert text not in dump


def replace_account_key(server, username):
    """What a malicious server (or a reinstall) looks like to a contact: another account key."""
    script = (
        "import django,os;django.setup();from keys.models import IdentityKey\n"
        f"IdentityKey.objects.filter(user__username={username!r}, kind='account').update(public_key=os.urandom(32))"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**server.env, "DJANGO_SETTINGS_MODULE": "enigmo.settings"}, check=True)


def test_safety_number_and_key_change_blocks_a_verified_contact(server, people):
    alice, bob = chatting(people)
    alice.page.get_by_role("button", name="Safety number").click()
    dialog = alice.page.get_by_role("dialog", name="Safety number")
    expect(dialog).to_be_visible()
    # the number is computed in the browser (5,200 SHA-512 rounds per side): wait for it to show
    expect(alice.page.locator("#safety-number")).to_have_text(re.compile(r"^\d{60}$"))
    digits = alice.page.locator("#safety-number").text_content()
    bob.page.get_by_role("button", name="Safety number").click()
    expect(bob.page.locator("#safety-number")).to_have_text(digits)
    alice.screenshot("07-safety-number")
    assert alice.axe() == []
    alice.page.get_by_role("button", name="Mark as verified").click()
    alice.page.keyboard.press("Escape")

    replace_account_key(server, "bob")
    alice.page.reload()
    alice.wait_ready()
    alice.open_conversation("bob")
    expect(alice.page.locator("#key-warning")).to_be_visible(timeout=20000)
    expect(alice.page.locator("#key-warning")).to_contain_text("sending is paused")
    alice.send("should not leave")
    expect(alice.page.locator("#send-error")).to_contain_text("safety number changed")
    expect(alice.message("should not leave").locator(".ticks")).to_have_attribute("data-status", "failed")
    alice.screenshot("08-key-change")
    assert alice.axe() == []  # the key-change warning and the failed message
    alice.page.get_by_role("button", name="Accept new key").click()
    expect(alice.page.locator("#key-warning")).to_be_hidden()


# What a server that wants to read bob's messages would do: give bob a new account key (its own),
# re-certify bob's real devices with it, and add a device of its own (here: mallory's browser,
# moved to bob's account) certified by that key. A client that re-encrypts to the new keys without
# a word hands the attacker the message.
SERVER_ADDS_A_DEVICE = r"""
import django, time; django.setup()
from django.contrib.auth import get_user_model
from nacl.signing import SigningKey
from enigmo.protocol.keys import device_certificate_message
from keys.models import Device, IdentityKey
User = get_user_model()
bob, mallory = User.objects.get(username="bob"), User.objects.get(username="mallory")
account = SigningKey.generate()
IdentityKey.objects.filter(user=bob, kind="account").update(public_key=bytes(account.verify_key))
stolen = Device.objects.get(user=mallory)
stolen.user, stolen.device_id = bob, Device.objects.filter(user=bob).count() + 1
stolen.save()
IdentityKey.objects.filter(device=stolen).update(user=bob)
for key in IdentityKey.objects.filter(user=bob, kind="device").select_related("device"):
    issued = int(time.time() * 1000)
    message = device_certificate_message("bob", key.device.device_id, bytes(key.public_key), issued)
    IdentityKey.objects.filter(pk=key.pk).update(certificate=account.sign(message).signature, issued_ms=issued)
"""


def test_an_unverified_contacts_key_change_is_announced_before_anything_goes_to_the_new_key(server, people):
    """bob is not verified. The server gives him a new account key, and a device of its own
    certified by it: alice's next message does not go to the new keys without a word. The
    conversation says bob's safety number changed, the warning shows, and the message waits as
    "Not sent" until alice presses Retry. What she writes after seeing the notice goes as usual."""
    alice, bob = chatting(people)
    mallory = people("mallory").register()
    mallory.close()
    subprocess.run([sys.executable, "-c", SERVER_ADDS_A_DEVICE], cwd=ROOT,
                   env={**server.env, "DJANGO_SETTINGS_MODULE": "enigmo.settings"}, check=True)
    conversation = alice.page.locator("#conversation-list button[aria-current='true']").get_attribute("data-conversation")

    alice.send("meant for bob alone")
    held = alice.message("meant for bob alone")
    expect(held.locator(".ticks")).to_have_attribute("data-status", "failed", timeout=20000)
    expect(held.locator(".not-sent")).to_contain_text("safety number changed")
    log = alice.page.get_by_role("log", name="Messages")
    expect(log.locator(".message.system")).to_contain_text(["bob's safety number has changed"])
    warning = alice.page.locator("#key-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("bob's safety number has changed")
    expect(warning).not_to_contain_text("sending is paused")  # not verified: a notice, not a block
    assert len(server_messages(alice, conversation)) == 1, "only the first hello reached the server"
    alice.screenshot("17-key-change-unverified")
    assert alice.axe() == []

    # Retry is the go-ahead: the message goes (bob's real device gets it too).
    held.get_by_role("button", name="Retry").click()
    expect(held.locator(".ticks")).not_to_have_attribute("data-status", re.compile("failed|pending"), timeout=20000)
    expect(bob.message("meant for bob alone")).to_be_visible(timeout=20000)
    alice.send("written after the notice")
    expect(bob.message("written after the notice")).to_be_visible(timeout=20000)
    expect(alice.message("written after the notice").locator(".not-sent")).to_have_count(0)
