// Rendering and input for the messenger screen: conversation list, chat view, composer, dialogs
// (new conversation, safety number, devices, privacy, group members, help) and keyboard shortcuts.
// Text only, no innerHTML.
import { $, clockTime, confirmDialog, el, fullTime, highlighted, lastSeenText, shortTime } from "./dom.js";
import { scanLinkQr } from "./qrscan.js";

const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];
const TICKS = {
  pending: ["🕓", "Sending"],
  sent: ["✓", "Sent"],
  delivered: ["✓✓", "Delivered"],
  read: ["✓✓", "Read"],
  failed: ["!", "Not sent"],
};

export class ChatView {
  constructor(messenger) {
    this.m = messenger;
    this.replyTo = null;
    this.pendingFile = null;
    this.attachmentUrls = new Map();
    this.rows = new Map(); // conversation id → its row in the list, kept across redraws
    this.heldBack = new Map(); // message id → its newest state, drawn when the pointer is released
    this.pressed = null;
  }

  mount() {
    $("me-name").textContent = this.m.me;
    $("me-avatar").textContent = this.m.me.slice(0, 1);
    $("new-conversation").addEventListener("click", () => this.openNewConversation());
    $("new-conversation-form").addEventListener("submit", (e) => this.submitNewConversation(e));
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    const input = $("composer-input");
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    input.addEventListener("input", () => {
      input.style.height = "auto";
      input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
      if (input.value) this.m.composing();
    });
    input.addEventListener("blur", () => this.m.stopComposing());
    $("reply-cancel").addEventListener("click", () => this.setReply(null));
    $("attach-input").addEventListener("change", (e) => this.pickFile(e.target.files[0]));
    $("attachment-cancel").addEventListener("click", () => this.pickFile(null));
    $("timer-select").addEventListener("change", (e) => this.m.setTimer(Number(e.target.value)));
    $("open-safety").addEventListener("click", () => this.openSafety());
    $("key-warning-view").addEventListener("click", () => this.openSafety());
    $("key-warning-accept").addEventListener("click", async () => {
      const conv = this.m.conversations.get(this.m.current);
      for (const [user] of this.m.trustWarnings(conv)) await this.m.acceptKey(user);
    });
    $("safety-verify").addEventListener("click", () => this.toggleVerified());
    $("open-devices").addEventListener("click", () => this.openDevices());
    $("open-privacy").addEventListener("click", () => this.openPrivacy());
    $("privacy-read-receipts").addEventListener("change", (e) => this.savePrivacy("read_receipts", e.target));
    $("privacy-presence").addEventListener("change", (e) => this.savePrivacy("presence", e.target));
    $("open-members").addEventListener("click", () => this.openMembers());
    $("member-add-form").addEventListener("submit", (e) => this.addMember(e));
    $("leave-group").addEventListener("click", () => this.leaveGroup());
    $("link-approve-form").addEventListener("submit", (e) => this.approveLink(e));
    $("link-scan").addEventListener("click", () => this.scanLink());
    $("open-help").addEventListener("click", () => $("help-dialog").showModal());
    $("logout").addEventListener("click", () => this.m.logout());
    $("conversation-search").addEventListener("input", (e) => this.search(e.target.value));
    $("message-list").addEventListener("pointerdown", (e) => { this.pressed = e.target; }, true);
    const release = () => {
      if (!this.pressed) return;
      this.pressed = null;
      setTimeout(() => { // after this press's click
        const held = [...this.heldBack.values()];
        this.heldBack.clear();
        for (const message of held) this.upsertMessage(message);
      });
    };
    window.addEventListener("pointerup", release, true);
    window.addEventListener("pointercancel", release, true);
    if ("Notification" in window && Notification.permission === "default") {
      $("notify-banner").hidden = false;
      $("notify-enable").addEventListener("click", async () => {
        await Notification.requestPermission();
        $("notify-banner").hidden = true;
      });
    }
    document.addEventListener("keydown", (e) => this.shortcut(e));
  }

  // The relay socket's state; while it waits to reconnect, when the next attempt comes.
  connection({ state, delay, networkDown }) {
    const node = $("connection");
    const seconds = Math.max(1, Math.ceil((delay || 0) / 1000));
    const waiting = `${networkDown ? "No network. Retrying" : "Reconnecting"} in ${seconds} s…`;
    node.textContent = { online: "Online", connecting: "Connecting…", waiting, offline: "Offline" }[state] || state;
    node.classList.toggle("online", state === "online");
  }

  flash(text) {
    $("send-error").textContent = text;
  }

  sendError(text) {
    $("send-error").textContent = text;
  }

  // --- conversation list ---------------------------------------------------------------------

  // Rows are kept per conversation and updated in place: a list drawn again while the user presses
  // a row (a message arriving at that moment) must not replace the element under the pointer, or
  // the browser drops the click.
  renderList() {
    const list = $("conversation-list");
    const query = $("conversation-search").value.trim().toLowerCase();
    const convs = [...this.m.conversations.values()]
      .map((c) => ({ c, last: this.m.lastMessage(c.id) }))
      .sort((a, b) => Math.max(b.c.lastActivity || 0, b.last?.sentMs || 0) - Math.max(a.c.lastActivity || 0, a.last?.sentMs || 0));
    const shown = [];
    for (const { c, last } of convs) {
      const title = this.m.title(c);
      const others = (c.participants || []).filter((u) => u !== this.m.me);
      if (query && ![title, ...others].some((name) => name.toLowerCase().includes(query))) continue;
      const online = c.kind === "direct" && others.length === 1 && this.m.presence.get(others[0])?.online;
      const unread = c.unread || 0;
      const activity = Math.max(c.lastActivity || 0, last?.sentMs || 0);
      const looks = {
        current: c.id === this.m.current ? "true" : "false",
        label: `${title}${online ? ", online" : ""}${unread ? `, ${unread} unread` : ""}`,
        title, online, unread, activity, time: shortTime(activity),
        preview: last ? previewText(last, this.m.me) : "No messages yet",
      };
      let row = this.rows.get(c.id);
      if (!row) {
        const button = el("button", { type: "button", onclick: () => this.m.open(c.id), dataset: { conversation: c.id } });
        row = { li: el("li", {}, button), button, looks: "" };
        this.rows.set(c.id, row);
      }
      const key = JSON.stringify(looks);
      if (row.looks !== key) {
        row.looks = key;
        row.button.setAttribute("aria-current", looks.current);
        row.button.setAttribute("aria-label", looks.label);
        row.button.replaceChildren(
          el("span", { class: "avatar conv-avatar", "aria-hidden": "true" }, title.slice(0, 1), online ? el("span", { class: "presence" }) : null),
          el("span", { class: "conv-name" }, title),
          activity ? el("time", { class: "conv-time", datetime: new Date(activity).toISOString(), title: fullTime(activity) }, looks.time) : el("span"),
          el("span", { class: "conv-preview" }, looks.preview),
          unread ? el("span", { class: "unread", "aria-hidden": "true" }, String(unread)) : el("span"));
      }
      shown.push(row.li);
    }
    for (const id of this.rows.keys()) {
      if (!this.m.conversations.has(id)) this.rows.delete(id);
    }
    if (query && !shown.length) shown.push((this.noMatch ||= el("li", { class: "list-empty muted" }, "No conversations match.")));
    // Move only what is out of place; rows that stay keep their element and their position.
    shown.forEach((li, i) => {
      if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    });
    while (list.children.length > shown.length) list.lastElementChild.remove();
  }

  search(query) {
    this.renderList();
    const results = $("search-results");
    const hits = this.m.search(query);
    results.hidden = hits.length === 0;
    const ul = $("search-result-list");
    ul.replaceChildren();
    for (const { convId, message } of hits) {
      const conv = this.m.conversations.get(convId);
      ul.append(el("li", {}, el("button", {
        type: "button",
        onclick: async () => {
          await this.m.open(convId);
          const node = document.querySelector(`[data-message-id="${CSS.escape(message.id)}"]`);
          if (node) {
            node.scrollIntoView({ block: "center" });
            node.classList.add("found");
            node.querySelector(".bubble").focus?.();
          }
        },
      }, el("span", { class: "conv-preview" }, highlighted(message.body || message.attachment?.name || "", query.trim())),
      el("span", { class: "conv-time" }, `${conv ? this.m.title(conv) : ""} · ${shortTime(message.sentMs)}`))));
    }
  }

  // --- chat view -----------------------------------------------------------------------------

  openConversation(conv) {
    $("chat-empty").hidden = true;
    $("chat-view").hidden = false;
    $("app").classList.add("in-chat");
    $("send-error").textContent = "";
    this.setReply(null);
    this.renderHeader(conv);
    this.renderTrust(conv, this.m.trustWarnings(conv));
    this.renderTyping([...(this.m.typing.get(conv.id)?.keys() || [])]);
    const list = $("message-list");
    list.replaceChildren();
    for (const message of this.m.sortedMessages(conv.id)) list.append(this.messageNode(message));
    list.scrollTop = list.scrollHeight;
    this.renderList();
    $("composer-input").focus();
  }

  renderHeader(conv) {
    if (!conv || conv.id !== this.m.current) return;
    $("chat-title").textContent = this.m.title(conv);
    const others = (conv.participants || []).filter((u) => u !== this.m.me);
    let subtitle = "";
    if (conv.kind === "group") subtitle = conv.left ? "You left this group" : `${(conv.participants || []).length} members`;
    else if (others.length === 1) {
      const p = this.m.presence.get(others[0]);
      subtitle = p ? (p.online ? "online" : lastSeenText(p.last_seen)) : "";
    }
    $("chat-subtitle").textContent = subtitle;
    $("timer-select").value = String(conv.timer || 0);
    if ($("timer-select").value !== String(conv.timer || 0)) {
      $("timer-select").append(el("option", { value: String(conv.timer) }, `${conv.timer} seconds`));
      $("timer-select").value = String(conv.timer);
    }
    $("open-safety").hidden = others.length !== 1;
    const left = Boolean(conv.left);
    $("open-members").hidden = conv.kind !== "group" || left;
    $("timer-select").hidden = left;
    $("left-notice").hidden = !left;
    $("composer").hidden = left;
    if (left) {
      $("reply-bar").hidden = true;
      $("attachment-bar").hidden = true;
      if ($("members-dialog").open) $("members-dialog").close();
    }
  }

  renderTrust(conv, warnings) {
    if (!conv || conv.id !== this.m.current) return;
    const box = $("key-warning");
    if (!warnings.length) {
      box.hidden = true;
      return;
    }
    const blocked = warnings.some(([, t]) => t.blocked);
    const names = warnings.map(([u]) => u).join(", ");
    $("key-warning-text").textContent = blocked
      ? `${names}'s safety number has changed. You verified it before, so sending is paused until you review and accept the new key.`
      : `${names}'s safety number has changed. This can mean a reinstall, or someone intercepting. Verify it.`;
    box.hidden = false;
  }

  renderTyping(users) {
    $("typing").textContent = users.length ? `${users.join(", ")} ${users.length === 1 ? "is" : "are"} typing…` : "";
  }

  // A message drawn again (a receipt, a reaction) replaces its node. Not while the pointer is
  // pressed on it: the browser would drop the click on its Reply or React button, so the new
  // node waits for the release (and the click). Keyboard focus inside it moves to the same
  // control in the new node.
  upsertMessage(message) {
    if (message.convId !== this.m.current) return;
    const list = $("message-list");
    const existing = list.querySelector(`[data-message-id="${CSS.escape(message.id)}"]`);
    if (existing && this.pressed?.isConnected && existing.contains(this.pressed)) {
      this.heldBack.set(message.id, message);
      return;
    }
    const node = this.messageNode(message);
    if (existing) {
      const focused = existing.contains(document.activeElement) ? document.activeElement : null;
      existing.replaceWith(node);
      if (focused === existing) node.focus();
      else if (focused?.classList.length) node.querySelector([...focused.classList].map((c) => `.${CSS.escape(c)}`).join(""))?.focus();
    } else {
      const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
      list.append(node);
      if (atBottom || message.mine) list.scrollTop = list.scrollHeight;
    }
  }

  removeMessage(message) {
    const node = document.querySelector(`[data-message-id="${CSS.escape(message.id)}"]`);
    if (node) node.remove();
  }

  messageNode(message) {
    if (message.type === "system") {
      return el("div", { class: "message system", dataset: { messageId: message.id } }, message.body);
    }
    const node = $("message-template").content.firstElementChild.cloneNode(true);
    node.dataset.messageId = message.id;
    node.classList.toggle("mine", Boolean(message.mine));
    node.classList.toggle("deleted", Boolean(message.deleted));
    const bubble = node.querySelector(".bubble");
    const conv = this.m.conversations.get(message.convId);
    if (!message.mine && conv && conv.kind === "group") bubble.prepend(el("p", { class: "sender" }, message.sender));
    if (message.replyTo) {
      const target = this.m.messageById(message.convId, message.replyTo);
      const quote = node.querySelector(".quote");
      quote.hidden = false;
      quote.textContent = target ? `${target.mine ? "You" : target.sender}: ${previewText(target, this.m.me, true)}` : "Original message not found";
    }
    const body = node.querySelector(".body");
    if (message.deleted) body.textContent = message.mine ? "You deleted this message" : "This message was deleted";
    else body.textContent = message.body || "";
    if (!message.body && !message.deleted) body.hidden = true;
    if (message.attachment && !message.deleted) this.renderAttachment(node.querySelector(".attachment"), message);
    const time = node.querySelector("time");
    const ms = message.sentMs || message.createdMs;
    time.dateTime = new Date(ms).toISOString();
    time.textContent = clockTime(ms);
    time.title = fullTime(ms);
    if (message.expiresAt || message.expiresIn) {
      const timer = node.querySelector(".timer");
      timer.hidden = false;
      timer.setAttribute("role", "img");
      timer.setAttribute("aria-label", "Disappearing message");
    }
    const ticks = node.querySelector(".ticks");
    if (message.mine) {
      const [symbol, label] = TICKS[message.status] || TICKS.pending;
      ticks.textContent = symbol;
      ticks.className = `ticks ${message.status}`;
      ticks.setAttribute("role", "img");
      ticks.setAttribute("aria-label", label);
      ticks.title = message.error || label;
      ticks.dataset.status = message.status;
      node.dataset.status = message.status;
      if (message.status === "failed") bubble.append(this.notSent(message));
    } else {
      ticks.remove();
    }
    const reactions = Object.entries(message.reactions || {});
    if (reactions.length) {
      const box = node.querySelector(".reactions");
      box.hidden = false;
      box.textContent = reactions.map(([u, e]) => e).join(" ");
      box.title = reactions.map(([u, e]) => `${u}: ${e}`).join(", ");
      box.setAttribute("aria-label", `Reactions: ${box.title}`);
      box.setAttribute("role", "img");
    }
    const actions = node.querySelector(".actions");
    if (message.deleted || message.status === "failed") actions.remove();
    else {
      node.querySelector(".reply").addEventListener("click", () => this.setReply(message));
      node.querySelector(".react").addEventListener("click", (e) => this.reactionPicker(e.currentTarget, message));
      const del = node.querySelector(".delete");
      if (message.mine && message.serverId) {
        del.hidden = false;
        del.addEventListener("click", () => this.m.deleteForEveryone(message));
      }
    }
    return node;
  }

  // "Not sent", why, and what to do about it: Retry sends the same message again (same id, so the
  // server stores it once even if an earlier attempt got through), Discard removes it here.
  notSent(message) {
    const reasonId = `not-sent-${message.id}`;
    const reason = message.error && message.error !== "Not sent" ? message.error.replace(/^Not sent:\s*/, "") : "";
    return el("div", { class: "not-sent" },
      el("p", { class: "error", id: reasonId }, el("strong", {}, "Not sent"), reason ? `: ${reason}` : ""),
      el("button", {
        type: "button",
        class: "retry",
        "aria-describedby": reasonId,
        onclick: async () => {
          await this.m.retrySend(message);
          $("composer-input").focus();
        },
      }, "Retry"),
      el("button", {
        type: "button",
        class: "discard",
        "aria-describedby": reasonId,
        onclick: async () => {
          await this.m.discardFailed(message);
          $("composer-input").focus();
        },
      }, "Discard"));
  }

  renderAttachment(box, message) {
    box.hidden = false;
    const a = message.attachment;
    const isImage = a.mime.startsWith("image/") && a.mime !== "image/svg+xml";
    const show = (url) => {
      box.replaceChildren();
      if (isImage) box.append(el("img", { src: url, alt: a.name || "Image", loading: "lazy" }));
      box.append(el("a", { href: url, download: a.name || "attachment" }, `${isImage ? "Save" : "Download"} ${a.name} (${sizeText(a.size)})`));
    };
    const cacheKey = a.ref || `local:${message.id}`; // not uploaded yet: no server id
    const cached = message.localUrl || this.attachmentUrls.get(cacheKey);
    if (cached) {
      show(cached);
      return;
    }
    box.append(el("span", { class: "muted" }, `Decrypting ${a.name}…`));
    this.m.fetchAttachment(message).then((url) => {
      this.attachmentUrls.set(cacheKey, url);
      show(url);
    }).catch((err) => {
      box.replaceChildren(el("span", { class: "error" }, `The attachment could not be decrypted (${err.code || err.message}).`));
    });
  }

  reactionPicker(anchor, message) {
    const existing = document.querySelector(".emoji-picker");
    if (existing) existing.remove();
    const picker = el("div", { class: "emoji-picker", role: "group", "aria-label": "Pick a reaction" },
      REACTIONS.map((emoji) => el("button", {
        type: "button",
        "aria-label": `React ${emoji}`,
        onclick: () => {
          picker.remove();
          this.m.react(message, emoji);
        },
      }, emoji)));
    anchor.parentElement.after(picker);
    picker.querySelector("button").focus();
    picker.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        picker.remove();
        anchor.focus();
      }
    });
  }

  setReply(message) {
    this.replyTo = message;
    $("reply-bar").hidden = !message;
    if (message) {
      $("reply-text").textContent = `Replying to ${message.mine ? "yourself" : message.sender}: ${previewText(message, this.m.me, true)}`;
      $("composer-input").focus();
    }
  }

  pickFile(file) {
    this.pendingFile = file || null;
    $("attachment-bar").hidden = !file;
    const img = $("attachment-preview");
    if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
    this.previewUrl = null;
    img.hidden = true;
    if (!file) {
      $("attach-input").value = "";
      return;
    }
    $("attachment-name").textContent = `${file.name} (${sizeText(file.size)})`;
    if (file.type.startsWith("image/")) {
      this.previewUrl = URL.createObjectURL(file);
      img.src = this.previewUrl;
      img.hidden = false;
    }
    $("composer-input").focus();
  }

  async submit() {
    const input = $("composer-input");
    const text = input.value;
    const replyTo = this.replyTo ? this.replyTo.id : null;
    $("send-error").textContent = "";
    if (!this.m.current) return;
    const file = this.pendingFile;
    if (!text.trim() && !file) return;
    input.value = "";
    input.style.height = "auto";
    this.setReply(null);
    this.m.stopComposing();
    if (file) {
      this.pickFile(null);
      try {
        await this.m.sendAttachment(file, text.trim(), replyTo);
      } catch (err) {
        this.sendError(`The attachment was not sent: ${err.message}`);
      }
      return;
    }
    await this.m.sendText(text, replyTo);
  }

  // --- dialogs -------------------------------------------------------------------------------

  openNewConversation() {
    $("new-conversation-error").textContent = "";
    $("new-conversation-users").value = "";
    $("new-conversation-name").value = "";
    $("new-conversation-dialog").showModal();
    $("new-conversation-users").focus();
  }

  async submitNewConversation(event) {
    event.preventDefault();
    const users = $("new-conversation-users").value.split(/[\s,]+/).filter(Boolean);
    try {
      $("new-conversation-submit").disabled = true;
      await this.m.startConversation(users, $("new-conversation-name").value.trim());
      $("new-conversation-dialog").close();
    } catch (err) {
      $("new-conversation-error").textContent = err.status === 404 ? "No user with that username." : err.message;
    } finally {
      $("new-conversation-submit").disabled = false;
    }
  }

  async openSafety() {
    const conv = this.m.conversations.get(this.m.current);
    const peer = (conv.participants || []).find((u) => u !== this.m.me);
    if (!peer) return;
    $("safety-peer").textContent = peer;
    const dialog = $("safety-dialog");
    dialog.dataset.peer = peer;
    const safety = await this.m.safety(peer);
    const number = $("safety-number");
    number.replaceChildren();
    if (!safety) {
      number.textContent = "Send or receive a message first.";
    } else {
      for (const chunk of safety.digits.match(/.{5}/g)) number.append(el("span", {}, chunk));
      number.setAttribute("aria-label", `Safety number: ${safety.digits.match(/.{5}/g).join(" ")}`);
      await this.m.drawQr($("safety-qr"), safety.qr);
    }
    $("safety-status").textContent = safety?.verified ? `You marked ${peer} as verified.` : safety?.changed ? "This safety number changed recently." : "Not verified.";
    $("safety-verify").textContent = safety?.verified ? "Clear verification" : "Mark as verified";
    dialog.showModal();
  }

  async toggleVerified() {
    const peer = $("safety-dialog").dataset.peer;
    const safety = await this.m.safety(peer);
    if (!safety) return;
    await this.m.engine.trustVerify(peer, !safety.verified);
    this.m.trust.set(peer, { status: "ok", blocked: false, verified: !safety.verified });
    $("safety-status").textContent = !safety.verified ? `You marked ${peer} as verified.` : "Not verified.";
    $("safety-verify").textContent = !safety.verified ? "Clear verification" : "Mark as verified";
    const conv = this.m.conversations.get(this.m.current);
    this.renderTrust(conv, this.m.trustWarnings(conv));
  }

  async openDevices() {
    $("link-approve-status").textContent = "";
    $("devices-dialog").showModal();
    await this.renderDevices();
  }

  async renderDevices() {
    const ul = $("device-list");
    ul.replaceChildren(el("li", {}, "Loading…"));
    try {
      const devices = await this.m.devices();
      ul.replaceChildren();
      for (const d of devices) {
        const label = `${d.name || "Device"} #${d.device_id}${d.current ? " (this browser)" : ""}`;
        const seen = d.last_seen_at ? ` · last active ${shortTime(Date.parse(d.last_seen_at))}` : "";
        ul.append(el("li", {}, el("span", {}, label, el("span", { class: "muted" }, seen)), d.current ? null : el("button", {
          type: "button",
          "aria-label": `Remove ${label}`,
          onclick: async () => {
            await this.m.revokeDevice(d.device_id);
            await this.renderDevices();
          },
        }, "Remove")));
      }
    } catch (err) {
      ul.replaceChildren(el("li", { class: "error" }, err.message));
    }
  }

  async approveLink(event) {
    event.preventDefault();
    const status = $("link-approve-status");
    try {
      const described = await this.m.approveLink($("link-approve-code").value);
      status.textContent = `Linked “${described.name || "new browser"}” as device #${described.device_id}.`;
      $("link-approve-code").value = "";
      await this.renderDevices();
    } catch (err) {
      status.textContent = err.status === 404 ? "That code is unknown or expired."
        : err.code === "link_check_failed" ? `Refused: ${err.message}` : `Linking failed: ${err.message}`;
    }
  }

  // A scanned enigmo-link: text goes through the form exactly as if it had been pasted.
  async scanLink() {
    const text = await scanLinkQr();
    if (!text) return;
    $("link-approve-code").value = text;
    $("link-approve-form").requestSubmit();
  }

  async openPrivacy() {
    const status = $("privacy-status");
    status.textContent = "";
    this.showPrivacy(this.m.privacy);
    $("privacy-dialog").showModal();
    try {
      this.showPrivacy(await this.m.loadPrivacy());
    } catch (err) {
      status.textContent = `Could not load your settings: ${err.message}`;
    }
  }

  showPrivacy(privacy) {
    $("privacy-read-receipts").checked = privacy.read_receipts;
    $("privacy-presence").checked = privacy.presence;
  }

  async savePrivacy(field, input) {
    const status = $("privacy-status");
    const wanted = input.checked;
    input.disabled = true;
    status.textContent = "Saving…";
    try {
      this.showPrivacy(await this.m.setPrivacy({ [field]: wanted }));
      status.textContent = "Saved.";
    } catch (err) {
      input.checked = !wanted;
      status.textContent = `Not saved: ${err.message}`;
    } finally {
      input.disabled = false;
      input.focus();
    }
  }

  async openMembers() {
    const conv = this.m.conversations.get(this.m.current);
    if (!conv || conv.kind !== "group") return;
    $("members-error").textContent = "";
    $("members-status").textContent = "";
    $("member-add-username").value = "";
    this.renderMembers(conv);
    $("members-dialog").showModal();
    try {
      await this.m.conversationDetail(conv.id, { fresh: true });
      this.renderMembers(conv);
    } catch (err) {
      $("members-error").textContent = `Could not load the members: ${err.message}`;
    }
  }

  membersChanged(conv) {
    if ($("members-dialog").open && conv.id === this.m.current) this.renderMembers(conv);
  }

  renderMembers(stale) {
    const conv = this.m.conversations.get(stale.id) || stale; // a refresh replaces the object
    const ul = $("member-list");
    const detail = conv.detail;
    const admin = this.m.myRole(conv) === "admin";
    $("member-add-form").hidden = !admin;
    $("member-admin-hint").hidden = admin || !detail;
    const rows = detail ? detail.participants : (conv.participants || []).map((u) => ({ user_id: u, role: null }));
    ul.replaceChildren();
    for (const p of [...rows].sort((a, b) => (a.user_id === this.m.me ? -1 : b.user_id === this.m.me ? 1 : a.user_id.localeCompare(b.user_id)))) {
      const me = p.user_id === this.m.me;
      const seen = p.online ? "online" : p.last_seen ? lastSeenText(p.last_seen) : "";
      const notes = [me ? "you" : "", p.role === "admin" ? "admin" : "", seen].filter(Boolean).join(" · ");
      ul.append(el("li", { dataset: { member: p.user_id } },
        el("span", {}, p.user_id, notes ? el("span", { class: "muted" }, ` · ${notes}`) : null),
        admin && !me ? el("button", {
          type: "button",
          "aria-label": `Remove ${p.user_id}`,
          onclick: () => this.removeMember(conv, p.user_id),
        }, "Remove") : null));
    }
  }

  async addMember(event) {
    event.preventDefault();
    const conv = this.m.conversations.get(this.m.current);
    const input = $("member-add-username");
    const names = input.value.split(/[\s,]+/).filter(Boolean);
    $("members-error").textContent = "";
    input.removeAttribute("aria-invalid");
    $("member-add-submit").disabled = true;
    try {
      await this.m.addMembers(conv.id, names);
      input.value = "";
      $("members-status").textContent = `Added ${names.join(", ")}.`;
      this.renderMembers(conv);
      this.renderHeader(this.m.conversations.get(conv.id));
    } catch (err) {
      input.setAttribute("aria-invalid", "true");
      $("members-error").textContent = err.code === "user_not_found" ? "No user with that username."
        : err.code === "not_admin" ? "Only group admins can add members." : err.message;
    } finally {
      $("member-add-submit").disabled = false;
      input.focus();
    }
  }

  async removeMember(conv, username) {
    const ok = await confirmDialog(`Remove ${username}?`, `${username} stops receiving this group's messages.`, "Remove");
    if (!ok) return;
    try {
      await this.m.removeMember(conv.id, username);
      $("members-status").textContent = `Removed ${username}.`;
      this.renderMembers(conv);
    } catch (err) {
      $("members-error").textContent = err.code === "not_admin" ? "Only group admins can remove members." : err.message;
    }
    $("member-add-username").focus();
  }

  async leaveGroup() {
    const conv = this.m.conversations.get(this.m.current);
    if (!conv) return;
    const ok = await confirmDialog("Leave this group?", "You stop receiving its messages. The history stays in this browser.", "Leave");
    if (!ok) return;
    try {
      await this.m.removeMember(conv.id, this.m.me);
      if ($("members-dialog").open) $("members-dialog").close();
      $("message-list").focus();
    } catch (err) {
      $("members-error").textContent = err.message;
    }
  }

  // --- keyboard ------------------------------------------------------------------------------

  shortcut(e) {
    const typing = e.target.matches("input, textarea, select");
    if (document.querySelector("dialog[open]")) return; // a dialog has the keyboard; Esc closes it
    if (e.key === "Escape") {
      if (this.replyTo) this.setReply(null);
      document.querySelector(".emoji-picker")?.remove();
      return;
    }
    if (e.altKey && (e.key === "n" || e.key === "N")) {
      e.preventDefault();
      this.openNewConversation();
    } else if ((e.ctrlKey || e.metaKey) && (e.key === "k" || e.key === "K")) {
      e.preventDefault();
      $("conversation-search").focus();
    } else if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault();
      this.step(e.key === "ArrowDown" ? 1 : -1, { unreadOnly: e.shiftKey });
    } else if (e.key === "?" && !typing) {
      e.preventDefault();
      $("help-dialog").showModal();
    }
  }

  // The next (1) or previous (-1) conversation in the list as shown, wrapping round; with
  // unreadOnly, the next one with unread messages.
  step(direction, { unreadOnly = false } = {}) {
    const ids = [...document.querySelectorAll("#conversation-list [data-conversation]")].map((b) => b.dataset.conversation);
    const count = ids.length;
    // With none open, down starts at the top and up at the bottom.
    const at = ids.includes(this.m.current) ? ids.indexOf(this.m.current) : direction > 0 ? -1 : count;
    for (let n = 1; n <= count; n++) {
      const id = ids[(((at + direction * n) % count) + count) % count];
      if (id === this.m.current || (unreadOnly && !this.m.conversations.get(id)?.unread)) continue;
      this.m.open(id);
      return;
    }
  }
}

function previewText(message, me, short = false) {
  if (message.deleted) return "Message deleted";
  if (message.type === "system") return message.body;
  const prefix = !short && message.mine ? "You: " : "";
  if (message.attachment) return `${prefix}📎 ${message.body || message.attachment.name}`;
  return `${prefix}${message.body || ""}`;
}

function sizeText(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
