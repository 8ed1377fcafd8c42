/**
 * The clip page in real Chromium and the replay page in real Firefox, against a real server:
 * a room is recorded while a speaker (Chromium, a toned fake microphone) joins partway
 * through. A clip of the recording, made through the API from a second before the speaker to
 * two seconds after, opens at `/c/<code>`: its `<audio>` reads the range-served Ogg Opus and
 * finds its length, plays, and Chromium's own decoder hears the 440 Hz tone from one second
 * in. A wrong code shows its refusal. Firefox (Debian's firefox-esr, over WebDriver BiDi; no
 * WebRTC here, so no network namespace) opens the replay link, plays and seeks, and follows
 * who was speaking. Waits are on states; the fixed pauses give the recording its content.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ARTIFACTS, chromiumPeer, cleanup, openBrowser, openFirefox, joinRoom, openPages, startServer, tempDir, waitFor, writeToneWav } from "./harness.js";

/** @type {import("./harness.js").Server} */
let server;
/** @type {string} */
let roomId;
/** @type {any} */
let detail;
/** @type {string} */
let samId;
/** @type {number} */
let samFrom;
/** @type {Awaited<ReturnType<typeof openPages>>[number]} */
let lee;

const pause = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

describe("clip page (Chromium) and replay page (Firefox)", { timeout: 150_000 }, () => {
  before(async () => {
    server = await startServer({ log: "clip-server.log" });
    const room = await server.api("POST", "/api/v1/rooms", { title: "Clipped" });
    roomId = room.id;
    const listenerInvite = await server.api("POST", `/api/v1/rooms/${roomId}/invites`, { role: "listener" });
    const speakerInvite = await server.api("POST", `/api/v1/rooms/${roomId}/invites`, { role: "speaker" });
    [lee] = await openPages({ names: ["lee"] });
    await joinRoom(chromiumPeer(lee), listenerInvite.url, "Lee");
    const recording = await server.api("POST", `/api/v1/rooms/${roomId}/recording`);
    await pause(1500);
    const wav = join(await tempDir("stoa-clip-wav-"), "tone.wav");
    await writeToneWav(wav, { hz: 440, seconds: 10 });
    const sam = await openBrowser({ name: "sam", wav });
    await joinRoom(chromiumPeer(sam), speakerInvite.url, "Sam");
    samId = await waitFor(
      async () => {
        const people = await server.api("GET", `/api/v1/rooms/${roomId}/participants`);
        return people.items.find((/** @type {any} */ p) => p.display_name === "Sam" && p.speaking)?.id;
      },
      { timeout: 15_000, message: "the server hears Sam speaking" },
    );
    await pause(4000);
    await server.api("DELETE", `/api/v1/rooms/${roomId}/recording`);
    detail = await server.api("GET", `/api/v1/rooms/${roomId}/recordings/${recording.id}`);
    samFrom = detail.speakers.find((/** @type {any} */ e) => e.speakers.includes(samId)).at_ms;
  });

  after(async () => {
    await cleanup();
  });

  it("a clip's page plays the clip, and Chromium hears the tone where it should be", async () => {
    const clip = await server.api("POST", `/api/v1/rooms/${roomId}/recordings/${detail.id}/clips`, {
      start_ms: samFrom - 1000,
      end_ms: samFrom + 2000,
    });
    assert.equal(clip.url, `${server.base}/c/${clip.code}`);
    const [viewer] = await openPages({ names: ["viewer"] });
    const { page, errors } = viewer;
    await page.goto(clip.url);
    await waitFor(async () => (await page.evaluate(() => /** @type {any} */ (window).stoa?.clip?.state)) === "ready", {
      message: "the clip page is ready",
    });
    assert.equal(await page.getByTestId("clip-duration").textContent(), "0:03 long");
    const duration = await waitFor(
      () =>
        page.evaluate(() => {
          const audio = /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="clip-audio"]'));
          return audio.readyState >= 1 && Number.isFinite(audio.duration) ? audio.duration : 0;
        }),
      { message: "the clip's metadata loads" },
    );
    // Chromium (like ffprobe) takes the length from the last granule position without the
    // pre-skip: up to 0.1 s of run-up more than the clip plays.
    assert.ok(duration >= 2.99 && duration < 3.12, `${duration} s`);
    await page.evaluate(() => /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="clip-audio"]')).play());
    await waitFor(
      () => page.evaluate(() => /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="clip-audio"]')).currentTime > 0.5),
      { message: "the clip plays" },
    );
    // Where the timeline says Sam began is where his voice begins in the audio (the line is
    // placed by when media heard him, whatever the room's delay), and it is his tone after.
    const { windows, onsetMs } = await toneWindows(page, clip.audio_path);
    assert.ok(Math.abs(onsetMs - 1000) <= 60, `the tone starts a second in, not at ${onsetMs} ms: ${JSON.stringify(windows)}`);
    assert.ok(windows.slice(Math.ceil(onsetMs / 100) + 1).every(Boolean), JSON.stringify(windows));
    await page.screenshot({ path: join(ARTIFACTS, "clip-page.png") });

    // A code nobody has: the page says so.
    await page.goto(`${server.base}/c/AAAAAAAAAAAAAAAAAAAAAA`);
    await page.locator('[data-testid="clip-error"][data-reason="clip_not_found"]').waitFor();
    assert.deepEqual(errors.filter((e) => !e.includes("404")), []);
  });

  it("a listener clips the last seconds from the room page, and the clip's link plays the speaker", async () => {
    // Lee is a listener in the live room, where Sam's tone still plays.
    const { page, errors } = lee;
    await page.getByTestId("make-clip").click();
    await page.getByTestId("clip-submit").click();
    const url = await waitFor(async () => (await page.getByTestId("clip-link").textContent()) || null, { message: "the dialog shows the clip's link" });
    assert.match(url, new RegExp(`^${server.base}/c/[A-Za-z0-9_-]{22}$`));
    assert.match((await page.getByTestId("clip-summary").textContent()) ?? "", /^\d+ seconds · /);
    assert.equal(await page.getByTestId("open-clip").getAttribute("href"), url);

    const [viewer] = await openPages({ names: ["clip-viewer"] });
    await viewer.page.goto(url);
    await waitFor(async () => (await viewer.page.evaluate(() => /** @type {any} */ (window).stoa?.clip?.state)) === "ready", {
      message: "the live clip's page is ready",
    });
    const code = url.split("/").pop();
    const clip = await server.api("GET", `/api/v1/clips/${code}`);
    assert.equal(clip.recording_id, undefined, "a live clip belongs to no recording");
    assert.ok(clip.duration_ms >= 5000, `${clip.duration_ms} ms: the room has been live with Sam for longer`);
    // Its last three seconds are Sam's tone, as Chromium's decoder hears it (a window or two
    // may miss it where a late packet was concealed in the mix on a busy machine).
    const { windows } = await toneWindows(viewer.page, clip.audio_path);
    assert.ok(windows.slice(-30).filter(Boolean).length >= 27, JSON.stringify(windows));

    // Three clips in a burst are allowed per person (the first was above); the fourth is
    // refused with the sentence for `too_many_clips`, and nothing breaks.
    await page.getByTestId("clip-submit").click();
    await page.getByTestId("clip-submit").click();
    await page.getByTestId("clip-submit").click();
    await waitFor(async () => ((await page.getByTestId("clip-error").textContent()) ?? "").includes("Wait a minute"), {
      message: "the fourth clip in a row is refused",
    });
    await page.screenshot({ path: join(ARTIFACTS, "room-clip-dialog.png") });
    await page.keyboard.press("Escape");
    assert.deepEqual(errors.filter((e) => !e.includes("429")), []);
    assert.deepEqual(viewer.errors, []);
  });

  it("Firefox plays a replay link's recording, seeks, and follows who was speaking", async () => {
    const link = await server.api("POST", `/api/v1/rooms/${roomId}/recordings/${detail.id}/replay-links`, {});
    const { page, errors } = await openFirefox({ name: "firefox-replay" });
    await page.goto(link.url);
    await page.waitForFunction(() => /** @type {any} */ (window).stoa?.replay?.state === "ready", { timeout: 15_000 });
    const duration = await page.waitForFunction(
      () => {
        const audio = /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]'));
        return audio.readyState >= 1 && Number.isFinite(audio.duration) ? audio.duration : 0;
      },
      { timeout: 15_000 },
    );
    const seconds = /** @type {number} */ (await duration.jsonValue());
    assert.ok(Math.abs(seconds - detail.duration_ms / 1000) < 0.3, `${seconds} s played, ${detail.duration_ms} ms recorded`);
    /** @param {number} s */
    const seekTo = (s) =>
      page.evaluate((to) => {
        /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]')).currentTime = to;
      }, s);
    const speaking = () => page.$eval('[data-testid="replay-speaking"]', (el) => el.textContent);
    await seekTo(Math.max(0, samFrom - 800) / 1000);
    await waitFor(async () => (await speaking()) === "Nobody", { message: "nobody before Sam, in Firefox" });
    await seekTo((samFrom + 500) / 1000);
    await waitFor(async () => (await speaking()) === "Sam", { message: "Sam after seeking, in Firefox" });
    // Played from the start, Firefox's playhead moves into Sam's part and the page follows.
    await seekTo(0);
    await page.evaluate(() => /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]')).play());
    await waitFor(
      async () => {
        const at = await page.evaluate(() => /** @type {HTMLAudioElement} */ (document.querySelector('[data-testid="replay-audio"]')).currentTime);
        return at * 1000 > samFrom + 300 && (await speaking()) === "Sam";
      },
      { timeout: 15_000, message: "Firefox plays into Sam's part" },
    );
    await page.screenshot({ path: join(ARTIFACTS, "replay-page-firefox.png") });
    assert.deepEqual(errors, []);
  });
});

/**
 * The browser's own decoder on a clip's audio: per 100 ms window, whether it holds the 440 Hz
 * tone (upward zero crossings, and energy above silence); and where sound first starts (ms),
 * the rest being digital silence.
 * @param {import("playwright-core").Page} page
 * @param {string} path
 * @returns {Promise<{ windows: boolean[], onsetMs: number }>}
 */
function toneWindows(page, path) {
  return page.evaluate(async (path) => {
    const bytes = await (await fetch(path)).arrayBuffer();
    const ctx = new OfflineAudioContext(1, 48_000, 48_000);
    const pcm = (await ctx.decodeAudioData(bytes)).getChannelData(0);
    const windows = [];
    for (let at = 0; at + 4800 <= pcm.length; at += 4800) {
      let ups = 0;
      let energy = 0;
      for (let i = at + 1; i < at + 4800; i++) {
        if (pcm[i - 1] < 0 && pcm[i] >= 0) ups++;
        energy += pcm[i] * pcm[i];
      }
      windows.push(energy / 4800 > 1e-4 && Math.abs(ups * 10 - 440) < 30);
    }
    return { windows, onsetMs: pcm.findIndex((v) => Math.abs(v) > 0.01) / 48 };
  }, path);
}
