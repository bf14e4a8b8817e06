// The relay WebSocket: reconnects with jittered exponential backoff (capped), pings to detect dead
// links, drops the socket as soon as the browser reports the network gone, and hands every server
// frame to the listeners by its type.

const config = JSON.parse(document.getElementById("enigmo-config").textContent);

export class RelaySocket extends EventTarget {
  constructor({ path = config.ws, minDelay = 500, maxDelay = 30000 } = {}) {
    super();
    this.path = path;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.attempt = 0;
    this.ws = null;
    this.stopped = false;
    this.refs = 0;
    this.pending = new Map();
    this.pingTimer = null;
    this.retryTimer = null;
    this.retryAt = 0; // when the scheduled reconnect comes, while one is scheduled
    this.lastFrame = 0;
    this.networkDown = navigator.onLine === false;
    window.addEventListener("online", () => {
      this.networkDown = false;
      this.reconnectNow();
    });
    // A link that died can look open for a minute, until the heartbeat notices: the browser knows sooner.
    window.addEventListener("offline", () => {
      this.networkDown = true;
      if (this.ws) this.abandon(1006);
      else if (this.retryAt) this.emit("status", { state: "waiting", delay: this.retryAt - Date.now(), networkDown: true });
    });
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    if (this.ws) this.ws.close(1000);
  }

  reconnectNow() {
    if (this.stopped || this.connected) return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    if (this.ws) detach(this.ws); // an attempt made while offline would only fail later
    this.ws = null;
    this.open();
  }

  // Give up on the current socket now: a dead link never completes the closing handshake, so its
  // close event could come much later.
  abandon(code) {
    if (this.stopped || !this.ws) return;
    detach(this.ws);
    this.closed(code);
  }

  open() {
    if (this.stopped) return;
    this.retryAt = 0;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      // batch=1: what the server sends in one tick (a backlog page, a burst of receipts) arrives
      // as one {"type": "batch", "frames": [...]} frame, handled below frame by frame, in order.
      const query = this.path.includes("?") ? "&batch=1" : "?batch=1";
      ws = new WebSocket(`${scheme}//${location.host}${this.path}${query}`);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    this.emit("status", { state: "connecting" });
    ws.onopen = () => {
      this.attempt = 0;
      this.lastFrame = Date.now();
      this.emit("status", { state: "online" });
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.heartbeat(), 20000);
      this.emit("open", {});
    };
    ws.onmessage = (event) => {
      this.lastFrame = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      const frames = frame && frame.type === "batch" && Array.isArray(frame.frames) ? frame.frames : [frame];
      for (const one of frames) if (one && typeof one === "object") this.handleFrame(one);
    };
    ws.onclose = (event) => this.closed(event.code);
  }

  closed(code) {
    this.ws = null;
    clearInterval(this.pingTimer);
    for (const [ref, { reject, timer }] of this.pending) {
      clearTimeout(timer);
      reject({ code: "disconnected" });
      this.pending.delete(ref);
    }
    this.emit("status", { state: "offline", code });
    if (this.stopped) return;
    // Revoked or logged out elsewhere: the session is gone, reconnecting cannot help.
    if (code === 4401 || code === 4403) {
      this.emit("unauthorized", { code });
      return;
    }
    this.scheduleRetry();
  }

  scheduleRetry() {
    if (this.stopped) return;
    const base = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.emit("status", { state: "waiting", delay, networkDown: this.networkDown });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  handleFrame(frame) {
    if (frame.ref && this.pending.has(frame.ref)) {
      const { resolve, reject, timer } = this.pending.get(frame.ref);
      clearTimeout(timer);
      this.pending.delete(frame.ref);
      if (frame.type === "error") reject(frame.error || {});
      else resolve(frame);
    }
    this.emit(frame.type, frame);
  }

  heartbeat() {
    if (!this.connected) return;
    if (Date.now() - this.lastFrame > 50000) {
      this.abandon(4000);
      return;
    }
    this.send({ type: "ping" });
  }

  send(frame) {
    if (!this.connected) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // Send and wait for the server frame carrying the same ref (its answer or an error).
  call(frame, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const ref = `r${++this.refs}`;
      if (!this.send({ ...frame, ref })) {
        reject({ code: "disconnected" });
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject({ code: "timeout" });
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
    });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  on(type, handler) {
    this.addEventListener(type, (event) => handler(event.detail));
  }
}

// Stop listening to a socket and close it; its late events go nowhere.
function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  try {
    ws.close(4000);
  } catch {
    // Already closing.
  }
}
