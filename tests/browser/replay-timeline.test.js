/**
 * The replay page's reading of a recording's timeline (client-web/replay-timeline.js) without a
 * browser: who was speaking at a playhead position, and the change it falls in.
 */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";

const source = await readFile(new URL("../../client-web/replay-timeline.js", import.meta.url), "utf8");
const { entryAt, speakersAt, clock } = await import(`data:text/javascript;charset=utf-8,${encodeURIComponent(source)}`);

const timeline = [
  { at_ms: 0, speakers: [] },
  { at_ms: 1200, speakers: ["pt_sam"] },
  { at_ms: 4000, speakers: ["pt_sam", "pt_ada"] },
  { at_ms: 9000, speakers: [] },
];
const names = { pt_sam: "Sam", pt_ada: "Ada" };

describe("replay timeline", () => {
  it("finds the change in force at each moment, edges included", () => {
    const cases = [
      [0, 0],
      [1199, 0],
      [1200, 1],
      [3999, 1],
      [4000, 2],
      [8999, 2],
      [9000, 3],
      [1e9, 3],
    ];
    for (const [ms, index] of cases) assert.equal(entryAt(timeline, ms), index, `at ${ms} ms`);
    assert.equal(entryAt(timeline.slice(1), 500), -1, "before the first change");
    assert.equal(entryAt([], 500), -1);
  });

  it("names who was speaking, loudest first; unknown ids read as Someone", () => {
    assert.deepEqual(speakersAt(timeline, names, 500), []);
    assert.deepEqual(speakersAt(timeline, names, 2000), ["Sam"]);
    assert.deepEqual(speakersAt(timeline, names, 5000), ["Sam", "Ada"]);
    assert.deepEqual(speakersAt([{ at_ms: 0, speakers: ["pt_x"] }], names, 10), ["Someone"]);
    assert.deepEqual(speakersAt(timeline.slice(1), names, 10), []);
  });

  it("writes positions as a clock", () => {
    assert.equal(clock(0), "0:00");
    assert.equal(clock(61_500), "1:01");
    assert.equal(clock(3_725_000), "1:02:05");
    assert.equal(clock(-5), "0:00");
  });
});
