// @ts-check
/**
 * The room as this client sees it: built from a snapshot, kept up to date by room events.
 * Pure data and functions (no DOM, no sockets), so the rules can be read in one place.
 */

/** @typedef {"listener" | "speaker" | "moderator"} Role */

/**
 * @typedef {Object} Participant
 * @property {string} id
 * @property {string} display_name
 * @property {Role} role
 * @property {boolean} on_stage
 * @property {boolean} hand_raised
 * @property {boolean} muted
 * @property {boolean} speaking
 * @property {"connected" | "reconnecting"} presence
 */

/**
 * @typedef {Object} Room
 * @property {string} id
 * @property {string} title
 * @property {string} meId
 * @property {Map<string, Participant>} people  everyone this view can see, oneself included
 * @property {string[]} stage         ids on stage, in the order they came up
 * @property {string[]} hands         ids with a raised hand, in the order the hands went up
 * @property {boolean} listsAudience  the audience is listed (moderators' view)
 * @property {string[]} audience      ids of the listed audience (quiet and raised hands)
 * @property {string | null} audienceNext  where the next `list_audience` page starts
 * @property {number} audienceCount
 * @property {Set<string>} speaking
 * @property {boolean} invitationPending     someone invited me to the stage
 * @property {Set<string>} pendingInvitations  moderators: listeners invited, not answered
 * @property {boolean} recording  the room's mix is being recorded
 */

/**
 * A room from a `welcome` or `snapshot` message.
 * @param {string} title
 * @param {any} snapshot
 * @returns {Room}
 */
export function fromSnapshot(title, snapshot) {
  /** @type {Room} */
  const room = {
    id: snapshot.room,
    title,
    meId: snapshot.you.id,
    people: new Map(),
    stage: [],
    hands: [],
    listsAudience: Boolean(snapshot.audience),
    audience: [],
    audienceNext: snapshot.audience?.next ?? null,
    audienceCount: snapshot.audience_count,
    speaking: new Set(snapshot.active_speakers ?? []),
    invitationPending: Boolean(snapshot.invitation_pending),
    pendingInvitations: new Set(snapshot.pending_invitations ?? []),
    recording: Boolean(snapshot.recording),
  };
  upsert(room, snapshot.you);
  for (const p of snapshot.stage) upsert(room, p);
  for (const p of snapshot.raised_hands) upsert(room, p);
  for (const p of snapshot.audience?.participants ?? []) upsert(room, p);
  // The snapshot's list is the truth about who speaks now.
  room.speaking = new Set(snapshot.active_speakers ?? []);
  return room;
}

/** @param {Room} room */
export function me(room) {
  return /** @type {Participant} */ (room.people.get(room.meId));
}

/** @param {Room} room */
export function isModerator(room) {
  return me(room).role === "moderator";
}

/**
 * Applies one room event. Unknown events are ignored.
 * @param {Room} room
 * @param {any} event
 */
export function applyEvent(room, event) {
  switch (event.type) {
    case "participant_joined":
    case "presence_changed":
    case "hand_raised":
    case "hand_lowered":
    case "left_stage":
    case "muted":
    case "unmuted":
    case "role_changed":
      upsert(room, event.participant);
      break;
    case "joined_stage":
      upsert(room, event.participant);
      room.pendingInvitations.delete(event.participant.id);
      if (event.participant.id === room.meId) room.invitationPending = false;
      break;
    case "participant_left":
      forget(room, event.participant);
      break;
    case "invited_to_stage":
      room.pendingInvitations.add(event.participant);
      if (event.participant === room.meId) room.invitationPending = true;
      break;
    case "invitation_cancelled":
    case "invitation_declined":
      room.pendingInvitations.delete(event.participant);
      if (event.participant === room.meId) room.invitationPending = false;
      break;
    case "active_speakers":
      room.speaking = new Set(event.speakers);
      for (const [id, p] of room.people) p.speaking = room.speaking.has(id);
      break;
    case "audience_count":
      room.audienceCount = event.count;
      break;
    case "recording_started":
      room.recording = true;
      break;
    case "recording_stopped":
      room.recording = false;
      break;
  }
}

/**
 * Adds the people of an `audience_page` to the moderators' audience list.
 * @param {Room} room
 * @param {{ participants: Participant[], next: string | null }} page
 */
export function addAudiencePage(room, page) {
  for (const p of page.participants) upsert(room, p);
  room.audienceNext = page.next;
}

/**
 * Replaces what we know of a participant and re-files them by their flags.
 * @param {Room} room
 * @param {Participant} p
 */
function upsert(room, p) {
  room.people.set(p.id, { ...p });
  if (p.speaking) room.speaking.add(p.id);
  else room.speaking.delete(p.id);
  refile(room.stage, p.id, p.on_stage);
  refile(room.hands, p.id, p.hand_raised && !p.on_stage);
  if (room.listsAudience) refile(room.audience, p.id, !p.on_stage);
  if (p.role !== "listener" || p.on_stage) room.pendingInvitations.delete(p.id);
  // Someone who went quiet into the audience is no longer followed by non-moderators.
  if (!isVisible(room, p.id)) room.people.delete(p.id);
}

/**
 * @param {Room} room
 * @param {string} id
 */
function forget(room, id) {
  if (id === room.meId) return;
  room.people.delete(id);
  room.speaking.delete(id);
  room.pendingInvitations.delete(id);
  refile(room.stage, id, false);
  refile(room.hands, id, false);
  refile(room.audience, id, false);
}

/**
 * @param {Room} room
 * @param {string} id
 */
function isVisible(room, id) {
  return id === room.meId || room.stage.includes(id) || room.hands.includes(id) || room.audience.includes(id);
}

/**
 * @param {string[]} list
 * @param {string} id
 * @param {boolean} member
 */
function refile(list, id, member) {
  const at = list.indexOf(id);
  if (member && at < 0) list.push(id);
  if (!member && at >= 0) list.splice(at, 1);
}

/**
 * A short sentence about an event for the screen-reader live region, or null if it is not
 * worth interrupting for.
 * @param {Room} room  the room after the event
 * @param {any} event
 * @returns {string | null}
 */
export function announce(room, event) {
  const mine = (/** @type {string} */ id) => id === room.meId;
  const name = (/** @type {string} */ id) => room.people.get(id)?.display_name ?? "Someone";
  const p = event.participant;
  switch (event.type) {
    case "joined_stage":
      return mine(p.id) ? "You are on the stage." : `${p.display_name} joined the stage.`;
    case "left_stage":
      return mine(p.id) ? "You are back in the audience." : `${p.display_name} left the stage.`;
    case "hand_raised":
      return mine(p.id) ? "Your hand is raised." : `${p.display_name} raised their hand.`;
    case "invited_to_stage":
      return mine(p) ? "You are invited to speak." : null;
    case "invitation_declined":
      return mine(p) ? null : `${name(p)} declined the invitation to speak.`;
    case "invitation_cancelled":
      return mine(p) ? "The invitation to speak was withdrawn." : null;
    case "muted":
      if (!mine(p.id)) return `${p.display_name} is muted.`;
      return event.by === room.meId ? "You are muted." : "A moderator muted you.";
    case "unmuted":
      return mine(p.id) ? "You are unmuted." : `${p.display_name} unmuted.`;
    case "role_changed":
      if (mine(p.id)) return p.role === "moderator" ? "You are now a moderator." : `You are now a ${p.role}.`;
      return p.role === "moderator" ? `${p.display_name} is now a moderator.` : null;
    default:
      return null;
  }
}
