/**
 * A live room in three real browsers against a real server: a moderator, a speaker with a
 * 440 Hz tone as microphone, and a listener. Steps run in order and build on each other;
 * audio is judged from each page's WebRTC stats, never from fixed sleeps alone.
 */

import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  ARTIFACTS,
  cleanup,
  energyGain,
  inboundAudio,
  openBrowser,
  startServer,
  tempDir,
  waitFor,
  writeToneWav,
} from "./harness.js";

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
/**
 * Energy one stream must gain in a second to count as "audio arriving". Chromium's default
 * fake microphone (a short beep each second) gives ~0.006 per second; the speaker's tone
 * bursts ~0.2.
 */
const AUDIBLE = 0.002;
const TONE = 0.05;
/** Below this gain per second a stream counts as silent (decoder tails included). */
const SILENT = 0.0002;

/** @typedef {Awaited<ReturnType<typeof openBrowser>>} Person */
/** @typedef {import("playwright-core").Page} Page */

/** @type {import("./harness.js").Server} */
let server;
/** @type {{ id: string }} */
let room;
/** @type {{ moderator: string, speaker: string, listener: string }} */
const links = { moderator: "", speaker: "", listener: "" };
/** @type {Person} */
let moderator;
/** @type {Person} */
let speaker;
/** @type {Person} */
let listener;

/**
 * The element of one participant (by display name) on a page or inside a part of it.
 * @param {Page | import("playwright-core").Locator} page
 * @param {string} name
 */
function person(page, name) {
  return page.locator(`[data-testid="participant"][data-name="${name}"]`);
}

/**
 * Waits for the page's connection state.
 * @param {Page} page
 * @param {string} state
 */
async function connectionIs(page, state) {
  await page.locator(`[data-testid="connection-state"][data-state="${state}"]`).waitFor({ timeout: 15_000 });
  assert.equal(await page.getByTestId("connection-state").textContent(), state);
}

/**
 * Opens an invite link and joins with a name.
 * @param {Page} page
 * @param {string} link
 * @param {string} name
 */
async function joinRoom(page, link, name) {
  await page.goto(link);
  await page.getByTestId("display-name").fill(name);
  await page.getByTestId("join").click();
  await connectionIs(page, "connected");
}

/**
 * Opens someone's moderator menu on a page and picks an action.
 * @param {Page} page
 * @param {string} name
 * @param {string} action
 */
async function moderate(page, name, action) {
  const target = person(page, name);
  await target.getByTestId("participant-menu").click();
  await target.getByTestId(`action-${action}`).click();
}

/**
 * Waits until at least `count` inbound streams gain energy within one second.
 * @param {Page} page
 * @param {number} count
 * @param {string} message
 */
function hearsStreams(page, count, message) {
  return waitFor(
    async () => {
      const gains = await energyGain(page, 1000);
      const audible = gains.filter((g) => g.packets > 0 && g.energy > AUDIBLE);
      return audible.length >= count ? gains : null;
    },
    { timeout: 15_000, interval: 0, message },
  );
}

/** @param {Page} page */
function micRequests(page) {
  return page.evaluate(() => /** @type {any} */ (window).__getUserMediaCalls);
}

/**
 * @param {Page} page
 * @param {string} file
 * @param {{ width: number, height: number }} size
 */
async function screenshot(page, file, size) {
  const previous = page.viewportSize();
  await page.setViewportSize(size);
  await page.screenshot({ path: join(ARTIFACTS, file), fullPage: false });
  if (previous) await page.setViewportSize(previous);
}

/** On a failed step, keep a picture of every page for the post-mortem. */
async function picturesOnFailure(/** @type {string} */ step) {
  for (const p of [moderator, speaker, listener]) {
    if (!p) continue;
    await p.page
      .screenshot({ path: join(ARTIFACTS, `failed-${step}-${p.name}.png`) })
      .catch(() => {});
  }
}

/**
 * A test step that leaves screenshots behind when it fails.
 * @param {string} name
 * @param {() => Promise<void>} body
 */
function step(name, body) {
  it(name, async () => {
    try {
      await body();
    } catch (error) {
      await picturesOnFailure(name.replace(/[^a-z0-9]+/giu, "-").slice(0, 40));
      throw error;
    }
  });
}

describe("a live room in three browsers", { timeout: 120_000 }, () => {
  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    server = await startServer();
    room = await server.api("POST", "/api/v1/rooms", { title: "Friday jam" });
    for (const role of /** @type {const} */ (["moderator", "speaker", "listener"])) {
      const invite = await server.api("POST", `/api/v1/rooms/${room.id}/invites`, { role });
      links[role] = invite.url;
    }
    const media = await tempDir("stoa-browser-media-");
    const tone = join(media, "tone-440.wav");
    await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5, burstMs: 400 });
    [moderator, speaker, listener] = await Promise.all([
      openBrowser({ name: "moderator", viewport: DESKTOP }),
      openBrowser({ name: "speaker", wav: tone, viewport: DESKTOP }),
      openBrowser({ name: "listener", viewport: PHONE }),
    ]);
  }, { timeout: 60_000 });

  after(async () => {
    await cleanup();
  }, { timeout: 30_000 });

  step("shows the invite landing page and refuses a bad link", async () => {
    const page = listener.page;
    const bad = await page.goto(`${server.base}/i/AAAAAAAAAAAAAAAAAAAAAA`);
    assert.equal(bad?.status(), 404);
    await page.getByTestId("invite-problem").waitFor();
    assert.match((await page.getByTestId("invite-problem").textContent()) ?? "", /not valid/u);

    await page.goto(links.listener);
    assert.equal(await page.getByTestId("room-title").textContent(), "Friday jam");
    await page.getByTestId("display-name").waitFor();
    await screenshot(page, "landing-phone.png", PHONE);
  });

  step("moderator, speaker and listener join through their links", async () => {
    await joinRoom(moderator.page, links.moderator, "Ada");
    const micTrackEnabled = () =>
      moderator.page.evaluate(() => /** @type {any} */ (window).stoa.pc.getSenders()[0].track?.enabled ?? null);
    await waitFor(async () => (await micTrackEnabled()) === true, { message: "a moderator on stage gets a live microphone" });
    // Ada mutes herself so that every sound in this room comes from the speaker or the listener.
    await moderator.page.getByTestId("mute").click();
    await person(moderator.page, "Ada").and(moderator.page.locator('[data-muted="true"]')).waitFor();
    assert.equal(await micTrackEnabled(), false, "muting oneself disables the microphone track");

    await joinRoom(speaker.page, links.speaker, "Sam");
    await joinRoom(listener.page, links.listener, "Lee");

    for (const page of [moderator.page, speaker.page, listener.page]) {
      const stage = page.getByTestId("stage");
      await person(stage, "Ada").waitFor();
      await person(stage, "Sam").waitFor();
      assert.equal(await person(stage, "Sam").getAttribute("data-role"), "speaker");
      assert.equal(await person(stage, "Ada").getAttribute("data-role"), "moderator");
    }
    // Everyone sees the audience count; the moderator also sees who is in it.
    await waitFor(async () => (await listener.page.getByTestId("audience-count").textContent()) === "1", {
      message: "audience count 1 on the listener's page",
    });
    await person(moderator.page, "Lee").waitFor();
    assert.equal(await person(moderator.page, "Lee").getAttribute("data-role"), "listener");
  });

  step("the listener hears the speaker", async () => {
    const gains = await hearsStreams(listener.page, 1, "audio energy rising at the listener");
    assert.ok(gains.some((g) => g.energy > TONE), `the tone is loud and clear: ${JSON.stringify(gains)}`);
    // The room marks Sam as speaking (the ring), from the levels the server reads.
    await person(listener.page, "Sam").and(listener.page.locator('[data-speaking="true"]')).waitFor({ timeout: 10_000 });
  });

  step("the moderator records the room and everyone sees the mark", async () => {
    const record = moderator.page.getByTestId("toggle-recording");
    assert.equal(await listener.page.getByTestId("toggle-recording").isVisible(), false, "listeners do not record");
    assert.equal(await speaker.page.getByTestId("toggle-recording").isVisible(), false, "speakers do not record");
    assert.equal(await listener.page.getByTestId("recording-mark").isVisible(), false);
    await record.click();
    for (const p of [moderator, speaker, listener]) {
      await p.page.getByTestId("recording-mark").waitFor({ state: "visible" });
    }
    assert.equal(await record.textContent(), "Stop recording");
    await record.click();
    for (const p of [moderator, speaker, listener]) {
      await p.page.getByTestId("recording-mark").waitFor({ state: "hidden" });
    }
    const recordings = await server.api("GET", `/api/v1/rooms/${room.id}/recordings`);
    assert.equal(recordings.items.length, 1);
    assert.equal(recordings.items[0].state, "ready");
  });

  step("a listener is never asked for the microphone", async () => {
    assert.equal(await micRequests(listener.page), 0);
    const sending = await listener.page.evaluate(() =>
      /** @type {any} */ (window).stoa.pc.getSenders().some((/** @type {RTCRtpSender} */ s) => s.track !== null),
    );
    assert.equal(sending, false);
    await listener.page.getByTestId("raise-hand").waitFor();
    assert.equal(await listener.page.getByTestId("mute").isVisible(), false, "no mute button for a listener");
  });

  step("raise hand, invitation, accept: the moderator hears the listener", async () => {
    await listener.page.getByTestId("raise-hand").click();
    await listener.page.getByTestId("lower-hand").waitFor();

    const hand = person(moderator.page.getByTestId("raised-hands"), "Lee");
    await hand.waitFor();
    await person(speaker.page.getByTestId("raised-hands"), "Lee").waitFor();
    await screenshot(moderator.page, "room-moderator-desktop.png", DESKTOP);
    await screenshot(moderator.page, "room-moderator-phone.png", PHONE);

    await hand.getByTestId("action-invite-to-stage").click();
    await listener.page.getByTestId("accept-invitation").waitFor();
    await screenshot(listener.page, "room-listener-invited-phone.png", PHONE);
    assert.equal(await micRequests(listener.page), 0, "no microphone before accepting");

    await listener.page.getByTestId("accept-invitation").click();
    for (const page of [moderator.page, speaker.page, listener.page]) {
      await person(page.getByTestId("stage"), "Lee").waitFor();
    }
    assert.equal(await person(moderator.page.getByTestId("stage"), "Lee").getAttribute("data-role"), "speaker");
    await listener.page.getByTestId("mute").waitFor();
    await waitFor(async () => (await micRequests(listener.page)) === 1, { message: "one microphone request after accepting" });
    await waitFor(
      () => listener.page.evaluate(() => /** @type {any} */ (window).stoa.pc.getTransceivers()[0].currentDirection === "sendrecv"),
      { message: "the listener's first transceiver sends after renegotiating" },
    );
    // Ada is muted: the two streams she hears are Sam's tone and Lee's fake microphone.
    await hearsStreams(moderator.page, 2, "the moderator hears two speakers (Sam and Lee)");
    await screenshot(speaker.page, "room-speaker-desktop.png", DESKTOP);
  });

  step("the moderator mutes the speaker: muted everywhere, and silence", async () => {
    await hearsStreams(listener.page, 1, "the listener hears Sam before the mute");
    await moderate(moderator.page, "Sam", "mute");
    for (const page of [moderator.page, speaker.page, listener.page]) {
      await person(page, "Sam").and(page.locator('[data-muted="true"]')).waitFor();
    }
    await speaker.page.getByTestId("unmute").waitFor();
    assert.equal(
      await speaker.page.evaluate(() => /** @type {any} */ (window).stoa.pc.getSenders()[0].track?.enabled),
      false,
      "the muted speaker's track is disabled",
    );
    // Lee hears only Sam (Ada is muted, nobody hears themselves): allow a short settle, then
    // every stream must stay silent for a whole second.
    await waitFor(
      async () => {
        const gains = await energyGain(listener.page, 1000);
        return gains.every((g) => g.energy < SILENT) ? gains : null;
      },
      { timeout: 8_000, interval: 0, message: "the listener's audio energy stops rising after the mute" },
    );
  });

  step("the speaker's connection drops and resumes with its place", async () => {
    await speaker.page.evaluate(() => /** @type {any} */ (window).stoa.signal.reconnectNow());
    await connectionIs(speaker.page, "reconnecting");
    await connectionIs(speaker.page, "connected");
    await person(speaker.page.getByTestId("stage"), "Sam").waitFor();
    assert.equal(await person(moderator.page, "Sam").getAttribute("data-muted"), "true", "still muted after resuming");
    assert.equal(await speaker.page.getByTestId("unmute").count(), 1);
  });

  step("the moderator makes an invite link", async () => {
    const page = moderator.page;
    await page.getByTestId("create-invite").click();
    await page.getByTestId("invite-role").selectOption("speaker");
    await page.getByTestId("invite-max-uses").fill("5");
    await page.getByTestId("invite-expiry").selectOption("86400");
    await page.getByTestId("invite-submit").click();
    const link = page.getByTestId("invite-link");
    await link.waitFor();
    const url = (await link.textContent()) ?? "";
    assert.match(url, /\/i\/[A-Za-z0-9_-]{22}$/u);
    const preview = await fetch(url);
    assert.equal(preview.status, 200);
    assert.match(await preview.text(), /"valid":true.*"role":"speaker"|"role":"speaker".*"valid":true/u);
    await screenshot(page, "invite-dialog-desktop.png", DESKTOP);
    await page.getByTestId("copy-invite").click();
    await waitFor(async () => (await page.evaluate(() => navigator.clipboard.readText())) === url, {
      message: "the link is on the clipboard",
    });

    // A listener link may be a broadcast one; the choice is only offered for listeners.
    assert.equal(await page.getByTestId("invite-delivery").isVisible(), false, "no delivery choice for speakers");
    await page.getByTestId("invite-role").selectOption("listener");
    await page.getByTestId("invite-delivery").selectOption("broadcast");
    await page.getByTestId("invite-submit").click();
    await waitFor(async () => ((await link.textContent()) ?? "") !== url, { message: "a second link" });
    const broadcastUrl = (await link.textContent()) ?? "";
    const redeemed = await fetch(new URL("/api/v1/join", broadcastUrl), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ invite: broadcastUrl.split("/i/")[1], display_name: "Fan" }),
    });
    assert.equal(redeemed.status, 200);
    const answer = await redeemed.json();
    assert.equal(answer.delivery, "broadcast", JSON.stringify(answer));
    assert.match(answer.broadcast?.playlist_url ?? "", /\/playlist\.m3u8$/u);
    await page.keyboard.press("Escape");
  });

  step("the moderator removes and bans the listener, who cannot come back", async () => {
    await moderate(moderator.page, "Lee", "ban");
    await moderator.page.getByTestId("confirm").click();

    await connectionIs(listener.page, "removed");
    assert.match((await listener.page.getByTestId("removed-reason").textContent()) ?? "", /removed/u);
    await screenshot(listener.page, "removed-listener-phone.png", PHONE);
    await waitFor(async () => (await person(moderator.page, "Lee").count()) === 0, { message: "Lee gone from the moderator's view" });
    assert.equal(await listener.page.evaluate(() => /** @type {any} */ (window).stoa.pc), null, "media closed");

    // Same link, same browser: the saved identity is banned.
    await listener.page.goto(links.listener);
    assert.equal(await listener.page.getByTestId("display-name").inputValue(), "Lee", "the name is remembered");
    await listener.page.getByTestId("join").click();
    const error = listener.page.getByTestId("join-error");
    await waitFor(async () => /banned/u.test((await error.textContent()) ?? ""), { message: "a banned message on joining again" });
  });

  step("when the browser refuses to play, the page offers Tap to listen", async () => {
    const late = await openBrowser({ name: "late-listener", viewport: PHONE, refusePlayback: true });
    await joinRoom(late.page, links.listener, "Bo");
    await person(moderator.page, "Bo").waitFor();
    const tap = late.page.getByTestId("tap-to-listen");
    await tap.waitFor();
    await screenshot(late.page, "tap-to-listen-phone.png", PHONE);
    await tap.click();
    await tap.waitFor({ state: "hidden" });
    const paused = await late.page.evaluate(() => [...document.querySelectorAll("audio")].filter((a) => a.srcObject && a.paused).length);
    assert.equal(paused, 0, "every slot plays after the tap");

    // Leaving takes Bo back to the invite page, and out of everyone's view.
    await late.page.getByTestId("leave-room").click();
    await late.page.getByTestId("display-name").waitFor();
    assert.match((await late.page.locator(".landing-note").textContent()) ?? "", /You left Friday jam/u);
    await waitFor(async () => (await person(moderator.page, "Bo").count()) === 0, { message: "Bo gone from the moderator's view" });
    await late.context.close();
  });

  step("the moderator ends the room for everyone", async () => {
    await moderator.page.getByTestId("end-room").click();
    await moderator.page.getByTestId("confirm").click();
    await connectionIs(moderator.page, "ended");
    await connectionIs(speaker.page, "ended");
    assert.match((await speaker.page.getByTestId("removed-reason").textContent()) ?? "", /ended/u);
    const stats = await inboundAudio(speaker.page);
    assert.equal(stats.length, 0, "no media connection after the end");
  });
});
