"""Linking a second browser by scanning its QR code with the camera of the approving device.

The approving browser is a Chromium of its own whose fake camera plays a Y4M file made from a
screenshot of the QR the new browser shows; Chromium reads that file each time a capture starts,
so rewriting it between scans changes what the camera sees."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, Chromium, Person, _chromium_main_pids
from tests.browser.test_account import start_linking

pytestmark = [pytest.mark.browser, pytest.mark.live]

# The screenshot's pixels as luma, decoded by the page itself (Pillow is not a dependency).
PNG_LUMA = """async (b64) => {
  const image = new Image();
  image.src = "data:image/png;base64," + b64;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const luma = [];
  for (let i = 0; i < rgba.length; i += 4) luma.push(Math.round(0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2]));
  return { width: canvas.width, height: canvas.height, luma };
}"""

WIDTH, HEIGHT = 320, 240  # every video written has the same size: the fake camera's format is fixed


def y4m_frame(luma: list[int] | None = None, width: int = 0, height: int = 0) -> bytes:
    """One WIDTH×HEIGHT 4:2:0 YUV4MPEG2 file: the image centred on white, colourless (U = V = 128)."""
    y = bytearray(b"\xff" * (WIDTH * HEIGHT))
    if luma is not None:
        left, top = (WIDTH - width) // 2, (HEIGHT - height) // 2
        for row in range(height):
            start = (top + row) * WIDTH + left
            y[start:start + width] = bytes(luma[row * width:(row + 1) * width])
    chroma = b"\x80" * ((WIDTH // 2) * (HEIGHT // 2))
    header = f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F30:1 Ip A1:1 C420jpeg\n".encode()
    return header + b"FRAME\n" + bytes(y) + chroma + chroma


def qr_video(page) -> bytes:
    """The QR element as the new browser displays it, screenshotted and turned into a video."""
    import base64

    png = page.locator("#link-qr").screenshot()
    decoded = page.evaluate(PNG_LUMA, base64.b64encode(png).decode())
    assert decoded["width"] <= WIDTH and decoded["height"] <= HEIGHT, decoded["width"]
    return y4m_frame(decoded["luma"], decoded["width"], decoded["height"])


class CameraChromium(Chromium):
    """A Chromium whose camera is a fake device playing `video`, allowed without a prompt."""

    def __init__(self, playwright, video):
        super().__init__(playwright)
        self.args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-video-capture={video}"]

    def get(self):
        if self.browser is None or self.killed or not self.browser.is_connected():
            before = _chromium_main_pids()
            self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, args=self.args, timeout=60_000)
            self.pids = _chromium_main_pids() - before
            self.generation += 1
            self.killed = False
        return self.browser


@pytest.fixture
def camera(browser, tmp_path):
    """(the camera's video file, a Chromium that films it); starts on a blank white picture."""
    video = tmp_path / "camera.y4m"
    video.write_bytes(y4m_frame())
    chromium = CameraChromium(browser.playwright, video)
    yield video, chromium
    chromium.close()


def test_scanning_the_qr_links_the_new_browser_and_a_tampered_qr_is_refused(people, server, camera):
    """Scan dialog: labelled, Escape closes it and stops the camera. A scanned QR whose hash is
    not the new browser's is refused with the pasted text's error; the real one links it."""
    from playwright.sync_api import expect

    video, chromium = camera
    second = people("alice-laptop").open()
    second.page.get_by_role("button", name="Link this browser").click()
    expect(second.page.locator("#link-code")).to_have_text(re.compile(r"^[A-HJ-NP-Z2-9]{8}-[A-HJ-NP-Z2-9]{8}$"), timeout=10000)
    code = second.page.locator("#link-code").text_content().split("-")[0]
    real_video = qr_video(second.page)
    tampered = f"enigmo-link:{code}:" + "ab" * 32
    second.page.evaluate("""async (text) => {
      const { drawQr } = await import("/static/js/ui/dom.js");
      await drawQr(document.getElementById("link-qr"), text);
    }""", tampered)
    tampered_video = qr_video(second.page)

    alice = Person(chromium, server, "alice")
    try:
        alice.register()
        page = alice.page
        page.get_by_role("button", name="Devices").click()
        status = page.locator("#link-approve-status")

        # A blank picture: the dialog waits; Escape closes it and turns the camera off.
        page.get_by_role("button", name="Scan QR code").click()
        dialog = page.get_by_role("dialog", name="Scan the new browser's QR code")
        expect(dialog).to_be_visible()
        expect(dialog.get_by_role("status")).to_have_text("Point the camera at the QR code on the new browser.")
        assert alice.axe() == []
        page.evaluate("window.scanTracks = document.getElementById('qr-scan-video').srcObject.getTracks()")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert page.evaluate("scanTracks.length > 0 && scanTracks.every((t) => t.readyState === 'ended')")
        assert page.evaluate("document.getElementById('qr-scan-video').srcObject") is None
        expect(page.get_by_role("dialog", name="Devices")).to_be_visible()  # only the scan dialog closed

        # The tampered hash, pasted and then scanned: the same refusal, and no link.
        page.get_by_label("Code shown on the new browser").fill(tampered)
        page.get_by_role("button", name="Link device").click()
        expect(status).to_contain_text("Refused:", timeout=10000)
        pasted_error = status.text_content()
        status.evaluate("node => { node.textContent = '' }")
        video.write_bytes(tampered_video)
        page.get_by_role("button", name="Scan QR code").click()
        expect(status).to_have_text(pasted_error, timeout=15000)
        expect(dialog).to_be_hidden()
        expect(page.locator("#device-list li")).to_have_count(1)
        expect(second.page.locator("#link-status")).to_contain_text("Waiting for approval")

        # The QR the new browser showed: scanned, it links exactly like the typed code.
        video.write_bytes(real_video)
        page.get_by_role("button", name="Scan QR code").click()
        expect(status).to_contain_text("device #2", timeout=15000)
        expect(dialog).to_be_hidden()
        second.wait_ready()
        assert second.page.locator("#me-name").text_content() == "alice"
        expect(page.locator("#device-list li")).to_have_count(2)
        assert alice.errors == [], alice.errors
    finally:
        alice.close()


def test_a_browser_without_camera_access_says_so(people):
    """No camera (headless Chromium has none), then a denied one: a plain message in the dialog, no
    exception, and Cancel or Escape closes it."""
    from playwright.sync_api import expect

    alice = people("alice").register()
    page = alice.page
    page.get_by_role("button", name="Devices").click()
    page.get_by_role("button", name="Scan QR code").click()
    dialog = page.get_by_role("dialog", name="Scan the new browser's QR code")
    expect(dialog.get_by_role("status")).to_have_text(re.compile(r"^(Camera access was denied|No usable camera was found)\."))
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    page.evaluate("""() => {
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
    }""")
    page.get_by_role("button", name="Scan QR code").click()
    expect(dialog.get_by_role("status")).to_have_text(
        "Camera access was denied. Allow the camera for this site, or type the code instead.")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert alice.errors == [], alice.errors
