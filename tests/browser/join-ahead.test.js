// @ts-check
/**
 * The web client makes a listener's media connection and its offer while the invite is
 * redeemed and the signaling socket opens (`PreparedConnection` in client-web/media.js), and
 * sends that offer as soon as the welcome comes: Chromium takes 50-100 ms to make an offer, and
 * made ahead it is off the path to the first sound (docs/benchmarks.md). These tests hold the
 * shortcut to what it must not change: a listener hears the room on the connection made ahead;
 * a speaker, whose offer must carry the microphone, offers again on that same connection; a
 * room with another slot count gets a connection of its own shape; a listener the server puts
 * on the broadcast tier closes it at the join answer and starts the player then, not at the
 * welcome; a join that fails leaves no connection behind.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { chromiumPeer, cleanup, hearsAudio, joinRoom, mediaConnected, openBrowser, startServer, tempDir, waitFor, writeToneWav } from "./harness.js";

after(cleanup);

/**
 * Runs in each page before its own scripts: keeps every RTCPeerConnection the page makes, with
 * when it was made and closed, when the signaling socket's `welcome` came, and when the page
 * first asked for a broadcast playlist.
 */
function keepConnections() {
  const w = /** @type {any} */ (window);
  w.__connections = [];
  const Peer = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Peer {
    constructor(/** @type {RTCConfiguration | undefined} */ config) {
      super(config);
      /** @type {any} */ (this).__madeAt = performance.now();
      w.__connections.push(this);
    }
    close() {
      /** @type {any} */ (this).__closedAt ??= performance.now();
      super.close();
    }
  };
  const fetchAny = window.fetch;
  window.fetch = (input, init) => {
    if (w.__playlistAt === undefined && String(input instanceof Request ? input.url : input).includes(".m3u8")) w.__playlistAt = performance.now();
    return fetchAny(input, init);
  };
  const Socket = window.WebSocket;
  window.WebSocket = class extends Socket {
    constructor(/** @type {string | URL} */ url, /** @type {any} */ protocols) {
      super(url, protocols);
      this.addEventListener("message", (event) => {
        if (w.__welcomeAt === undefined && String(event.data).includes('"type":"welcome"')) w.__welcomeAt = performance.now();
      });
    }
  };
}

/**
 * The page's connections, oldest first: whether it was made before the `welcome`, its slots and
 * signaling state, whether it is the one the client uses, and whether it sends.
 * @param {import("playwright-core").Page} page
 */
function connections(page) {
  return page.evaluate(() => {
    const w = /** @type {any} */ (window);
    return /** @type {RTCPeerConnection[]} */ (w.__connections).map((pc) => ({
      beforeWelcome: /** @type {any} */ (pc).__madeAt < (w.__welcomeAt ?? Infinity),
      slots: pc.getTransceivers().length,
      signaling: pc.signalingState,
      current: pc === w.stoa?.pc,
      sends: pc.getTransceivers().some((t) => t.direction === "sendrecv"),
    }));
  });
}

/**
 * Closes a test's browsers: their pages would play on until the file ends, and slow (on two
 * cores, by seconds) the tests after it.
 * @param {(import("playwright-core").Page | null)[]} pages
 */
async function closePages(...pages) {
  await Promise.all(pages.map((page) => page?.context().close()));
}

/**
 * A server with `config`, a room with a Chromium speaker talking (a 440 Hz tone) unless
 * `talking` is false, and a listener link to it.
 * @param {string} name
 * @param {{ config?: string, talking?: boolean }} [options]
 */
async function room(name, { config, talking = true } = {}) {
  const server = await startServer({ log: `server-${name}.log`, config });
  const { id } = await server.api("POST", "/api/v1/rooms", { title: name });
  const speakerLink = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" })).url;
  const listenerInvite = await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener" });
  let speakerPage = null;
  if (talking) {
    const media = await tempDir(`stoa-${name}-`);
    const tone = join(media, "tone.wav");
    await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5 });
    const speakerBrowser = await openBrowser({ name: `${name}-speaker`, wav: tone, origin: server.base });
    await speakerBrowser.context.addInitScript(keepConnections);
    const speaker = chromiumPeer(speakerBrowser);
    await joinRoom(speaker, speakerLink, "Sam");
    await mediaConnected(speaker);
    speakerPage = speakerBrowser.page;
  }
  const listenerBrowser = await openBrowser({ name: `${name}-listener`, origin: server.base });
  await listenerBrowser.context.addInitScript(keepConnections);
  const listener = chromiumPeer(listenerBrowser);
  return { server, roomId: id, listenerInvite, speakerPage, listenerPage: listenerBrowser.page, listener };
}

describe("the media connection made while joining", { timeout: 120_000 }, () => {
  it("carries a listener's audio, and a speaker's microphone after a second offer", async () => {
    const { listenerInvite, speakerPage, listenerPage, listener } = await room("join-ahead");
    // The speaker's connection was made ahead receive-only; the microphone needed a new offer
    // on that same connection.
    assert.ok(speakerPage);
    assert.deepEqual(await connections(speakerPage), [{ beforeWelcome: true, slots: 3, signaling: "stable", current: true, sends: true }]);

    await joinRoom(listener, listenerInvite.url, "Lee");
    await mediaConnected(listener);
    const heard = await hearsAudio(listener);
    assert.ok(heard.energy > 0, `the listener hears the speaker: ${JSON.stringify(heard)}`);
    assert.deepEqual(await connections(listenerPage), [{ beforeWelcome: true, slots: 3, signaling: "stable", current: true, sends: false }]);
    assert.deepEqual(listener.errors, [], "no console errors at the listener");
    await closePages(listenerPage, speakerPage);
  });

  it("is replaced by one of the room's shape when the server has another slot count", async () => {
    const { listenerInvite, speakerPage, listenerPage, listener } = await room("join-ahead-slots", { config: "[media]\nslots = 2\n" });
    await joinRoom(listener, listenerInvite.url, "Lee");
    await mediaConnected(listener);
    await hearsAudio(listener);
    assert.deepEqual(await connections(listenerPage), [
      { beforeWelcome: true, slots: 3, signaling: "closed", current: false, sends: false },
      { beforeWelcome: false, slots: 2, signaling: "stable", current: true, sends: false },
    ]);
    await closePages(listenerPage, speakerPage);
  });

  it("is closed at the join answer for a broadcast listener, whose player starts before the welcome", async () => {
    const { server, roomId, speakerPage, listenerPage, listener } = await room("join-ahead-broadcast");
    const invite = await server.api("POST", `/api/v1/rooms/${roomId}/invites`, { role: "listener", delivery: "broadcast" });
    await joinRoom(listener, invite.url, "Fan");
    await waitFor(async () => (await listenerPage.evaluate(() => document.querySelector("audio[data-broadcast]")?.currentTime ?? 0)) > 0.5, {
      timeout: 15_000,
      message: "the broadcast plays",
    });
    const seen = await listenerPage.evaluate(() => {
      const w = /** @type {any} */ (window);
      return {
        delivery: w.stoa.delivery,
        media: w.stoa.pc,
        closed: /** @type {any[]} */ (w.__connections).map((pc) => pc.__closedAt < w.__welcomeAt),
        playlistBeforeWelcome: w.__playlistAt < w.__welcomeAt,
      };
    });
    assert.deepEqual(seen, { delivery: "broadcast", media: null, closed: [true], playlistBeforeWelcome: true });
    assert.deepEqual(listener.errors, [], "no console errors at the listener");
    await closePages(listenerPage, speakerPage);
  });

  it("is closed when the join fails", async () => {
    const { server, roomId, listenerInvite, listenerPage, listener } = await room("join-ahead-refused", { talking: false });
    await listener.goto(listenerInvite.url);
    await listener.fill("display-name", "Lee");
    // Revoked between the page loading and the click: the redemption is refused.
    await server.api("DELETE", `/api/v1/rooms/${roomId}/invites/${listenerInvite.id}`);
    await listener.click("join");
    await waitFor(async () => (await connections(listenerPage)).length === 1 && (await connections(listenerPage))[0].signaling === "closed", {
      message: "the connection made for the refused join is closed",
    });
    assert.equal(await listenerPage.evaluate(() => /** @type {any} */ (window).stoa.pc), null, "no media session");
    assert.match((await listenerPage.locator("body").innerText()) ?? "", /not valid|revoked|no longer/iu, "the page says why");
  });
});
