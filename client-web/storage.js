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
const INVITE_PREFIX = "stoa.inviteRoom.";
const identityKey = (/** @type {string} */ roomId) => `stoa.identity.${roomId}`;
const inviteRoomKey = (/** @type {string} */ code) => `${INVITE_PREFIX}${code}`;
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

/** How long an invite code without an expiry of its own is remembered after its last use. */
const INVITE_MEMORY_MS = 30 * 24 * 3_600_000;

/**
 * A remembered invite: its room and when to forget it (Unix ms); null if unreadable (an entry
 * from an older version, which kept codes for ever).
 * @param {string | null} text
 * @returns {{ room: string, forget_at: number } | null}
 */
function parseInviteEntry(text) {
  try {
    const entry = JSON.parse(text ?? "");
    if (typeof entry?.room === "string" && typeof entry?.forget_at === "number") return entry;
  } catch {
    // Unreadable: treated as expired.
  }
  return null;
}

/**
 * The room an invite code led to before: the page learns a room's id only by joining. An
 * invite code is a credential, so it is kept no longer than the invite itself works.
 * @param {string} code
 */
export function roomOfInvite(code) {
  const entry = parseInviteEntry(read(local, inviteRoomKey(code)));
  if (!entry || entry.forget_at <= Date.now()) {
    write(local, inviteRoomKey(code), null);
    return null;
  }
  return entry.room;
}

/**
 * @param {string} code
 * @param {string} roomId
 * @param {string | null | undefined} expiresAt  the invite's expiry (RFC 3339), if it has one
 */
export function setRoomOfInvite(code, roomId, expiresAt) {
  const expiry = expiresAt ? Date.parse(expiresAt) : NaN;
  const forget_at = Number.isNaN(expiry) ? Date.now() + INVITE_MEMORY_MS : expiry;
  write(local, inviteRoomKey(code), JSON.stringify({ room: roomId, forget_at }));
}

/**
 * Removes every remembered invite code whose invite has expired (or that an older version
 * stored without an expiry). Called when the page opens.
 * @param {number} [now]
 */
export function forgetExpiredInvites(now = Date.now()) {
  try {
    const store = local();
    const stale = [];
    for (let i = 0; i < store.length; i++) {
      const key = store.key(i);
      if (!key?.startsWith(INVITE_PREFIX)) continue;
      const entry = parseInviteEntry(store.getItem(key));
      if (!entry || entry.forget_at <= now) stale.push(key);
    }
    for (const key of stale) store.removeItem(key);
  } catch {
    // Storage unavailable: nothing is remembered anyway.
  }
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
