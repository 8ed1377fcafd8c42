/**
 * What people in Chromium see when their room's node dies (issue #14): three Stoa nodes on one
 * PostgreSQL and one Redis, behind nginx as the load balancer (the block from
 * docs/operations.md, "Behind a load balancer", with the addresses replaced), every page loaded
 * through it. A speaker plays a tone, a listener hears it; the room's node is killed with
 * SIGKILL. Both pages say they are reconnecting, come back by themselves on a surviving node
 * with their roles and places (the speaker on stage), and the listener hears the speaker again
 * — through a new media connection, since the new node never had the old one. Then the room's
 * new node is stopped on purpose (SIGTERM, as in a rolling upgrade): it sends everyone to the
 * last node, where they resume at once.
 *
 * And a room too full for its node (issue #15): its new listeners, in Chromium and in aiortc,
 * are placed on another node (an edge) and hear the stage there; one of them, invited on
 * stage, is sent to the room's node and heard there.
 *
 * The cluster (Redis, PostgreSQL, nginx, three nodes) is cluster.js's; Firefox through an edge
 * is cluster-firefox.test.js.
 */

import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import {
  api,
  homeWithSpeaker,
  invitedOnStageAndSentHome,
  newMediaConnection,
  nodeMetric,
  onStageAsSpeaker,
  recordSockets,
  socketsOf,
  startCluster,
  until,
  withLogsOnFailure,
} from "./cluster.js";
import {
  chromiumPeer,
  cleanup,
  hearsAudio,
  joinRoom,
  mediaConnected,
  noConsoleErrors,
  openBrowser,
  startProcess,
  tempDir,
  writeToneWav,
} from "./harness.js";

const here = fileURLToPath(new URL(".", import.meta.url));

describe("a room's node dies under people in Chromium", { timeout: 120_000 }, () => {
  after(cleanup);

  it("they come back on the other node by themselves, on stage and heard", () => withLogsOnFailure(async () => {
    const { shared, nodes } = await startCluster();

    const { json: room } = await api(shared, "POST", "/api/v1/rooms", { title: "Failover" });
    const links = {};
    for (const role of ["speaker", "listener"]) {
      const { json: invite } = await api(shared, "POST", `/api/v1/rooms/${room.id}/invites`, { role });
      assert.ok(invite.url.startsWith(shared), `invite links carry the shared address: ${invite.url}`);
      links[role] = invite.url;
    }
    const tone = join(await tempDir("stoa-cluster-tone-"), "tone.wav");
    await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5, burstMs: 400 });
    const speakerBrowser = await openBrowser({ name: "cluster-speaker", wav: tone });
    const listenerBrowser = await openBrowser({ name: "cluster-listener" });
    const speaker = chromiumPeer({ name: "speaker", ...speakerBrowser });
    const listener = chromiumPeer({ name: "listener", ...listenerBrowser });
    await joinRoom(speaker, links.speaker, "Sam");
    await joinRoom(listener, links.listener, "Lee");
    await mediaConnected(listener);
    await hearsAudio(listener);

    // Every state the connection pill shows from now on (it may say "reconnecting" for only a
    // moment: another node takes the room as soon as the dead one refuses connections).
    const watchConnectionStates = async () => {
      for (const { page } of [speakerBrowser, listenerBrowser]) {
        await page.evaluate(() => {
          const w = /** @type {any} */ (window);
          const pill = /** @type {HTMLElement} */ (document.querySelector('[data-testid="connection-state"]'));
          // Each change's old value, so a state that lasted less than a task is not missed.
          w.__states = [];
          w.__watcher?.disconnect();
          w.__watcher = new MutationObserver((records) => {
            for (const record of records) w.__states.push(record.oldValue);
          });
          w.__watcher.observe(pill, { attributes: true, attributeFilter: ["data-state"], attributeOldValue: true });
          w.__oldPc = w.stoa.pc;
        });
      }
    };

    /**
     * The room's node goes (`stop` does it); both pages say they are reconnecting and come back
     * by themselves on another node, the speaker on stage, and the listener hears the speaker
     * again through a new media connection (the new node never had the old one).
     * @param {string} what
     * @param {(home: { name: string, node: { child: import("node:child_process").ChildProcess, exited: Promise<string> } }) => Promise<void>} stop
     */
    const roomMovesOn = async (what, stop) => {
      const { node: homeName } = await api(shared, "GET", `/api/v1/rooms/${room.id}`);
      const home = nodes.find((n) => n.name === homeName);
      assert.ok(home, `the room lives on a node: ${homeName}`);
      await watchConnectionStates();
      const stoppedAt = Date.now();
      await stop(home);
      nodes.splice(nodes.indexOf(home), 1);
      for (const { page } of [speakerBrowser, listenerBrowser]) {
        await until(
          () => page.evaluate(() => {
            const pill = /** @type {HTMLElement} */ (document.querySelector('[data-testid="connection-state"]'));
            const states = [.../** @type {any} */ (window).__states, pill.dataset.state];
            return states.includes("reconnecting") && states.at(-1) === "connected";
          }),
          `${what}: the page said it was reconnecting, then connected again`,
          10_000,
        );
      }
      const backAfter = Date.now() - stoppedAt;
      const { node: newHome } = await api(shared, "GET", `/api/v1/rooms/${room.id}`);
      assert.ok(nodes.some((n) => n.name === newHome), `${what}: the room moved to a node that is up (${newHome})`);
      await onStageAsSpeaker([speaker, listener], "Sam");
      await newMediaConnection(listener, `${what}: the listener's new media connection is up`);
      await hearsAudio(listener);
      const heardAfter = Date.now() - stoppedAt;
      console.log(`${what}: pages connected again after ${backAfter} ms, the speaker heard again after ${heardAfter} ms`);
      return { backAfter, heardAfter };
    };

    // Killed: the pages find the room's new node through the load balancer.
    const killed = await roomMovesOn("room's node killed", async (home) => {
      home.node.child.kill("SIGKILL");
      await home.node.exited;
    });
    assert.ok(killed.heardAfter < 10_000, `heard again within 10 s (${killed.heardAfter} ms)`);
    // Stopped on purpose (SIGTERM, a rolling upgrade): the node sends its people to the last
    // node itself, and they resume there at once.
    const stopped = await roomMovesOn("room's node stopped", async (home) => {
      home.node.child.kill("SIGTERM");
    });
    assert.ok(stopped.backAfter < 2_000, `resumed on the next node at once (${stopped.backAfter} ms)`);
  }));
});

const AIORTC = resolve(here, "../interop/aiortc_client.py");
const PYTHON = process.env.STOA_PYTHON ?? "python3";

describe("a full room's new listeners are served by another node (issue #15)", { timeout: 150_000 }, () => {
  after(cleanup);

  it("Chromium and aiortc hear the stage through an edge; a listener put on stage is sent home", () => withLogsOnFailure(async () => {
    // Two connections a node, and a room's node counts as full at one: everyone who comes
    // after the speaker is placed on another node, an edge that takes the room's audio once.
    const { shared, nodes } = await startCluster({ cluster: "home_full_at = 0.5\n", media: "workers = 1\nmax_connections = 2\n" });
    const { json: room } = await api(shared, "POST", "/api/v1/rooms", { title: "Full house" });
    /** @type {Record<string, { url: string, code: string }>} */
    const invites = {};
    for (const role of ["speaker", "listener"]) {
      const { json: invite } = await api(shared, "POST", `/api/v1/rooms/${room.id}/invites`, { role });
      invites[role] = invite;
    }
    const tone = join(await tempDir("stoa-edge-tone-"), "tone.wav");
    await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5, burstMs: 400 });
    const leesTone = join(await tempDir("stoa-edge-tone-"), "tone.wav");
    await writeToneWav(leesTone, { hz: 660, seconds: 4, amplitude: 0.5, burstMs: 400 });
    const speakerBrowser = await openBrowser({ name: "edge-speaker", wav: tone });
    const listenerBrowser = await openBrowser({ name: "edge-listener", wav: leesTone });
    const speaker = chromiumPeer({ name: "speaker", ...speakerBrowser });
    const listener = chromiumPeer({ name: "listener", ...listenerBrowser });
    await joinRoom(speaker, invites.speaker.url, "Sam");
    await mediaConnected(speaker);
    const home = await homeWithSpeaker(shared, nodes, room.id);

    // The signaling sockets Lee's page opens, in order.
    await listenerBrowser.context.addInitScript(recordSockets);
    const homeHost = new URL(home.own).host;
    await joinRoom(listener, invites.listener.url, "Lee");
    await mediaConnected(listener);
    const firstSockets = await socketsOf(listener);
    const edge = nodes.find((n) => n !== home && firstSockets[0]?.includes(new URL(n.own).host));
    assert.ok(edge, `Lee's page was sent to another node than the room's (${homeHost}): ${firstSockets.join(", ")}`);
    await until(async () => (await nodeMetric(home, "stoa_signal_sockets_from_edges")) === 1, "the home holds Lee's socket from the edge");
    await hearsAudio(listener);

    // aiortc, a client nobody here wrote, follows the join answer to an edge too.
    const aiortc = await startProcess(
      PYTHON,
      ["-u", AIORTC, "--server", shared, `--invite=${invites.listener.code}`, "--name", "aiortc listener", "--mode", "listen", "--seconds", "20", "--min-tone", "1"],
      { log: "edge-aiortc-listen.log" },
    );
    const ended = await aiortc.exited;
    const output = aiortc.output();
    const lines = output.trim().split("\n");
    /** @type {any} */
    const result = JSON.parse(lines.findLast((line) => line.startsWith("{")) ?? "{}");
    assert.equal(ended, "exit 0", `the aiortc listener failed: ${output.slice(-3000)}`);
    const aiortcSignal = /signal_url (\S+)/u.exec(output)?.[1] ?? "";
    assert.ok(aiortcSignal && !aiortcSignal.includes(homeHost), `aiortc was sent to an edge, not the home (${homeHost}): ${aiortcSignal}`);
    /** @type {any[]} */
    const slots = result.slots ?? [];
    const loudest = slots.reduce((top, s) => (top === null || s.loud_frames > top.loud_frames ? s : top), null);
    assert.ok(loudest && loudest.hz !== null && Math.abs(loudest.hz - 440) <= 10, `aiortc decodes the speaker's 440 Hz through the edge: ${JSON.stringify(slots)}`);

    // Lee is invited on stage and accepts: the edge sends the page home (`moved`), where it
    // resumes, makes a new media connection and is on stage, heard by the speaker.
    const sockets = await invitedOnStageAndSentHome({ shared, room: room.id, home, speaker, listener, name: "Lee" });
    await hearsAudio(speaker);
    noConsoleErrors([speaker, listener]);
    console.log(`edge: Lee's sockets ${sockets.join(" → ")}; aiortc at ${aiortcSignal}, heard ${JSON.stringify(loudest)}`);
  }));
});
