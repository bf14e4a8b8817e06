// Small DOM helpers: element lookup, creation with text only (never innerHTML), times, dialogs.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function shortTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeFormat.format(d) : dayFormat.format(d);
}

export const clockTime = (ms) => timeFormat.format(new Date(ms));
export const fullTime = (ms) => fullFormat.format(new Date(ms));

export function lastSeenText(iso) {
  if (!iso) return "";
  const ms = Date.parse(iso);
  const minutes = Math.round((Date.now() - ms) / 60000);
  if (minutes < 1) return "last seen just now";
  if (minutes < 60) return `last seen ${minutes} min ago`;
  return `last seen ${shortTime(ms)}`;
}

// Highlight `query` inside `text` with <mark>, built from text nodes only.
export function highlighted(text, query) {
  const frag = document.createDocumentFragment();
  if (!query) {
    frag.append(text);
    return frag;
  }
  const lower = text.toLowerCase();
  const q = query.toLowerCase();
  let at = 0;
  for (;;) {
    const i = lower.indexOf(q, at);
    if (i < 0) break;
    frag.append(text.slice(at, i), el("mark", { text: text.slice(i, i + q.length) }));
    at = i + q.length;
  }
  frag.append(text.slice(at));
  return frag;
}

export function wireDialogs() {
  for (const dialog of document.querySelectorAll("dialog")) {
    for (const button of dialog.querySelectorAll("[data-close]")) {
      button.addEventListener("click", () => dialog.close());
    }
  }
}

export function confirmDialog(title, text, yesLabel = "OK") {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yesLabel;
  return new Promise((resolve) => {
    const done = (value) => {
      $("confirm-yes").removeEventListener("click", yes);
      $("confirm-no").removeEventListener("click", no);
      dialog.removeEventListener("close", no);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $("confirm-yes").addEventListener("click", yes);
    $("confirm-no").addEventListener("click", no);
    dialog.addEventListener("close", no);
    dialog.showModal();
  });
}

export async function drawQr(canvas, data) {
  const { encode } = await import("uqr");
  const qr = encode(Array.isArray(data) ? data : data instanceof Uint8Array ? Array.from(data) : data, { ecc: "M", border: 2 });
  const size = qr.data.length;
  const ctx = canvas.getContext("2d");
  const scale = Math.floor(Math.min(canvas.width, canvas.height) / size);
  const offset = Math.floor((canvas.width - scale * size) / 2);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#000";
  qr.data.forEach((row, y) => row.forEach((on, x) => {
    if (on) ctx.fillRect(offset + x * scale, offset + y * scale, scale, scale);
  }));
}
