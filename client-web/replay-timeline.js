// @ts-check
/**
 * A recording's timeline of who spoke when, read at a moment of the audio: the speakers at a
 * playhead position and the change it falls in. No DOM and no I/O (unit-tested).
 */

/**
 * From `at_ms` into the recording on, these were speaking, loudest first (empty: nobody).
 * @typedef {{ at_ms: number, speakers: string[] }} SpeakersAt
 */

/**
 * The index of the timeline entry in force at `ms` (the last one starting at or before it),
 * or -1 before the first. The timeline is in order of `at_ms`, as the server writes it.
 * @param {SpeakersAt[]} timeline
 * @param {number} ms
 */
export function entryAt(timeline, ms) {
  let low = 0;
  let high = timeline.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (timeline[mid].at_ms <= ms) low = mid + 1;
    else high = mid;
  }
  return low - 1;
}

/**
 * Who was speaking at `ms`, by display name (an id the names do not know reads as "Someone").
 * @param {SpeakersAt[]} timeline
 * @param {Record<string, string>} names
 * @param {number} ms
 * @returns {string[]}
 */
export function speakersAt(timeline, names, ms) {
  const index = entryAt(timeline, ms);
  if (index < 0) return [];
  return timeline[index].speakers.map((id) => names[id] ?? "Someone");
}

/**
 * `m:ss` (or `h:mm:ss`) for a position in milliseconds.
 * @param {number} ms
 */
export function clock(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}
