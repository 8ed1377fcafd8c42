// @ts-check
/**
 * Reading a Low-Latency HLS media playlist (RFC 8216 and its LL-HLS tags) and deciding what to
 * fetch next: parts near the live edge, whole segments when behind, a blocking reload when the
 * next part does not exist yet. Pure functions over text and positions: no fetching, no media.
 */

/**
 * @typedef {Object} Part
 * @property {string} uri
 * @property {number} duration  seconds
 */

/**
 * @typedef {Object} Segment
 * @property {number} msn         media sequence number
 * @property {Part[]} parts       listed parts (only for the last few segments)
 * @property {string | null} uri  the whole segment, once complete
 * @property {number} duration
 */

/**
 * @typedef {Object} Playlist
 * @property {string | null} map        the init segment's URI
 * @property {number} partTarget        seconds
 * @property {number} partHoldBack      seconds a player keeps from the live edge
 * @property {boolean} canBlockReload
 * @property {Segment[]} segments       oldest first
 * @property {string | null} preloadHint  URI of the part being made
 * @property {boolean} ended
 */

/**
 * A position in the stream: part `part` (0-based) of segment `msn`.
 * @typedef {{ msn: number, part: number }} Position
 */

/**
 * What to do to play `position`.
 * @typedef {{ kind: "fetch", uri: string, next: Position }
 *   | { kind: "wait" }
 *   | { kind: "behind" }
 *   | { kind: "ended" }} Step
 */

/**
 * The attributes of a tag line (`KEY=value,KEY="quoted, value"`).
 * @param {string} text
 * @returns {Map<string, string>}
 */
function attributes(text) {
  const found = new Map();
  const pattern = /([A-Z0-9-]+)=("[^"]*"|[^,]*)/gu;
  for (const [, key, raw] of text.matchAll(pattern)) {
    found.set(key, raw.startsWith('"') ? raw.slice(1, -1) : raw);
  }
  return found;
}

/**
 * Parses a media playlist. Throws on text that is not one.
 * @param {string} text
 * @returns {Playlist}
 */
export function parsePlaylist(text) {
  const lines = text.split(/\r?\n/u).map((l) => l.trim());
  if (lines[0] !== "#EXTM3U") throw new Error("not an HLS playlist");
  /** @type {Playlist} */
  const playlist = {
    map: null,
    partTarget: 0,
    partHoldBack: 0,
    canBlockReload: false,
    segments: [],
    preloadHint: null,
    ended: false,
  };
  let msn = 0;
  /** @type {Part[]} */
  let parts = [];
  let duration = 0;
  for (const line of lines) {
    const colon = line.indexOf(":");
    const tag = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1);
    switch (tag) {
      case "#EXT-X-MEDIA-SEQUENCE":
        msn = Number(value);
        break;
      case "#EXT-X-MAP":
        playlist.map = attributes(value).get("URI") ?? null;
        break;
      case "#EXT-X-PART-INF":
        playlist.partTarget = Number(attributes(value).get("PART-TARGET") ?? 0);
        break;
      case "#EXT-X-SERVER-CONTROL": {
        const a = attributes(value);
        playlist.canBlockReload = a.get("CAN-BLOCK-RELOAD") === "YES";
        playlist.partHoldBack = Number(a.get("PART-HOLD-BACK") ?? 0);
        break;
      }
      case "#EXT-X-PART": {
        const a = attributes(value);
        const uri = a.get("URI");
        if (uri) parts.push({ uri, duration: Number(a.get("DURATION") ?? 0) });
        break;
      }
      case "#EXTINF":
        duration = Number.parseFloat(value);
        break;
      case "#EXT-X-PRELOAD-HINT": {
        const a = attributes(value);
        if (a.get("TYPE") === "PART") playlist.preloadHint = a.get("URI") ?? null;
        break;
      }
      case "#EXT-X-ENDLIST":
        playlist.ended = true;
        break;
      default:
        // A URI line ends a segment; other tags do not matter here.
        if (line && !line.startsWith("#")) {
          playlist.segments.push({ msn, parts, uri: line, duration });
          msn += 1;
          parts = [];
          duration = 0;
        }
    }
  }
  // Parts after the last complete segment belong to the segment being made.
  if (parts.length) {
    playlist.segments.push({ msn, parts, uri: null, duration: parts.reduce((sum, p) => sum + p.duration, 0) });
  }
  if (playlist.segments.some((s) => !Number.isFinite(s.msn))) throw new Error("bad media sequence");
  return playlist;
}

/**
 * The position the next part after the playlist's last one will have.
 * @param {Playlist} playlist
 * @returns {Position}
 */
export function liveEdge(playlist) {
  const last = playlist.segments.at(-1);
  if (!last) return { msn: 0, part: 0 };
  return last.uri ? { msn: last.msn + 1, part: 0 } : { msn: last.msn, part: last.parts.length };
}

/**
 * Where to start: the part that lies `PART-HOLD-BACK` (three parts, if unsaid) behind the live
 * edge, so that playback has that much in hand.
 * @param {Playlist} playlist
 * @returns {Position}
 */
export function startPosition(playlist) {
  const hold = playlist.partHoldBack || 3 * playlist.partTarget;
  let held = 0;
  /** @type {Position | null} */
  let start = null;
  for (let s = playlist.segments.length - 1; s >= 0; s--) {
    const segment = playlist.segments[s];
    if (!segment.parts.length) break;
    for (let p = segment.parts.length - 1; p >= 0; p--) {
      start = { msn: segment.msn, part: p };
      held += segment.parts[p].duration;
      if (held >= hold - 1e-6) return start;
    }
  }
  return start ?? liveEdge(playlist);
}

/**
 * What to do to play `position` next, given the playlist.
 * @param {Playlist} playlist
 * @param {Position} position
 * @returns {Step}
 */
export function stepFor(playlist, position) {
  const first = playlist.segments[0];
  if (first && position.msn < first.msn) return { kind: "behind" };
  const segment = playlist.segments.find((s) => s.msn === position.msn);
  if (!segment) return playlist.ended ? { kind: "ended" } : { kind: "wait" };
  const part = segment.parts[position.part];
  if (part) {
    const last = position.part + 1 >= segment.parts.length && segment.uri !== null;
    return { kind: "fetch", uri: part.uri, next: last ? { msn: position.msn + 1, part: 0 } : { msn: position.msn, part: position.part + 1 } };
  }
  if (segment.uri !== null) {
    // Complete: its parts are no longer listed (played from the start), or all were played.
    if (position.part === 0) return { kind: "fetch", uri: segment.uri, next: { msn: position.msn + 1, part: 0 } };
    if (segment.parts.length && position.part >= segment.parts.length) return stepFor(playlist, { msn: position.msn + 1, part: 0 });
    // Half played and no longer listed in parts: too far behind to catch up part by part.
    return { kind: "behind" };
  }
  return playlist.ended ? { kind: "ended" } : { kind: "wait" };
}

/**
 * The query that makes the server hold a playlist request until `position` is listed.
 * @param {Position} position
 */
export function blockingQuery({ msn, part }) {
  return `_HLS_msn=${msn}&_HLS_part=${part}`;
}
