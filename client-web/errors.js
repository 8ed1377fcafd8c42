// @ts-check
/**
 * Plain-language sentences for the server's stable error codes and close reasons.
 * Only words live here: no I/O, no decisions about what to do next.
 */

/** @type {Record<string, string>} */
const SENTENCES = {
  // Redeeming an invite (REST).
  rate_limited: "Too many attempts from your network. Wait a few seconds and try again.",
  malformed_invite: "This invite link is not valid. Check that you copied all of it.",
  invalid_display_name: "Choose a name of 1 to 40 characters, with visible letters and without invisible or control characters.",
  invalid_identity: "Your browser's saved identity for this room is damaged. Clear this site's data and try again.",
  invite_invalid: "This invite link is not valid. Ask the person who sent it for a new one.",
  invite_expired: "This invite link has expired. Ask for a new one.",
  invite_used_up: "This invite link has been used as many times as it allows.",
  room_ended: "This room has ended.",
  banned: "You are banned from this room.",
  // Clips (the clip page).
  clip_not_found: "This clip does not exist, or it was deleted with its recording.",
  nothing_to_clip: "There is nothing to clip yet: the room has been quiet since it started.",
  too_many_clips: "You have made several clips in a short time. Wait a minute and try again.",
  // Replay links (the replay page).
  malformed_replay_link: "This replay link is not valid. Check that you copied all of it.",
  replay_link_invalid: "This replay link is not valid. Ask the person who sent it for a new one.",
  replay_link_expired: "This replay link has expired. Ask for a new one.",
  replay_link_used_up: "This replay link has been used as many times as it allows.",
  replay_link_revoked: "This replay link was revoked.",
  recording_not_found: "This recording is no longer available.",
  // REST calls a moderator makes with their session token.
  missing_credentials: "Your session is missing. Open your invite link again.",
  invalid_credentials: "Your session is not valid. Open your invite link again.",
  invalid_token: "Your session is not valid any more. Open your invite link again.",
  token_expired: "Your session has expired (sessions last 15 minutes). Open your invite link again to do this.",
  removed: "You were removed from this room.",
  moderator_only: "Only moderators can do that.",
  wrong_room: "Your session belongs to another room.",
  not_permitted: "Your role in this room does not allow that.",
  invalid_max_uses: "The number of uses must be between 1 and 1,000,000.",
  invalid_expiry: "Choose an expiry between one second and one year.",
  invalid_label: "The label must be 1 to 100 characters.",
  invalid_body: "The server did not accept that request.",
  room_not_live: "Nobody is in this room right now.",
  // Room refusals (signaling).
  not_in_room: "You are not in the room any more.",
  participant_not_found: "That person is no longer in the room.",
  invalid_target: "You cannot do that to yourself.",
  not_on_stage: "That needs someone on the stage.",
  not_a_listener: "That is only for listeners.",
  no_invitation: "There is no invitation to answer any more.",
  stage_full: "The stage is full.",
  room_full: "The room is full. Try again later.",
  last_moderator: "You are the last moderator here, so you cannot step down.",
  too_soon: "Wait a moment before raising your hand again.",
  // Media.
  invalid_sdp: "Your browser and the server could not agree on audio. Try reloading the page.",
  sdp_too_large: "Your browser and the server could not agree on audio. Try reloading the page.",
  unsupported_media: "Your browser offered audio the server does not support.",
  unsupported_codec: "Your browser does not offer the Opus audio codec the server needs.",
  media_full: "The server cannot carry more audio connections right now. Try again later.",
  media_unavailable: "Audio is not available right now. Retrying…",
  broadcast_delivery: "Audio is still on its way. Try again in a moment.",
  broadcast_unsupported: "This browser cannot play the room's audio. Try another browser.",
  // Socket-level.
  disconnected: "The connection dropped before the server answered. Try again.",
  internal: "Something went wrong on the server. Try again in a moment.",
  network: "Could not reach the server. Check your connection and try again.",
};

/**
 * A sentence for an error code; falls back to the server's own message, then a generic one.
 * @param {string} code
 * @param {string} [serverMessage]
 */
export function describeError(code, serverMessage) {
  return SENTENCES[code] ?? (serverMessage ? capitalise(serverMessage) : "Something went wrong. Try again.");
}

/** @type {Record<string, string>} */
const CLOSE_REASONS = {
  left: "You left the room.",
  removed: "A moderator removed you from this room. You can come back through an invite link.",
  banned: "A moderator removed you from this room and you cannot come back.",
  replaced: "You opened this room in another tab or device, so this one was disconnected.",
  room_ended: "The room has ended. Thanks for listening.",
  room_not_found: "This room no longer exists.",
  room_full: "The room is full. Try again later.",
  stage_full: "The stage is full, so you could not join as a speaker.",
  session_expired: "You were away too long and your place was given up. Rejoin to come back.",
  connection_lost: "The connection to the server was lost and could not be restored.",
  server_restarting: "The server restarted.",
};

/**
 * A sentence for why the connection ended for good.
 * @param {string} reason a `closed` reason or one of the client's own (`session_expired`, …)
 */
export function describeClose(reason) {
  return CLOSE_REASONS[reason] ?? describeError(reason);
}

/** @param {string} s */
function capitalise(s) {
  const t = s.trim();
  const sentence = t.charAt(0).toUpperCase() + t.slice(1);
  return /[.!?]$/u.test(sentence) ? sentence : `${sentence}.`;
}
