/**
 * Firefox through an edge (issue #15): a room too full for its node places a Firefox listener
 * on another node, which takes the room's audio from the room's node once and serves it there;
 * Firefox hears a Chromium speaker through it. Invited on stage, the Firefox listener accepts,
 * is sent to the room's node (`moved`), makes a new media connection there and is heard by the
 * Chromium speaker.
 *
 * Firefox never gathers a loopback ICE candidate, so this file runs itself in a private network
 * namespace, as firefox.test.js does (netns.js): the nodes and nginx listen on the namespace's
 * address, Redis and PostgreSQL on its loopback. Needs root (CI runs as root).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import {
  api,
  homeWithSpeaker,
  invitedOnStageAndSentHome,
  nodeMetric,
  recordSockets,
  socketsOf,
  startCluster,
  until,
  withLogsOnFailure,
} from "./cluster.js";
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
  recordDescriptions,
  tempDir,
  writeToneWav,
} from "./harness.js";
import { inOwnNetns } from "./netns.js";

await inOwnNetns(fileURLToPath(import.meta.url), "Firefox through an edge (needs a private network namespace)", edgeTests, cleanup);

/** @param {import("./netns.js").Netns} netns */
function edgeTests(netns) {
  describe("a full room's new Firefox listener is served by another node (issue #15)", { timeout: 150_000 }, () => {
    after(() => cleanup(), { timeout: 30_000 });

    it("Firefox hears the stage through an edge; invited on stage, it is sent home and heard", () => withLogsOnFailure(async () => {
      // Two connections a node, and a room's node counts as full at one: everyone who comes
      // after the speaker is placed on another node.
      const { shared, nodes } = await startCluster({
        host: netns.serverIp,
        cluster: "home_full_at = 0.5\n",
        media: "workers = 1\nmax_connections = 2\n",
      });
      const { json: room } = await api(shared, "POST", "/api/v1/rooms", { title: "Full house, Firefox" });
      const { json: speakerInvite } = await api(shared, "POST", `/api/v1/rooms/${room.id}/invites`, { role: "speaker" });
      const { json: listenerInvite } = await api(shared, "POST", `/api/v1/rooms/${room.id}/invites`, { role: "listener" });

      const tone = join(await tempDir("stoa-edge-firefox-tone-"), "tone.wav");
      await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5, burstMs: 400 });
      const [chromium, firefox] = await Promise.all([
        openBrowser({ name: "edge-firefox-speaker", wav: tone, origin: new URL(shared).origin }),
        openFirefox({ name: "edge-firefox-listener" }),
      ]);
      await chromium.context.addInitScript(recordDescriptions);
      await firefox.page.evaluateOnNewDocument(recordDescriptions);
      await firefox.page.evaluateOnNewDocument(recordSockets);
      const sam = chromiumPeer({ ...chromium, name: "speaker (Chromium)" });
      const lee = firefoxPeer({ ...firefox, name: "listener (Firefox)" });

      await joinRoom(sam, speakerInvite.url, "Sam");
      await mediaConnected(sam);
      const home = await homeWithSpeaker(shared, nodes, room.id);

      // Firefox follows the join answer to an edge and hears the speaker there.
      const homeHost = new URL(home.own).host;
      await joinRoom(lee, listenerInvite.url, "Lee");
      await mediaConnected(lee);
      const firstSockets = await socketsOf(lee);
      const edge = nodes.find((n) => n !== home && firstSockets[0]?.includes(new URL(n.own).host));
      assert.ok(edge, `Lee's page was sent to another node than the room's (${homeHost}): ${firstSockets.join(", ")}`);
      await until(async () => (await nodeMetric(home, "stoa_signal_sockets_from_edges")) === 1, "the home holds Lee's socket from the edge");
      const heardThroughEdge = await hearsAudio(lee);
      assert.ok(heardThroughEdge.level > 0, `Firefox's audio level is above zero: ${JSON.stringify(heardThroughEdge)}`);

      // Invited on stage, Lee accepts: the edge sends the page to the room's node, where it
      // resumes, makes a new media connection with its microphone and is heard by Sam.
      const sockets = await invitedOnStageAndSentHome({ shared, room: room.id, home, speaker: sam, listener: lee, name: "Lee" });
      const heardAtHome = await hearsAudio(sam);
      noConsoleErrors([sam, lee]);
      console.log(
        `edge (Firefox): sockets ${sockets.join(" → ")}; heard through ${edge.name}: ${JSON.stringify(heardThroughEdge)}; ` +
          `Sam hears Lee at ${home.name}: ${JSON.stringify(heardAtHome)}`,
      );
    }));
  });
}
