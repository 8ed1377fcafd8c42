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
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import {
  ARTIFACTS,
  account,
  chromiumPeer,
  cleanup,
  firefoxPeer,
  hearsAudio,
  joinRoom,
  keepDescriptions,
  mediaConnected,
  mediaStats,
  noConsoleErrors,
  openBrowser,
  openFirefox,
  recordDescriptions,
  startServer,
  tempDir,
  waitFor,
  writeToneWav,
} from "./harness.js";
import { blockMediaTo, blockUdp, currentNetns, inNetns, inOwnNetns, unblockMedia, unblockUdp } from "./netns.js";

/** Set in the inner run, which runs the tests inside the namespace. */
const netns = currentNetns();
await inOwnNetns(fileURLToPath(import.meta.url), "Firefox in a live room (needs a private network namespace)", firefoxTests, cleanup);

/** @typedef {import("./harness.js").Peer} Peer */
/** @typedef {import("./harness.js").MediaStats} MediaStats */

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

/**
 * The transport protocol of the page's selected ICE candidate pair (local side).
 * @param {Peer} peer
 */
function selectedProtocol(peer) {
  return peer.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).stoa?.pc ?? null);
    if (!pc) return "none";
    const report = await pc.getStats();
    /** @type {any} */
    let pair = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      report.forEach((s) => {
        if (s.type === "candidate-pair" && (s.selected || (s.nominated && s.state === "succeeded"))) pair = s;
      });
    }
    if (!pair) return "no pair";
    const local = report.get(pair.localCandidateId);
    return String(local?.protocol ?? "unknown");
  });
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
      await mediaConnected(speaker);
      // From pressing Join to the listener's media connected (polled every 100 ms): the
      // figure docs/media.md compares between UDP and ICE-TCP.
      const joining = Date.now();
      await joinRoom(listener, links.listener, "Lee");
      await mediaConnected(listener);
      const connectMs = Date.now() - joining;
      for (const peer of [speaker, listener]) await candidatesOnNamespaceAddress(peer);
      const sent = await sendsAudio(speaker);
      const heard = await hearsAudio(listener);
      assert.ok(heard.level > 0, `audio level above zero: ${JSON.stringify(heard)}`);
      noConsoleErrors([speaker, listener]);
      // A connection the client had to replace (its watchdog) is allowed, and reported.
      const replaced = (await mediaStats(speaker)).replaced + (await mediaStats(listener)).replaced;
      return { sent, heard, connectMs, replaced };
    } catch (error) {
      await keepDescriptions(`firefox-${test}`, [speaker, listener]);
      // The server's view of the same moment: ICE-TCP streams and frames, and what it dropped.
      const metrics = await fetch(`${server.base}/metrics`).then((r) => r.text()).catch((e) => String(e));
      const lines = metrics.split("\n").filter((l) => /^stoa_media_(tcp|drop|datagrams)/.test(l) && !l.endsWith(" 0"));
      throw new Error(`${error instanceof Error ? error.message : error}; server: ${lines.join(", ")}`, { cause: error });
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
      const { sent, heard, connectMs } = await speakerToListener("chromium-to-firefox", peers.chromeSpeaker, peers.foxListener);
      t.diagnostic(`speaker sent ${sent} packets; listener over 1 s: ${JSON.stringify(heard)}; listener join → connected ${connectMs} ms`);
    });

    it("a Chromium listener hears a Firefox speaker", { timeout: 40_000 }, async (t) => {
      const { sent, heard, connectMs } = await speakerToListener("firefox-to-chromium", peers.foxSpeaker, peers.chromeListener);
      t.diagnostic(`speaker sent ${sent} packets; listener over 1 s: ${JSON.stringify(heard)}; listener join → connected ${connectMs} ms`);
    });

    it("a Firefox listener hears a Firefox speaker (a Firefox-only room)", { timeout: 40_000 }, async (t) => {
      const { sent, heard, connectMs } = await speakerToListener("firefox-only", peers.foxSpeaker, peers.foxListener);
      t.diagnostic(`speaker sent ${sent} packets; listener over 1 s: ${JSON.stringify(heard)}; listener join → connected ${connectMs} ms`);
    });

    it("a listener whose first media connection never comes up gets a new one and hears the speaker", { timeout: 40_000 }, async (t) => {
      const speaker = peers.chromeSpeaker;
      const listener = peers.foxListener;
      speaker.mark = speaker.errors.length;
      listener.mark = listener.errors.length;
      const links = await room("replaced-connection");
      await joinRoom(speaker, links.speaker, "Sam");
      await mediaConnected(speaker);
      // Nothing reaches the server's media ports while the listener joins: its connection
      // cannot come up, and the page's watchdog replaces it (media.js, 4 s after the answer).
      const { hostname, port } = new URL(server.base);
      const joining = Date.now();
      blockMediaTo(hostname, Number(port));
      try {
        await joinRoom(listener, links.listener, "Lee");
        await waitFor(async () => (await mediaStats(listener)).replaced >= 1, {
          timeout: 10_000,
          interval: 100,
          message: "the page replaces the connection that does not come up",
        });
      } finally {
        unblockMedia();
      }
      const replacedAt = Date.now() - joining;
      // The replacement offers new ICE credentials: the server closes the old connection and
      // the new one comes up at once, without waiting for the old one's timeouts.
      await mediaConnected(listener);
      const connectMs = Date.now() - joining;
      const heard = await hearsAudio(listener);
      assert.ok(heard.level > 0);
      assert.ok(connectMs - replacedAt < 3000, `connected ${connectMs - replacedAt} ms after the replacement`);
      noConsoleErrors([speaker, listener]);
      t.diagnostic(`replaced after ${replacedAt} ms; connected ${connectMs} ms after joining; heard ${JSON.stringify(heard)}`);
    });

    it("with UDP blocked, Chromium and Firefox are heard over ICE-TCP", { timeout: 60_000 }, async (t) => {
      // Every UDP datagram inside the namespace is dropped (nftables), as on a network that
      // lets only TCP through; HTTP and the signaling socket are TCP and unaffected.
      blockUdp();
      try {
        const started = Date.now();
        const { sent, heard, connectMs, replaced } = await speakerToListener("tcp-chromium-to-firefox", peers.chromeSpeaker, peers.foxListener);
        const joined = Date.now() - started;
        for (const peer of [peers.chromeSpeaker, peers.foxListener]) {
          assert.equal(await selectedProtocol(peer), "tcp", `${peer.name}'s selected candidate pair is TCP`);
        }
        t.diagnostic(`over TCP: speaker sent ${sent} packets; listener over 1 s: ${JSON.stringify(heard)}; listener join → connected ${connectMs} ms (whole exchange ${joined} ms); connections replaced: ${replaced}`);
        const back = await speakerToListener("tcp-firefox-to-chromium", peers.foxSpeaker, peers.chromeListener);
        assert.equal(await selectedProtocol(peers.chromeListener), "tcp");
        t.diagnostic(`over TCP: Firefox speaker sent ${back.sent}; Chromium listener ${JSON.stringify(back.heard)}; listener join → connected ${back.connectMs} ms; connections replaced: ${back.replaced}`);
      } finally {
        unblockUdp();
      }
    });
  });
}
