"""Keyboard use and the system theme: every shortcut the help dialog lists does what it says (the
new-conversation dialog it opens passes axe), and dark mode follows the system and passes axe."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import chatting

pytestmark = [pytest.mark.browser, pytest.mark.live]

# What the help dialog promises; each is exercised below.
LISTED = [
    "New conversation",
    "Search conversations and messages",
    "Previous / next conversation",
    "Previous / next unread conversation",
    "Send (Shift + Enter for a new line)",
    "Cancel reply, close dialog",
    "This help",
]


def test_every_shortcut_in_the_help_does_what_it_says(people):
    alice, bob = chatting(people)
    carol = people("carol").register()
    carol.start_conversation("alice")
    carol.send("hello from carol")
    page = alice.page
    rows = page.locator("#conversation-list button")
    expect(rows).to_have_count(2, timeout=20000)
    title = page.locator("#chat-title")
    composer = page.get_by_role("textbox", name="Message")

    # ? (outside a text field) opens the help; its list is exactly what is tested here; Esc closes it.
    page.locator("#message-list").focus()
    page.keyboard.press("?")
    help_dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(help_dialog).to_be_visible()
    assert help_dialog.locator("dd").all_inner_texts() == LISTED
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()
    composer.focus()
    page.keyboard.press("?")  # in the message box it is just a character
    expect(help_dialog).to_be_hidden()
    expect(composer).to_have_value("?")
    composer.fill("")

    # Alt+N, even from the message box, opens the new-conversation dialog ready to type; it passes
    # axe, also showing an error; Esc closes it. Then a group is started from the keyboard alone.
    composer.focus()
    page.keyboard.press("Alt+n")
    dialog = page.get_by_role("dialog", name="New conversation")
    expect(dialog).to_be_visible()
    expect(page.get_by_label("People to add")).to_be_focused()
    assert alice.axe() == []
    page.keyboard.type("nobody_by_that_name")
    page.keyboard.press("Enter")
    expect(page.locator("#new-conversation-error")).to_have_text("No user with that username.")
    alice.screenshot("15-new-conversation-error")
    assert alice.axe() == []
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.keyboard.press("Alt+n")
    expect(page.get_by_label("People to add")).to_have_value("")
    page.keyboard.type("bob")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Group name")).to_be_focused()
    page.keyboard.type("Hiking")
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(title).to_have_text("Hiking")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("Hiking")
    order = [rows.nth(i).get_attribute("data-conversation") for i in range(3)]

    # Ctrl+K puts the cursor in the search box.
    page.keyboard.press("Control+k")
    expect(page.get_by_label("Search conversations")).to_be_focused()

    # Alt+↓ / Alt+↑ walk the list as shown, wrapping round at the ends.
    composer.focus()
    for key, expected in (("ArrowDown", 1), ("ArrowDown", 2), ("ArrowDown", 0), ("ArrowUp", 2), ("ArrowUp", 1)):
        page.keyboard.press(f"Alt+{key}")
        opened = page.locator(f"#conversation-list button[data-conversation='{order[expected]}']")
        expect(opened).to_have_attribute("aria-current", "true")
        expect(title).to_have_text(opened.locator(".conv-name").inner_text())

    # Alt+Shift+↓ skips to the next conversation with unread messages, passing the read ones.
    rows.filter(has_text="Hiking").click()
    expect(title).to_have_text("Hiking")
    carol.send("another one from carol")
    expect(rows.filter(has_text="carol").locator(".unread")).to_have_text("1", timeout=20000)
    composer.focus()
    page.keyboard.press("Alt+Shift+ArrowDown")
    expect(title).to_have_text("carol")
    expect(rows.filter(has_text="carol").locator(".unread")).to_have_count(0)
    page.keyboard.press("Alt+Shift+ArrowDown")  # nothing unread left: stays
    expect(title).to_have_text("carol")
    bob.send("bob again")  # bob's chat goes to the top, above carol's, with one unread
    expect(rows.first.locator(".unread")).to_have_text("1", timeout=20000)
    page.keyboard.press("Alt+Shift+ArrowUp")
    expect(title).to_have_text("bob")
    rows.filter(has_text="carol").click()
    expect(title).to_have_text("carol")

    # Enter sends, Shift+Enter starts a new line of the same message.
    composer.focus()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(composer).to_have_value("line one\nline two")
    page.keyboard.press("Enter")
    expect(composer).to_have_value("")
    expect(carol.message("line two").locator("p.body")).to_have_text("line one\nline two", timeout=20000)

    # Esc cancels a reply.
    alice.message("another one from carol").hover()
    alice.message("another one from carol").get_by_role("button", name="Reply").click()
    expect(page.locator("#reply-bar")).to_be_visible()
    expect(composer).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#reply-bar")).to_be_hidden()


def relative_luminance(css_colour: str) -> float:
    red, green, blue = (int(v) / 255 for v in re.findall(r"\d+", css_colour)[:3])

    def linear(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


COLOURS = """() => {
  const style = (el) => getComputedStyle(el);
  return {
    page: style(document.body).backgroundColor,
    text: style(document.body).color,
    sidebar: style(document.querySelector(".sidebar")).backgroundColor,
    mine: style(document.querySelector(".message.mine .bubble")).backgroundColor,
    readTicks: style(document.querySelector(".message.mine .ticks.read")).color,
  };
}"""


def contrast(one: str, other: str) -> float:
    high, low = sorted((relative_luminance(one), relative_luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_dark_mode_follows_the_system_and_passes_axe(people):
    alice, bob = chatting(people)
    bob.send("a reply, so alice has both kinds of bubble")
    expect(alice.message("a reply, so alice")).to_be_visible(timeout=20000)
    expect(alice.message("first hello").locator(".ticks")).to_have_attribute("data-status", "read", timeout=20000)
    page = alice.page

    page.emulate_media(color_scheme="light")
    light = page.evaluate(COLOURS)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(COLOURS)
    for part in ("page", "sidebar", "mine"):
        assert dark[part] != light[part], part
        assert relative_luminance(dark[part]) < 0.05 < relative_luminance(light[part]), (part, dark[part], light[part])
    assert relative_luminance(dark["text"]) > 0.7 > relative_luminance(light["text"]), (dark["text"], light["text"])
    # axe skips the ticks (an image with a label): "read" must still stand out from the bubble,
    # 3:1 as WCAG asks of graphics, in both themes.
    for theme in (light, dark):
        assert contrast(theme["readTicks"], theme["mine"]) >= 3, theme
    alice.screenshot("16-dark")
    assert alice.axe() == []  # contrast of ticks, times, previews and buttons in the dark theme

    page.get_by_role("button", name="Safety number").click()
    expect(page.get_by_role("dialog", name="Safety number")).to_be_visible()
    assert alice.axe() == []
    page.keyboard.press("Escape")
    page.emulate_media(color_scheme="light")
    expect(page.locator("body")).to_have_css("background-color", light["page"])
