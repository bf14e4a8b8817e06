// Entry point: open the local vault, load the protocol, then either onboard (create an account or
// link this browser) or log in by signing a fresh server challenge with this device's key.
import * as api from "./api.js";
import { Vault } from "./vault.js";
import { $, drawQr, wireDialogs } from "./ui/dom.js";

let engine = null;
let vault = null;
let loggingOut = false;

function showScreen(name) {
  $("boot").hidden = name !== "boot";
  $("onboarding").hidden = name !== "onboarding";
  $("app").hidden = name !== "app";
}

function bootStatus(text) {
  $("boot-status").textContent = text;
}

async function login() {
  const { nonce } = await api.post("/auth/challenge");
  const answer = await api.post("/auth/login", engine.loginPayload(nonce));
  api.setCsrfToken(answer.csrf_token);
  return answer;
}

// Keep the server stocked with prekeys: a first full batch, then top-ups below the low-water mark.
async function prekeysTopUp() {
  let remaining = null;
  if (engine.self.signedPrekeys.length) {
    remaining = (await api.post("/keys/prekeys", { one_time_prekeys: [] })).one_time_prekeys_remaining;
  }
  const body = await engine.prekeyUpload(remaining);
  if (body) await api.post("/keys/prekeys", body);
}

async function startMessenger() {
  const { Messenger } = await import("./messenger.js");
  await prekeysTopUp();
  const messenger = new Messenger({ engine, vault, onLoggedOut: loggedOut });
  showScreen("app");
  await messenger.start();
  window.enigmo = { ready: true };
  document.body.dataset.ready = "true";
}

async function loggedOut(reason) {
  if (loggingOut) return reason;
  loggingOut = true; // "Log out" here and the server's 4401 close of the socket can both report it
  vault?.close(); // before the wipe: this page's own connection would block it
  await Vault.wipe().catch(() => {});
  location.reload();
  return reason;
}

function onboarding() {
  showScreen("onboarding");
  const form = $("register-form");
  const error = $("register-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const username = $("register-username").value.trim().toLowerCase();
    if (!/^[a-z0-9_]{3,32}$/.test(username)) {
      error.textContent = "Choose 3–32 characters: a–z, 0–9 and _.";
      $("register-username").setAttribute("aria-invalid", "true");
      $("register-username").focus();
      return;
    }
    $("register-username").removeAttribute("aria-invalid");
    const button = $("register-submit");
    button.disabled = true;
    button.textContent = "Creating keys…";
    try {
      const { nonce } = await api.post("/auth/challenge");
      const answer = await api.post("/auth/register", engine.registrationPayload(username, $("register-display").value.trim(), nonce));
      api.setCsrfToken(answer.csrf_token);
      await engine.commitRegistration();
      await startMessenger();
    } catch (err) {
      error.textContent = err.code === "username_taken" ? "That username is taken." : `Could not create the account: ${err.message}`;
      button.disabled = false;
      button.textContent = "Create account";
    }
  });
  $("link-start").addEventListener("click", linkThisBrowser);
}

async function linkThisBrowser() {
  $("link-start").disabled = true;
  $("link-panel").hidden = false;
  const status = $("link-status");
  try {
    const started = await api.post("/devices/link", engine.linkBegin());
    // The server's code plus a check over this browser's keys (linkcheck.js), so the approving
    // device can tell whether the server passed on these keys or its own.
    const shown = engine.linkDisplay(started.code);
    $("link-code").textContent = shown.text;
    await drawQr($("link-qr"), shown.qr);
    status.textContent = "Waiting for approval on your other device…";
    const deadline = Date.now() + started.expires_in * 1000;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1500));
      const polled = await api.post("/devices/link/poll", { secret: started.secret });
      if (polled.status === "approved") {
        status.textContent = "Approved. Setting up this browser…";
        await engine.linkComplete(polled);
        await login();
        await startMessenger();
        return;
      }
    }
    status.textContent = "The code expired. Try again.";
  } catch (err) {
    status.textContent = `Linking failed: ${err.message}`;
  }
  $("link-start").disabled = false;
}

async function main() {
  wireDialogs();
  bootStatus("Loading encryption…");
  try {
    vault = await Vault.open();
    vault.onClosedElsewhere = () => location.reload(); // another tab logged out (and erases the vault)
    const { Engine } = await import("./engine.js");
    engine = await Engine.create(vault);
  } catch (err) {
    bootStatus(`Enigmo cannot start in this browser: ${err.message}`);
    return;
  }
  if (!engine.registered) {
    onboarding();
    return;
  }
  bootStatus("Signing in…");
  try {
    await login();
  } catch (err) {
    if (err.status === 0) {
      bootStatus("Offline. Retrying…");
      setTimeout(() => location.reload(), 3000);
      return;
    }
    if (["login_failed", "signature_invalid"].includes(err.code)) {
      bootStatus("This browser was removed from your account.");
      await loggedOut("revoked");
      return;
    }
    bootStatus(`Sign-in failed: ${err.message}`);
    return;
  }
  await startMessenger();
}

main();
