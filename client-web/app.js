// @ts-check
/**
 * The web client's entry point: reads the invite the server put in the page, joins, and wires
 * signaling, media and the views together. The app state is one `AppState` (app-state.js);
 * this file turns what happens into calls on it, and renders it.
 */

import { ApiError, broadcastLink, clipLiveRoom, createInvite, redeemInvite } from "./api.js";
import { AppState } from "./app-state.js";
import { BroadcastPlayer } from "./broadcast.js";
import { describeClose, describeError } from "./errors.js";
import { mountInvalid, mountLanding } from "./landing.js";
import { MediaSession, PreparedConnection } from "./media.js";
import { commandOf } from "./permissions.js";
import { me } from "./room.js";
import { RoomView } from "./room-view.js";
import { SignalClient, SignalError } from "./signal.js";
import * as storage from "./storage.js";

/** @typedef {import("./landing.js").InviteInfo} InviteInfo */
/** @typedef {import("./storage.js").Session} Session */

/** The slots a room has when the server's `[media] slots` is left as it is. */
const DEFAULT_SLOTS = 3;

/**
 * The media connection `join` made ahead, until the welcome adopts it.
 * @type {PreparedConnection | null}
 */
let prepared = null;

/** Closes the connection made ahead, if it was not adopted. */
function discardPrepared() {
  prepared?.close();
  prepared = null;
}

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

/** Where the page goes: the mount point in index.html. */
const root = /** @type {HTMLElement} */ (document.getElementById("app"));
const state = new AppState(readInvite(), render);

// For tests and for the curious: the live connection and the state behind the page.
Object.defineProperty(window, "stoa", {
  value: {
    state,
    get pc() {
      return state.media?.pc ?? null;
    },
    get signal() {
      return state.signal;
    },
    /** `webrtc` or `broadcast`: how this page hears the room. */
    get delivery() {
      return state.delivery;
    },
    get broadcast() {
      return state.broadcast;
    },
    /** Media connections replaced because they did not come up (see media.js). */
    get mediaReplacements() {
      return state.media?.replacements ?? 0;
    },
  },
});

start();

function start() {
  storage.forgetExpiredInvites();
  const invite = state.invite;
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
  state.toLanding();
  mountLanding(root, { invite: state.invite, name: storage.displayName(), note, onJoin: join });
}

/**
 * Redeems the invite and enters the room.
 * @param {string} name
 * @returns {Promise<string | null>} a sentence for the person, or null once in
 */
async function join(name) {
  const invite = state.invite;
  const code = /** @type {string} */ (invite.code);
  storage.setDisplayName(name);
  // The media connection is made and offered while the invite is redeemed and the socket
  // opens, for the room's slot count as most servers have it; the welcome adopts it.
  discardPrepared();
  prepared = new PreparedConnection(DEFAULT_SLOTS);
  const roomId = invite.room_id ?? storage.roomOfInvite(code);
  let identity = roomId ? storage.identity(roomId) : null;
  for (;;) {
    try {
      const answer = await redeemInvite({ invite: code, display_name: name, ...(identity ? { identity } : {}) });
      if (answer.identity) storage.setIdentity(answer.room_id, answer.identity);
      storage.setRoomOfInvite(code, answer.room_id, invite.expires_at);
      enterRoom({ ...answer, resume_token: null });
      if (answer.delivery === "broadcast" && answer.role === "listener") {
        // The server put this listener on the broadcast tier: the connection made ahead is not
        // needed, and the player starts now, while the socket opens, not at the welcome (which
        // has the last word: a webrtc snapshot starts media, and the player stops once it
        // carries the room).
        discardPrepared();
        startBroadcast();
      }
      return null;
    } catch (error) {
      const code = error instanceof ApiError ? error.code : "internal";
      if (code === "invalid_identity" && identity && roomId) {
        // A damaged saved identity: forget it and come in as someone new.
        storage.forgetIdentity(roomId);
        identity = null;
        continue;
      }
      discardPrepared();
      return describeError(code, error instanceof Error ? error.message : undefined);
    }
  }
}

/** @param {Session} session */
function enterRoom(session) {
  storage.setSession(/** @type {string} */ (state.invite.code), session);
  const view = new RoomView(root, {
    onAction: (action) => void ownAction(action),
    onParticipantAction: (action, p) => void participantAction(action, p.id, p.display_name),
    onCreateInvite: makeInvite,
    onMakeClip: makeClip,
    micLevel: () => state.media?.level() ?? 0,
  });
  const signal = new SignalClient({
    url: session.signal_url,
    fallbackUrl: `${location.origin.replace(/^http/, "ws")}/api/v1/signal`,
    token: session.token,
    tokenExpiresAt: Date.parse(session.expires_at),
    resumeToken: session.resume_token,
  });
  signal.addEventListener("status", (event) => onStatus(/** @type {CustomEvent} */ (event).detail));
  signal.addEventListener("welcome", (event) => onWelcome(/** @type {CustomEvent} */ (event).detail));
  signal.addEventListener("message", (event) => onMessage(/** @type {CustomEvent} */ (event).detail));
  state.enter(session, view, signal);
  signal.start();
}

/** @param {import("./signal.js").StatusDetail} detail */
function onStatus(detail) {
  switch (detail.status) {
    case "joining":
    case "connected":
    case "reconnecting":
      state.setConnection(detail.status);
      if (detail.status === "reconnecting") state.view?.announce("Connection lost. Reconnecting.");
      break;
    case "closed":
      closed(detail.reason ?? "connection_lost");
      return;
  }
}

/** @param {{ message: any, resumed: boolean }} detail */
function onWelcome({ message, resumed }) {
  const first = state.room === null;
  state.setSnapshot(message.room_title, message.snapshot);
  const { signal } = state;
  if (state.session && signal) {
    state.setResumeToken(signal.resumeToken);
    storage.setSession(/** @type {string} */ (state.invite.code), state.session);
  }
  state.setMediaSlots(message.media?.slots ?? DEFAULT_SLOTS);
  if (message.snapshot.delivery === "broadcast" && !state.media) {
    // Heard over the broadcast tier: no WebRTC connection unless they come on stage.
    discardPrepared();
    startBroadcast();
  } else if (!state.media) {
    startMedia();
  } else if (!resumed || message.media?.reconnect) {
    // A fresh join (the server made us a new participant session), or a resume on the node
    // the room moved to: either way the server has no media connection of ours.
    state.media.restart();
  } else {
    state.media.resync();
  }
  syncMedia();
  state.view?.announce(first ? `You joined ${message.room_title}.` : "Reconnected.");
}

/** The WebRTC media connection: offered now, with the microphone once on stage. */
function startMedia() {
  const { signal, view } = state;
  if (!signal || !view) return;
  const media = new MediaSession({ signal, slots: state.mediaSlots, container: view.playerContainer, prepared });
  prepared = null;
  media.addEventListener("autoplay-blocked", () => state.setPlaybackBlocked(true));
  media.addEventListener("playing", () => state.setPlaybackBlocked(false));
  media.addEventListener("mic", () => state.changed());
  media.addEventListener("state", (event) => {
    const connectionState = /** @type {CustomEvent} */ (event).detail;
    state.audioStateChanged(connectionState);
    // Off the broadcast: it plays until WebRTC carries the room.
    if (connectionState === "connected") stopBroadcast();
  });
  state.audioStateChanged(media.pc.connectionState);
  media.addEventListener("mic-error", (event) => onMicError(/** @type {CustomEvent} */ (event).detail.name));
  media.addEventListener("error", (event) => {
    const { code, message: text } = /** @type {CustomEvent} */ (event).detail;
    state.showNotice(describeError(code, text));
  });
  state.setMedia(media);
}

/** The room over its broadcast tier (LL-HLS), for a listener the server put there. */
function startBroadcast() {
  const { session, view } = state;
  if (state.broadcast || !session || !view) return;
  if (!BroadcastPlayer.supported()) {
    state.showNotice(describeError("broadcast_unsupported"));
    return;
  }
  // The join answer's link, unless it is about to expire (a page reloaded much later).
  const saved = session.broadcast;
  const link = saved && Date.parse(saved.expires_at) - Date.now() > 30_000 ? saved : null;
  const player = new BroadcastPlayer({ link, fetchLink: freshBroadcastLink, container: view.playerContainer });
  player.addEventListener("autoplay-blocked", () => state.setPlaybackBlocked(true));
  player.addEventListener("playing", () => state.setPlaybackBlocked(false));
  player.addEventListener("state", (event) => {
    if (!state.media) state.audioStateChanged(/** @type {CustomEvent} */ (event).detail);
  });
  state.setBroadcast(player);
  player.start();
}

function stopBroadcast() {
  state.broadcast?.close();
  if (state.broadcast) state.setBroadcast(null);
}

/**
 * The room's broadcast link now: from the signaling socket (good for the whole visit), or over
 * REST with the session token while the socket is down.
 * @returns {Promise<import("./broadcast.js").BroadcastLink>}
 */
async function freshBroadcastLink() {
  const { signal, session } = state;
  try {
    if (!signal) throw new SignalError("disconnected", "not connected");
    const answer = await signal.request("broadcast_link");
    return { playlist_url: answer.playlist_url, expires_at: answer.expires_at };
  } catch (error) {
    if (!session || Date.parse(session.expires_at) <= Date.now()) throw error;
    return broadcastLink(session.room_id, session.token);
  }
}

/** @param {any} message */
function onMessage(message) {
  switch (message.type) {
    case "snapshot":
      state.setSnapshot(state.title, message.snapshot);
      break;
    case "error":
      state.showNotice(describeError(message.code, message.message));
      break;
    default: {
      if (!state.room) return;
      const text = state.applyRoomEvent(message);
      if (text) state.view?.announce(text);
    }
  }
  syncMedia();
}

/** @param {string} reason */
function closed(reason) {
  discardPrepared();
  state.media?.close();
  state.broadcast?.close();
  state.disconnected();
  storage.forgetSession(/** @type {string} */ (state.invite.code));
  if (reason === "left") {
    showLanding(`You left ${state.title}.`);
    return;
  }
  const ending = describeClose(reason);
  state.end({
    connection: reason === "room_ended" ? "ended" : "removed",
    heading: HEADINGS[/** @type {keyof typeof HEADINGS} */ (reason)] ?? "Disconnected",
    reason: ending,
    canRejoin: REJOINABLE.has(reason),
  });
  state.view?.announce(ending);
}

/** Tells the media path where this person stands now. */
function syncMedia() {
  if (!state.room) return;
  const self = me(state.room);
  // The server's rule: whoever stops being a listener (accepted an invitation to the stage,
  // was made a moderator) is on WebRTC from then on. Offer at once.
  if (state.broadcast && !state.media && self.role !== "listener") startMedia();
  state.media?.sync({ onStage: self.on_stage, muted: self.muted });
}

/** @param {string} name */
function onMicError(name) {
  state.showNotice(
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
  if (!state.signal) return null;
  try {
    return await state.signal.request(type, fields);
  } catch (error) {
    const code = error instanceof SignalError ? error.code : "internal";
    state.showNotice(describeError(code, error instanceof Error ? error.message : undefined));
    return null;
  }
}

/** @param {import("./room-view.js").OwnAction} action */
async function ownAction(action) {
  const { room, media, view } = state;
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
      return state.signal?.leave();
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
    case "toggle-recording":
      return request(room?.recording ? "stop_recording" : "start_recording");
    case "tap-to-listen":
      await state.broadcast?.resumePlayback();
      return media?.resumePlayback();
    case "more-audience": {
      if (!room?.audienceNext) return;
      const page = await request("list_audience", { after: room.audienceNext, limit: 200 });
      state.addAudiencePage(room, page);
      return;
    }
    case "rejoin":
      showLanding(null);
      return;
    case "dismiss-notice":
      state.dismissNotice();
      return;
  }
}

/**
 * @param {import("./room-view.js").ParticipantAction} action
 * @param {string} participant
 * @param {string} name
 */
async function participantAction(action, participant, name) {
  const view = state.view;
  switch (action) {
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
    default:
      return request(commandOf(action), { participant });
  }
}

/** A session token with less than this left is renewed before a REST call. */
const RENEW_BEFORE_MS = 60_000;

/**
 * The session token for a REST call: renewed over the signaling socket when it is about to
 * expire (it lives `session_ttl_secs`, 15 minutes by default, and a visit may last hours), or
 * at once with `force` (the server said `token_expired`: the two clocks disagree).
 * @param {boolean} force
 * @returns {Promise<string>}
 */
async function sessionToken(force) {
  const { session, signal } = state;
  if (!session) throw new ApiError("missing_credentials", "not in a room", 401);
  const fresh = Date.parse(session.expires_at) - Date.now() > RENEW_BEFORE_MS;
  if ((fresh && !force) || !signal) return session.token;
  try {
    const answer = await signal.request("renew_session");
    state.setToken(answer.token, answer.expires_at);
    signal.renewToken(answer.token, Date.parse(answer.expires_at));
    storage.setSession(/** @type {string} */ (state.invite.code), session);
    return answer.token;
  } catch {
    // Not connected right now: the call goes with the old token and says what is wrong.
    return session.token;
  }
}

/**
 * A REST call with the session token, renewed first if needed and once more if the server
 * says it expired.
 * @template T
 * @param {(token: string) => Promise<T>} call
 * @returns {Promise<T>}
 */
async function withSessionToken(call) {
  try {
    return await call(await sessionToken(false));
  } catch (error) {
    if (!(error instanceof ApiError) || error.code !== "token_expired") throw error;
    return call(await sessionToken(true));
  }
}

/**
 * Makes an invite link with the moderator's own session token.
 * @param {import("./invite-dialog.js").InviteRequest} request
 * @returns {Promise<{ url: string } | { error: string }>}
 */
async function makeInvite(request) {
  const session = state.session;
  if (!session) return { error: describeError("missing_credentials") };
  try {
    const created = await withSessionToken((token) => createInvite(session.room_id, token, request));
    return { url: created.url };
  } catch (error) {
    const code = error instanceof ApiError ? error.code : "internal";
    return { error: describeError(code, error instanceof Error ? error.message : undefined) };
  }
}

/** @type {import("./clip-dialog.js").MakeClip} */
async function makeClip() {
  const session = state.session;
  if (!session) return { error: describeError("missing_credentials") };
  try {
    const clip = await withSessionToken((token) => clipLiveRoom(session.room_id, token));
    return { url: clip.url, durationMs: clip.duration_ms };
  } catch (error) {
    const code = error instanceof ApiError ? error.code : "internal";
    // Here the room is live for the caller: its mix does not run on this server.
    if (code === "room_not_live") return { error: "Clips are not available for this room on this server." };
    return { error: describeError(code, error instanceof Error ? error.message : undefined) };
  }
}

/**
 * Shows the state on the room page (AppState calls it once after each batch of changes).
 * @param {AppState} state
 */
function render(state) {
  state.view?.update({
    connection: state.connection,
    title: state.title,
    room: state.room,
    endHeading: state.endHeading,
    endReason: state.endReason,
    canRejoin: state.canRejoin,
    playbackBlocked: state.playbackBlocked,
    micLive: state.media?.sending ?? false,
    notice: state.notice,
    audioConnecting: state.audioConnecting,
  });
}
