/**
 * Join → first audio in a real Chromium, broken down (issue #20; a benchmark, not a test;
 * docs/benchmarks.md). A Chromium speaker talks (a continuous tone) in a room; a Chromium
 * listener joins it `JOINS` times, each time on a fresh page of the same browser, and each join
 * is timed from the Join click to the first audio played, with every step in between marked
 * from inside the page, without touching the web client's code:
 *
 *   click → redeem sent → redeem answered → socket made → socket opened → welcome → peer
 *   connection made → offer created → offer sent → answer received → ICE connected → pair
 *   selected → DTLS connected → first RTP packet → first audio played → first audio energy
 *
 * The marks come from wrapping `fetch`, `WebSocket` and `RTCPeerConnection` in an init script
 * and from the connection's own events. Two clocks inside Chromium are coarse and are not used
 * for the steps they would blur:
 *
 * - `getStats()` answers from a report cached for 50 ms (libwebrtc's `RTCStatsCollector`), so
 *   a step seen in it is seen up to 50 ms late. The first RTP packet is taken from the report
 *   instead: its `lastPacketReceivedTimestamp`, less 20 ms per packet received before it.
 * - `totalAudioEnergy` grows only once the receiver's level meter has updated, which it does on
 *   every 11th 10 ms frame it plays (libwebrtc's `voe::AudioLevel`), so the energy appears up
 *   to 110 ms after the sound, plus the cache.
 *
 * "First audio played" is when the first decoded frame reached the track: the `timestamp` of the
 * receiver's first entry in `getSynchronizationSources()`, which libwebrtc sets as each frame is
 * played out and which is not cached. The first energy is still printed (issue #20 was written
 * against it).
 *
 *   node bench-join.js            (JOINS=10 by default)
 *   STOA_LISTENER_TRANSPORT=rtc node bench-join.js   (the server's `[media] listener_transport`)
 */

import { chromiumPeer, cleanup, joinRoom, mediaConnected, openBrowser, startServer, tempDir, writeToneWav } from "./harness.js";
import { join } from "node:path";

const JOINS = Number(process.env.JOINS ?? 10);

/** The steps, in order, as the init script names its marks. */
const STEPS = ["click", "redeem_sent", "redeem_answered", "socket_made", "socket_open", "welcome", "pc_created", "offer_created", "offer_sent", "answer", "ice_connected", "pair_selected", "dtls_connected", "first_rtp", "first_played", "first_energy"];

/** Runs in every page before its own scripts: records when each step first happens. */
function instrument() {
  const marks = /** @type {Record<string, number>} */ ({});
  /** @type {any} */ (window).__joinMarks = marks;
  const mark = (/** @type {string} */ name, at = performance.now()) => {
    if (!(name in marks)) marks[name] = at;
  };
  document.addEventListener(
    "click",
    (event) => {
      const target = /** @type {Element | null} */ (event.target);
      if (target?.closest?.('[data-testid="join"]')) mark("click");
    },
    true,
  );
  const fetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const url = String(input instanceof Request ? input.url : input);
    const redeem = url.includes("/api/v1/join");
    if (redeem) mark("redeem_sent");
    const response = await fetch(input, init);
    if (redeem) mark("redeem_answered");
    return response;
  };
  const Socket = window.WebSocket;
  window.WebSocket = class extends Socket {
    constructor(/** @type {string | URL} */ url, /** @type {any} */ protocols) {
      super(url, protocols);
      mark("socket_made");
      this.addEventListener("open", () => mark("socket_open"));
      this.addEventListener("message", (event) => {
        try {
          const type = JSON.parse(event.data).type;
          if (type === "welcome") mark("welcome");
          if (type === "media_answer") mark("answer");
        } catch {}
      });
    }
    send(/** @type {any} */ data) {
      if (typeof data === "string" && data.includes('"media_offer"')) mark("offer_sent");
      super.send(data);
    }
  };
  const Peer = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Peer {
    constructor(/** @type {RTCConfiguration | undefined} */ config) {
      super(config);
      mark("pc_created");
      this.addEventListener("iceconnectionstatechange", () => {
        if (this.iceConnectionState === "connected" || this.iceConnectionState === "completed") mark("ice_connected");
      });
      // Both "connected" together: ICE and DTLS.
      this.addEventListener("connectionstatechange", () => {
        if (this.connectionState === "connected") mark("dtls_connected");
      });
      const poll = async () => {
        if (this.connectionState === "closed") return;
        for (const receiver of this.getReceivers()) {
          const iceTransport = receiver.transport?.iceTransport;
          if (iceTransport && !(/** @type {any} */ (iceTransport).__marked)) {
            /** @type {any} */ (iceTransport).__marked = true;
            iceTransport.addEventListener("selectedcandidatepairchange", () => mark("pair_selected"));
          }
          const [source] = receiver.getSynchronizationSources();
          if (source) mark("first_played", source.timestamp - performance.timeOrigin);
        }
        const stats = await this.getStats();
        stats.forEach((/** @type {any} */ s) => {
          if (s.type === "inbound-rtp" && s.kind === "audio") {
            if (s.packetsReceived > 0) mark("first_rtp", s.lastPacketReceivedTimestamp - performance.timeOrigin - 20 * (s.packetsReceived - 1));
            if (s.totalAudioEnergy > 0) mark("first_energy");
          }
        });
        if (!("first_energy" in marks)) setTimeout(poll, 5);
      };
      setTimeout(poll, 5);
    }
    async createOffer(/** @type {any} */ options) {
      const offer = await super.createOffer(options);
      mark("offer_created");
      return offer;
    }
  };
}

// Every join comes from one address: lift the per-address redemption limit for the bench.
const server = await startServer({ log: "server-bench-join.log", config: "[limits]\njoins_per_minute = 6000\njoin_burst = 1000\n" });
try {
  const origin = new URL(server.base).origin;
  const media = await tempDir("stoa-bench-join-");
  const tone = join(media, "tone.wav");
  await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5 });
  const speaker = chromiumPeer(await openBrowser({ name: "join-speaker", wav: tone, origin }));
  const listenerBrowser = await openBrowser({ name: "join-listener", origin });
  const context = listenerBrowser.context;
  await context.addInitScript(instrument);

  const { id } = await server.api("POST", "/api/v1/rooms", { title: "join bench" });
  const speakerLink = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" })).url;
  const listenerLink = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener" })).url;
  await joinRoom(speaker, speakerLink, "Sam");
  await mediaConnected(speaker);

  const joins = [];
  for (let i = 0; i <= JOINS; i++) {
    const page = await context.newPage();
    const listener = chromiumPeer({ name: `join-${i}`, page, errors: [] });
    await listener.goto(listenerLink);
    // A new person each time, not the last one coming back with its stored identity.
    await page.evaluate(() => {
      localStorage.clear();
      sessionStorage.clear();
    });
    await listener.fill("display-name", `L${i}`);
    await listener.click("join");
    try {
      await page.waitForFunction(() => "first_energy" in /** @type {any} */ (window).__joinMarks, null, { timeout: 15_000 });
    } catch (error) {
      const marks = await page.evaluate(() => /** @type {any} */ (window).__joinMarks);
      const state = await page.locator("body").innerText();
      throw new Error(`join ${i} stalled after ${JSON.stringify(marks)}; the page says: ${state.slice(0, 400)}`, { cause: error });
    }
    const marks = await page.evaluate(() => /** @type {any} */ (window).__joinMarks);
    await page.close();
    // The first join warms the browser's caches (page, scripts, codecs): not counted.
    if (i > 0) joins.push(marks);
  }

  /** ms from the click to each step, and each step's share, per join. */
  const rows = joins.map((marks) => {
    const row = /** @type {Record<string, number>} */ ({});
    let previous = marks.click;
    for (const step of STEPS.slice(1)) {
      const at = marks[step] ?? previous;
      row[step] = at - previous;
      previous = Math.max(previous, at);
    }
    row.total = marks.first_played - marks.click;
    row.total_energy = marks.first_energy - marks.click;
    return row;
  });
  const median = (/** @type {number[]} */ values) => {
    const sorted = values.slice().sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  };
  const p95 = (/** @type {number[]} */ values) => {
    const sorted = values.slice().sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.95) - 1)];
  };
  // Steps overlap (DTLS may finish before the nomination), so medians of the steps do not add
  // up; the last column is each step's own time since the click, which does.
  console.log("step (ms since the previous one) | median | p95 | max | since click, median");
  for (const step of [...STEPS.slice(1), "total", "total_energy"]) {
    const values = rows.map((r) => r[step]);
    const since = step.startsWith("total") ? values : joins.map((marks) => (marks[step] ?? marks.click) - marks.click);
    console.log(`${step.padEnd(32)} | ${median(values).toFixed(1).padStart(6)} | ${p95(values).toFixed(1).padStart(6)} | ${Math.max(...values).toFixed(1).padStart(6)} | ${median(since).toFixed(1).padStart(6)}`);
  }
  console.log(JSON.stringify({ joins: rows.length, played_ms: rows.map((r) => Math.round(r.total)), energy_ms: rows.map((r) => Math.round(r.total_energy)) }));
} finally {
  await cleanup();
}
