/**
 * The replay page in real Chromium against a real server: a room is recorded while a speaker
 * (a toned fake microphone) joins partway through; a replay link opens the page, the `<audio>`
 * element plays the range-served Ogg Opus and seeks, and "Speaking now" follows the playhead
 * from the recording's timeline. A revoked link shows its refusal. Waits are on events and
 * states; the only fixed pauses give the recording its content.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ARTIFACTS, chromiumPeer, cleanup, openBrowser, joinRoom, openPages, startServer, tempDir, waitFor, writeToneWav } from "./harness.js";

/** @type {import("./harness.js").Server} */
let server;
/** @type {string} */
let roomId;
/** @type {any} */
let detail;
/** @type {any} */
let link;
/** @type {string} */
let samId;
/** @type {Awaited<ReturnType<typeof openPages>>} */
let pages;

const pause = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

/** @param {import("playwright-core").Page} page */
function replayState(page) {
  return page.evaluate(() => /** @type {any} */ (window).stoa?.replay?.state);
}

/** @param {import("playwright-core").Page} page */
function speakingNow(page) {
  return page.getByTestId("replay-speaking").textContent();
}

/**
 * @param {import("playwright-core").Page} page
 * @param {number} seconds
 */
function seek(page, seconds) {
  return page.evaluate((s) => {
    const audio = /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]'));
    audio.currentTime = s;
  }, seconds);
}

describe("replay page", { timeout: 120_000 }, () => {
  before(async () => {
    server = await startServer({ log: "replay-server.log" });
    const room = await server.api("POST", "/api/v1/rooms", { title: "Replayed" });
    roomId = room.id;
    const listenerInvite = await server.api("POST", `/api/v1/rooms/${roomId}/invites`, { role: "listener" });
    const speakerInvite = await server.api("POST", `/api/v1/rooms/${roomId}/invites`, { role: "speaker" });
    pages = await openPages({ names: ["lee", "viewer", "latecomer"] });
    // A listener keeps the room live (and sends nothing) while it is recorded.
    await joinRoom(chromiumPeer(pages[0]), listenerInvite.url, "Lee");
    const recording = await server.api("POST", `/api/v1/rooms/${roomId}/recording`);
    // Nobody speaks for the first stretch of the recording.
    await pause(1500);
    const wav = join(await tempDir("stoa-replay-wav-"), "tone.wav");
    await writeToneWav(wav, { hz: 440, seconds: 10, burstMs: 300 });
    const sam = await openBrowser({ name: "sam", wav });
    await joinRoom(chromiumPeer(sam), speakerInvite.url, "Sam");
    samId = await waitFor(
      async () => {
        const people = await server.api("GET", `/api/v1/rooms/${roomId}/participants`);
        const found = people.items.find((/** @type {any} */ p) => p.display_name === "Sam" && p.speaking);
        return found?.id;
      },
      { timeout: 15_000, message: "the server hears Sam speaking" },
    );
    // Some seconds of Sam in the recording.
    await pause(3000);
    await server.api("DELETE", `/api/v1/rooms/${roomId}/recording`);
    detail = await server.api("GET", `/api/v1/rooms/${roomId}/recordings/${recording.id}`);
    link = await server.api("POST", `/api/v1/rooms/${roomId}/recordings/${recording.id}/replay-links`, { max_uses: 2 });
  });

  after(async () => {
    await cleanup();
  });

  it("the recording's timeline names Sam from when Sam spoke", () => {
    assert.equal(detail.state, "ready");
    assert.equal(detail.names[samId], "Sam", JSON.stringify(detail));
    const first = detail.speakers.find((/** @type {any} */ e) => e.speakers.includes(samId));
    assert.ok(first, `Sam in the timeline: ${JSON.stringify(detail.speakers)}`);
    assert.ok(first.at_ms >= 1200, `Sam joined after the first stretch: ${first.at_ms} ms`);
  });

  it("the replay link opens the page, plays with seek, and follows the playhead", async () => {
    const { page, errors } = pages[1];
    await page.goto(link.url);
    await waitFor(async () => (await replayState(page)) === "ready", { message: "the replay page is ready" });
    // The browser reads the Ogg Opus through range requests and finds its length.
    const duration = await waitFor(
      () =>
        page.evaluate(() => {
          const audio = /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]'));
          return audio.readyState >= 1 && Number.isFinite(audio.duration) ? audio.duration : 0;
        }),
      { message: "the audio's metadata loads" },
    );
    assert.ok(Math.abs(duration - detail.duration_ms / 1000) < 0.3, `${duration} s played, ${detail.duration_ms} ms recorded`);
    const first = detail.speakers.find((/** @type {any} */ e) => e.speakers.includes(samId)).at_ms;

    // Seek before Sam: nobody; after: Sam, and that change is the current one in the list.
    await seek(page, Math.max(0, first - 800) / 1000);
    await waitFor(async () => (await speakingNow(page)) === "Nobody", { message: "nobody before Sam" });
    await seek(page, (first + 500) / 1000);
    await waitFor(async () => (await speakingNow(page)) === "Sam", { message: "Sam after seeking" });
    const current = await page.locator('li[aria-current="true"] [data-testid="replay-change"]').getAttribute("data-at-ms");
    assert.equal(Number(current), first);

    // Played from the start, the page follows the playhead on its own into Sam's part.
    await seek(page, 0);
    await waitFor(async () => (await speakingNow(page)) === "Nobody", { message: "nobody at the start" });
    await page.evaluate(() => /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]')).play());
    const reached = await waitFor(
      async () => {
        const at = await page.evaluate(() => /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]')).currentTime);
        return at * 1000 > first + 300 && (await speakingNow(page)) === "Sam" ? at : 0;
      },
      { timeout: 15_000, message: "playback reaches Sam and the page says so" },
    );
    assert.ok(reached > 0);
    await page.screenshot({ path: join(ARTIFACTS, "replay-page.png") });
    // A reload keeps the redeemed token: it does not use the link again.
    await page.reload();
    await waitFor(async () => (await replayState(page)) === "ready", { message: "ready after a reload" });
    const links = await server.api("GET", `/api/v1/rooms/${roomId}/replay-links`);
    assert.equal(links.items[0].uses, 1);
    assert.deepEqual(errors, []);
  });

  it("a revoked link shows why it does not open", async () => {
    const { page } = pages[2];
    await server.api("DELETE", `/api/v1/rooms/${roomId}/replay-links/${link.id}`);
    await page.goto(link.url);
    await waitFor(async () => (await replayState(page)) === "failed", { message: "the page refuses" });
    const error = page.getByTestId("replay-error");
    assert.equal(await error.getAttribute("data-reason"), "replay_link_invalid");
    assert.match(/** @type {string} */ (await error.textContent()), /not valid/u);
    // The viewer who opened it before is cut off too, at its next reload.
    await pages[1].page.reload();
    await waitFor(async () => (await replayState(pages[1].page)) === "failed", { message: "the earlier viewer is refused" });
    assert.equal(await pages[1].page.getByTestId("replay-error").getAttribute("data-reason"), "replay_link_revoked");
  });
});
