// @ts-check
/**
 * The few REST calls the web client makes: redeem an invite, (moderators) make invite links,
 * the room's broadcast link, and on the replay page redeem a replay link and read its recording.
 * Same origin only; problem documents become ApiError with the server's stable code.
 */

/** @typedef {"listener" | "speaker" | "moderator"} Role */

/**
 * @typedef {Object} JoinAnswer
 * @property {string} token
 * @property {string} expires_at
 * @property {string} participant_id
 * @property {Role} role
 * @property {string} room_id
 * @property {string} room_title
 * @property {string} display_name
 * @property {string} signal_url
 * @property {string | null} identity
 * @property {"webrtc" | "broadcast"} delivery
 * @property {import("./broadcast.js").BroadcastLink} [broadcast]  with broadcast delivery
 */

/**
 * @typedef {Object} CreatedInvite
 * @property {string} id
 * @property {string} code
 * @property {string} url
 * @property {Role} role
 * @property {number | null} max_uses
 * @property {string | null} expires_at
 */

export class ApiError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {number} status
   */
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

/**
 * @param {string} path
 * @param {{ method?: string, body?: unknown, token?: string }} options
 */
async function call(path, { method = "GET", body, token } = {}) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError("network", "could not reach the server", 0);
  }
  const text = await response.text();
  /** @type {any} */
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const code = typeof data?.code === "string" ? data.code : "internal";
    throw new ApiError(code, typeof data?.detail === "string" ? data.detail : response.statusText, response.status);
  }
  return data;
}

/**
 * Redeems an invite code.
 * @param {{ invite: string, display_name: string, identity?: string }} request
 * @returns {Promise<JoinAnswer>}
 */
export function redeemInvite(request) {
  return call("/api/v1/join", { method: "POST", body: request });
}

/**
 * Makes an invite link for a room, as a moderator.
 * @param {string} roomId
 * @param {string} token the moderator's session token
 * @param {{ role: Role, max_uses?: number, expires_in_secs?: number }} request
 * @returns {Promise<CreatedInvite>}
 */
export function createInvite(roomId, token, request) {
  return call(`/api/v1/rooms/${encodeURIComponent(roomId)}/invites`, { method: "POST", body: request, token });
}

/**
 * The room's current broadcast link, with the session token (while it is valid).
 * @param {string} roomId
 * @param {string} token
 * @returns {Promise<import("./broadcast.js").BroadcastLink>}
 */
export function broadcastLink(roomId, token) {
  return call(`/api/v1/rooms/${encodeURIComponent(roomId)}/broadcast`, { token });
}

/**
 * @typedef {Object} ReplayAnswer
 * @property {string} token
 * @property {string} expires_at
 * @property {string} room_id
 * @property {string} recording_id
 * @property {string} recording_path
 * @property {string} audio_url  the audio with the token in its query, for an `<audio>` element
 */

/**
 * @typedef {Object} RecordingDetail
 * @property {string} id
 * @property {string} state
 * @property {string} started_at
 * @property {number} duration_ms
 * @property {import("./replay-timeline.js").SpeakersAt[]} speakers
 * @property {Record<string, string>} names  display name by participant id
 */

/**
 * Redeems a replay link (its code or the whole link).
 * @param {string} link
 * @returns {Promise<ReplayAnswer>}
 */
export function redeemReplay(link) {
  return call("/api/v1/replay", { method: "POST", body: { link } });
}

/**
 * A recording's detail and who spoke when, with a replay token.
 * @param {string} path  `recording_path` of the replay answer
 * @param {string} token
 * @returns {Promise<RecordingDetail>}
 */
export function recordingDetail(path, token) {
  return call(path, { token });
}

/**
 * @typedef {Object} ClipAnswer  what a clip's link opens
 * @property {string} id
 * @property {string} room_id
 * @property {string} [recording_id]  absent for the last seconds of a live room
 * @property {number} start_ms
 * @property {number} duration_ms
 * @property {number} size_bytes
 * @property {string} created_at
 * @property {string} audio_path  the clip's audio (Ogg Opus), with range requests
 */

/**
 * @typedef {ClipAnswer & { code: string, url: string }} MadeClip  a clip just made, with its link
 */

/**
 * Clips the last seconds of a live room (anyone in it may).
 * @param {string} roomId
 * @param {string} token  the participant's session token
 * @returns {Promise<MadeClip>}
 */
export function clipLiveRoom(roomId, token) {
  return call(`/api/v1/rooms/${encodeURIComponent(roomId)}/clips`, { method: "POST", token });
}

/**
 * What a clip's link opens (its code or the whole link; no credentials needed).
 * @param {string} code
 * @returns {Promise<ClipAnswer>}
 */
export function openClip(code) {
  return call(`/api/v1/clips/${encodeURIComponent(code)}`);
}

/**
 * @typedef {Object} ListenAnswer  what a listen link leads to now
 * @property {string} room_id
 * @property {string} title
 * @property {string} playlist_url
 * @property {string} expires_at
 * @property {string} heartbeat_url
 * @property {number} heartbeat_secs
 */

/**
 * A listen link's entry point: the room's title and its current broadcast link.
 * @param {string} code
 * @returns {Promise<ListenAnswer>}
 */
export function openListenLink(code) {
  return call(`/api/v1/listen/${encodeURIComponent(code)}`);
}
