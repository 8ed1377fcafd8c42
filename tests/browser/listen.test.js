/**
 * A listen link in the browser (issue #16's public broadcast): the listen page plays a room's
 * broadcast without joining, and the stage's tone is in every 100 ms window for seconds on
 * end; its heartbeats count it among the room's anonymous listeners; a revoked link says so;
 * the room's end ends the page. Chromium only: the page uses no WebRTC, so no network
 * namespace is needed (the broadcast test covers the player in Firefox).
 *
 * The speaker is the client library's `stoa-client --tone 440`. Needs a built `stoa-client`
 * (STOA_CLIENT_BIN, default ../../target/release/stoa-client).
 */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { chromiumPeer, cleanup, noConsoleErrors, openBrowser, startProcess, startServer, waitFor } from "./harness.js";
import { listenToBroadcast, measureBroadcastElement } from "./broadcast-ear.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const CLIENT = process.env.STOA_CLIENT_BIN ? resolve(process.env.STOA_CLIENT_BIN) : resolve(here, "../../target/release/stoa-client");
const STAGE_HZ = 440;
const LISTEN_S = 5;

describe("a listen link in the browser", { timeout: 180_000 }, () => {
  /** @type {import("./harness.js").Server} */
  let server;

  before(
    async () => {
      assert.ok(existsSync(CLIENT), `the listen browser test needs the Rust test client at ${CLIENT}: cargo build --release -p stoa-client`);
      server = await startServer({ log: "server-listen.log" });
    },
    { timeout: 60_000 },
  );

  after(() => cleanup(), { timeout: 30_000 });

  it("chromium: the listen page plays the stage, counts as a listener, and ends with the room", { timeout: 120_000 }, async (t) => {
    const { id } = await server.api("POST", "/api/v1/rooms", { title: "Open air" });
    const speaker = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" });
    const client = await startProcess(CLIENT, [speaker.url, "--name", "Sam", "--tone", String(STAGE_HZ)], { log: "listen-speaker.log" });
    await waitFor(async () => client.output().includes("on stage, speaking") || !client.running(), { timeout: 20_000, message: "the Rust speaker connected and speaking" });
    assert.ok(client.running(), `stoa-client stopped: ${client.output()}`);
    const link = await server.api("POST", `/api/v1/rooms/${id}/listen-links`, { label: "site" });

    const browser = await openBrowser({ name: "listen-chromium" });
    await browser.context.addInitScript(measureBroadcastElement);
    const fan = chromiumPeer(browser);
    const opened = Date.now();
    await fan.goto(link.url);
    await fan.waitForTestId("room-title");
    assert.equal(await browser.page.getByTestId("room-title").textContent(), "Open air");
    const time = () => fan.evaluate(() => /** @type {HTMLAudioElement | null} */ (document.querySelector("audio[data-broadcast]"))?.currentTime ?? 0);
    await waitFor(async () => (await time()) > 0.5, { timeout: 15_000, message: "the broadcast plays" });
    const startMs = Date.now() - opened;
    const status = async () => /** @type {string} */ (await browser.page.getByTestId("listen-status").textContent());
    // A stall of the element (`waiting`) says "Connecting…" until it plays again.
    await waitFor(async () => /Live/.test(await status()), { timeout: 5_000, message: "the page says it is live" });

    const windows = await listenToBroadcast(fan, LISTEN_S, [STAGE_HZ, 550, 660, 880]);
    const levels = windows.map((w) => w.db).sort((a, b) => a - b);
    const median = levels[Math.floor(levels.length / 2)];
    const toned = (/** @type {{ hz: number, db: number }} */ w) => w.hz === STAGE_HZ && w.db >= median - 20;
    // The page started the room's mix: its stream begins with the silence before a voice's
    // first packet has waited out the mix's jitter buffer (300 ms). From the first window with
    // the tone, every one has it.
    const first = windows.findIndex(toned);
    assert.ok(first >= 0 && first < 10, `the tone within the first second of listening: window ${first} of ${JSON.stringify(windows.slice(0, 12))}`);
    const gaps = windows.map((w, i) => ({ i, ...w })).slice(first).filter((w) => !toned(w));
    assert.ok(windows.length >= LISTEN_S * 8, `${windows.length} windows`);
    assert.deepEqual(gaps, [], `100 ms windows without the ${STAGE_HZ} Hz tone (median level ${median.toFixed(1)} dB)`);
    t.diagnostic(`listen link opened → broadcast playing ${startMs} ms; ${windows.length} windows, ${windows.length - first} of ${STAGE_HZ} Hz from window ${first}`);

    // Its heartbeat: the room counts one anonymous listener.
    await waitFor(async () => (await server.api("GET", `/api/v1/rooms/${id}`)).anonymous_listeners === 1, {
      timeout: 10_000,
      message: "the room counts the page as an anonymous listener",
    });
    noConsoleErrors([fan]);

    // A request for a part fails (a dropped connection; the browser logs it, hence after the
    // check above): the page tries again and plays on, and says it is live once it does.
    let dropped = 0;
    await browser.page.route(/\.m4s(\?|$)/, (route) => (dropped++, route.abort("connectionreset")), { times: 1 });
    await waitFor(async () => dropped === 1, { timeout: 5_000, message: "a part's request was dropped" });
    const after = await time();
    await waitFor(async () => (await time()) > after + 2, { timeout: 10_000, message: "the broadcast plays on" });
    assert.match(await status(), /Live/);

    // Revoked: a new visitor is told so (the page already playing carries on until its
    // broadcast path expires).
    await server.api("DELETE", `/api/v1/rooms/${id}/listen-links/${link.id}`);
    const late = chromiumPeer(await openBrowser({ name: "listen-revoked" }));
    await late.goto(link.url);
    await late.waitForTestId("listen-problem");
    assert.equal(await late.evaluate(() => document.querySelector('[data-testid="listen-problem"]')?.getAttribute("data-reason")), "listen_link_invalid");

    // The room ends: the playing page says the broadcast is over, and stops.
    await server.api("DELETE", `/api/v1/rooms/${id}`);
    await fan.waitForTestId("listen-problem");
    assert.equal(await fan.evaluate(() => document.querySelector('[data-testid="listen-problem"]')?.getAttribute("data-reason")), "room_ended");
    assert.equal(await fan.evaluate(() => document.querySelectorAll("audio[data-broadcast]").length), 0);
    await client.stop();
  });
});
