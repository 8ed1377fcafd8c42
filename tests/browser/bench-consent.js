/**
 * How often a connected, silent Chromium listener sends consent checks (RFC 7675) to the
 * server: what a silent room costs a worker scales with it (docs/benchmarks.md, "Idle").
 * Two listeners join a room where nobody speaks; the nominated candidate pair's
 * `requestsSent` is read from `getStats()` 3 s after connecting and again `SECONDS` later.
 * A benchmark, not a test.
 *
 *   node bench-consent.js            (SECONDS=40 by default)
 */

import { chromiumPeer, cleanup, joinRoom, mediaConnected, openBrowser, startServer } from "./harness.js";

const SECONDS = Number(process.env.SECONDS ?? 40);

const server = await startServer({ log: "server-bench-consent.log" });
try {
  const { id } = await server.api("POST", "/api/v1/rooms", { title: "consent bench" });
  const link = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener" })).url;
  const peers = [];
  for (const name of ["Lee", "Kim"]) {
    const peer = chromiumPeer(await openBrowser({ name: `consent-${name}`, origin: server.base }));
    await joinRoom(peer, link, name);
    await mediaConnected(peer);
    peers.push(peer);
  }
  const requestsSent = (/** @type {import("./harness.js").Peer} */ peer) =>
    peer.evaluate(async () => {
      const stats = await /** @type {any} */ (window).stoa.pc.getStats();
      let sent = -1;
      stats.forEach((/** @type {any} */ s) => {
        if (s.type === "candidate-pair" && s.nominated) sent = s.requestsSent;
      });
      return sent;
    });
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const before = await Promise.all(peers.map(requestsSent));
  const started = Date.now();
  await new Promise((resolve) => setTimeout(resolve, SECONDS * 1000));
  const after = await Promise.all(peers.map(requestsSent));
  const seconds = (Date.now() - started) / 1000;
  const intervals = after.map((n, i) => seconds / Math.max(1, n - before[i]));
  console.log(`consent checks: one every ${intervals.map((s) => s.toFixed(2)).join(" s, ")} s per listener over ${seconds.toFixed(0)} s`);
  console.log(JSON.stringify({ seconds, before, after, interval_s: intervals }));
} finally {
  await cleanup();
}
process.exit(0);
