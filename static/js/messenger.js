// The messenger: conversations, the persistent outbox, receiving over the relay socket, receipts,
// typing, presence, history in the local vault, search, attachments, reactions, deletes, timers,
// trust warnings, devices and notifications. Rendering lives in ui/chatview.js.
import * as api from "./api.js";
import { RelaySocket } from "./socket.js";
import { EncryptionBlocked, linkInputParse as parseLinkInput, lockManager } from "./engine.js";
import { ChatView } from "./ui/chatview.js";
import { $, confirmDialog, drawQr } from "./ui/dom.js";

const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOW_MS = 6000;
const STATUS_RANK = { failed: -1, pending: 0, sent: 1, delivered: 2, read: 3 };
// A server that answers 5xx is tried this many times (1.5 s, 3 s apart) before the message shows
// "Not sent" with a Retry button. Network errors (offline) keep the message pending in the outbox.
const SERVER_ATTEMPTS = 3;
const SERVER_RETRY_MS = 1500;
const OFFLINE_RETRY_MS = 5000;
const EARLY_RECEIPTS_MAX = 500;
const PRESENCE_FETCH_MAX = 30; // direct chats whose presence is fetched on (re)connect
const PRESENCE_FETCH_PARALLEL = 4;

const uuid = () => crypto.randomUUID();

export class Messenger {
  constructor({ engine, vault, onLoggedOut }) {
    this.engine = engine;
    this.vault = vault;
    this.onLoggedOut = onLoggedOut;
    this.me = engine.username;
    this.conversations = new Map(); // id -> {id, kind, participants, unread, lastActivity, timer, detail}
    this.messages = new Map(); // convId -> Map(contentId -> message)
    this.byServerId = new Map(); // serverId -> [convId, contentId]
    this.presence = new Map(); // username -> {online, last_seen}
    this.typing = new Map(); // convId -> Map(username -> timeout)
    this.trust = new Map(); // username -> {status, blocked}
    this.current = null;
    this.flushing = false;
    this.flushTimer = null;
    this.lastTypingSent = 0;
    this.serverFailures = new Map(); // outbox key -> consecutive 5xx answers
    this.earlyReceipts = new Map(); // server id -> receipt status that arrived before the send answer
    this.privacy = { read_receipts: true, presence: true };
    this.socket = new RelaySocket();
    this.view = new ChatView(this);
    // Tabs of one browser share the vault, the outbox and the device, but only one holds the
    // socket: each tells the others which message records it stored, and they show them too.
    this.lock = lockManager();
    this.tabs = typeof BroadcastChannel === "function" ? new BroadcastChannel(`enigmo-messages:${this.me}`) : null;
    if (this.tabs) this.tabs.onmessage = (event) => this.onOtherTab(event.data).catch(() => {});
  }

  // --- start -----------------------------------------------------------------------------------

  async start() {
    for (const m of await this.vault.list("msg:")) this.remember(m);
    for (const c of await this.vault.list("conv:")) this.conversations.set(c.id, c);
    this.view.mount();
    await this.loadPrivacy().catch(() => {});
    await this.refreshConversations().catch(() => {});
    this.view.renderList();
    this.socket.on("status", (s) => this.view.connection(s));
    this.socket.on("open", () => this.onSocketOpen());
    this.socket.on("envelope", (f) => this.onEnvelope(f));
    this.socket.on("receipt", (f) => this.onReceipt(f));
    this.socket.on("typing", (f) => this.onTyping(f));
    this.socket.on("presence", (f) => this.onPresence(f));
    this.socket.on("deleted", (f) => this.onDeleted(f));
    this.socket.on("conversation", (f) => this.onConversationChanged(f));
    this.socket.on("unauthorized", () => this.onLoggedOut("closed"));
    this.socket.start();
    window.addEventListener("online", () => this.flushOutbox());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.current) this.markRead(this.current);
    });
    setInterval(() => this.expireTick(), 1000);
    this.flushOutbox();
  }

  onSocketOpen() {
    this.flushOutbox();
    this.refreshConversations().then(() => {
      this.view.renderList();
      return this.refreshPresence();
    }).catch(() => {});
  }

  // Presence events only report changes: who is online already comes with each conversation's
  // detail (GET /conversations/{id}), fetched for the most recent direct chats on (re)connect.
  async refreshPresence() {
    const direct = [...this.conversations.values()].filter((c) => c.kind === "direct" && !c.left)
      .sort((a, b) => (b.lastActivity || 0) - (a.lastActivity || 0)).slice(0, PRESENCE_FETCH_MAX);
    for (let i = 0; i < direct.length; i += PRESENCE_FETCH_PARALLEL) {
      await Promise.all(direct.slice(i, i + PRESENCE_FETCH_PARALLEL)
        .map((c) => this.conversationDetail(c.id, { fresh: true }).catch(() => {})));
    }
    this.view.renderList();
    if (this.current) this.view.renderHeader(this.conversations.get(this.current));
  }

  // --- conversations ---------------------------------------------------------------------------

  async refreshConversations() {
    const list = await api.get("/conversations");
    const listed = new Set(list.map((c) => c.id));
    for (const conv of this.conversations.values()) {
      // Not listed any more: this account left or was removed. The history stays in this browser.
      if (!listed.has(conv.id) && !conv.left && !conv.leaving) {
        conv.left = true;
        conv.detail = null;
        await this.vault.put(`conv:${conv.id}`, stripDetail(conv));
        await this.addSystem(conv.id, "You are no longer a member of this group.");
        if (conv.id === this.current) this.view.renderHeader(conv);
      }
    }
    for (const c of list) {
      const existing = this.conversations.get(c.id) || {};
      const participants = c.participants.map((p) => p.user_id);
      const notices = existing.id ? membershipNotices(existing, participants, this.me) : [];
      const conv = {
        ...existing,
        id: c.id,
        kind: c.kind,
        participants,
        left: false,
        // The open chat is read (mark-read may still be on its way to the server).
        unread: c.id === this.current && !document.hidden ? 0 : c.unread_count,
        lastSeq: c.last_seq,
        lastActivity: Date.parse(c.last_activity_at) || existing.lastActivity || 0,
        timer: c.disappearing_seconds || 0,
      };
      if (notices.length || existing.left) conv.detail = null;
      this.conversations.set(c.id, conv);
      await this.vault.put(`conv:${c.id}`, stripDetail(conv));
      for (const text of notices) await this.addSystem(c.id, text);
      if (notices.length && c.id === this.current) this.view.renderHeader(conv);
    }
  }

  // Members or timer changed: the cached fan-out list is stale, refetch list and (if open) detail.
  async onConversationChanged(frame) {
    const before = this.conversations.get(frame.conversation_id);
    if (before) before.detail = null;
    await this.refreshConversations().catch(() => {});
    this.view.renderList();
    const conv = this.conversations.get(frame.conversation_id);
    if (conv && conv.id === this.current && !conv.left) {
      await this.conversationDetail(conv.id, { fresh: true }).catch(() => {});
      this.view.renderHeader(conv);
      this.view.membersChanged(conv);
    }
  }

  // --- members (groups) ------------------------------------------------------------------------

  myRole(conv) {
    return conv.detail?.participants.find((p) => p.user_id === this.me)?.role || null;
  }

  async addMembers(convId, usernames) {
    const add = [...new Set(usernames.map((u) => u.trim().toLowerCase()).filter(Boolean))];
    if (!add.length) throw new Error("Enter a username.");
    const detail = await api.post(`/conversations/${convId}/members`, { add });
    await this.refreshConversations().catch(() => {}); // replaces the conversation object: detail after
    this.applyDetail(convId, detail);
    // New members learn the name the same way the first ones did.
    const conv = this.conversations.get(convId);
    if (conv?.name) {
      const content = { type: "meta", id: uuid(), sent_ms: conv.nameMs || Date.now(), name: conv.name };
      await this.queue(convId, content, { kind: "control", silent: true, noExpiry: true });
    }
    this.view.renderList();
    return detail;
  }

  async removeMember(convId, username) {
    const conv = this.conversations.get(convId);
    if (username === this.me) conv.leaving = true; // the "conversation" event may come before the answer
    try {
      await api.del(`/conversations/${convId}/members/${encodeURIComponent(username)}`);
    } finally {
      delete conv.leaving;
    }
    if (username === this.me) {
      conv.left = true;
      conv.detail = null;
      await this.vault.put(`conv:${convId}`, stripDetail(conv));
      await this.addSystem(convId, "You left the group.");
    }
    await this.refreshConversations().catch(() => {});
    if (username !== this.me) await this.conversationDetail(convId, { fresh: true });
    this.view.renderList();
    this.view.renderHeader(this.conversations.get(convId));
  }

  // --- privacy ---------------------------------------------------------------------------------

  async loadPrivacy() {
    this.privacy = await api.get("/me/privacy");
    return this.privacy;
  }

  async setPrivacy(patch) {
    this.privacy = await api.post("/me/privacy", patch);
    return this.privacy;
  }

  async conversationDetail(convId, { fresh = false } = {}) {
    const conv = this.conversations.get(convId);
    if (conv && conv.detail && !fresh) return conv.detail;
    const detail = await api.get(`/conversations/${convId}`);
    return this.applyDetail(convId, detail);
  }

  applyDetail(convId, detail) {
    const target = this.conversations.get(convId) || { id: convId };
    target.detail = detail;
    target.participants = detail.participants.map((p) => p.user_id);
    target.kind = detail.kind;
    target.timer = detail.disappearing_seconds || 0;
    this.conversations.set(convId, target);
    for (const p of detail.participants) {
      if (p.online !== null && p.online !== undefined) this.presence.set(p.user_id, { online: p.online, last_seen: p.last_seen });
    }
    return detail;
  }

  title(conv) {
    const others = (conv.participants || []).filter((u) => u !== this.me);
    if (conv.name) return conv.name;
    return others.length ? others.join(", ") : this.me;
  }

  async startConversation(usernames, name) {
    const members = [...new Set(usernames.map((u) => u.trim().toLowerCase()).filter((u) => u && u !== this.me))];
    if (!members.length) throw new Error("Enter at least one other username.");
    // A name makes a group, even with one other member: direct chats have no shared name.
    const kind = members.length === 1 && !name ? "direct" : "group";
    const detail = await api.post("/conversations", { kind, members });
    await this.refreshConversations();
    const conv = this.conversations.get(detail.id);
    this.view.renderList();
    if (name && conv) await this.setGroupName(conv.id, name);
    await this.open(detail.id);
  }

  // The group name travels as an E2EE `meta` control message to every member device (and this
  // account's other devices), so the server only ever stores ciphertext of it.
  async setGroupName(convId, name) {
    const conv = this.conversations.get(convId);
    const content = { type: "meta", id: uuid(), sent_ms: Date.now(), name };
    await this.applyMeta(conv, content);
    await this.queue(convId, content, { kind: "control", silent: true, noExpiry: true });
  }

  async applyMeta(conv, content) {
    if (!conv || conv.kind !== "group" || (conv.nameMs || 0) > content.sent_ms) return;
    conv.name = content.name.trim();
    conv.nameMs = content.sent_ms;
    await this.vault.put(`conv:${conv.id}`, stripDetail(conv));
    this.view.renderList();
    if (conv.id === this.current) this.view.renderHeader(conv);
  }

  async open(convId) {
    this.current = convId;
    const conv = this.conversations.get(convId);
    this.view.openConversation(conv);
    try {
      await this.conversationDetail(convId, { fresh: true });
      await this.checkTrust(convId);
    } catch {
      // Offline: the local history is still shown.
    }
    this.view.renderHeader(conv);
    this.markRead(convId);
  }

  // --- trust -----------------------------------------------------------------------------------

  // Compare every other participant's account key with the one we trust; a change shows a warning,
  // and for a verified contact blocks sending until the user accepts the new key.
  async checkTrust(convId) {
    const conv = this.conversations.get(convId);
    for (const user of (conv.participants || []).filter((u) => u !== this.me)) {
      const directory = await api.get(`/keys/identity/${encodeURIComponent(user)}`);
      const result = await this.engine.trustObserve(user, decodeB64(directory.account_key));
      this.trust.set(user, result);
      if (result.status === "changed") await this.keyChangeNotice(convId, user, directory.account_key);
    }
    this.view.renderTrust(conv, this.trustWarnings(conv));
  }

  // However the change was learnt (opening the chat, a new session, a bundle fetched to send), the
  // conversation gets one notice per new key, and the warning shows if the chat is open.
  async keyChangeNotice(convId, user, accountKeyB64) {
    const key = `keychange:${user}:${accountKeyB64}`;
    if (!this.hasSystemNotice(convId, key)) {
      await this.addSystem(convId, `${user}'s safety number has changed. Verify it before sending sensitive information.`, key);
    }
    const conv = this.conversations.get(convId);
    if (conv && convId === this.current) this.view.renderTrust(conv, this.trustWarnings(conv));
  }

  trustWarnings(conv) {
    return (conv.participants || []).filter((u) => u !== this.me).map((u) => [u, this.trust.get(u)]).filter(([, t]) => t && t.status === "changed");
  }

  async acceptKey(user) {
    await this.engine.trustConfirm(user);
    this.trust.set(user, { status: "ok", blocked: false });
    if (this.current) this.view.renderTrust(this.conversations.get(this.current), this.trustWarnings(this.conversations.get(this.current)));
  }

  // --- sending ---------------------------------------------------------------------------------

  async sendText(body, replyTo) {
    const convId = this.current;
    if (!convId || !body.trim()) return;
    const content = { type: "text", id: uuid(), sent_ms: Date.now(), body };
    if (replyTo) content.reply_to = replyTo;
    await this.queue(convId, content, { kind: "message", replyTo });
  }

  // The encrypted blob is sealed in the vault with the outbox item; the upload is part of the
  // outbox attempt, so an attachment sent offline, or interrupted by a reload, goes out later with
  // the same client message id.
  async sendAttachment(file, caption, replyTo) {
    const convId = this.current;
    const bytes = new Uint8Array(await file.arrayBuffer());
    const { key, digest, blob } = this.engine.encryptAttachment(bytes);
    const id = uuid();
    await this.vault.put(blobKey(id), blob, convId);
    const content = {
      type: "attachment",
      id,
      sent_ms: Date.now(),
      attachment: { ref: null, key, digest, size: bytes.length, mime: file.type || "application/octet-stream", name: file.name.slice(0, 200) },
    };
    if (caption) content.caption = caption;
    if (replyTo) content.reply_to = replyTo;
    await this.queue(convId, content, { kind: "message", replyTo, upload: true, localUrl: URL.createObjectURL(file) });
  }

  // Before the first encryption: the ciphertext is opaque to the server; key and digest travel
  // inside the E2EE message. The server's id is saved with the item, so a retry uploads once.
  async uploadQueued(item) {
    const blob = await this.vault.get(blobKey(item.content.id));
    if (!blob) throw new EncryptionBlocked("attachment_lost", "the attachment is no longer in this browser.");
    const uploaded = await api.request("POST", `/media/upload?conversation_id=${encodeURIComponent(item.convId)}`, blob);
    item.content = { ...item.content, attachment: { ...item.content.attachment, ref: uploaded.id } };
    item.attachments = [uploaded.id];
    item.upload = false;
    await this.vault.put(item.key, item);
    const message = this.messageById(item.convId, item.content.id);
    if (message) {
      message.attachment = item.content.attachment;
      await this.store(message);
    }
  }

  async react(message, emoji) {
    const mine = message.reactions?.[this.me] === emoji;
    const content = { type: "reaction", id: uuid(), sent_ms: Date.now(), target: message.id, emoji };
    if (mine) content.remove = true;
    this.applyReaction(message.convId, this.me, content);
    await this.queue(message.convId, content, { kind: "reaction", reactionTo: message.serverId, silent: true });
  }

  async deleteForEveryone(message) {
    const ok = await confirmDialog("Delete for everyone?", "The message is removed from every device in this conversation.", "Delete");
    if (!ok) return;
    await this.applyDelete(message.convId, message.id);
    const content = { type: "delete", id: uuid(), sent_ms: Date.now(), target: message.id };
    await this.queue(message.convId, content, { kind: "control", silent: true });
    if (message.serverId) api.del(`/messages/${message.serverId}`).catch(() => {});
  }

  async setTimer(seconds) {
    const convId = this.current;
    const conv = this.conversations.get(convId);
    try {
      await api.post(`/conversations/${convId}/timer`, { seconds: seconds || null });
    } catch (err) {
      this.view.sendError(`The timer could not be changed: ${err.message}`);
      this.view.renderHeader(conv);
      return;
    }
    conv.timer = seconds;
    const content = { type: "timer", id: uuid(), sent_ms: Date.now(), seconds };
    await this.addSystem(convId, timerText("You", seconds));
    await this.queue(convId, content, { kind: "control", silent: true, noExpiry: true });
  }

  // Every outgoing item is stored (sealed) before anything else, then sent in order; a reload or
  // an outage resends it with the same client_message_id, which the server stores once.
  async queue(convId, content, opts = {}) {
    const conv = this.conversations.get(convId);
    const expiresIn = !opts.noExpiry && conv && conv.timer ? conv.timer : null;
    const item = {
      key: `out:${String(Date.now()).padStart(15, "0")}:${content.id}`,
      convId,
      content,
      kind: opts.kind || "message",
      replyTo: opts.replyTo || null,
      reactionTo: opts.reactionTo || null,
      attachments: opts.attachments || [],
      upload: Boolean(opts.upload),
      expiresIn,
    };
    if (!opts.silent) {
      const message = {
        id: content.id,
        convId,
        sender: this.me,
        mine: true,
        type: content.type,
        body: content.body || content.caption || "",
        attachment: content.attachment || null,
        replyTo: content.reply_to || null,
        sentMs: content.sent_ms,
        status: "pending",
        reactions: {},
        expiresIn,
      };
      if (opts.localUrl) message.localUrl = opts.localUrl;
      await this.store(message);
      this.view.upsertMessage(message);
    }
    await this.vault.put(item.key, item);
    this.flushOutbox();
  }

  // One tab at a time sends from the shared outbox (the other waits, then finds what is left), so
  // an item is never sent by two tabs at once; whichever tab sends it, the bubble's tab hears.
  async flushOutbox() {
    if (this.flushing) {
      this.flushAgain = true;
      return;
    }
    this.flushing = true;
    clearTimeout(this.flushTimer);
    try {
      await this.lock("enigmo-outbox", () => this.flushOutboxLocked());
    } finally {
      this.flushing = false;
    }
  }

  async flushOutboxLocked() {
    do {
      this.flushAgain = false;
      const items = await this.vault.list("out:");
      for (const item of items) {
        const outcome = await this.sendItem(item);
        if (outcome.retryInMs) {
          // Later items wait too: the outbox sends in order.
          clearTimeout(this.flushTimer);
          this.flushTimer = setTimeout(() => this.flushOutbox(), outcome.retryInMs);
          return;
        }
      }
    } while (this.flushAgain);
  }

  // {done}, {failed} (moved out of the outbox, shown as "Not sent" with Retry), or {retryInMs}.
  async sendItem(item) {
    const outcome = await this.attemptItem(item);
    if (outcome.failed) {
      this.serverFailures.delete(item.key);
      await this.parkFailed(item, outcome.failed);
      return outcome;
    }
    if (outcome.serverError) {
      const count = (this.serverFailures.get(item.key) || 0) + 1;
      this.serverFailures.set(item.key, count);
      if (count >= SERVER_ATTEMPTS) {
        this.serverFailures.delete(item.key);
        await this.parkFailed(item, `Not sent: the server could not take it (${outcome.serverError}).`);
        return { failed: true };
      }
      return { retryInMs: SERVER_RETRY_MS * 2 ** (count - 1) };
    }
    if (outcome.done) this.serverFailures.delete(item.key);
    return outcome;
  }

  // A failed item leaves the outbox but stays sealed in the vault, so Retry sends exactly the same
  // content (same client_message_id: if an earlier attempt did reach the server, it is stored once).
  async parkFailed(item, reason) {
    // Reactions, deletes and timer changes have no bubble to retry from: they are dropped.
    if (await this.loadMessage(item.convId, item.content.id)) await this.vault.put(failedKey(item.convId, item.content.id), item, item.convId);
    await this.vault.delete(item.key);
    await this.markFailed(item.convId, item.content.id, reason);
  }

  async retrySend(message) {
    if (message.status !== "failed") return;
    let item = await this.vault.get(failedKey(message.convId, message.id));
    if (!item) item = rebuildItem(message);
    if (!item) return;
    await this.vault.delete(failedKey(message.convId, message.id));
    item = { ...item, key: `out:${String(Date.now()).padStart(15, "0")}:${message.id}`, retried: true };
    message.status = "pending";
    delete message.error;
    await this.store(message);
    this.view.upsertMessage(message);
    if (message.convId === this.current) this.view.sendError("");
    await this.vault.put(item.key, item);
    this.flushOutbox();
  }

  // A message that was never sent is removed from this browser only.
  async discardFailed(message) {
    if (message.status !== "failed") return;
    await this.vault.delete(failedKey(message.convId, message.id));
    await this.vault.delete(blobKey(message.id));
    await this.vault.delete(`msg:${message.convId}:${message.id}`);
    this.tabs?.postMessage({ removed: [message.convId, message.id] });
    this.forget(message);
    if (message.convId === this.current) this.view.sendError("");
  }

  async attemptItem(item) {
    const { convId } = item;
    for (let attempt = 0; attempt < 4; attempt++) {
      try {
        if (item.upload) await this.uploadQueued(item);
        const { content } = item; // with the uploaded attachment's ref
        const detail = await this.conversationDetail(convId, { fresh: attempt > 0 });
        const targets = await this.ensureSessions(detail, item);
        const recipients = await this.engine.encryptFor(targets, content);
        const body = { client_message_id: content.id, kind: item.kind, recipients };
        if (item.replyTo) {
          const target = this.messageById(convId, item.replyTo);
          if (target && target.serverId) body.reply_to = target.serverId;
        }
        if (item.reactionTo) body.reaction_to = item.reactionTo;
        if (item.expiresIn) body.expires_in = item.expiresIn;
        if (item.attachments.length) body.attachments = item.attachments;
        const sent = await api.post(`/conversations/${convId}/messages`, body);
        await this.vault.delete(item.key);
        if (content.type === "attachment") await this.vault.delete(blobKey(content.id));
        await this.markSent(convId, content.id, sent, recipients.length === 0);
        // A retried send may have reached the server before: its receipts went by unnoticed.
        if (item.retried) this.syncStatus(convId, content.id).catch(() => {});
        return { done: true };
      } catch (err) {
        if (err instanceof EncryptionBlocked) return { failed: `Not sent: ${err.message}` };
        if (err.code === "device_mismatch") continue; // refresh devices and sessions, then retry
        if (err.status === 0) return { retryInMs: OFFLINE_RETRY_MS };
        if (err.status === 429) return { retryInMs: Math.min(60, err.retryAfter || 5) * 1000 };
        if (err.status >= 500) return { serverError: err.code && !err.code.startsWith("http_") ? err.code : `HTTP ${err.status}` };
        return { failed: `Not sent: ${err.message}` };
      }
    }
    return { failed: "Not sent: the recipient's devices kept changing." };
  }

  // The server's delivered/read times of one of my messages (earliest over the other users' devices).
  async syncStatus(convId, contentId) {
    const message = this.messageById(convId, contentId);
    if (!message || !message.seq) return;
    const page = await api.get(`/conversations/${convId}/messages?after_seq=${message.seq - 1}&limit=1`);
    const row = page.messages.find((m) => m.id === message.serverId);
    if (!row) return;
    const before = message.status;
    if (row.delivered_at) this.raiseStatus(message, "delivered");
    if (row.read_at) this.raiseStatus(message, this.privacy.read_receipts ? "read" : "delivered");
    if (message.status !== before) {
      await this.store(message);
      this.view.upsertMessage(message);
    }
  }

  // Every device of every participant except this one, each with a session. The bundle fetched for
  // a missing session carries the account key: a change puts a notice in the conversation before
  // anything is encrypted to the new key, and a message written before the change was known is
  // held as "Not sent" (Retry is the user's go-ahead). A verified contact's change blocks sending.
  async ensureSessions(detail, item) {
    const targets = [];
    const devicesByUser = new Map();
    for (const p of detail.participants) {
      const trust = this.trust.get(p.user_id);
      if (trust && trust.blocked) {
        throw new EncryptionBlocked("key_changed", `${p.user_id}'s safety number changed. Review and accept it before sending.`);
      }
      const devices = p.devices.filter((deviceId) => !(p.user_id === this.me && deviceId === this.engine.deviceId));
      for (const deviceId of devices) targets.push({ userId: p.user_id, deviceId });
      devicesByUser.set(p.user_id, devices);
    }
    for (const [user, devices] of devicesByUser) {
      if (!(await this.devicesWithoutSession(user, devices)).length) continue;
      const bundle = await api.get(`/keys/prekeys/${encodeURIComponent(user)}`);
      const trust = await this.engine.trustObserve(user, decodeB64(bundle.account_key));
      this.trust.set(user, trust);
      if (trust.status === "changed") {
        await this.keyChangeNotice(item.convId, user, bundle.account_key);
        if (trust.blocked) {
          throw new EncryptionBlocked("key_changed", `${user}'s safety number changed. Review and accept it before sending.`);
        }
        if (item.kind === "message" && !item.retried && item.content.sent_ms < trust.changedMs) {
          throw new EncryptionBlocked("key_changed", `${user}'s safety number changed after you wrote this. Check it, then Retry to send.`);
        }
      }
      // Asked again: a key change has just reset the sessions with the old key.
      await this.engine.sessionsFromBundle(bundle, await this.devicesWithoutSession(user, devices));
    }
    return targets;
  }

  async devicesWithoutSession(user, devices) {
    const missing = [];
    for (const deviceId of devices) if (!(await this.engine.hasSession(`${user}.${deviceId}`))) missing.push(deviceId);
    return missing;
  }

  async markSent(convId, contentId, sent, noRecipients) {
    const message = await this.loadMessage(convId, contentId); // another tab's, sent by this one
    if (!message) return;
    message.serverId = sent.id;
    message.seq = sent.seq;
    message.expiresAt = sent.expires_at ? Date.parse(sent.expires_at) : null;
    this.byServerId.set(sent.id, [convId, contentId]);
    this.raiseStatus(message, "sent");
    if (noRecipients) this.raiseStatus(message, "delivered");
    const early = this.earlyReceipts.get(sent.id);
    if (early) {
      this.earlyReceipts.delete(sent.id);
      this.raiseStatus(message, early);
    }
    await this.store(message);
    this.view.upsertMessage(message);
    this.view.renderList();
  }

  async markFailed(convId, contentId, reason) {
    const message = await this.loadMessage(convId, contentId);
    if (message) {
      message.status = "failed";
      message.error = reason;
      await this.store(message);
      this.view.upsertMessage(message);
    }
    if (convId === this.current) this.view.sendError(reason);
  }

  raiseStatus(message, status) {
    if ((STATUS_RANK[status] ?? 0) > (STATUS_RANK[message.status] ?? 0)) message.status = status;
  }

  // --- typing and read -------------------------------------------------------------------------

  composing() {
    if (!this.current) return;
    const now = Date.now();
    if (now - this.lastTypingSent > TYPING_SEND_EVERY_MS) {
      this.lastTypingSent = now;
      this.sendTyping(this.current, "started");
    }
    clearTimeout(this.typingStop);
    this.typingStop = setTimeout(() => this.stopComposing(), 4000);
  }

  stopComposing() {
    if (this.current && this.lastTypingSent) {
      this.sendTyping(this.current, "stopped");
      this.lastTypingSent = 0;
    }
  }

  sendTyping(convId, state) {
    if (!this.socket.send({ type: "typing", conversation_id: convId, state })) {
      api.post(`/conversations/${convId}/typing`, { state }).catch(() => {});
    }
  }

  markRead(convId) {
    if (document.hidden || convId !== this.current) return;
    const conv = this.conversations.get(convId);
    const list = [...(this.messages.get(convId) || new Map()).values()];
    const maxSeq = Math.max(0, ...list.filter((m) => !m.mine && m.seq).map((m) => m.seq));
    if (conv) conv.unread = 0;
    this.view.renderList();
    if (!maxSeq || (conv && conv.readSeq >= maxSeq)) return;
    if (conv) conv.readSeq = maxSeq;
    api.post(`/conversations/${convId}/mark-read`, { seq: maxSeq }).catch(() => {
      if (conv) conv.readSeq = 0;
    });
  }

  // --- receiving -------------------------------------------------------------------------------

  async onEnvelope(frame) {
    try {
      await this.receive(frame);
    } catch (err) {
      await this.addSystem(frame.conversation_id, `A message from ${frame.sender?.user_id || "someone"} could not be decrypted (${err.code || err.message}).`);
    }
    this.socket.send({ type: "ack", ids: [frame.id] });
  }

  async receive(frame) {
    const convId = frame.conversation_id;
    if (!frame.ciphertext) return;
    if (!this.conversations.has(convId)) await this.refreshConversations().catch(() => {});
    if (this.byServerId.has(frame.id)) return; // a redelivery of something already stored
    const sender = frame.sender.user_id;
    const { content, newSession, remoteIdentity } = await this.engine.decrypt(sender, frame.sender.device_id, frame.ciphertext);
    if (newSession) await this.checkNewSession(convId, sender, frame.sender.device_id, remoteIdentity);
    const mine = sender === this.me;
    const base = { convId, serverId: frame.id, seq: frame.seq, sender, senderDevice: frame.sender.device_id, mine,
      createdMs: Date.parse(frame.created_at) || Date.now(), expiresAt: frame.expires_at ? Date.parse(frame.expires_at) : null };
    switch (content.type) {
      case "text":
      case "attachment": {
        const message = {
          ...base,
          id: content.id,
          type: content.type,
          body: content.body || content.caption || "",
          attachment: content.attachment || null,
          replyTo: content.reply_to || null,
          sentMs: content.sent_ms,
          status: mine ? "sent" : "received",
          reactions: {},
        };
        const existing = this.messageById(convId, content.id);
        if (existing) Object.assign(message, { reactions: existing.reactions, deleted: existing.deleted });
        await this.store(message);
        this.view.upsertMessage(message);
        const conv = this.conversations.get(convId);
        if (conv) {
          conv.lastActivity = Math.max(conv.lastActivity || 0, message.createdMs);
          // A message up to the listing's last_seq is already in its unread_count (the backlog
          // after a reload, the first message of a new conversation): counted once, not twice.
          const listed = frame.seq <= (conv.lastSeq || 0);
          conv.lastSeq = Math.max(conv.lastSeq || 0, frame.seq);
          if (!mine && !listed && (convId !== this.current || document.hidden)) conv.unread = (conv.unread || 0) + 1;
        }
        this.view.renderList();
        if (!mine) {
          this.clearTyping(convId, sender);
          this.notify(convId);
          this.markRead(convId);
        }
        break;
      }
      case "reaction":
        this.applyReaction(convId, sender, content);
        this.byServerId.set(frame.id, [convId, content.id]);
        break;
      case "delete":
        await this.applyDelete(convId, content.target, sender);
        this.byServerId.set(frame.id, [convId, content.id]);
        break;
      case "meta":
        await this.applyMeta(this.conversations.get(convId), content);
        this.byServerId.set(frame.id, [convId, content.id]);
        break;
      case "timer": {
        const conv = this.conversations.get(convId);
        if (conv) conv.timer = content.seconds;
        await this.addSystem(convId, timerText(mine ? "You" : sender, content.seconds), `timer:${content.id}`);
        if (convId === this.current) this.view.renderHeader(conv);
        this.byServerId.set(frame.id, [convId, content.id]);
        break;
      }
      default:
        this.byServerId.set(frame.id, [convId, content.id]);
    }
  }

  // A new session names a device key: it must be certified by the account key we trust.
  async checkNewSession(convId, user, deviceId, identityKey) {
    try {
      const directory = await api.get(`/keys/identity/${encodeURIComponent(user)}`);
      const trust = await this.engine.trustObserve(user, decodeB64(directory.account_key));
      this.trust.set(user, trust);
      if (!this.engine.deviceCertified(directory, deviceId, identityKey)) {
        await this.addSystem(convId, `Warning: a message from ${user} came from a device key their account did not certify.`);
      }
      if (trust.status === "changed") await this.keyChangeNotice(convId, user, directory.account_key);
    } catch {
      // Offline: checked again when the conversation is opened.
    }
  }

  applyReaction(convId, user, content) {
    const target = this.messageById(convId, content.target);
    if (!target) return;
    target.reactions = target.reactions || {};
    if (content.remove) delete target.reactions[user];
    else target.reactions[user] = content.emoji;
    this.store(target);
    this.view.upsertMessage(target);
  }

  async applyDelete(convId, contentId, byUser) {
    const target = this.messageById(convId, contentId);
    if (!target) return;
    if (byUser && byUser !== target.sender) return; // only the author deletes for everyone
    Object.assign(target, { deleted: true, body: "", attachment: null, reactions: {} });
    await this.store(target);
    this.view.upsertMessage(target);
    this.view.renderList();
  }

  onDeleted(frame) {
    const ids = frame.message_ids || [frame.message_id || frame.id];
    for (const id of ids) {
      const hit = this.byServerId.get(id);
      if (hit) {
        const m = this.messageById(hit[0], hit[1]);
        if (m && !m.deleted) this.applyDelete(hit[0], hit[1]);
      }
    }
  }

  onReceipt(frame) {
    if (frame.user_id === this.me) return;
    // Like Signal and WhatsApp: who sends no read receipts sees none.
    const status = frame.status === "read" && this.privacy.read_receipts ? "read" : "delivered";
    const hit = this.byServerId.get(frame.message_id);
    if (!hit) {
      // The receipt can overtake the answer to our own send: keep it until markSent.
      if (this.earlyReceipts.size >= EARLY_RECEIPTS_MAX) this.earlyReceipts.delete(this.earlyReceipts.keys().next().value);
      if (STATUS_RANK[status] > (STATUS_RANK[this.earlyReceipts.get(frame.message_id)] ?? 0)) this.earlyReceipts.set(frame.message_id, status);
      return;
    }
    const message = this.messageById(hit[0], hit[1]);
    if (!message || !message.mine) return;
    const before = message.status;
    this.raiseStatus(message, status);
    // A read receipt for a later message means the earlier ones were read too.
    if (status === "read") {
      for (const m of this.messages.get(hit[0]).values()) {
        if (m.mine && m.seq && m.seq <= message.seq) this.raiseStatus(m, "read");
        if (m.mine && m.status === "read") this.view.upsertMessage(m);
      }
    }
    if (message.status !== before) {
      this.store(message);
      this.view.upsertMessage(message);
    }
  }

  onTyping(frame) {
    const convId = frame.conversation_id;
    const user = frame.user_id;
    if (user === this.me) return;
    if (!this.typing.has(convId)) this.typing.set(convId, new Map());
    const map = this.typing.get(convId);
    clearTimeout(map.get(user));
    if (frame.state === "started" || frame.state === "start" || frame.state === true) {
      map.set(user, setTimeout(() => this.clearTyping(convId, user), TYPING_SHOW_MS));
    } else {
      map.delete(user);
    }
    if (convId === this.current) this.view.renderTyping([...map.keys()]);
  }

  clearTyping(convId, user) {
    const map = this.typing.get(convId);
    if (!map) return;
    clearTimeout(map.get(user));
    map.delete(user);
    if (convId === this.current) this.view.renderTyping([...map.keys()]);
  }

  onPresence(frame) {
    this.presence.set(frame.user_id, { online: frame.online, last_seen: frame.last_seen });
    this.view.renderList();
    if (this.current) this.view.renderHeader(this.conversations.get(this.current));
  }

  notify(convId) {
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    // Never the sender's text: only that something arrived.
    const n = new Notification("Enigmo", { body: "New message", tag: `conv-${convId}`, silent: false });
    n.onclick = () => {
      window.focus();
      this.open(convId);
    };
  }

  // --- history ---------------------------------------------------------------------------------

  remember(message) {
    if (!this.messages.has(message.convId)) this.messages.set(message.convId, new Map());
    this.messages.get(message.convId).set(message.id, message);
    if (message.serverId) this.byServerId.set(message.serverId, [message.convId, message.id]);
  }

  async store(message) {
    this.remember(message);
    const { localUrl, ...sealed } = message;
    void localUrl;
    await this.vault.put(`msg:${message.convId}:${message.id}`, sealed, message.convId);
    this.tabs?.postMessage({ stored: [message.convId, message.id] });
  }

  // In memory, or stored by another tab of this browser since this one loaded.
  async loadMessage(convId, id) {
    const known = this.messageById(convId, id);
    if (known) return known;
    const stored = await this.vault.get(`msg:${convId}:${id}`);
    if (stored) this.remember(stored);
    return stored || null;
  }

  // Another tab stored or removed a message record: show what the vault now holds. A status
  // never goes down (this tab may have heard a receipt the other has not), except to "Not sent".
  async onOtherTab({ stored, removed } = {}) {
    if (removed) {
      const message = this.messageById(removed[0], removed[1]);
      if (message) this.forget(message);
      return;
    }
    if (!stored) return;
    const [convId, id] = stored;
    const record = await this.vault.get(`msg:${convId}:${id}`);
    if (!record) return;
    const known = this.messageById(convId, id);
    if (known) {
      if (record.status !== "failed") this.raiseStatus(record, known.status);
      if (known.localUrl) record.localUrl = known.localUrl;
    }
    const early = record.serverId && this.earlyReceipts.get(record.serverId);
    if (early) {
      this.earlyReceipts.delete(record.serverId);
      this.raiseStatus(record, early);
    }
    this.remember(record);
    if (!this.conversations.has(convId)) {
      const conv = await this.vault.get(`conv:${convId}`);
      if (conv) this.conversations.set(convId, conv);
    }
    this.view.upsertMessage(record);
    this.view.renderList();
  }

  // Out of memory and off the screen (the vault record is the caller's to delete).
  forget(message) {
    this.messages.get(message.convId)?.delete(message.id);
    if (message.serverId) this.byServerId.delete(message.serverId);
    this.view.removeMessage(message);
    this.view.renderList();
  }

  messageById(convId, id) {
    return this.messages.get(convId)?.get(id) || null;
  }

  hasSystemNotice(convId, key) {
    return Boolean(key && this.messageById(convId, `sys:${key}`));
  }

  async addSystem(convId, text, key = null) {
    if (!convId) return;
    const id = key ? `sys:${key}` : `sys:${uuid()}`;
    if (this.messageById(convId, id)) return;
    const message = { id, convId, type: "system", body: text, sentMs: Date.now(), mine: false, sender: null, reactions: {} };
    await this.store(message);
    this.view.upsertMessage(message);
  }

  sortedMessages(convId) {
    return [...(this.messages.get(convId) || new Map()).values()].sort((a, b) => (a.sentMs - b.sentMs) || ((a.seq || 0) - (b.seq || 0)));
  }

  lastMessage(convId) {
    const list = this.sortedMessages(convId).filter((m) => m.type !== "system");
    return list[list.length - 1] || null;
  }

  // Full-text search over the decrypted history, in this browser only.
  search(query) {
    const q = query.trim().toLowerCase();
    if (q.length < 2) return [];
    const hits = [];
    for (const [convId, map] of this.messages) {
      for (const m of map.values()) {
        if (m.type !== "system" && !m.deleted && ((m.body || "").toLowerCase().includes(q) || (m.attachment?.name || "").toLowerCase().includes(q))) {
          hits.push({ convId, message: m });
        }
      }
    }
    return hits.sort((a, b) => b.message.sentMs - a.message.sentMs).slice(0, 50);
  }

  // Disappearing messages leave this browser when they expire, as they leave the server.
  async expireTick() {
    const now = Date.now();
    for (const [convId, map] of this.messages) {
      for (const m of [...map.values()]) {
        const expiresAt = m.expiresAt;
        if (expiresAt && expiresAt <= now) {
          await this.vault.delete(`msg:${convId}:${m.id}`);
          this.forget(m);
        }
      }
    }
  }

  async fetchAttachment(message) {
    const a = message.attachment;
    // Not uploaded yet (still in the outbox): the sealed local copy.
    const blob = a.ref ? await api.request("GET", `/media/${encodeURIComponent(a.ref)}`, undefined, { raw: true })
      : await this.vault.get(blobKey(message.id));
    if (!blob) throw new Error("not uploaded and no longer in this browser");
    const plain = this.engine.decryptAttachment(blob, a.key, a.digest);
    return URL.createObjectURL(new Blob([plain], { type: a.mime }));
  }

  // --- devices ---------------------------------------------------------------------------------

  async devices() {
    return api.get("/devices");
  }

  async revokeDevice(deviceId) {
    await api.del(`/devices/${deviceId}`);
  }

  // The input is "CODE-CHECK" as typed, or the QR text; only CODE goes to the server, and nothing
  // is sent back unless the keys it describes match CHECK (engine.linkApprove).
  async approveLink(input) {
    const parsed = parseLinkInput(input);
    if (!parsed) throw new Error("Enter the whole code shown on the new browser, like ABCDEFGH-KY3DTKFC.");
    if (!parsed.check && !parsed.hash) {
      throw new Error("That code has no check part. Enter all 16 characters shown on the new browser, like ABCDEFGH-KY3DTKFC.");
    }
    const path = `/devices/link/${encodeURIComponent(parsed.code)}`;
    const described = await api.get(path);
    const body = this.engine.linkApprove(described, parsed);
    await api.post(path, body);
    return described;
  }

  async safety(user) {
    return this.engine.safetyNumber(user);
  }

  async logout() {
    const ok = await confirmDialog("Log out?", "This browser's keys and history are erased. You can link it again from another device.", "Log out");
    if (!ok) return;
    this.socket.stop();
    await api.post("/auth/logout").catch(() => {});
    this.vault.close();
    this.onLoggedOut("logout");
  }

  drawQr(canvas, bytes) {
    return drawQr(canvas, bytes);
  }

  get elements() {
    return { $ };
  }
}

export function timerText(who, seconds) {
  if (!seconds) return `${who} turned off disappearing messages.`;
  return `${who} set disappearing messages to ${durationText(seconds)}.`;
}

export function durationText(seconds) {
  if (seconds < 60) return `${seconds} second${seconds === 1 ? "" : "s"}`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} minute${seconds < 120 ? "" : "s"}`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} hour${seconds < 7200 ? "" : "s"}`;
  if (seconds < 604800) return `${Math.round(seconds / 86400)} day${seconds < 172800 ? "" : "s"}`;
  return `${Math.round(seconds / 604800)} week${seconds < 1209600 ? "" : "s"}`;
}

const failedKey = (convId, id) => `failed:${convId}:${id}`;
const blobKey = (id) => `blob:${id}`;

// The outbox item of a message that failed before failed items were kept (text and attachments).
function rebuildItem(message) {
  if (!["text", "attachment"].includes(message.type)) return null;
  const content = { type: message.type, id: message.id, sent_ms: message.sentMs };
  if (message.type === "text") content.body = message.body;
  else {
    content.attachment = message.attachment;
    if (message.body) content.caption = message.body;
  }
  if (message.replyTo) content.reply_to = message.replyTo;
  const uploaded = Boolean(message.attachment?.ref);
  return { convId: message.convId, content, kind: "message", replyTo: message.replyTo || null, reactionTo: null,
    attachments: uploaded ? [message.attachment.ref] : [], upload: Boolean(message.attachment) && !uploaded,
    expiresIn: message.expiresIn || null };
}

// System notices for membership changes seen between two listings of a group.
export function membershipNotices(before, participants, me) {
  if (before.left) return ["You were added to this group."];
  if (before.kind !== "group" || !before.participants) return [];
  const was = new Set(before.participants);
  const now = new Set(participants);
  return [
    ...participants.filter((u) => !was.has(u) && u !== me).map((u) => `${u} joined the group.`),
    ...before.participants.filter((u) => !now.has(u) && u !== me).map((u) => `${u} is no longer in the group.`),
  ];
}

function stripDetail(conv) {
  const { detail, ...rest } = conv;
  void detail;
  return rest;
}

function decodeB64(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
