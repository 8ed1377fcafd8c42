/**
 * The web client's LL-HLS reader (client-web/hls.js) without a browser: playlists as the server
 * writes them (server/src/broadcast/hls.rs), and what the player fetches next from any position.
 */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";

// hls.js imports nothing, so it loads as data (client-web has no package.json saying "module").
const source = await readFile(new URL("../../client-web/hls.js", import.meta.url), "utf8");
const { parsePlaylist, startPosition, stepFor, liveEdge, blockingQuery } = await import(
  `data:text/javascript;charset=utf-8,${encodeURIComponent(source)}`
);

const part = (/** @type {number} */ msn, /** @type {number} */ p) =>
  `#EXT-X-PART:DURATION=0.200,URI="s1-${msn}.${p}.m4s",INDEPENDENT=YES`;

/**
 * A live playlist like the server's: segments of five 200 ms parts; parts listed for the last
 * segments only; the segment being made has `open` parts so far.
 * @param {{ first?: number, complete?: number, listedFrom?: number, open?: number, ended?: boolean }} shape
 */
function playlistText({ first = 0, complete = 4, listedFrom = 1, open = 2, ended = false } = {}) {
  const lines = [
    "#EXTM3U",
    "#EXT-X-VERSION:9",
    "#EXT-X-TARGETDURATION:1",
    "#EXT-X-PART-INF:PART-TARGET=0.200",
    "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600",
    `#EXT-X-MEDIA-SEQUENCE:${first}`,
    '#EXT-X-MAP:URI="init-s1.mp4"',
    "#EXT-X-PROGRAM-DATE-TIME:2026-12-01T10:00:00Z",
  ];
  for (let msn = first; msn < first + complete; msn++) {
    if (msn >= first + listedFrom) for (let p = 0; p < 5; p++) lines.push(part(msn, p));
    lines.push("#EXTINF:1.000,", `s1-${msn}.m4s`);
  }
  const openMsn = first + complete;
  for (let p = 0; p < open; p++) lines.push(part(openMsn, p));
  lines.push(ended ? "#EXT-X-ENDLIST" : `#EXT-X-PRELOAD-HINT:TYPE=PART,URI="s1-${openMsn}.${open}.m4s"`);
  return `${lines.join("\n")}\n`;
}

describe("the LL-HLS reader", () => {
  it("reads what the server lists", () => {
    const playlist = parsePlaylist(playlistText({ first: 7 }));
    assert.equal(playlist.map, "init-s1.mp4");
    assert.equal(playlist.partTarget, 0.2);
    assert.equal(playlist.partHoldBack, 0.6);
    assert.equal(playlist.canBlockReload, true);
    assert.equal(playlist.ended, false);
    assert.equal(playlist.preloadHint, "s1-11.2.m4s");
    assert.deepEqual(
      playlist.segments.map((/** @type {any} */ s) => [s.msn, s.parts.length, s.uri]),
      [
        [7, 0, "s1-7.m4s"],
        [8, 5, "s1-8.m4s"],
        [9, 5, "s1-9.m4s"],
        [10, 5, "s1-10.m4s"],
        [11, 2, null],
      ],
    );
    assert.deepEqual(liveEdge(playlist), { msn: 11, part: 2 });
    assert.throws(() => parsePlaylist("<html>"), /not an HLS playlist/u);
  });

  it("starts the hold-back behind the live edge, across a segment boundary", () => {
    assert.deepEqual(startPosition(parsePlaylist(playlistText({ open: 2 }))), { msn: 3, part: 4 });
    assert.deepEqual(startPosition(parsePlaylist(playlistText({ open: 4 }))), { msn: 4, part: 1 });
    // Nothing listed in parts yet (a broadcast that just began): from the edge.
    const young = parsePlaylist(playlistText({ complete: 0, open: 0 }));
    assert.deepEqual(startPosition(young), { msn: 0, part: 0 });
  });

  it("walks part by part into the next segment, and waits at the edge", () => {
    const playlist = parsePlaylist(playlistText({ open: 2 }));
    assert.deepEqual(stepFor(playlist, { msn: 3, part: 3 }), { kind: "fetch", uri: "s1-3.3.m4s", next: { msn: 3, part: 4 } });
    assert.deepEqual(stepFor(playlist, { msn: 3, part: 4 }), { kind: "fetch", uri: "s1-3.4.m4s", next: { msn: 4, part: 0 } });
    assert.deepEqual(stepFor(playlist, { msn: 4, part: 1 }), { kind: "fetch", uri: "s1-4.1.m4s", next: { msn: 4, part: 2 } });
    assert.deepEqual(stepFor(playlist, { msn: 4, part: 2 }), { kind: "wait" });
    assert.deepEqual(stepFor(playlist, { msn: 5, part: 0 }), { kind: "wait" });
    assert.equal(blockingQuery({ msn: 4, part: 2 }), "_HLS_msn=4&_HLS_part=2");
  });

  it("takes whole segments when behind, and starts over when too far behind", () => {
    const playlist = parsePlaylist(playlistText({ first: 10, listedFrom: 2 }));
    assert.deepEqual(stepFor(playlist, { msn: 11, part: 0 }), { kind: "fetch", uri: "s1-11.m4s", next: { msn: 12, part: 0 } });
    assert.deepEqual(stepFor(playlist, { msn: 11, part: 3 }), { kind: "behind" }, "half a segment whose parts are gone");
    assert.deepEqual(stepFor(playlist, { msn: 9, part: 0 }), { kind: "behind" }, "before the playlist");
  });

  it("stops where an ended playlist ends", () => {
    const playlist = parsePlaylist(playlistText({ open: 3, ended: true }));
    assert.equal(playlist.ended, true);
    assert.equal(playlist.preloadHint, null);
    assert.deepEqual(stepFor(playlist, { msn: 4, part: 2 }), { kind: "fetch", uri: "s1-4.2.m4s", next: { msn: 4, part: 3 } });
    assert.deepEqual(stepFor(playlist, { msn: 4, part: 3 }), { kind: "ended" });
  });
});
