// @ts-check
/**
 * The signaling WebSocket: join or resume, request ids with ok/error, room events in seq order,
 * and reconnection with the resume token after a drop. Knows nothing of the room's meaning.
 */

/** Close reasons after which reconnecting would be wrong or pointless. */
const TERMINAL = new Set(["left", "removed", "banned", "replaced", "room_ended", "room_not_found", "room_full", "stage_full"]);

/** What a close code means when neither `closed` nor the close frame named a reason. */
const CODE_REASONS = new Map([
  [1000, "left"],
  [4001, "removed"],
  [4003, "banned"],
  [4004, "replaced"],
  [4005, "room_ended"],
  [4404, "room_not_found"],
]);

/** Answers that settle a request, by message type. */
const ANSWERS = new Set(["ok", "welcome", "media_answer", "audience_page", "pong", "broadcast_link", "session"]);

const HANDSHAKE_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 15_000;
const KEEPALIVE_EVERY_MS = 10_000;
const KEEPALIVE_TIMEOUT_MS = 8_000;
/** After this long without getting back in, stop trying. */
const GIVE_UP_AFTER_MS = 120_000;

export class SignalError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** @typedef {"idle" | "joining" | "connected" | "reconnecting" | "closed"} SignalStatus */

/**
 * @typedef {Object} StatusDetail
 * @property {SignalStatus} status
 * @property {string} [reason]  why it closed (a `closed` reason, or `session_expired` /
 *   `connection_lost` decided here)
 * @property {number} [code]    the WebSocket close code, when there was one
 */

/**
 * Events (CustomEvent detail):
 * - `status`: StatusDetail, whenever the connection status changes;
 * - `welcome`: `{ message, resumed }`, after every successful join or resume;
 * - `message`: a server message that is not an answer to a request (room events, `snapshot`,
 *   `audience_count`, errors without an id).
 */
export class SignalClient extends EventTarget {
  /** @type {WebSocket | null} */
  #ws = null;
  /** @type {"join" | "resume"} */
  #mode = "join";
  #url;
  /** Any node's signaling address (the page's own server), asked when the room's node is gone. */
  #fallbackUrl;
  /** Set by `moved`: the room lives on another node; the next attempt goes there at once. */
  #movedTo = "";
  #token;
  #tokenExpiresAt;
  /** @type {string | null} */
  #resumeToken;
  #graceMs = 20_000;
  #nextId = 1;
  /** @type {Map<number, { resolve: (m: any) => void, reject: (e: Error) => void, timer: number }>} */
  #pending = new Map();
  /** @type {string | null} */
  #closedReason = null;
  /** @type {SignalStatus} */
  #status = "idle";
  #lastSeq = -1;
  #droppedAt = 0;
  #attempt = 0;
  /** @type {number | undefined} */
  #retryTimer;
  /** @type {number | undefined} */
  #keepAliveTimer;
  /** @type {number | undefined} */
  #handshakeTimer;

  /**
   * @param {{ url: string, fallbackUrl?: string, token: string, tokenExpiresAt: number, resumeToken?: string | null }} options
   *   `url`: the join answer's `signal_url` (the node the room lives on, in a cluster);
   *   `fallbackUrl`: where to ask when that node cannot be reached (any node sends us on);
   *   `resumeToken`: from an earlier page of the same tab, to take the place back after a reload
   */
  constructor({ url, fallbackUrl = url, token, tokenExpiresAt, resumeToken = null }) {
    super();
    this.#url = url;
    this.#fallbackUrl = fallbackUrl;
    this.#token = token;
    this.#tokenExpiresAt = tokenExpiresAt;
    this.#resumeToken = resumeToken;
    window.addEventListener("online", () => {
      if (this.#status === "reconnecting") this.#connectSoon(0);
    });
  }

  get status() {
    return this.#status;
  }

  /** The latest resume token, to survive a reload of the page. */
  get resumeToken() {
    return this.#resumeToken;
  }

  /**
   * A renewed session token (`renew_session`): a join after a lost resume uses it.
   * @param {string} token
   * @param {number} expiresAt  Unix milliseconds
   */
  renewToken(token, expiresAt) {
    this.#token = token;
    this.#tokenExpiresAt = expiresAt;
  }

  /** Opens the connection: `resume` if a resume token is known, else `join`. */
  start() {
    if (this.#status !== "idle") return;
    this.#setStatus({ status: "joining" });
    this.#open(this.#resumeToken ? "resume" : "join");
  }

  /**
   * Sends a request with an id and waits for its answer.
   * @param {string} type
   * @param {Record<string, unknown>} [fields]
   * @returns {Promise<any>} the answering message (`ok`, `media_answer`, `audience_page`, …)
   */
  request(type, fields = {}) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.#status !== "connected") {
      return Promise.reject(new SignalError("disconnected", "not connected"));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.#pending.delete(id);
        reject(new SignalError("disconnected", "no answer from the server"));
      }, REQUEST_TIMEOUT_MS);
      this.#pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...fields, type, id }));
    });
  }

  /** Leaves the room for good; resolves once the server has let go (or after a short wait). */
  async leave() {
    window.clearTimeout(this.#retryTimer);
    if (this.#status === "connected") {
      const closed = new Promise((resolve) => {
        this.addEventListener("status", () => resolve(undefined), { once: true });
        window.setTimeout(resolve, 3000);
      });
      this.request("leave").catch(() => {});
      await closed;
    }
    this.#finish("left");
  }

  /**
   * Drops the current socket and gets back in with `resume`, as after a network change.
   * Harmless when not connected.
   */
  reconnectNow() {
    if (this.#status !== "connected" || !this.#ws) return;
    this.#abandon(this.#ws);
  }

  /** @param {"join" | "resume"} mode */
  #open(mode) {
    this.#mode = mode;
    this.#closedReason = null;
    let ws;
    try {
      ws = new WebSocket(this.#url);
    } catch {
      this.#dropped(1006, "");
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      const id = this.#nextId++;
      const handshake =
        mode === "resume"
          ? { type: "resume", id, resume_token: this.#resumeToken }
          : { type: "join", id, token: this.#token };
      ws.send(JSON.stringify(handshake));
      this.#handshakeTimer = window.setTimeout(() => this.#abandon(ws), HANDSHAKE_TIMEOUT_MS);
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#receive(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.#ws) this.#dropped(event.code, event.reason);
    };
  }

  /** @param {unknown} data */
  #receive(data) {
    /** @type {any} */
    let message;
    try {
      message = JSON.parse(String(data));
    } catch {
      return;
    }
    if (!message || typeof message.type !== "string") return;
    switch (message.type) {
      case "welcome":
        this.#welcome(message);
        return;
      case "closed":
        this.#closedReason = String(message.reason);
        return;
      case "moved":
        // The room lives on another node of the cluster; the close that follows sends us there.
        if (typeof message.signal_url === "string") this.#movedTo = message.signal_url;
        return;
    }
    if (message.id !== undefined && message.id !== null) {
      const pending = this.#pending.get(message.id);
      if (pending && (ANSWERS.has(message.type) || message.type === "error")) {
        this.#pending.delete(message.id);
        window.clearTimeout(pending.timer);
        if (message.type === "error") pending.reject(new SignalError(message.code, message.message));
        else pending.resolve(message);
        return;
      }
    }
    if (typeof message.seq === "number" && message.type !== "snapshot") {
      if (message.seq <= this.#lastSeq) return;
      this.#lastSeq = message.seq;
    } else if (message.type === "snapshot") {
      this.#lastSeq = Math.max(this.#lastSeq, message.seq);
    }
    this.dispatchEvent(new CustomEvent("message", { detail: message }));
  }

  /** @param {any} message */
  #welcome(message) {
    window.clearTimeout(this.#handshakeTimer);
    this.#resumeToken = message.resume_token;
    this.#graceMs = (message.resume_grace_secs ?? 20) * 1000;
    this.#lastSeq = message.seq;
    this.#attempt = 0;
    this.#droppedAt = 0;
    this.#setStatus({ status: "connected" });
    this.dispatchEvent(new CustomEvent("welcome", { detail: { message, resumed: this.#mode === "resume" } }));
    this.#keepAlive();
  }

  /** Checks now and then that the socket still carries messages: a silent network is a drop. */
  #keepAlive() {
    window.clearTimeout(this.#keepAliveTimer);
    this.#keepAliveTimer = window.setTimeout(() => {
      const ws = this.#ws;
      if (!ws || this.#status !== "connected") return;
      const timeout = window.setTimeout(() => this.#abandon(ws), KEEPALIVE_TIMEOUT_MS);
      this.request("ping")
        .then(() => this.#keepAlive())
        .catch(() => {})
        .finally(() => window.clearTimeout(timeout));
    }, KEEPALIVE_EVERY_MS);
  }

  /**
   * Gives up on a socket that stopped answering, and treats it as dropped.
   * @param {WebSocket} ws
   */
  #abandon(ws) {
    if (ws !== this.#ws) return;
    ws.onclose = null;
    ws.onmessage = null;
    try {
      ws.close(3000, "client gave up");
    } catch {
      // Already closing.
    }
    this.#dropped(1006, "");
  }

  /**
   * @param {number} code
   * @param {string} frameReason
   */
  #dropped(code, frameReason) {
    window.clearTimeout(this.#handshakeTimer);
    window.clearTimeout(this.#keepAliveTimer);
    this.#ws = null;
    for (const { reject, timer } of this.#pending.values()) {
      window.clearTimeout(timer);
      reject(new SignalError("disconnected", "the connection dropped"));
    }
    this.#pending.clear();
    if (this.#status === "closed") return;

    const reason = this.#closedReason || frameReason || CODE_REASONS.get(code) || "";
    if (this.#movedTo && (reason === "room_elsewhere" || !TERMINAL.has(reason))) {
      // Not a failure: the same handshake, at once, on the room's node; or, when the room
      // moves while we are in it (its node is stopping), a resume there. A connection that
      // broke between `moved` and its close goes there too.
      this.#url = this.#movedTo;
      this.#movedTo = "";
      let mode = this.#mode;
      if (this.#status === "connected") {
        this.#setStatus({ status: "reconnecting", reason, code });
        if (this.#resumeToken) mode = "resume";
      }
      this.#connectSoon(0, mode);
      return;
    }
    if (TERMINAL.has(reason)) {
      this.#finish(reason, code);
      return;
    }
    const tokenValid = Date.now() < this.#tokenExpiresAt;
    if (this.#status === "connected") {
      this.#droppedAt = Date.now();
      this.#setStatus({ status: "reconnecting", reason, code });
    } else if (this.#droppedAt === 0) {
      this.#droppedAt = Date.now();
    }
    // The handshake was refused: fall back from resume to join, or stop.
    if (reason === "resume_expired" || reason === "invalid_token" || reason === "token_expired") {
      if (this.#mode === "resume" && tokenValid) {
        this.#resumeToken = null;
        this.#connectSoon(0, "join");
      } else {
        this.#finish("session_expired", code);
      }
      return;
    }
    if (Date.now() - this.#droppedAt > GIVE_UP_AFTER_MS) {
      this.#finish("connection_lost", code);
      return;
    }
    if (this.#status !== "reconnecting") this.#setStatus({ status: "reconnecting", reason, code });
    // Within the grace period our place is held: resume. After it, only a fresh join can work.
    const withinGrace = Date.now() - this.#droppedAt < this.#graceMs;
    const mode = this.#resumeToken && withinGrace ? "resume" : "join";
    if (mode === "join" && !tokenValid) {
      this.#finish("session_expired", code);
      return;
    }
    const delay = [250, 1000, 2000, 4000][Math.min(this.#attempt, 3)];
    this.#attempt++;
    // Every other attempt asks any node (the page's own server) rather than the room's node,
    // which may be gone for good; a node that is not the room's home answers with `moved`.
    if (this.#attempt % 2 === 0 && this.#url !== this.#fallbackUrl) this.#url = this.#fallbackUrl;
    this.#connectSoon(delay, mode);
  }

  /**
   * @param {number} delayMs
   * @param {"join" | "resume"} [mode]
   */
  #connectSoon(delayMs, mode) {
    window.clearTimeout(this.#retryTimer);
    this.#retryTimer = window.setTimeout(() => {
      if (this.#status === "closed" || this.#ws) return;
      this.#open(mode ?? (this.#resumeToken ? "resume" : "join"));
    }, delayMs);
  }

  /**
   * @param {string} reason
   * @param {number} [code]
   */
  #finish(reason, code) {
    window.clearTimeout(this.#retryTimer);
    window.clearTimeout(this.#keepAliveTimer);
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      ws.close(1000);
    }
    if (this.#status === "closed") return;
    this.#resumeToken = null;
    this.#setStatus({ status: "closed", reason, code });
  }

  /** @param {StatusDetail} detail */
  #setStatus(detail) {
    this.#status = detail.status;
    this.dispatchEvent(new CustomEvent("status", { detail }));
  }
}
