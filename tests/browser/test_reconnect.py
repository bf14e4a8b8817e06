"""The relay socket when the network goes: the status says so at once, reconnect attempts come
at growing, jittered delays up to a cap (timed with Playwright's clock, so minutes of backoff take
seconds), and when the network is back the client reconnects at once and messages flow again."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import chatting

pytestmark = [pytest.mark.browser, pytest.mark.live]

# Runs before the app: counts the WebSockets the page opens, on the <html> element so that
# expect() can wait for the next one.
COUNT_SOCKETS = """(() => {
  const Real = window.WebSocket;
  window.WebSocket = class extends Real {
    constructor(...args) {
      super(...args);
      const root = document.documentElement;
      root.dataset.sockets = String(Number(root.dataset.sockets || 0) + 1);
    }
  };
})()"""

WAITING = re.compile(r"in (\d+) s")
CAP_S = 30
ATTEMPTS = 11


def test_reconnects_with_growing_capped_delays_then_messages_flow(people):
    alice = people("alice")
    alice.context.clock.install()  # time runs normally until the test moves it
    alice.context.add_init_script(COUNT_SOCKETS)
    alice, bob = chatting(people, alice, first="before the outage")

    page = alice.page
    status = page.locator("#connection")
    sockets = page.locator("html")
    expect(status).to_have_text("Online")
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)  # from here on, only the test moves time

    # The browser reports the network gone: the status says so without waiting for a heartbeat.
    alice.context.set_offline(True)
    expect(status).to_have_text(WAITING)
    assert "No network" in status.text_content()
    alice.screenshot("18-no-network")
    bob.send("sent during the outage")

    # Each announced delay is kept: no attempt before it is up, one attempt when it is.
    announced = []
    for _ in range(ATTEMPTS):
        seconds = int(WAITING.search(status.text_content()).group(1))
        announced.append(seconds)
        count = int(sockets.get_attribute("data-sockets"))
        page.clock.run_for((seconds - 1) * 1000)
        expect(sockets).to_have_attribute("data-sockets", str(count))
        page.clock.run_for(1000)
        expect(sockets).to_have_attribute("data-sockets", str(count + 1))
        expect(status).to_have_text(WAITING)  # that attempt failed too, and the next is announced

    first_capped = next(i for i, s in enumerate(announced) if s > CAP_S // 2)
    growing = announced[:first_capped]
    assert growing[0] <= 1 and len(growing) >= 4, announced
    assert all(later >= earlier for earlier, later in zip(growing, growing[1:], strict=False)), announced
    assert growing[-1] >= 4 * growing[1], announced  # doubling, not a fixed step
    capped = announced[first_capped:]
    assert len(capped) >= 3 and all(CAP_S // 2 <= s <= CAP_S for s in capped), announced
    assert len(set(capped)) > 1, f"no jitter at the cap: {announced}"

    # Network back: reconnect at once (no waiting out the delay), then the backlog and new messages.
    page.clock.resume()
    alice.context.set_offline(False)
    expect(status).to_have_text("Online", timeout=10000)
    expect(alice.message("sent during the outage")).to_be_visible(timeout=20000)
    alice.send("back again")
    expect(bob.message("back again")).to_be_visible(timeout=20000)
    expect(alice.message("back again").locator(".ticks")).to_have_attribute("data-status", "read", timeout=20000)
