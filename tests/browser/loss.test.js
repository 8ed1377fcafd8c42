/**
 * Audio through a lossy network (issue #19): a Chromium speaker plays a tone, Chromium
 * listeners hear it while nftables drops part of what the server sends each of them, and each
 * listener's own `getStats()` says how much of its audio was concealed (synthesized by the
 * jitter buffer for lack of a packet): `concealedSamples / totalSamplesReceived`.
 *
 * The listeners are in one room at once, each with its own loss on the server → listener leg:
 * an nftables rule on the input hook for the listener's UDP port, inside the test's private
 * network namespace (netns.js), dropping RTP only: none; 10 % and 20 % at random
 * (`numgen random`); two in a row out of every twenty and three out of every thirty
 * (`numgen inc`: bursts, 10 % each); and, for the baseline in the same run, listeners whose
 * browser does not offer RED (their transceivers' codec preferences leave `audio/red` out), so
 * the server sends them the plain Opus primary, with no loss, 10 % and 20 %. The speaker sends RED
 * (Chromium does when the answer prefers it); the server re-packs it for each RED listener with
 * up to `[media] red` (2) earlier frames of the slot's current turn.
 *
 * Asserted: every speaker packet arrives as RED and RED goes out to the RED listeners (the
 * server's counters; Chromium's stats name the codec inside RED, Opus); the speaker is shown
 * speaking (its audio level is read from its RED packets); the baseline listeners were answered
 * without RED; at 10 % random loss a RED listener's concealed share is under 1 %, at 20 % under
 * 5 %; the baseline at 10 % conceals more than 3 % (the loss was real). Each share is judged
 * above that of the listener without loss in the same window, which is 0 on a calm machine;
 * when the machine stalls (every page conceals at once, that one too) the window is measured
 * again, up to three times, and the calmest kept. Every figure goes to the diagnostics and to
 * artifacts/loss.json. `STOA_LOSS_SERVER_CONFIG` (TOML text, e.g. `[media]\nred = 1`) starts the
 * server with other settings and only reports, asserting no thresholds. Needs root, iproute2 and
 * nftables, like firefox.test.js.
 */

import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import {
  ARTIFACTS,
  chromiumPeer,
  cleanup,
  hearsAudio,
  joinRoom,
  keepDescriptions,
  mediaConnected,
  noConsoleErrors,
  openBrowser,
  openPages,
  recordDescriptions,
  serverMetric,
  startServer,
  tempDir,
  waitFor,
  writeToneWav,
} from "./harness.js";
import { clearLoss, dropUdpTo, inOwnNetns, lossCounts } from "./netns.js";

/** How long each listener's concealment is measured, all at once. */
const WINDOW_MS = 15_000;
/** A window in which the listener without loss concealed more than this was disturbed. */
const CALM = 0.005;
/** Windows measured at most while the machine keeps stalling (each WINDOW_MS). */
const MAX_WINDOWS = 3;
/** Other server settings for exploring (reported, not asserted). */
const EXPLORE = process.env.STOA_LOSS_SERVER_CONFIG;

/**
 * The listeners: whether their browser offers RED, and which of the server's datagrams to them
 * nftables drops (none when `pick` is null).
 */
const LISTENERS = /** @type {const} */ ([
  { name: "clean", red: true, pick: null },
  { name: "red-10", red: true, pick: "numgen random mod 100 < 10" },
  { name: "red-20", red: true, pick: "numgen random mod 100 < 20" },
  { name: "red-burst2", red: true, pick: "numgen inc mod 20 < 2" },
  { name: "red-burst3", red: true, pick: "numgen inc mod 30 < 3" },
  { name: "opus-clean", red: false, pick: null },
  { name: "opus-10", red: false, pick: "numgen random mod 100 < 10" },
  { name: "opus-20", red: false, pick: "numgen random mod 100 < 20" },
]);

await inOwnNetns(fileURLToPath(import.meta.url), "audio through loss (needs a private network namespace)", lossTests, async () => {
  clearLoss();
  await cleanup();
});

/** @typedef {import("./harness.js").Peer} Peer */

/**
 * Before any page code runs: every audio transceiver prefers all receivable codecs but RED, so
 * the browser's offer leaves RED out (a browser without RED, as Firefox is).
 */
function withoutRed() {
  const add = RTCPeerConnection.prototype.addTransceiver;
  /** @this {RTCPeerConnection} @param {any[]} args */
  RTCPeerConnection.prototype.addTransceiver = function (...args) {
    const transceiver = add.apply(this, /** @type {any} */ (args));
    const codecs = (RTCRtpReceiver.getCapabilities("audio")?.codecs ?? []).filter((c) => c.mimeType.toLowerCase() !== "audio/red");
    transceiver.setCodecPreferences(codecs);
    return transceiver;
  };
}

/**
 * @typedef {Object} Received  one listener's busiest inbound audio stream, cumulative
 * @property {number} packets
 * @property {number} lost
 * @property {number} concealed
 * @property {number} silentConcealed
 * @property {number} events
 * @property {number} total
 * @property {number} fec
 * @property {number} jitterBufferDelay   seconds, summed over emitted samples
 * @property {number} emitted
 * @property {number} discarded
 * @property {number} inserted
 * @property {number} removed
 */

/**
 * @param {Peer} peer
 * @returns {Promise<Received | null>}
 */
function received(peer) {
  return peer.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).stoa?.pc ?? null);
    if (!pc) return null;
    const report = await pc.getStats();
    /** @type {any} */
    let busiest = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio" && (!busiest || s.packetsReceived > busiest.packetsReceived)) busiest = s;
    });
    if (!busiest) return null;
    return {
      packets: busiest.packetsReceived ?? 0,
      lost: busiest.packetsLost ?? 0,
      concealed: busiest.concealedSamples ?? 0,
      silentConcealed: busiest.silentConcealedSamples ?? 0,
      events: busiest.concealmentEvents ?? 0,
      total: busiest.totalSamplesReceived ?? 0,
      fec: busiest.fecPacketsReceived ?? 0,
      jitterBufferDelay: busiest.jitterBufferDelay ?? 0,
      emitted: busiest.jitterBufferEmittedCount ?? 0,
      discarded: busiest.packetsDiscarded ?? 0,
      inserted: busiest.insertedSamplesForDeceleration ?? 0,
      removed: busiest.removedSamplesForAcceleration ?? 0,
    };
  });
}

/**
 * What the server's receiver reports told the speaker's browser (its `remote-inbound-rtp`):
 * an encoder turns Opus's in-band FEC on when these show loss.
 * @param {Peer} peer
 */
function uplinkReports(peer) {
  return peer.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).stoa?.pc ?? null);
    if (!pc) return null;
    const report = await pc.getStats();
    /** @type {any} */
    let found = null;
    report.forEach((s) => {
      if (s.type === "remote-inbound-rtp" && s.kind === "audio") found = { lost: s.packetsLost, fractionLost: s.fractionLost, reports: s.reportsReceived, rtt: s.roundTripTime };
    });
    return found;
  });
}

/**
 * The address and port of the page's side of its selected ICE candidate pair: where the
 * server sends it media.
 * @param {Peer} peer
 * @returns {Promise<{ address: string, port: number } | null>}
 */
function selectedLocal(peer) {
  return peer.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).stoa?.pc ?? null);
    if (!pc) return null;
    const report = await pc.getStats();
    /** @type {any} */
    let pair = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    const local = pair ? report.get(pair.localCandidateId) : null;
    if (!local || local.protocol !== "udp") return null;
    return { address: String(local.address ?? local.ip), port: Number(local.port) };
  });
}

/**
 * What changed between two readings.
 * @param {Received} a
 * @param {Received} b
 */
function delta(a, b) {
  const total = b.total - a.total;
  const emitted = b.emitted - a.emitted;
  return {
    packets: b.packets - a.packets,
    lost: b.lost - a.lost,
    concealedShare: total > 0 ? (b.concealed - a.concealed) / total : NaN,
    silentConcealed: b.silentConcealed - a.silentConcealed,
    concealmentEvents: b.events - a.events,
    fec: b.fec - a.fec,
    jitterBufferMs: emitted > 0 ? ((b.jitterBufferDelay - a.jitterBufferDelay) / emitted) * 1000 : NaN,
    samples: total,
    discarded: b.discarded - a.discarded,
    stretched: b.inserted - a.inserted + (b.removed - a.removed),
  };
}

/** @param {number} share */
const percent = (share) => `${(share * 100).toFixed(2)} %`;

/** @param {import("./netns.js").Netns} netns */
function lossTests(netns) {
  /** @type {import("./harness.js").Server} */
  let server;
  /** @type {Peer} */
  let speaker;
  /** @type {Peer[]} */
  const listeners = [];
  /** @type {Awaited<ReturnType<typeof openPages>>} */
  let pages = [];

  describe("audio through loss", { timeout: 120_000 }, () => {
    before(
      async () => {
        await mkdir(ARTIFACTS, { recursive: true });
        server = await startServer({ host: netns.serverIp, log: "server-loss.log", config: EXPLORE });
        const media = await tempDir("stoa-loss-media-");
        const tone = join(media, "tone-440.wav");
        await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5, burstMs: 400 });
        const origin = new URL(server.base).origin;
        let speakerBrowser;
        [speakerBrowser, pages] = await Promise.all([
          openBrowser({ name: "loss-speaker", wav: tone, origin }),
          openPages({ names: LISTENERS.map((l) => `loss-${l.name}`), origin }),
        ]);
        await speakerBrowser.context.addInitScript(recordDescriptions);
        speaker = chromiumPeer(speakerBrowser);
        for (const [index, page] of pages.entries()) {
          await page.context.addInitScript(recordDescriptions);
          if (!LISTENERS[index].red) await page.context.addInitScript(withoutRed);
          listeners.push(chromiumPeer(page));
        }
      },
      { timeout: 60_000 },
    );

    /**
     * One measuring window over every listener at once, with the loss rules in place.
     * @param {import("node:test").TestContext} t
     * @param {number} attempt
     */
    async function measure(t, attempt) {
      const first = await Promise.all(listeners.map(received));
      const droppedBefore = lossCounts();
      const redOutBefore = await serverMetric(server, "stoa_media_rtp_red_out_total");
      await new Promise((r) => setTimeout(r, WINDOW_MS));
      const last = await Promise.all(listeners.map(received));
      const droppedAfter = lossCounts();
      const redOut = (await serverMetric(server, "stoa_media_rtp_red_out_total")) - redOutBefore;
      t.diagnostic(`window ${attempt}: the server sent ${redOut} RED packets to listeners`);
      /** @type {Record<string, ReturnType<typeof delta> & { dropped: number, arrived: number }>} */
      const results = {};
      for (const [index, { name }] of LISTENERS.entries()) {
        const a = first[index];
        const b = last[index];
        assert.ok(a && b, `${name} has inbound audio stats`);
        const count = (/** @type {string} */ rule) => (droppedAfter[rule] ?? 0) - (droppedBefore[rule] ?? 0);
        results[name] = { ...delta(a, b), dropped: count(name), arrived: count(`${name}-all`) };
      }
      for (const [name, r] of Object.entries(results)) {
        const rule = r.arrived > 0 ? `, ${r.dropped} of ${r.arrived} dropped (${percent(r.dropped / r.arrived)})` : "";
        t.diagnostic(
          `window ${attempt}: ${name}: concealed ${percent(r.concealedShare)}${rule}, ${r.packets} packets received, ` +
            `${r.concealmentEvents} concealment events, jitter buffer ${r.jitterBufferMs.toFixed(0)} ms, ` +
            `${r.discarded} discarded, ${r.stretched} samples stretched`,
        );
      }
      return { results, redOut };
    }

    after(
      async () => {
        clearLoss();
        await cleanup();
      },
      { timeout: 30_000 },
    );

    it("RED keeps a listener's concealed audio under 1 % at 10 % loss and 5 % at 20 %", { timeout: 90_000 }, async (t) => {
      const { id } = await server.api("POST", "/api/v1/rooms", { title: "Loss" });
      const speakerLink = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" })).url;
      const listenerLink = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener", max_uses: 100 })).url;
      try {
        await joinRoom(speaker, speakerLink, "Tone");
        await mediaConnected(speaker);
        await Promise.all(
          listeners.map(async (listener) => {
            await joinRoom(listener, listenerLink, listener.name);
            await mediaConnected(listener);
            await hearsAudio(listener);
          }),
        );
        // The server counts what arrives as RED (Chromium's stats name the codec inside it).
        const arrived = await waitFor(
          async () => {
            const [all, red] = [await serverMetric(server, "stoa_media_rtp_in_total"), await serverMetric(server, "stoa_media_rtp_red_in_total")];
            return all > 50 && { all, red };
          },
          { timeout: 5000, message: "speaker packets at the server" },
        );
        t.diagnostic(`speaker: ${arrived.red} of ${arrived.all} packets so far arrived as RED`);
        if (!EXPLORE) assert.ok(arrived.red >= arrived.all - 1, `the speaker sends RED: ${JSON.stringify(arrived)}`);
        // The speaker's audio level rides on its RED packets: the room marks them speaking.
        await pages[0].page.locator('[data-testid="participant"][data-name="Tone"][data-speaking="true"]').waitFor({ timeout: 10_000 });
        for (const [index, listener] of listeners.entries()) {
          const answer = await listener.evaluate(() => /** @type {any} */ (window).stoa?.pc?.currentRemoteDescription?.sdp ?? "");
          const answered = /red\/48000\/2/u.test(answer);
          if (!EXPLORE) assert.equal(answered, LISTENERS[index].red, `${listener.name} is answered ${LISTENERS[index].red ? "with" : "without"} RED`);
        }

        for (const [index, listener] of listeners.entries()) {
          const { pick } = LISTENERS[index];
          if (!pick) continue;
          const local = await waitFor(() => selectedLocal(listener), { timeout: 5000, message: `${listener.name}'s selected UDP pair` });
          dropUdpTo(LISTENERS[index].name, local.address, local.port, pick);
        }
        // Let each jitter buffer meet its loss before measuring.
        await new Promise((r) => setTimeout(r, 1500));
        /** @type {Awaited<ReturnType<typeof measure>>} */
        let window = await measure(t, 1);
        // A stall of the machine (the browsers' audio threads starved of CPU) makes every page
        // conceal at once, the one without loss included: measure again, keep the calmest.
        for (let attempt = 2; attempt <= MAX_WINDOWS && window.results.clean.concealedShare > CALM; attempt++) {
          t.diagnostic(`the listener without loss concealed ${percent(window.results.clean.concealedShare)}: the machine stalled; measuring again`);
          const next = await measure(t, attempt);
          if (next.results.clean.concealedShare < window.results.clean.concealedShare) window = next;
        }
        clearLoss();
        const { results, redOut } = window;
        const uplink = await uplinkReports(speaker);
        t.diagnostic(`speaker's uplink as the server reports it: ${JSON.stringify(uplink)}`);
        await writeFile(join(ARTIFACTS, "loss.json"), JSON.stringify({ windowMs: WINDOW_MS, config: EXPLORE ?? null, redOut, results }, null, 2));
        if (EXPLORE) return;
        // The server's receiver reports about the microphone reached the speaker's browser,
        // which measured its round trip from them (they echo its own sender reports).
        // (Chromium leaves `reportsReceived` out; the round trip exists only once one came.)
        assert.ok(uplink && typeof uplink.fractionLost === "number", `receiver reports reached the speaker: ${JSON.stringify(uplink)}`);
        assert.ok(typeof uplink.rtt === "number" && uplink.rtt > 0 && uplink.rtt < 0.5, `a round trip from them: ${JSON.stringify(uplink)}`);
        const expected = WINDOW_MS / 20;
        for (const { name } of LISTENERS) {
          assert.ok(results[name].packets > expected / 2, `${name} received audio throughout: ${JSON.stringify(results[name])}`);
        }
        assert.ok(redOut > 4 * expected, `RED went out to the RED listeners: ${redOut}`);
        // Judged above what the listener without loss concealed in the same window (a stall
        // of the machine is not the network's doing); that one is reported, not judged.
        const excess = (/** @type {string} */ name) => results[name].concealedShare - results.clean.concealedShare;
        // The loss was real: what nftables dropped, and what the baseline could not hide.
        assert.ok(results["red-10"].dropped > 0.05 * expected, `10 % were dropped: ${JSON.stringify(results["red-10"])}`);
        assert.ok(excess("opus-10") > 0.03, `without RED, 10 % loss is heard: ${JSON.stringify(results["opus-10"])}`);
        assert.ok(excess("red-10") < 0.01, `RED at 10 % loss: ${JSON.stringify(results["red-10"])}`);
        assert.ok(excess("red-20") < 0.05, `RED at 20 % loss: ${JSON.stringify(results["red-20"])}`);
        noConsoleErrors([speaker, ...listeners]);
      } catch (error) {
        await keepDescriptions("loss", [speaker, ...listeners]);
        throw error;
      }
    });
  });
}
