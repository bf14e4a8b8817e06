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


LINK_CODE = re.compile(r"^[A-HJ-NP-Z2-9]{8}-[A-HJ-NP-Z2-9]{8}$")

# How many sealed records this browser's vault holds (its keys, sessions and history).
SEALED_ROWS = """() => new Promise((resolve, reject) => {
  const request = indexedDB.open("enigmo");
  request.onerror = () => reject(request.error);
  request.onsuccess = () => {
    const db = request.result;
    if (!db.objectStoreNames.contains("sealed")) { db.close(); resolve(0); return; }
    const count = db.transaction("sealed").objectStore("sealed").count();
    count.onsuccess = () => { db.close(); resolve(count.result); };
    count.onerror = () => { db.close(); reject(count.error); };
  };
})"""


def start_linking(people):
    """alice's first browser, and a second browser showing its CODE-CHECK link code."""
    from playwright.sync_api import expect

    alice = people("alice").register()
    second = people("alice-laptop").open()
    second.page.get_by_role("button", name="Link this browser").click()
    expect(second.page.locator("#link-code")).to_have_text(LINK_CODE, timeout=10000)
    return alice, second, second.page.locator("#link-code").text_content()


def test_link_a_second_browser_by_short_code_then_see_and_revoke_it(people):
    from playwright.sync_api import expect

    alice, second, shown = start_linking(people)
    second.screenshot("09-link-code")
    assert second.axe() == []  # the link panel: code, QR and status
    code = shown.lower().replace("-", " ")  # typed loosely: case, spaces and dashes do not matter

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

    # The removed browser is told at once (its socket closes with 4401): it erases its vault and
    # is back at the start screen, with nothing of alice's left in this browser.
    expect(second.page.locator("#onboarding")).to_be_visible(timeout=15000)
    assert second.page.evaluate(SEALED_ROWS) == 0


def test_linking_refuses_keys_the_server_substituted_and_sends_nothing(people):
    """The approver recomputes the check over the keys GET /devices/link/{code} returned: a server
    that swaps the provisioning key (to read the account seed) or the device key (to get its own
    key certified) is refused, and the approve POST never leaves the browser. A code without its
    check part is refused before anything is fetched."""
    import base64
    import json

    from playwright.sync_api import expect

    alice, second, shown = start_linking(people)
    code = shown.split("-")[0]
    seen: list[str] = []
    swap = {"field": "provisioning_key"}

    def server_swaps_a_key(route):
        request = route.request
        seen.append(request.method)
        if request.method != "GET":
            route.abort()  # never reaches the server
            return
        response = route.fetch()
        body = response.json()
        body[swap["field"]] = base64.b64encode(bytes(range(32))).decode()  # the server's own key
        route.fulfill(response=response, body=json.dumps(body))

    page = alice.page
    page.route(f"**/api/v1/devices/link/{code}", server_swaps_a_key)
    page.get_by_role("button", name="Devices").click()
    status = page.locator("#link-approve-status")
    for field in ("provisioning_key", "device_key"):
        swap["field"] = field
        page.get_by_label("Code shown on the new browser").fill(shown)
        page.get_by_role("button", name="Link device").click()
        expect(status).to_contain_text("do not match the code shown on the new browser", timeout=10000)
        assert seen == ["GET"], (field, seen)
        seen.clear()
        status.evaluate("node => { node.textContent = '' }")

    page.get_by_label("Code shown on the new browser").fill(code)
    page.get_by_role("button", name="Link device").click()
    expect(status).to_contain_text("no check part")
    assert seen == []

    # Typed with a wrong check, even unmodified keys are refused.
    page.unroute(f"**/api/v1/devices/link/{code}")
    wrong = code + "-" + ("A" if shown[9] != "A" else "B") + shown[10:]
    page.get_by_label("Code shown on the new browser").fill(wrong)
    page.get_by_role("button", name="Link device").click()
    expect(status).to_contain_text("do not match")
    expect(page.locator("#device-list li")).to_have_count(1)
    expect(second.page.locator("#link-status")).to_contain_text("Waiting for approval")
    assert second.page.locator("body[data-ready=true]").count() == 0
