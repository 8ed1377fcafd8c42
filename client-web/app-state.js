// @ts-check
/**
 * The app's state in one object: what the page shows, the live connections behind it, and the
 * timers that change it later. Only the methods here change it, and each change asks for one
 * render (changes made together coalesce into one). No DOM and no I/O of its own: the room's
 * rules are room.js's, the wiring is app.js's.
 */

import { addAudiencePage, announce, applyEvent, fromSnapshot } from "./room.js";

/** @typedef {import("./landing.js").InviteInfo} InviteInfo */
/** @typedef {import("./room-view.js").ConnectionState} ConnectionState */
/** @typedef {import("./room-view.js").RoomView} RoomView */
/** @typedef {import("./room.js").Room} Room */
/** @typedef {import("./storage.js").Session} Session */
/** @typedef {import("./signal.js").SignalClient} SignalClient */
/** @typedef {import("./media.js").MediaSession} MediaSession */
/** @typedef {import("./broadcast.js").BroadcastPlayer} BroadcastPlayer */

/** How long a notice stays up unless dismissed. */
const NOTICE_MS = 10_000;
/** How long the audio may take to connect before the page says it is working on it. */
const AUDIO_PATIENCE_MS = 1500;

/**
 * How a visit ended, for the end card.
 * @typedef {Object} Ending
 * @property {"removed" | "ended"} connection
 * @property {string} heading
 * @property {string} reason
 * @property {boolean} canRejoin
 */

export class AppState {
  // What the page shows.
  /** @type {InviteInfo} */
  #invite;
  /** @type {Session | null} */
  #session = null;
  /** @type {ConnectionState} */
  #connection = "joining";
  #title = "";
  /** @type {Room | null} */
  #room = null;
  /** @type {string | null} */
  #endHeading = null;
  /** @type {string | null} */
  #endReason = null;
  #canRejoin = false;
  #playbackBlocked = false;
  /** @type {string | null} */
  #notice = null;
  #audioConnecting = false;
  // The live connections behind it.
  /** @type {SignalClient | null} */
  #signal = null;
  /** @type {MediaSession | null} */
  #media = null;
  /** @type {BroadcastPlayer | null} */
  #broadcast = null;
  /** Audio sections a media offer carries (the welcome's `media.slots`). */
  #mediaSlots = 3;
  /** @type {RoomView | null} */
  #view = null;

  /** @type {number | undefined} */
  #noticeTimer;
  /** @type {number | undefined} */
  #audioTimer;
  #renderQueued = false;
  #render;

  /**
   * @param {InviteInfo} invite
   * @param {(state: AppState) => void} render  called once after each batch of changes
   */
  constructor(invite, render) {
    this.#invite = invite;
    this.#title = invite.room_title ?? "";
    this.#render = render;
  }

  /** What the server put in the page about the invite. */
  get invite() { return this.#invite; }
  get session() { return this.#session; }
  get connection() { return this.#connection; }
  get title() { return this.#title; }
  get room() { return this.#room; }
  /** Shown when removed or when the room ended. */
  get endHeading() { return this.#endHeading; }
  get endReason() { return this.#endReason; }
  get canRejoin() { return this.#canRejoin; }
  get playbackBlocked() { return this.#playbackBlocked; }
  /** The latest problem, in plain words. */
  get notice() { return this.#notice; }
  /** The audio connection has been down for a noticeable while. */
  get audioConnecting() { return this.#audioConnecting; }
  /** The signaling connection, while in a room. */
  get signal() { return this.#signal; }
  /** The media connection: from the first welcome on, or from leaving the broadcast. */
  get media() { return this.#media; }
  /** The broadcast player, while the room is heard over the broadcast tier. */
  get broadcast() { return this.#broadcast; }
  /** How the room is heard: `broadcast` or `webrtc`; not shown on the page. */
  get delivery() { return this.#broadcast && !this.#media ? "broadcast" : "webrtc"; }
  get mediaSlots() { return this.#mediaSlots; }
  /** The room page, while it is mounted. */
  get view() { return this.#view; }

  /** Asks for a render once the current changes are done. */
  changed() {
    if (this.#renderQueued) return;
    this.#renderQueued = true;
    queueMicrotask(() => {
      this.#renderQueued = false;
      this.#render(this);
    });
  }

  /** Back to the landing page: no room page, no room. */
  toLanding() {
    this.#view = null;
    this.#room = null;
  }

  /**
   * Entering a room with a session: the page and the signaling connection that serve it.
   * @param {Session} session
   * @param {RoomView} view
   * @param {SignalClient} signal
   */
  enter(session, view, signal) {
    this.#session = session;
    this.#title = session.room_title;
    this.#connection = "joining";
    this.#notice = null;
    this.#playbackBlocked = false;
    this.#view = view;
    this.#signal = signal;
    this.changed();
  }

  /** @param {MediaSession} media */
  setMedia(media) {
    this.#media = media;
    this.changed();
  }

  /** @param {BroadcastPlayer | null} player */
  setBroadcast(player) {
    this.#broadcast = player;
    this.changed();
  }

  /** @param {number} slots */
  setMediaSlots(slots) {
    this.#mediaSlots = slots;
  }

  /** @param {"joining" | "connected" | "reconnecting"} connection */
  setConnection(connection) {
    this.#connection = connection;
    this.changed();
  }

  /** @param {string | null} token  the token that resumes this session after a drop */
  setResumeToken(token) {
    if (this.#session) this.#session.resume_token = token;
  }

  /**
   * A renewed session token and its expiry (RFC 3339).
   * @param {string} token
   * @param {string} expiresAt
   */
  setToken(token, expiresAt) {
    if (!this.#session) return;
    this.#session.token = token;
    this.#session.expires_at = expiresAt;
  }

  /**
   * The room as a `welcome` or `snapshot` message has it.
   * @param {string} title
   * @param {any} snapshot
   */
  setSnapshot(title, snapshot) {
    this.#room = fromSnapshot(title, snapshot);
    this.#title = title;
    this.changed();
  }

  /**
   * Applies a room event.
   * @param {any} event
   * @returns {string | null} what to tell screen-reader users about it
   */
  applyRoomEvent(event) {
    if (!this.room) return null;
    applyEvent(this.room, event);
    this.changed();
    return announce(this.room, event);
  }

  /**
   * A page of the audience, if it belongs to the room still shown.
   * @param {Room} room  the room the page was asked for
   * @param {any} page
   */
  addAudiencePage(room, page) {
    if (page && this.room === room) addAudiencePage(room, page);
    this.changed();
  }

  /** @param {boolean} blocked */
  setPlaybackBlocked(blocked) {
    this.#playbackBlocked = blocked;
    this.changed();
  }

  /**
   * Shows a problem for a while.
   * @param {string} text
   */
  showNotice(text) {
    this.#notice = text;
    window.clearTimeout(this.#noticeTimer);
    this.#noticeTimer = window.setTimeout(() => this.dismissNotice(), NOTICE_MS);
    this.changed();
  }

  dismissNotice() {
    window.clearTimeout(this.#noticeTimer);
    this.#notice = null;
    this.changed();
  }

  /**
   * Follows the audio connection: "Connecting audio…" only if it stays down a while.
   * @param {RTCPeerConnectionState | "connecting" | "connected" | "failed"} connectionState
   *   the WebRTC connection's, or the broadcast player's
   */
  audioStateChanged(connectionState) {
    window.clearTimeout(this.#audioTimer);
    if (connectionState === "connected") {
      this.#audioConnecting = false;
      this.changed();
      return;
    }
    this.#audioTimer = window.setTimeout(() => {
      this.#audioConnecting = true;
      this.changed();
    }, AUDIO_PATIENCE_MS);
  }

  /** The connections are gone (closed by the caller): forget them and their audio state. */
  disconnected() {
    window.clearTimeout(this.#audioTimer);
    this.#audioConnecting = false;
    this.#media = null;
    this.#broadcast = null;
    this.#signal = null;
    this.changed();
  }

  /**
   * The visit is over: the page shows why.
   * @param {Ending} ending
   */
  end({ connection, heading, reason, canRejoin }) {
    this.#connection = connection;
    this.#endHeading = heading;
    this.#endReason = reason;
    this.#canRejoin = canRejoin;
    this.#playbackBlocked = false;
    this.dismissNotice();
  }
}
