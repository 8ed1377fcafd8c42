// @ts-check
/**
 * Who may do what to whom, read from the server's role table (`permissions.json`, which a
 * server test keeps equal to the room's own rules): the actions a participant's menu offers.
 * Pure (no DOM, no sockets); the server still decides every request.
 */

import table from "./permissions.json" with { type: "json" };
import { me } from "./room.js";

/** @typedef {import("./room.js").Role} Role */
/** @typedef {import("./room.js").Room} Room */
/** @typedef {import("./room.js").Participant} Participant */

/**
 * @typedef {"invite-to-stage" | "cancel-invitation" | "lower-hand" | "mute" | "move-to-audience" |
 *   "make-moderator" | "remove-moderator" | "remove" | "ban"} ParticipantAction
 */

/**
 * What one role may send, by signaling message `type`: `may` about oneself, `may_to_others`
 * naming another participant.
 * @typedef {{ may: string[], may_to_others: string[] }} Rights
 */

/** @typedef {Record<Role, Rights>} RoleTable */

/**
 * The server's table, as `server/src/room/permissions.rs` writes it: per action, its signaling
 * message, what each actor gets (`"allowed"` or a refusal code), and a `target` column when it
 * names someone else.
 * @typedef {{ message: string | null, actors: Record<string, string>, target?: Record<string, string> | null }} TableAction
 * @typedef {{ actions: Record<string, TableAction> }} ServerTable
 */

/** Which of the table's actor columns stand for each role (a moderator is on stage or not). */
const COLUMNS = /** @type {Record<Role, string[]>} */ ({
  listener: ["listener"],
  speaker: ["speaker"],
  moderator: ["moderator_on_stage", "moderator_in_audience"],
});

/**
 * What each role may send, derived from the server's table: a message is open to a role when
 * one of the role's columns allows it; it goes under `may_to_others` when it names someone.
 * Server-only commands (no message) are left out.
 * @param {ServerTable} server
 * @returns {RoleTable}
 */
export function rolesFrom(server) {
  /** @type {RoleTable} */
  const roles = {
    listener: { may: [], may_to_others: [] },
    speaker: { may: [], may_to_others: [] },
    moderator: { may: [], may_to_others: [] },
  };
  for (const action of Object.values(server.actions)) {
    if (!action.message) continue;
    for (const role of /** @type {Role[]} */ (Object.keys(COLUMNS))) {
      if (!COLUMNS[role].some((column) => action.actors[column] === "allowed")) continue;
      const list = action.target ? roles[role].may_to_others : roles[role].may;
      if (!list.includes(action.message)) list.push(action.message);
    }
  }
  return roles;
}

/** The server's table, by role. */
export const ROLES = rolesFrom(/** @type {ServerTable} */ (table));

/**
 * @typedef {Object} MenuAction
 * @property {ParticipantAction} action
 * @property {string} command   the signaling message it sends (with `participant`)
 * @property {(room: Room, p: Participant) => boolean} fits  whether it means anything for `p` now
 */

/** Every action on someone else, in menu order. Whether one is offered is the table's call. */
/** @type {MenuAction[]} */
const MENU = [
  { action: "invite-to-stage", command: "invite_to_stage", fits: (room, p) => invitable(p) && !room.pendingInvitations.has(p.id) },
  { action: "cancel-invitation", command: "cancel_invitation", fits: (room, p) => invitable(p) && room.pendingInvitations.has(p.id) },
  { action: "lower-hand", command: "lower_hand", fits: (_, p) => p.hand_raised },
  { action: "mute", command: "mute", fits: (_, p) => p.on_stage && !p.muted },
  { action: "move-to-audience", command: "move_to_audience", fits: (_, p) => p.on_stage },
  { action: "make-moderator", command: "promote", fits: (_, p) => p.role !== "moderator" },
  { action: "remove-moderator", command: "demote", fits: (_, p) => p.role === "moderator" },
  { action: "remove", command: "remove", fits: () => true },
  { action: "ban", command: "ban", fits: () => true },
];

/** @param {Participant} p */
function invitable(p) {
  return !p.on_stage && p.role === "listener";
}

/**
 * Whether `role` may send `command` about itself.
 * @param {Role} role
 * @param {string} command
 * @param {RoleTable} [roles]
 */
export function may(role, command, roles = ROLES) {
  return roles[role]?.may.includes(command) ?? false;
}

/**
 * Whether `role` may send `command` naming another participant.
 * @param {Role} role
 * @param {string} command
 * @param {RoleTable} [roles]
 */
export function mayToOthers(role, command, roles = ROLES) {
  return roles[role]?.may_to_others.includes(command) ?? false;
}

/**
 * What this person may do to `p` now, in menu order: nothing to oneself.
 * @param {Room} room
 * @param {Participant} p
 * @param {RoleTable} [roles]  the table to follow (tests give their own)
 * @returns {ParticipantAction[]}
 */
export function actionsFor(room, p, roles = ROLES) {
  if (p.id === room.meId) return [];
  const role = me(room).role;
  return MENU.filter(({ command, fits }) => mayToOthers(role, command, roles) && fits(room, p)).map(({ action }) => action);
}

/**
 * The signaling message an action sends.
 * @param {ParticipantAction} action
 * @returns {string}
 */
export function commandOf(action) {
  return /** @type {MenuAction} */ (MENU.find((entry) => entry.action === action)).command;
}
