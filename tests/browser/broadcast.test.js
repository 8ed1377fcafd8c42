/**
 * The broadcast tier in the web client (issue #16), in Chromium and in Firefox: a listener who
 * came through a broadcast invite hears a WebRTC speaker's tone through the LL-HLS player (MSE,
 * Opus in fragmented MP4) for seconds on end without a gap; invited to the stage, they accept,
 * and their microphone is heard by a WebRTC listener about a second later.
 *
 * The speaker is the client library's `stoa-client --tone 440` (a steady tone, which a
 * browser's noise suppression would turn down). The WebRTC listener ("the ear") is a Chromium
 * page with an AnalyserNode on each slot's stream. What the broadcast listener hears is read
 * from its `<audio>` element: in Chromium through an AnalyserNode (`createMediaElementSource`);
 * in Firefox, which has no audio output device here and so never runs an AudioContext, the
 * element's `mozCaptureStream()` is recorded (MediaRecorder) and decoded (OfflineAudioContext).
 *
 * Runs in a private network namespace (netns.js), as firefox.test.js does: once on stage the
 * listener needs WebRTC, and Firefox gathers no loopback candidate. Needs root, iproute2 and a
 * built `stoa-client` (STOA_CLIENT_BIN, default ../../target/release/stoa-client).
 */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import {
  chromiumPeer,
  cleanup,
  firefoxPeer,
  hearsAudio,
  joinRoom,
  mediaConnected,
  noConsoleErrors,
  openBrowser,
  openFirefox,
  startProcess,
  startServer,
  tempDir,
  waitFor,
  writeToneWav,
} from "./harness.js";
import { inOwnNetns } from "./netns.js";
import { listenToBroadcast, measureBroadcastElement } from "./broadcast-ear.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const CLIENT = process.env.STOA_CLIENT_BIN ? resolve(process.env.STOA_CLIENT_BIN) : resolve(here, "../../target/release/stoa-client");

/** The stage's tone, and the tone each engine's fake microphone makes once on stage. */
const STAGE_HZ = 440;
const CHROMIUM_MIC_HZ = 660;
/** Firefox's fake microphone (`media.navigator.streams.fake`) is a 1 kHz sine. */
const FIREFOX_MIC_HZ = 1000;
/** Seconds of broadcast judged window by window. */
const LISTEN_S = 5;


/** @typedef {import("./harness.js").Peer} Peer */

/**
 * In the ear's page: an analyser on every slot, and the first time (ms since the epoch) a slot
 * carried `hz` as its strongest candidate, well above silence.
 * @param {Peer} ear
 * @param {number} hz
 * @param {number[]} candidates
 */
function watchSlots(ear, hz, candidates) {
  return ear.evaluate(
    /** @type {() => void} */ (
      /** @type {unknown} */ (`(() => {
        const w = window;
        const context = (w.__earContext ??= new AudioContext());
        context.resume();
        const analysers = [...document.querySelectorAll("audio[data-slot]")]
          .filter((a) => a.srcObject)
          .map((a) => {
            const analyser = context.createAnalyser();
            analyser.fftSize = 2048;
            context.createMediaStreamSource(a.srcObject).connect(analyser);
            return analyser;
          });
        w.__heardAt = null;
        clearInterval(w.__earTimer);
        w.__earTimer = setInterval(() => {
          for (const analyser of analysers) {
            const bins = new Float32Array(analyser.frequencyBinCount);
            analyser.getFloatFrequencyData(bins);
            const binHz = context.sampleRate / analyser.fftSize;
            const level = (f) => bins[Math.round(f / binHz)];
            const best = ${JSON.stringify(candidates)}.reduce((a, f) => (level(f) > level(a) ? f : a));
            if (best === ${hz} && level(best) > -70) {
              w.__heardAt ??= Date.now();
            }
          }
        }, 20);
      })()`)
    ),
  );
}

/** @param {import("./netns.js").Netns} netns */
function broadcastTests(netns) {
  /** @type {import("./harness.js").Server} */
  let server;
  /** @type {string} */
  let micWav;

  /**
   * A fresh room: the Rust speaker on stage with its tone, and the links for the rest.
   * @param {string} title
   */
  async function room(title) {
    const { id } = await server.api("POST", "/api/v1/rooms", { title });
    const invite = (/** @type {object} */ body) => server.api("POST", `/api/v1/rooms/${id}/invites`, body);
    const speaker = await invite({ role: "speaker" });
    const listener = await invite({ role: "listener" });
    const broadcast = await invite({ role: "listener", delivery: "broadcast" });
    assert.equal(broadcast.delivery, "broadcast");
    const client = await startProcess(CLIENT, [speaker.url, "--name", "Sam", "--tone", String(STAGE_HZ)], { log: `broadcast-speaker-${title}.log` });
    await waitFor(async () => client.output().includes("on stage, speaking") || !client.running(), { timeout: 20_000, message: "the Rust speaker connected and speaking" });
    assert.ok(client.running(), `stoa-client stopped: ${client.output()}`);
    return { id, listener: /** @type {string} */ (listener.url), broadcast: /** @type {string} */ (broadcast.url), client };
  }

  describe("the broadcast tier in the browser", { timeout: 240_000 }, () => {
    before(
      async () => {
        assert.ok(existsSync(CLIENT), `the broadcast browser tests need the Rust test client at ${CLIENT}: cargo build --release -p stoa-client`);
        server = await startServer({ host: netns.serverIp, log: "server-broadcast.log" });
        const media = await tempDir("stoa-broadcast-media-");
        micWav = join(media, `tone-${CHROMIUM_MIC_HZ}.wav`);
        await writeToneWav(micWav, { hz: CHROMIUM_MIC_HZ, seconds: 4, amplitude: 0.5, burstMs: 400 });
      },
      { timeout: 60_000 },
    );

    after(() => cleanup(), { timeout: 30_000 });

    for (const engine of /** @type {const} */ (["chromium", "firefox"])) {
      it(`${engine}: a broadcast listener hears the stage over LL-HLS, then comes on stage over WebRTC`, { timeout: 120_000 }, async (t) => {
        const origin = new URL(server.base).origin;
        const links = await room(engine);
        const micHz = engine === "chromium" ? CHROMIUM_MIC_HZ : FIREFOX_MIC_HZ;
        const candidates = [STAGE_HZ, 550, CHROMIUM_MIC_HZ, 880, FIREFOX_MIC_HZ];

        const ear = chromiumPeer(await openBrowser({ name: `ear-${engine}`, origin }));
        await joinRoom(ear, links.listener, "Ear");
        await mediaConnected(ear);
        // The room's mix runs from the moment it is live (for clips), so its broadcast also
        // carries the moments before Sam's tone reached it. The fan, who starts a few parts
        // behind the live edge, joins once the tone has been in the room for over a second.
        await hearsAudio(ear);

        /** @type {Peer} */
        let fan;
        if (engine === "chromium") {
          const browser = await openBrowser({ name: "broadcast-chromium", wav: micWav, origin });
          await browser.context.addInitScript(measureBroadcastElement);
          fan = chromiumPeer(browser);
        } else {
          const browser = await openFirefox({ name: "broadcast-firefox" });
          await browser.page.evaluateOnNewDocument(measureBroadcastElement);
          fan = firefoxPeer(browser);
        }
        const joining = Date.now();
        await joinRoom(fan, links.broadcast, "Fan");
        const playing = () => fan.evaluate(() => {
          const a = /** @type {HTMLAudioElement | null} */ (document.querySelector("audio[data-broadcast]"));
          return { delivery: /** @type {any} */ (window).stoa.delivery, time: a?.currentTime ?? 0, paused: a?.paused ?? true, mode: /** @type {any} */ (window).stoa.broadcast?.mode };
        });
        await waitFor(async () => (await playing()).time > 0.5, { timeout: 15_000, message: "the broadcast plays" });
        const startMs = Date.now() - joining;
        // The ear listens from a second into playback. In the first second, a 100 ms window
        // now and then came out silent (about one run in ten on this 2-core machine, with
        // three browsers starting) while the element showed nothing wrong: its time ran on
        // evenly, its buffer was one unbroken range ahead of it, no `waiting` or `stalled`,
        // with the AudioContext made at page load too. Never later in the 5 s. That is the new
        // page's own renderer starved for CPU while it starts, not the stream.
        const from = (await playing()).time;
        await waitFor(async () => (await playing()).time > from + 1, { timeout: 10_000, message: "a second of broadcast played" });
        const status = await playing();
        assert.equal(status.delivery, "broadcast");
        assert.equal(status.mode, "mse");
        assert.equal(await fan.evaluate(() => /** @type {any} */ (window).stoa.pc), null, "no WebRTC connection on the broadcast tier");

        // Seconds of broadcast, 100 ms at a time: the stage's tone in every window.
        const windows = await listenToBroadcast(fan, LISTEN_S, candidates);
        const levels = windows.map((w) => w.db).sort((a, b) => a - b);
        const median = levels[Math.floor(levels.length / 2)];
        const gaps = windows.map((w, i) => ({ i, ...w })).filter((w) => w.hz !== STAGE_HZ || w.db < median - 20);
        assert.ok(windows.length >= LISTEN_S * 8, `${windows.length} windows`);
        assert.deepEqual(gaps, [], `100 ms windows without the ${STAGE_HZ} Hz tone (median level ${median.toFixed(1)} dB)`);
        t.diagnostic(`${engine}: join → broadcast playing ${startMs} ms; ${windows.length} windows of ${STAGE_HZ} Hz, level ${levels[0].toFixed(1)}..${levels.at(-1)?.toFixed(1)} dB`);

        // On stage: the moderator (here the operator) invites; the listener accepts.
        const me = await fan.evaluate(() => /** @type {any} */ (window).stoa.state.room.meId);
        await server.api("POST", `/api/v1/rooms/${links.id}/participants/${me}/role`, { role: "speaker" });
        await fan.waitForTestId("accept-invitation");
        await watchSlots(ear, micHz, candidates);
        // Timed from when the page gets the click: the driver's click itself (its checks, and
        // the protocol to Firefox) took from 0.3 s to 1.5 s on a loaded machine.
        await fan.evaluate(() =>
          document.addEventListener(
            "click",
            (event) => {
              const target = /** @type {Element} */ (event.target);
              if (target.closest?.('[data-testid="accept-invitation"]')) /** @type {any} */ (window).__acceptedAt ??= Date.now();
            },
            { capture: true },
          ),
        );
        await fan.click("accept-invitation");
        const heardAt = await waitFor(() => ear.evaluate(() => /** @type {any} */ (window).__heardAt), {
          timeout: 10_000,
          interval: 50,
          message: `the ear hears the new speaker's ${micHz} Hz`,
        });
        const accepted = await fan.evaluate(() => /** @type {number} */ (/** @type {any} */ (window).__acceptedAt));
        const onStageMs = heardAt - accepted;
        t.diagnostic(`${engine}: accepting the invitation → heard over WebRTC by the ear: ${onStageMs} ms`);
        assert.ok(onStageMs < 1500, `on stage within about a second: ${onStageMs} ms`);
        await waitFor(() => fan.evaluate(() => /** @type {any} */ (window).stoa.broadcast === null), { timeout: 5000, message: "the HLS player stopped" });
        assert.equal(await fan.evaluate(() => /** @type {any} */ (window).stoa.delivery), "webrtc");
        assert.equal(await fan.evaluate(() => document.querySelectorAll("audio[data-broadcast]").length), 0);
        noConsoleErrors([fan, ear]);
        await links.client.stop();
      });
    }
  });
}

await inOwnNetns(fileURLToPath(import.meta.url), "the broadcast tier in the browser (needs a private network namespace)", broadcastTests, cleanup);
