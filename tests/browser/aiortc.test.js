/**
 * aiortc speakers heard by Chromium (issue #12): each way an aiortc program offers to speak
 * (`addTrack`, a `sendonly` transceiver, a bot's one `sendonly` section) is heard by a Chromium
 * listener, at the tone it sends. The aiortc-listener half is tests/tests/e2e/interop.rs. And the
 * other way (issue #19): a Chromium speaker, who sends RED, is heard at its tone by an aiortc
 * listener, which does not offer RED and gets the plain Opus the server takes out of it.
 *
 * One server, one Chromium listener, and per mode a fresh room, with
 * tests/interop/aiortc_client.py as the speaker (a child process, stopped after its test and in
 * any case by `cleanup()`). Audio is judged from the listener page's `getStats()`
 * (`connectionState`, `inbound-rtp` packets and `totalAudioEnergy` rising, `audioLevel` above
 * zero), and the tone's frequency from the page itself: an AnalyserNode on each playing slot's
 * stream, whose loudest bin must sit at the tone. No console errors on the page.
 *
 * Needs python3 (or STOA_PYTHON) with `pip install aiortc websockets`: fails, never skips,
 * without them. aiortc gathers no 127.0.0.1 candidate and reaches the loopback server from the
 * host's own address; Chromium uses `--allow-loopback-in-peer-connection` (openBrowser).
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import {
  chromiumPeer,
  cleanup,
  hearsAudio,
  joinRoom,
  keepDescriptions,
  mediaConnected,
  noConsoleErrors,
  openBrowser,
  recordDescriptions,
  serverMetric,
  startProcess,
  startServer,
  tempDir,
  waitFor,
  writeToneWav,
} from "./harness.js";

const here = dirname(fileURLToPath(import.meta.url));
const CLIENT = join(here, "../interop/aiortc_client.py");
const PYTHON = process.env.STOA_PYTHON ?? "python3";

/** Each speaker mode with a tone of its own, so that a stream from a wrong room would show. */
const MODES = /** @type {const} */ ([
  { mode: "speak-addtrack", hz: 440 },
  { mode: "speak-sendonly", hz: 660 },
  { mode: "speak-bot", hz: 550 },
]);
/** How far the loudest bin may sit from the tone (fftSize 8192: bins of 5.4 Hz at 44.1 kHz, 5.9 at 48). */
const HZ_TOLERANCE = 15;
/** The loudest bin must be at least this loud (dBFS): the tone is sent at half scale. */
const TONE_DB = -50;

/** @typedef {import("./harness.js").Peer} Peer */
/** @typedef {{ slot: string, hz: number, db: number, state: string, rate: number }} Peak */

/** Fails, with the fix, when the interpreter or aiortc/websockets is missing. */
function requireAiortc() {
  const probe = spawnSync(PYTHON, ["-c", "import aiortc, av, websockets; print(aiortc.__version__)"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) {
    const why = probe.error ? probe.error.message : probe.stderr.trim().split("\n").slice(-1)[0];
    throw new Error(
      `the aiortc tests need ${PYTHON} (STOA_PYTHON) with aiortc and websockets: run \`pip install aiortc websockets\` (${why})`,
    );
  }
  return probe.stdout.trim();
}

/**
 * In the page: taps every playing slot (each `<audio>` element's stream) with an AnalyserNode
 * once, and reports each tap's loudest frequency bin, refined by parabolic interpolation.
 * @returns {Peak[]}
 */
function loudestBins() {
  const w = /** @type {any} */ (window);
  if (!w.__toneTaps) {
    const context = new AudioContext();
    // Pull the analysers through a silent path to the output, whatever the engine's rules.
    const sink = context.createGain();
    sink.gain.value = 0;
    sink.connect(context.destination);
    w.__toneTaps = { context, sink, taps: new Map() };
  }
  /** @type {{ context: AudioContext, sink: GainNode, taps: Map<string, { slot: string, analyser: AnalyserNode }> }} */
  const probe = w.__toneTaps;
  probe.context.resume().catch(() => {});
  for (const audio of document.querySelectorAll("audio")) {
    const stream = audio.srcObject;
    if (!(stream instanceof MediaStream) || stream.getAudioTracks().length === 0) continue;
    const slot = audio.dataset.slot ?? "?";
    const key = `${slot}/${stream.id}`;
    if (probe.taps.has(key)) continue;
    const analyser = probe.context.createAnalyser();
    analyser.fftSize = 8192;
    analyser.smoothingTimeConstant = 0;
    probe.context.createMediaStreamSource(stream).connect(analyser);
    analyser.connect(probe.sink);
    probe.taps.set(key, { slot, analyser });
  }
  /** @type {Peak[]} */
  const peaks = [];
  for (const { slot, analyser } of probe.taps.values()) {
    const bins = new Float32Array(analyser.frequencyBinCount);
    analyser.getFloatFrequencyData(bins);
    let best = 1;
    for (let i = 2; i < bins.length - 1; i++) if (bins[i] > bins[best]) best = i;
    const [a, b, c] = [bins[best - 1], bins[best], bins[best + 1]];
    const curve = a - 2 * b + c;
    const offset = Number.isFinite(curve) && curve < 0 ? (0.5 * (a - c)) / curve : 0;
    const hz = ((best + offset) * probe.context.sampleRate) / analyser.fftSize;
    peaks.push({ slot, hz: Math.round(hz * 10) / 10, db: Math.round(b * 10) / 10, state: probe.context.state, rate: probe.context.sampleRate });
  }
  return peaks;
}

/**
 * Waits until the loudest of the listener's slots carries the tone: its loudest bin within
 * HZ_TOLERANCE of `hz` and above TONE_DB. Returns that slot's peak.
 * @param {import("playwright-core").Page} page
 * @param {number} hz
 * @returns {Promise<Peak>}
 */
async function hearsTone(page, hz) {
  /** @type {Peak[]} */
  let last = [];
  /** @returns {Promise<Peak | null>} */
  const atTone = async () => {
    last = await page.evaluate(loudestBins);
    const loudest = last.reduce((/** @type {Peak | null} */ top, p) => (top === null || p.db > top.db ? p : top), null);
    return loudest && loudest.db > TONE_DB && Math.abs(loudest.hz - hz) <= HZ_TOLERANCE ? loudest : null;
  };
  try {
    const peak = await waitFor(atTone, { timeout: 10_000, interval: 200, message: `the loudest slot peaks at ${hz} Hz` });
    return /** @type {Peak} */ (peak);
  } catch (error) {
    throw new Error(`the listener does not hear ${hz} Hz; per slot (loudest bin): ${JSON.stringify(last)}`, { cause: error });
  }
}

/**
 * Rejects as soon as the speaker process ends: it runs until stopped, so an end is a failure.
 * @param {import("./harness.js").Process} speaker
 * @returns {Promise<never>}
 */
async function speakerEnds(speaker) {
  const how = await speaker.exited;
  throw new Error(`the aiortc speaker ended (${how}) while the listener waited for it`);
}

/** The last lines of a process's output, for failure messages. */
function tail(/** @type {string} */ text, lines = 25) {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

describe("aiortc speakers heard by a Chromium listener", { timeout: 120_000 }, () => {
  /** @type {import("./harness.js").Server} */
  let server;
  /** @type {Awaited<ReturnType<typeof openBrowser>>} */
  let browser;
  /** @type {Peer} */
  let listener;

  before(
    async () => {
      const version = requireAiortc();
      [server, browser] = await Promise.all([startServer({ log: "server-aiortc.log" }), openBrowser({ name: "chromium-listener" })]);
      await browser.context.addInitScript(recordDescriptions);
      listener = chromiumPeer(browser);
      console.error(`aiortc ${version} (${PYTHON})`);
    },
    { timeout: 45_000 },
  );

  after(() => cleanup(), { timeout: 30_000 });

  it("an aiortc listener hears a Chromium speaker who sends RED", { timeout: 45_000 }, async (t) => {
    const hz = 440;
    const media = await tempDir("stoa-aiortc-media-");
    const tone = join(media, `tone-${hz}.wav`);
    await writeToneWav(tone, { hz, seconds: 4, amplitude: 0.5, burstMs: 400 });
    const speakerBrowser = await openBrowser({ name: "chromium-red-speaker", wav: tone });
    await speakerBrowser.context.addInitScript(recordDescriptions);
    const speaker = chromiumPeer(speakerBrowser);
    const { id } = await server.api("POST", "/api/v1/rooms", { title: "Chromium to aiortc" });
    const speakerInvite = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" });
    const listenerInvite = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener" });
    /** @type {import("./harness.js").Process | null} */
    let aiortc = null;
    try {
      await joinRoom(speaker, speakerInvite.url, "Sam");
      await mediaConnected(speaker);
      const redBefore = await serverMetric(server, "stoa_media_rtp_red_in_total");
      await waitFor(async () => (await serverMetric(server, "stoa_media_rtp_red_in_total")) > redBefore + 20, {
        timeout: 5000,
        message: "the Chromium speaker's packets arrive as RED",
      });
      // Stops once a slot carried 2 s of the tone (bursts of 0.4 s), at the latest after 15 s.
      aiortc = await startProcess(
        PYTHON,
        ["-u", CLIENT, "--server", server.base, `--invite=${listenerInvite.code}`, "--name", "aiortc listener", "--mode", "listen", "--seconds", "15", "--min-tone", "2"],
        { log: "aiortc-listen-red.log" },
      );
      const ended = await aiortc.exited;
      const lines = aiortc.output().trim().split("\n");
      /** @type {any} */
      const result = JSON.parse(lines.findLast((line) => line.startsWith("{")) ?? "{}");
      assert.equal(ended, "exit 0", `the aiortc listener failed: ${JSON.stringify(result)}`);
      assert.ok(!/red\/48000/u.test(aiortc.output()), "aiortc was answered without RED");
      /** @type {any[]} */
      const slots = result.slots ?? [];
      const loudest = slots.reduce((top, s) => (top === null || s.loud_frames > top.loud_frames ? s : top), null);
      assert.ok(loudest && loudest.hz !== null && Math.abs(loudest.hz - hz) <= HZ_TOLERANCE, `aiortc decodes the speaker's ${hz} Hz: ${JSON.stringify(slots)}`);
      assert.ok(loudest.tone_secs >= 1, `enough of the tone to judge: ${JSON.stringify(loudest)}`);
      noConsoleErrors([speaker]);
      t.diagnostic(`aiortc listener: ${JSON.stringify(loudest)}`);
    } catch (error) {
      await keepDescriptions("aiortc-red-speaker", [speaker]);
      const output = aiortc ? `\n---- aiortc listener (${aiortc.log}):\n${tail(aiortc.output())}` : "";
      throw new Error(`${/** @type {Error} */ (error).message}${output}`, { cause: error });
    } finally {
      await aiortc?.stop();
      await speakerBrowser.context.close();
    }
  });

  for (const { mode, hz } of MODES) {
    it(`a Chromium listener hears an aiortc speaker (${mode}, ${hz} Hz)`, { timeout: 40_000 }, async (t) => {
      const started = Date.now();
      const { id } = await server.api("POST", "/api/v1/rooms", { title: `aiortc ${mode}` });
      const speakerInvite = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" });
      const listenerInvite = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener" });
      const name = `aiortc ${mode}`;
      const speaker = await startProcess(
        PYTHON,
        // `--invite=CODE`: a code may begin with "-", which argparse would take for an option.
        ["-u", CLIENT, "--server", server.base, `--invite=${speakerInvite.code}`, "--name", name, "--mode", mode, "--tone", String(hz), "--seconds", "60"],
        { log: `aiortc-${mode}.log` },
      );
      listener.mark = listener.errors.length;
      try {
        const result = await Promise.race([
          speakerEnds(speaker),
          (async () => {
            await joinRoom(listener, listenerInvite.url, "Lee");
            // The room shows the aiortc client on stage, as a speaker.
            const onStage = browser.page.locator(`[data-testid="stage"] [data-testid="participant"][data-name="${name}"]`);
            await onStage.waitFor();
            assert.equal(await onStage.getAttribute("data-role"), "speaker");
            await mediaConnected(listener);
            await hearsAudio(listener);
            const peak = await hearsTone(browser.page, hz);
            // Once the tone is there, a whole second of it: the numbers reported are steady ones.
            const heard = await hearsAudio(listener);
            assert.ok(heard.packets > 0 && heard.level > 0, `packets rising and audio level above zero: ${JSON.stringify(heard)}`);
            noConsoleErrors([listener]);
            return { heard, peak };
          })(),
        ]);
        t.diagnostic(
          `${mode}: over 1 s +${result.heard.packets} packets, +${result.heard.energy.toFixed(4)} energy, level ${result.heard.level.toFixed(3)}; ` +
            `slot ${result.peak.slot} peaks at ${result.peak.hz} Hz (${result.peak.db} dBFS, want ${hz} ± ${HZ_TOLERANCE}); ${Date.now() - started} ms`,
        );
      } catch (error) {
        await keepDescriptions(`aiortc-${mode}`, [listener]);
        await speaker.stop();
        throw new Error(`${/** @type {Error} */ (error).message}\n---- aiortc speaker (${speaker.log}):\n${tail(speaker.output())}`, { cause: error });
      } finally {
        await speaker.stop();
      }
    });
  }
});
