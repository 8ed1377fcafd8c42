// @ts-check
/**
 * What the browser remembers: the display name and one identity secret per room (localStorage),
 * and this tab's session, so a reload takes the same place back (sessionStorage).
 * Storage can be unavailable (private modes, blocked cookies): then nothing is remembered.
 */

/**
 * @typedef {import("./api.js").JoinAnswer & { resume_token: string | null }} Session
 */

const NAME = "stoa.displayName";
const identityKey = (/** @type {string} */ roomId) => `stoa.identity.${roomId}`;
const inviteRoomKey = (/** @type {string} */ code) => `stoa.inviteRoom.${code}`;
const sessionKey = (/** @type {string} */ code) => `stoa.session.${code}`;

/**
 * @param {() => Storage} which
 * @param {string} key
 */
function read(which, key) {
  try {
    return which().getItem(key);
  } catch {
    return null;
  }
}

/**
 * @param {() => Storage} which
 * @param {string} key
 * @param {string | null} value  null removes it
 */
function write(which, key, value) {
  try {
    if (value === null) which().removeItem(key);
    else which().setItem(key, value);
  } catch {
    // Nothing to do: the page still works, it just forgets.
  }
}

const local = () => window.localStorage;
const tab = () => window.sessionStorage;

export function displayName() {
  return read(local, NAME) ?? "";
}

/** @param {string} name */
export function setDisplayName(name) {
  write(local, NAME, name);
}

/** @param {string} roomId */
export function identity(roomId) {
  return read(local, identityKey(roomId));
}

/**
 * @param {string} roomId
 * @param {string} secret
 */
export function setIdentity(roomId, secret) {
  write(local, identityKey(roomId), secret);
}

/** @param {string} roomId */
export function forgetIdentity(roomId) {
  write(local, identityKey(roomId), null);
}

/**
 * The room an invite code led to before: the page learns a room's id only by joining.
 * @param {string} code
 */
export function roomOfInvite(code) {
  return read(local, inviteRoomKey(code));
}

/**
 * @param {string} code
 * @param {string} roomId
 */
export function setRoomOfInvite(code, roomId) {
  write(local, inviteRoomKey(code), roomId);
}

/**
 * @param {string} code
 * @returns {Session | null}
 */
export function session(code) {
  const text = read(tab, sessionKey(code));
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * @param {string} code
 * @param {Session} value
 */
export function setSession(code, value) {
  write(tab, sessionKey(code), JSON.stringify(value));
}

/** @param {string} code */
export function forgetSession(code) {
  write(tab, sessionKey(code), null);
}
