"""The app shell, account creation in the browser and return visits by challenge signature."""

from __future__ import annotations

import re
import urllib.request

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.live]


def test_shell_is_served_with_a_strict_csp_and_libsodium_loads_through_the_import_map(server):
    with urllib.request.urlopen(server.http_url + "/") as response:
        csp = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "script-src 'self' 'wasm-unsafe-eval' 'sha256-" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert '<script type="importmap">' in html
    for path in (
        "/static/npm/libsodium-wrappers-sumo/dist/modules-sumo-esm/libsodium-wrappers.mjs",
        "/static/npm/libsodium-sumo/dist/modules-sumo-esm/libsodium-sumo.mjs",
        "/static/js/app.js",
    ):
        with urllib.request.urlopen(server.http_url + path) as response:
            assert response.headers["Content-Type"].startswith("text/javascript"), path


def test_create_account_then_reload_logs_in_by_signature(people):
    alice = people("alice").register()
    page = alice.page
    assert page.locator("#me-name").text_content() == "alice"
    alice.screenshot("01-conversation-list")
    # Private keys live in IndexedDB, sealed; nothing in localStorage.
    assert page.evaluate("Object.keys(localStorage).length") == 0
    page.reload()
    alice.wait_ready()
    assert page.locator("#me-name").text_content() == "alice"
    assert page.get_by_role("button", name="New conversation").is_visible()
    assert not [e for e in alice.errors if "Content Security Policy" in e], alice.errors


def test_onboarding_screen_is_accessible(people):
    eve = people("eve").open()
    eve.page.wait_for_selector("#onboarding:not([hidden])")
    eve.screenshot("00-onboarding")
    assert eve.axe() == []


def test_link_a_second_browser_by_short_code_then_see_and_revoke_it(people):
    from playwright.sync_api import expect

    alice = people("alice").register()
    second = people("alice-laptop").open()
    second.page.get_by_role("button", name="Link this browser").click()
    expect(second.page.locator("#link-code")).to_have_text(re.compile(r"^[A-Z2-9]{8}$"), timeout=10000)
    code = second.page.locator("#link-code").text_content()
    second.screenshot("09-link-code")

    alice.page.get_by_role("button", name="Devices").click()
    alice.page.get_by_label("Code shown on the new browser").fill(code)
    alice.page.get_by_role("button", name="Link device").click()
    expect(alice.page.locator("#link-approve-status")).to_contain_text("device #2", timeout=10000)
    second.wait_ready()
    assert second.page.locator("#me-name").text_content() == "alice"
    expect(alice.page.locator("#device-list li")).to_have_count(2)
    alice.screenshot("10-devices")
    assert alice.axe() == []
    alice.page.get_by_role("button", name=re.compile("^Remove")).click()
    expect(alice.page.locator("#device-list li")).to_have_count(1, timeout=10000)
