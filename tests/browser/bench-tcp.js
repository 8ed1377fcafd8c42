/**
 * ICE-TCP against UDP, in one run on one machine (a benchmark, not a test; docs/benchmarks.md):
 * a Chromium speaker and `LISTENERS` Chromium listeners join a room over UDP, then another room
 * with every UDP datagram dropped (nftables, inside a private network namespace, so they fall
 * back to ICE-TCP). For each: each listener's time from pressing Join to its media connected,
 * and the server's CPU per forwarded packet over a steady window.
 *
 *   node bench-tcp.js            (root: it makes a network namespace; LISTENERS=4 by default)
 */

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  chromiumPeer,
  cleanup,
  joinRoom,
  mediaConnected,
  hearsAudio,
  openBrowser,
  startServer,
  tempDir,
  writeToneWav,
} from "./harness.js";
import { blockUdp, currentNetns, exitWithParent, runInsideNetns, unblockUdp } from "./netns.js";

const LISTENERS = Number(process.env.LISTENERS ?? 4);
const WINDOW_MS = Number(process.env.WINDOW_MS ?? 10_000);

const netns = currentNetns();
if (!netns) {
  process.exitCode = await runInsideNetns(fileURLToPath(import.meta.url));
} else {
  exitWithParent(cleanup);
  try {
    await bench(netns);
  } finally {
    await cleanup();
  }
}

/** CPU seconds (user + system) of the process serving on `port`. */
function serverCpuSeconds(/** @type {string} */ port) {
  const pid = execFileSync("pgrep", ["-f", `stoa serve --bind .*:${port}`]).toString().trim().split("\n")[0];
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks / 100;
}

/** Packets the server forwarded so far (all workers). */
async function forwarded(/** @type {string} */ base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith("stoa_media_rtp_forwarded_total"))
    .reduce((sum, line) => sum + Number(line.split(" ").pop()), 0);
}

/** @param {import("./netns.js").Netns} netns */
async function bench(netns) {
  const server = await startServer({ host: netns.serverIp, log: "server-bench-tcp.log" });
  const port = new URL(server.base).port;
  const origin = new URL(server.base).origin;
  const media = await tempDir("stoa-bench-tcp-");
  const tone = join(media, "tone.wav");
  await writeToneWav(tone, { hz: 440, seconds: 4, amplitude: 0.5, burstMs: 400 });
  const speaker = chromiumPeer(await openBrowser({ name: "bench-speaker", wav: tone, origin }));
  const listeners = [];
  for (let i = 0; i < LISTENERS; i++) listeners.push(chromiumPeer(await openBrowser({ name: `bench-listener-${i}`, origin })));

  const results = [];
  for (const transport of ["udp", "tcp"]) {
    if (transport === "tcp") blockUdp();
    try {
      const { id } = await server.api("POST", "/api/v1/rooms", { title: `bench ${transport}` });
      const speakerLink = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "speaker" })).url;
      const listenerLink = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "listener" })).url;
      await joinRoom(speaker, speakerLink, "Sam");
      await mediaConnected(speaker);
      const connectMs = [];
      for (const [i, listener] of listeners.entries()) {
        const started = Date.now();
        await joinRoom(listener, listenerLink, `L${i}`);
        await mediaConnected(listener);
        connectMs.push(Date.now() - started);
      }
      for (const listener of listeners) await hearsAudio(listener);
      const [cpu0, packets0] = [serverCpuSeconds(port), await forwarded(server.base)];
      await new Promise((r) => setTimeout(r, WINDOW_MS));
      const [cpu1, packets1] = [serverCpuSeconds(port), await forwarded(server.base)];
      const packets = packets1 - packets0;
      results.push({
        transport,
        listeners: LISTENERS,
        join_to_connected_ms: connectMs,
        median_join_to_connected_ms: connectMs.slice().sort((a, b) => a - b)[Math.floor(connectMs.length / 2)],
        forwarded_per_s: Math.round(packets / (WINDOW_MS / 1000)),
        server_cpu_ms_per_s: Math.round(((cpu1 - cpu0) * 1000) / (WINDOW_MS / 1000)),
        server_cpu_us_per_forwarded_packet: Number((((cpu1 - cpu0) * 1e6) / Math.max(packets, 1)).toFixed(1)),
      });
    } finally {
      if (transport === "tcp") unblockUdp();
    }
  }
  for (const r of results) console.log(JSON.stringify(r));
}
