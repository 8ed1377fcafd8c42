// @ts-check
/**
 * The web client's entry point: reads the invite the server put in the page, joins, and wires
 * signaling, media and the views together. Owns the app state; the modules it uses own the rest.
 */

import { ApiError, createInvite, redeemInvite } from "./api.js";
import { describeClose, describeError } from "./errors.js";
import { mountInvalid, mountLanding } from "./landing.js";
import { MediaSession } from "./media.js";
import { addAudiencePage, announce, applyEvent, fromSnapshot, me } from "./room.js";
import { RoomView } from "./room-view.js";
import { SignalClient, SignalError } from "./signal.js";
import * as storage from "./storage.js";

/** @typedef {import("./landing.js").InviteInfo} InviteInfo */
/** @typedef {import("./room-view.js").ConnectionState} ConnectionState */
/** @typedef {import("./storage.js").Session} Session */

/** Close reasons after which coming back through the link makes sense. */
const REJOINABLE = new Set(["removed", "replaced", "session_expired", "connection_lost", "server_restarting", "room_full", "stage_full"]);

const HEADINGS = {
  removed: "You were removed",
  banned: "You were removed",
  room_ended: "The room has ended",
  replaced: "Opened somewhere else",
  room_full: "The room is full",
  stage_full: "The stage is full",
};

const NOTICE_MS = 10_000;

const root = /** @type {HTMLElement} */ (document.getElementById("app"));
const invite = readInvite();

/** Everything the page shows comes from here. */
const state = {
  invite,
  /** @type {Session | null} */
  session: null,
  /** @type {ConnectionState} */
  connection: "joining",
  title: invite.room_title ?? "",
  /** @type {import("./room.js").Room | null} */
  room: null,
  /** @type {string | null} */
  endHeading: null,
  /** @type {string | null} */
  endReason: null,
  canRejoin: false,
  playbackBlocked: false,
  /** @type {string | null} */
  notice: null,
  /** The audio connection has been down for a noticeable while. */
  audioConnecting: false,
};

/** @type {SignalClient | null} */
let signal = null;
/** @type {MediaSession | null} */
let media = null;
/** @type {RoomView | null} */
let view = null;
let renderQueued = false;
let meterRunning = false;
/** @type {number | undefined} */
let noticeTimer;
/** @type {number | undefined} */
let audioTimer;

/** How long the audio may take to connect before the page says it is working on it. */
const AUDIO_PATIENCE_MS = 1500;

// For tests and for the curious: the live connection and the state behind the page.
Object.defineProperty(window, "stoa", {
  value: {
    state,
    get pc() {
      return media?.pc ?? null;
    },
    get signal() {
      return signal;
    },
  },
});

start();

function start() {
  storage.forgetExpiredInvites();
  if (!invite.valid || !invite.code) {
    mountInvalid(root, invite);
    return;
  }
  const saved = storage.session(invite.code);
  if (saved && (saved.resume_token || Date.parse(saved.expires_at) > Date.now())) {
    enterRoom(saved);
  } else {
    showLanding(null);
  }
}

/** @returns {InviteInfo} */
function readInvite() {
  const el = document.getElementById("stoa-invite");
  try {
    const data = JSON.parse(el?.textContent ?? "");
    if (data && typeof data === "object") return data;
  } catch {
    // Fall through: a page without invite data, e.g. opened from disk.
  }
  return { valid: false, reason: "no_invite", message: "Open an invite link to join a room." };
}

/** @param {string | null} note */
function showLanding(note) {
  view = null;
  state.room = null;
  mountLanding(root, { invite, name: storage.displayName(), note, onJoin: join });
}

/**
 * Redeems the invite and enters the room.
 * @param {string} name
 * @returns {Promise<string | null>} a sentence for the person, or null once in
 */
async function join(name) {
  const code = /** @type {string} */ (invite.code);
  storage.setDisplayName(name);
  const roomId = invite.room_id ?? storage.roomOfInvite(code);
  let identity = roomId ? storage.identity(roomId) : null;
  for (;;) {
    try {
      const answer = await redeemInvite({ invite: code, display_name: name, ...(identity ? { identity } : {}) });
      if (answer.identity) storage.setIdentity(answer.room_id, answer.identity);
      storage.setRoomOfInvite(code, answer.room_id, invite.expires_at);
      enterRoom({ ...answer, resume_token: null });
      return null;
    } catch (error) {
      const code = error instanceof ApiError ? error.code : "internal";
      if (code === "invalid_identity" && identity && roomId) {
        // A damaged saved identity: forget it and come in as someone new.
        storage.forgetIdentity(roomId);
        identity = null;
        continue;
      }
      return describeError(code, error instanceof Error ? error.message : undefined);
    }
  }
}

/** @param {Session} session */
function enterRoom(session) {
  state.session = session;
  state.title = session.room_title;
  state.connection = "joining";
  state.notice = null;
  state.playbackBlocked = false;
  storage.setSession(/** @type {string} */ (invite.code), session);

  view = new RoomView(root, {
    onAction: (action) => void ownAction(action),
    onParticipantAction: (action, p) => void participantAction(action, p.id, p.display_name),
    onCreateInvite: makeInvite,
  });
  signal = new SignalClient({
    url: session.signal_url,
    token: session.token,
    tokenExpiresAt: Date.parse(session.expires_at),
    resumeToken: session.resume_token,
  });
  signal.addEventListener("status", (event) => onStatus(/** @type {CustomEvent} */ (event).detail));
  signal.addEventListener("welcome", (event) => onWelcome(/** @type {CustomEvent} */ (event).detail));
  signal.addEventListener("message", (event) => onMessage(/** @type {CustomEvent} */ (event).detail));
  signal.start();
  render();
}

/** @param {import("./signal.js").StatusDetail} detail */
function onStatus(detail) {
  switch (detail.status) {
    case "joining":
    case "connected":
    case "reconnecting":
      state.connection = detail.status;
      if (detail.status === "reconnecting") view?.announce("Connection lost. Reconnecting.");
      break;
    case "closed":
      closed(detail.reason ?? "connection_lost");
      return;
  }
  render();
}

/** @param {{ message: any, resumed: boolean }} detail */
function onWelcome({ message, resumed }) {
  const first = state.room === null;
  state.room = fromSnapshot(message.room_title, message.snapshot);
  state.title = message.room_title;
  if (state.session && signal) {
    state.session.resume_token = signal.resumeToken;
    storage.setSession(/** @type {string} */ (invite.code), state.session);
  }
  if (!media && signal && view) {
    media = new MediaSession({ signal, slots: message.media?.slots ?? 3, container: view.playerContainer });
    media.addEventListener("autoplay-blocked", () => {
      state.playbackBlocked = true;
      render();
    });
    media.addEventListener("playing", () => {
      state.playbackBlocked = false;
      render();
    });
    media.addEventListener("mic", render);
    media.addEventListener("state", (event) => onAudioState(/** @type {CustomEvent} */ (event).detail));
    onAudioState(media.pc.connectionState);
    media.addEventListener("mic-error", (event) => onMicError(/** @type {CustomEvent} */ (event).detail.name));
    media.addEventListener("error", (event) => {
      const { code, message: text } = /** @type {CustomEvent} */ (event).detail;
      setNotice(describeError(code, text));
    });
  } else if (media && !resumed) {
    // A fresh join: the server made us a new participant session, with no media connection.
    media.restart();
  } else {
    media?.resync();
  }
  syncMedia();
  view?.announce(first ? `You joined ${message.room_title}.` : "Reconnected.");
  render();
}

/** @param {any} message */
function onMessage(message) {
  switch (message.type) {
    case "snapshot":
      state.room = fromSnapshot(state.title, message.snapshot);
      break;
    case "error":
      setNotice(describeError(message.code, message.message));
      break;
    default: {
      if (!state.room) return;
      applyEvent(state.room, message);
      const text = announce(state.room, message);
      if (text) view?.announce(text);
    }
  }
  syncMedia();
  render();
}

/** @param {string} reason */
function closed(reason) {
  window.clearTimeout(audioTimer);
  state.audioConnecting = false;
  media?.close();
  media = null;
  signal = null;
  storage.forgetSession(/** @type {string} */ (invite.code));
  if (reason === "left") {
    showLanding(`You left ${state.title}.`);
    return;
  }
  state.connection = reason === "room_ended" ? "ended" : "removed";
  state.endHeading = HEADINGS[/** @type {keyof typeof HEADINGS} */ (reason)] ?? "Disconnected";
  state.endReason = describeClose(reason);
  state.canRejoin = REJOINABLE.has(reason);
  state.playbackBlocked = false;
  state.notice = null;
  view?.announce(state.endReason);
  render();
}

/** Tells the media path where this person stands now. */
function syncMedia() {
  if (!media || !state.room) return;
  const self = me(state.room);
  media.sync({ onStage: self.on_stage, muted: self.muted });
}

/** @param {RTCPeerConnectionState} connectionState */
function onAudioState(connectionState) {
  window.clearTimeout(audioTimer);
  if (connectionState === "connected") {
    state.audioConnecting = false;
    render();
    return;
  }
  audioTimer = window.setTimeout(() => {
    state.audioConnecting = true;
    render();
  }, AUDIO_PATIENCE_MS);
}

/** @param {string} name */
function onMicError(name) {
  setNotice(
    name === "NotAllowedError"
      ? "Stoa can't use your microphone. Allow microphone access for this site in your browser, then press Unmute."
      : "No microphone could be opened. Check that one is connected, then press Unmute.",
  );
  // Nobody can hear us anyway: say so to the room instead of looking live.
  if (state.room && !me(state.room).muted) request("mute_self");
}

/**
 * Sends a request; a refusal becomes a notice.
 * @param {string} type
 * @param {Record<string, unknown>} [fields]
 */
async function request(type, fields) {
  if (!signal) return null;
  try {
    return await signal.request(type, fields);
  } catch (error) {
    const code = error instanceof SignalError ? error.code : "internal";
    setNotice(describeError(code, error instanceof Error ? error.message : undefined));
    return null;
  }
}

/** @param {import("./room-view.js").OwnAction} action */
async function ownAction(action) {
  const room = state.room;
  switch (action) {
    case "raise-hand":
      return request("raise_hand");
    case "lower-hand":
      return request("lower_hand");
    case "accept-invitation":
      // The microphone is asked for once the room says we are on stage (joined_stage).
      return request("accept_invitation");
    case "decline-invitation":
      return request("decline_invitation");
    case "mute":
      // Silence the track at once; the room's `muted` confirms it for everyone.
      if (media && room) media.sync({ onStage: me(room).on_stage, muted: true });
      return request("mute_self");
    case "unmute":
      media?.retryMic();
      return request("unmute");
    case "leave-stage":
      return request("leave_stage");
    case "join-stage":
      return request("join_stage");
    case "leave-room":
      return signal?.leave();
    case "end-room": {
      if (!view) return;
      const { confirmed } = await view.confirm({
        heading: "End the room for everyone?",
        body: "Everyone is disconnected and the room's invite links stop working. This cannot be undone.",
        confirmLabel: "End room",
      });
      if (confirmed) await request("end_room");
      return;
    }
    case "tap-to-listen":
      return media?.resumePlayback();
    case "more-audience": {
      if (!room?.audienceNext) return;
      const page = await request("list_audience", { after: room.audienceNext, limit: 200 });
      if (page && state.room === room) addAudiencePage(room, page);
      render();
      return;
    }
    case "rejoin":
      showLanding(null);
      return;
    case "dismiss-notice":
      state.notice = null;
      render();
      return;
  }
}

/**
 * @param {import("./room-view.js").ParticipantAction} action
 * @param {string} participant
 * @param {string} name
 */
async function participantAction(action, participant, name) {
  switch (action) {
    case "invite-to-stage":
      return request("invite_to_stage", { participant });
    case "cancel-invitation":
      return request("cancel_invitation", { participant });
    case "lower-hand":
      return request("lower_hand", { participant });
    case "mute":
      return request("mute", { participant });
    case "move-to-audience":
      return request("move_to_audience", { participant });
    case "make-moderator":
      return request("promote", { participant });
    case "remove-moderator":
      return request("demote", { participant });
    case "remove": {
      const answer = await view?.confirm({
        heading: `Remove ${name}?`,
        body: `${name} is disconnected from the room. They can come back through an invite link.`,
        confirmLabel: "Remove",
      });
      if (answer?.confirmed) await request("remove", { participant });
      return;
    }
    case "ban": {
      const answer = await view?.confirm({
        heading: `Remove and ban ${name}?`,
        body: `${name} is disconnected and cannot come back to this room from their browser.`,
        confirmLabel: "Remove and ban",
        checkbox: "Also turn off the invite link they used (nobody else can join through it either)",
      });
      if (answer?.confirmed) await request("ban", { participant, revoke_invite: answer.checked });
      return;
    }
  }
}

/**
 * Makes an invite link with the moderator's own session token.
 * @param {import("./room-view.js").InviteRequest} request
 * @returns {Promise<{ url: string } | { error: string }>}
 */
async function makeInvite(request) {
  const session = state.session;
  if (!session) return { error: describeError("missing_credentials") };
  try {
    const created = await createInvite(session.room_id, session.token, request);
    return { url: created.url };
  } catch (error) {
    const code = error instanceof ApiError ? error.code : "internal";
    return { error: describeError(code, error instanceof Error ? error.message : undefined) };
  }
}

/** @param {string} text */
function setNotice(text) {
  state.notice = text;
  window.clearTimeout(noticeTimer);
  noticeTimer = window.setTimeout(() => {
    state.notice = null;
    render();
  }, NOTICE_MS);
  render();
}

function render() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    view?.update({
      connection: state.connection,
      title: state.title,
      room: state.room,
      endHeading: state.endHeading,
      endReason: state.endReason,
      canRejoin: state.canRejoin,
      playbackBlocked: state.playbackBlocked,
      micLive: media?.sending ?? false,
      notice: state.notice,
      audioConnecting: state.audioConnecting,
    });
    if (media?.sending && !meterRunning) runMeter();
  });
}

/** Moves the mic level bar while the microphone is live. */
function runMeter() {
  meterRunning = true;
  const tick = () => {
    if (!media?.sending || !view) {
      meterRunning = false;
      view?.setLevel(0);
      return;
    }
    view.setLevel(media.level());
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}
