/**
 * Firefox in a live room, both ways (issue #12): a Firefox listener hears a Chromium speaker,
 * a Chromium listener hears a Firefox speaker, and a room of Firefoxes only.
 *
 * Firefox never gathers a loopback ICE candidate, so this file runs itself inside a private
 * network namespace (netns.js: `lo` up, a veth pair with two 10.x addresses, both ends inside):
 * the server binds the namespace's address, and the browsers and this test process run in
 * there too. The page is then not a secure context: Firefox gets the insecure-media prefs,
 * Chromium `--unsafely-treat-insecure-origin-as-secure`. Needs root (CI runs as root).
 *
 * Audio is judged from each page's `getStats()`: the listener's `inbound-rtp` packets and
 * audio energy rising, its `audioLevel` above zero, the speaker's `outbound-rtp` packets
 * rising, `connectionState` "connected"; and no console errors on either page.
 */

import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { ARTIFACTS, cleanup, openBrowser, openFirefox, startServer, tempDir, waitFor, writeToneWav } from "./harness.js";
import { currentNetns, exitWithParent, inNetns, runInsideNetns } from "./netns.js";

/** Energy a stream must gain in a second to count as audio arriving (see room.test.js). */
const AUDIBLE = 0.002;

const netns = currentNetns();
if (!netns) {
  // The outer run: make the namespace and run this file again inside it. Under `node --test`
  // the inner run writes its results to the same standard output, as if they were ours.
  /** @type {Error | null} */
  let failure = null;
  try {
    process.exitCode = await runInsideNetns(fileURLToPath(import.meta.url));
  } catch (error) {
    failure = /** @type {Error} */ (error);
  }
  if (failure) {
    const reason = failure;
    it("Firefox in a live room (needs a private network namespace)", () => {
      throw reason;
    });
  }
} else {
  exitWithParent(cleanup);
  firefoxTests(netns);
}

/**
 * @typedef {Object} Peer  one person's browser, Chromium or Firefox
 * @property {string} name
 * @property {"chromium" | "firefox"} engine
 * @property {string[]} errors   console errors and uncaught exceptions so far
 * @property {number} mark       where the current test's errors start in `errors`
 * @property {(url: string) => Promise<unknown>} goto
 * @property {(testid: string, state?: string) => Promise<unknown>} waitForTestId
 * @property {(testid: string, text: string) => Promise<void>} fill
 * @property {(testid: string) => Promise<void>} click
 * @property {<T>(fn: () => T | Promise<T>) => Promise<T>} evaluate
 */

/**
 * @param {Awaited<ReturnType<typeof openBrowser>>} chromium
 * @returns {Peer}
 */
function chromiumPeer({ name, page, errors }) {
  return {
    name,
    engine: "chromium",
    errors,
    mark: 0,
    goto: (url) => page.goto(url),
    waitForTestId: (testid, state) => page.locator(selector(testid, state)).waitFor(),
    fill: (testid, text) => page.getByTestId(testid).fill(text),
    click: (testid) => page.getByTestId(testid).click(),
    evaluate: (fn) => page.evaluate(fn),
  };
}

/**
 * @param {Awaited<ReturnType<typeof openFirefox>>} firefox
 * @returns {Peer}
 */
function firefoxPeer({ name, page, errors }) {
  return {
    name,
    engine: "firefox",
    errors,
    mark: 0,
    goto: (url) => page.goto(url),
    waitForTestId: (testid, state) => page.waitForSelector(selector(testid, state)),
    fill: (testid, text) => page.locator(selector(testid)).fill(text),
    click: (testid) => page.locator(selector(testid)).click(),
    evaluate: (fn) => /** @type {any} */ (page.evaluate(fn)),
  };
}

/**
 * @param {string} testid
 * @param {string} [state]
 */
function selector(testid, state) {
  return `[data-testid="${testid}"]${state ? `[data-state="${state}"]` : ""}`;
}

/**
 * Records, before any of the page's code runs, every answer the page applies and how that
 * went: a browser's refusal of the server's answer is the first thing to know when audio fails.
 */
function recordDescriptions() {
  const w = /** @type {any} */ (window);
  w.__descriptions = [];
  const original = /** @type {(this: RTCPeerConnection, d: RTCSessionDescriptionInit) => Promise<void>} */ (
    RTCPeerConnection.prototype.setRemoteDescription
  );
  /** @this {RTCPeerConnection} @param {RTCSessionDescriptionInit} description */
  RTCPeerConnection.prototype.setRemoteDescription = async function (description) {
    const entry = { offer: this.localDescription?.sdp ?? null, answer: description?.sdp ?? null, error: /** @type {string | null} */ (null) };
    w.__descriptions.push(entry);
    try {
      return await original.call(this, description);
    } catch (error) {
      entry.error = `${/** @type {Error} */ (error).name}: ${/** @type {Error} */ (error).message}`;
      throw error;
    }
  };
}

/**
 * What a page's RTCPeerConnection says about itself and its audio.
 * @param {Peer} peer
 */
function mediaStats(peer) {
  return peer.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).stoa?.pc ?? null);
    const descriptions = /** @type {{ error: string | null }[]} */ (/** @type {any} */ (window).__descriptions ?? []);
    const refused = descriptions.map((d) => d.error).filter(Boolean);
    if (!pc) return { pc: false, refused, connectionState: "none", iceConnectionState: "none", signalingState: "none", offered: false, answered: false, inbound: [], outbound: [] };
    /** @type {{ key: string, packets: number, energy: number, level: number }[]} */
    const inbound = [];
    /** @type {{ key: string, packets: number }[]} */
    const outbound = [];
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.kind !== "audio" && s.mediaType !== "audio") return;
      if (s.type === "inbound-rtp") {
        inbound.push({ key: String(s.mid ?? s.ssrc), packets: s.packetsReceived ?? 0, energy: s.totalAudioEnergy ?? 0, level: s.audioLevel ?? 0 });
      } else if (s.type === "outbound-rtp") {
        outbound.push({ key: String(s.mid ?? s.ssrc), packets: s.packetsSent ?? 0 });
      }
    });
    return {
      pc: true,
      refused,
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
      offered: pc.localDescription?.type === "offer" || descriptions.length > 0,
      answered: pc.currentRemoteDescription !== null,
      inbound,
      outbound,
    };
  });
}

/** @typedef {Awaited<ReturnType<typeof mediaStats>>} MediaStats */

/**
 * A short account of a page's media, for failure messages.
 * @param {Peer} peer
 * @param {MediaStats | null} stats
 */
function account(peer, stats) {
  const parts = [`${peer.name} (${peer.engine})`];
  if (stats) {
    parts.push(`pc ${stats.connectionState}/ice ${stats.iceConnectionState}/signaling ${stats.signalingState}`);
    parts.push(`offer sent: ${stats.offered}, answer applied: ${stats.answered}`);
    if (stats.refused.length) parts.push(`answer refused: ${stats.refused.join(" | ")}`);
    if (stats.inbound.length) parts.push(`inbound ${JSON.stringify(stats.inbound)}`);
    if (stats.outbound.length) parts.push(`outbound ${JSON.stringify(stats.outbound)}`);
  }
  const errors = peer.errors.slice(peer.mark);
  if (errors.length) parts.push(`console errors: ${errors.join(" | ")}`);
  return parts.join("; ");
}

/**
 * Opens an invite link, joins with a name, and waits for the room.
 * @param {Peer} peer
 * @param {string} link
 * @param {string} name
 */
async function joinRoom(peer, link, name) {
  await peer.goto(link);
  await peer.fill("display-name", name);
  await peer.click("join");
  await peer.waitForTestId("connection-state", "connected");
}

/**
 * Waits for the media connection to come up: the offer goes out, the answer is applied, and
 * `connectionState` is "connected".
 * @param {Peer} peer
 */
async function mediaConnected(peer) {
  /** @type {MediaStats | null} */
  let last = null;
  try {
    await waitFor(
      async () => {
        last = await mediaStats(peer);
        return last.connectionState === "connected";
      },
      { timeout: 15_000, interval: 100, message: "connectionState connected" },
    );
  } catch (error) {
    throw new Error(`${peer.name}'s media connection did not come up: ${account(peer, last)}`, { cause: error });
  }
}

/**
 * Waits until the listener receives audio: over one second, an inbound stream gains packets
 * and energy, and its level is above zero. Returns that stream's gain.
 * @param {Peer} listener
 */
async function hearsAudio(listener) {
  /** @type {MediaStats | null} */
  let last = null;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const before = await mediaStats(listener);
    await new Promise((r) => setTimeout(r, 1000));
    last = await mediaStats(listener);
    const start = new Map(before.inbound.map((s) => [s.key, s]));
    const gains = last.inbound.map((s) => ({
      key: s.key,
      packets: s.packets - (start.get(s.key)?.packets ?? 0),
      energy: s.energy - (start.get(s.key)?.energy ?? 0),
      level: s.level,
    }));
    const heard = gains.find((g) => g.packets > 0 && g.energy > AUDIBLE && g.level > 0);
    if (heard) return heard;
  }
  throw new Error(`${listener.name} hears no audio within 15 s: ${account(listener, last)}`);
}

/**
 * Waits until the speaker's outbound audio packets rise.
 * @param {Peer} speaker
 */
async function sendsAudio(speaker) {
  const first = await mediaStats(speaker);
  const sent = (/** @type {MediaStats} */ s) => s.outbound.reduce((sum, o) => sum + o.packets, 0);
  /** @type {MediaStats} */
  let last = first;
  try {
    await waitFor(
      async () => {
        last = await mediaStats(speaker);
        return sent(last) > sent(first) + 10;
      },
      { timeout: 10_000, interval: 200, message: "outbound-rtp packetsSent rising" },
    );
  } catch (error) {
    throw new Error(`${speaker.name} sends no audio: ${account(speaker, last)}`, { cause: error });
  }
  return sent(last);
}

/**
 * The server's answer carries ICE candidates on the namespace's server address, never loopback.
 * @param {Peer} peer
 */
async function candidatesOnNamespaceAddress(peer) {
  const answer = await peer.evaluate(() => /** @type {any} */ (window).stoa?.pc?.currentRemoteDescription?.sdp ?? "");
  const candidates = /** @type {string} */ (answer).split(/\r?\n/u).filter((line) => line.startsWith("a=candidate:"));
  const server = /** @type {import("./netns.js").Netns} */ (netns).serverIp;
  assert.ok(
    candidates.length > 0 && candidates.every((line) => line.split(" ")[4] === server),
    `${peer.name}: the answer's candidates are on ${server}: ${JSON.stringify(candidates)}`,
  );
}

/** @param {Peer[]} peers */
function noConsoleErrors(peers) {
  for (const peer of peers) assert.deepEqual(peer.errors.slice(peer.mark), [], `${peer.name} (${peer.engine}) logged errors`);
}

/**
 * Keeps what a failed test leaves behind: each page's offers, answers and refusals.
 * @param {string} test
 * @param {Peer[]} peers
 */
async function keepDescriptions(test, peers) {
  await mkdir(ARTIFACTS, { recursive: true });
  for (const peer of peers) {
    const descriptions = await peer.evaluate(() => /** @type {any} */ (window).__descriptions ?? []).catch(() => []);
    const file = join(ARTIFACTS, `firefox-${test}-${peer.name}.sdp.json`);
    await writeFile(file, JSON.stringify(descriptions, null, 2)).catch(() => {});
  }
}

/** @param {import("./netns.js").Netns} netns */
function firefoxTests(netns) {
  /** @type {import("./harness.js").Server} */
  let server;
  /** @type {Record<"chromeSpeaker" | "chromeListener" | "foxSpeaker" | "foxListener", Peer>} */
  const peers = /** @type {any} */ ({});

  /**
   * A fresh room with one speaker and one listener: the links to join it.
   * @param {string} title
   */
  async function room(title) {
    const { id } = await server.api("POST", "/api/v1/rooms", { title });
    const speaker = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" });
    const listener = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener" });
    return { speaker: /** @type {string} */ (speaker.url), listener: /** @type {string} */ (listener.url) };
  }

  /**
   * One direction: `speaker` joins a new room on stage, `listener` joins it, and the listener
   * hears the speaker.
   * @param {string} test
   * @param {Peer} speaker
   * @param {Peer} listener
   */
  async function speakerToListener(test, speaker, listener) {
    speaker.mark = speaker.errors.length;
    listener.mark = listener.errors.length;
    try {
      const links = await room(test);
      await joinRoom(speaker, links.speaker, "Sam");
      await joinRoom(listener, links.listener, "Lee");
      await mediaConnected(speaker);
      await mediaConnected(listener);
      for (const peer of [speaker, listener]) await candidatesOnNamespaceAddress(peer);
      const sent = await sendsAudio(speaker);
      const heard = await hearsAudio(listener);
      assert.ok(heard.level > 0, `audio level above zero: ${JSON.stringify(heard)}`);
      noConsoleErrors([speaker, listener]);
      return { sent, heard };
    } catch (error) {
      await keepDescriptions(test, [speaker, listener]);
      throw error;
    }
  }

  describe("Firefox in a live room", { timeout: 150_000 }, () => {
    before(
      async () => {
        await mkdir(ARTIFACTS, { recursive: true });
        server = await startServer({ host: netns.serverIp, log: "server-firefox.log" });
        const media = await tempDir("stoa-firefox-media-");
        const tone = join(media, "tone-440.wav");
        await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5, burstMs: 400 });
        const origin = new URL(server.base).origin;
        const [chromeSpeaker, chromeListener, foxSpeaker, foxListener] = await Promise.all([
          openBrowser({ name: "chromium-speaker", wav: tone, origin }),
          openBrowser({ name: "chromium-listener", origin }),
          openFirefox({ name: "firefox-speaker" }),
          openFirefox({ name: "firefox-listener" }),
        ]);
        await chromeSpeaker.context.addInitScript(recordDescriptions);
        await chromeListener.context.addInitScript(recordDescriptions);
        await foxSpeaker.page.evaluateOnNewDocument(recordDescriptions);
        await foxListener.page.evaluateOnNewDocument(recordDescriptions);
        peers.chromeSpeaker = chromiumPeer(chromeSpeaker);
        peers.chromeListener = chromiumPeer(chromeListener);
        peers.foxSpeaker = firefoxPeer(foxSpeaker);
        peers.foxListener = firefoxPeer(foxListener);
      },
      { timeout: 60_000 },
    );

    after(() => cleanup(), { timeout: 30_000 });

    it("runs in a private network namespace, the server on its address", async () => {
      assert.ok(inNetns(netns.name), `this process runs in the namespace ${netns.name}, not the host's network`);
      assert.equal(new URL(server.base).hostname, netns.serverIp);
      const health = await fetch(`${server.base}/healthz`);
      assert.equal(health.status, 200);
      for (const peer of Object.values(peers)) {
        await peer.goto(`${server.base}/`);
        const page = await peer.evaluate(() => ({ secure: window.isSecureContext, gum: typeof navigator.mediaDevices?.getUserMedia }));
        assert.equal(page.gum, "function", `${peer.name} offers getUserMedia on ${server.base} (secure context: ${page.secure})`);
      }
    });

    it("a Firefox listener hears a Chromium speaker", { timeout: 40_000 }, async (t) => {
      const { sent, heard } = await speakerToListener("chromium-to-firefox", peers.chromeSpeaker, peers.foxListener);
      t.diagnostic(`speaker sent ${sent} packets; listener over 1 s: ${JSON.stringify(heard)}`);
    });

    it("a Chromium listener hears a Firefox speaker", { timeout: 40_000 }, async (t) => {
      const { sent, heard } = await speakerToListener("firefox-to-chromium", peers.foxSpeaker, peers.chromeListener);
      t.diagnostic(`speaker sent ${sent} packets; listener over 1 s: ${JSON.stringify(heard)}`);
    });

    it("a Firefox listener hears a Firefox speaker (a Firefox-only room)", { timeout: 40_000 }, async (t) => {
      const { sent, heard } = await speakerToListener("firefox-only", peers.foxSpeaker, peers.foxListener);
      t.diagnostic(`speaker sent ${sent} packets; listener over 1 s: ${JSON.stringify(heard)}`);
    });
  });
}
