// Scanning a link QR code with the camera: a preview dialog, frames decoded by the browser's
// BarcodeDetector where it reads QR codes, else by jsQR (npm, through the import map).
import { $ } from "./dom.js";

const LINK_PREFIX = "enigmo-link:";
const FRAME_MS = 150; // a few decodes a second is enough to aim, and keeps the CPU quiet
const MAX_SIDE = 640; // jsQR's cost grows with the pixel count; a QR filling the frame needs few

async function nativeDecoder() {
  if (!("BarcodeDetector" in globalThis)) return null;
  try {
    if (!(await BarcodeDetector.getSupportedFormats()).includes("qr_code")) return null;
    const detector = new BarcodeDetector({ formats: ["qr_code"] });
    return async (video) => (await detector.detect(video)).map((code) => code.rawValue);
  } catch {
    return null; // present but unusable (no platform backend): use jsQR
  }
}

async function jsqrDecoder() {
  await import("jsqr"); // its UMD build defines self.jsQR
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  return async (video) => {
    const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
    const image = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const found = globalThis.jsQR(image.data, image.width, image.height, { inversionAttempts: "attemptBoth" });
    return found ? [found.data] : [];
  };
}

function cameraMessage(err) {
  if (err?.name === "NotAllowedError" || err?.name === "SecurityError") {
    return "Camera access was denied. Allow the camera for this site, or type the code instead.";
  }
  if (err?.name === "NotFoundError" || err?.name === "OverconstrainedError" || err?.name === "NotReadableError") {
    return "No usable camera was found. Type the code instead.";
  }
  return "The camera could not be started. Type the code instead.";
}

// Opens the scan dialog; resolves with the first enigmo-link: text seen, or null once the dialog
// is closed (Cancel, Escape) or the camera cannot be used. The camera is off whenever it resolves.
export function scanLinkQr() {
  const dialog = $("qr-scan-dialog");
  const video = $("qr-scan-video");
  const status = $("qr-scan-status");
  let stream = null;
  let timer = null;
  let closed = false;
  return new Promise((resolve) => {
    const stop = () => {
      clearTimeout(timer);
      for (const track of stream?.getTracks() ?? []) track.stop();
      stream = null;
      video.srcObject = null;
    };
    const finish = (value) => {
      closed = true;
      stop();
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onClose = () => finish(null);
    dialog.addEventListener("close", onClose);
    status.textContent = "Starting the camera…";
    video.hidden = false;
    dialog.showModal();

    const fail = (message) => {
      stop();
      video.hidden = true;
      status.textContent = message; // the dialog stays open to show it; Cancel closes it
    };
    (async () => {
      if (!navigator.mediaDevices?.getUserMedia) return fail("This browser cannot use a camera here. Type the code instead.");
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: true });
      } catch (err) {
        return closed ? undefined : fail(cameraMessage(err));
      }
      if (closed) return stop(); // cancelled while the permission prompt was up
      let decode;
      try {
        decode = (await nativeDecoder()) ?? (await jsqrDecoder());
        video.srcObject = stream;
        await video.play();
      } catch {
        return closed ? stop() : fail("The camera preview could not be started. Type the code instead.");
      }
      if (closed) return stop();
      status.textContent = "Point the camera at the QR code on the new browser.";
      const tick = async () => {
        if (closed) return;
        try {
          if (video.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA && video.videoWidth) {
            const texts = await decode(video);
            const link = texts.find((t) => t.trim().toLowerCase().startsWith(LINK_PREFIX));
            if (link) return finish(link.trim());
            if (texts.length) status.textContent = "That QR code is not an Enigmo link code.";
          }
        } catch {
          // one unreadable frame (e.g. while the camera settles) is no reason to stop
        }
        if (!closed) timer = setTimeout(tick, FRAME_MS);
      };
      tick();
    })();
  });
}
