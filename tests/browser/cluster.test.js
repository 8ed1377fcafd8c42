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
 * Real engines, started here on ephemeral ports in temporary folders: Debian's redis-server,
 * PostgreSQL (as its `postgres` user when run as root) and nginx.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { chmod, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import {
  ARTIFACTS,
  chromiumPeer,
  cleanup,
  freePort,
  hearsAudio,
  joinRoom,
  mediaConnected,
  openBrowser,
  startProcess,
  tempDir,
  waitFor,
  writeToneWav,
} from "./harness.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const STOA = process.env.STOA_BIN ? resolve(process.env.STOA_BIN) : resolve(here, "../../target/release/stoa");
const API_KEY = "stoa_sk_browserclusterkeybrowserclusterkey01";
const SIGNING_KEY = "YnJvd3Nlci1jbHVzdGVyLXRlc3Qtc2lnbmluZy1rZXk";
const HOST = "127.0.0.1";

/** Resolves once `check` is true or throws after `timeout` ms. */
const until = (/** @type {() => Promise<boolean>} */ check, /** @type {string} */ message, timeout = 15_000) =>
  waitFor(check, { timeout, interval: 50, message });

/** Whether something accepts TCP connections at HOST:port. */
async function listening(/** @type {number} */ port) {
  const { connect } = await import("node:net");
  return new Promise((done) => {
    const socket = connect({ host: HOST, port }, () => {
      socket.destroy();
      done(true);
    });
    socket.once("error", () => done(false));
  });
}

async function startRedis() {
  const port = await freePort();
  const dir = await tempDir("stoa-cluster-redis-");
  const redis = await startProcess(
    "redis-server",
    ["--port", String(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", dir],
    { log: "cluster-redis.log" },
  );
  await until(() => listening(port), `redis-server on ${port} (see ${redis.log})`);
  return `redis://${HOST}:${port}`;
}

/** Runs `program` as the `postgres` user when this process is root (PostgreSQL refuses root). */
function asPostgres(/** @type {string} */ program, /** @type {string[]} */ args) {
  const root = typeof process.getuid === "function" && process.getuid() === 0;
  return root ? ["setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", program, ...args]] : [program, args];
}

async function startPostgres() {
  const versions = readdirSync("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a));
  assert.ok(versions.length > 0, "PostgreSQL is installed (apt-get install postgresql)");
  const bin = `/usr/lib/postgresql/${versions[0]}/bin`;
  const dir = await tempDir("stoa-cluster-pg-");
  await chmod(dir, 0o755);
  if (process.getuid?.() === 0) execFileSync("chown", ["postgres:postgres", dir]);
  const [initdb, initArgs] = asPostgres(`${bin}/initdb`, ["--pgdata", join(dir, "data"), "--username=postgres", "--auth=trust", "--no-sync"]);
  execFileSync(initdb, initArgs, { stdio: ["ignore", "ignore", "pipe"] });
  const port = await freePort();
  const [postgres, args] = asPostgres(`${bin}/postgres`, [
    "-D", join(dir, "data"), "-p", String(port), "-k", dir,
    "-c", `listen_addresses=${HOST}`, "-c", "fsync=off", "-c", "full_page_writes=off",
  ]);
  const pg = await startProcess(postgres, args, { log: "cluster-postgres.log" });
  await until(async () => pg.output().includes("ready to accept connections"), `PostgreSQL (see ${pg.log})`);
  return `postgres://postgres@${HOST}:${port}/postgres`;
}

/** nginx in front of `nodes` with the documented load balancer block. */
async function startLoadBalancer(/** @type {number} */ port, /** @type {number[]} */ nodes) {
  const doc = readFileSync(resolve(here, "../../docs/operations.md"), "utf8");
  const section = doc.slice(doc.indexOf("### Behind a load balancer"));
  const block = section.slice(section.indexOf("```nginx\n") + 9, section.indexOf("```", section.indexOf("```nginx\n") + 9));
  const upstreams = [...nodes];
  const lines = [];
  for (const line of block.split("\n")) {
    const trimmed = line.trim();
    if (trimmed.startsWith("ssl_certificate")) continue;
    if (trimmed === "listen 443 ssl;") lines.push(`    listen ${HOST}:${port};`);
    else if (trimmed.startsWith("server 10.0.0.")) {
      // The docs list three nodes, as this cluster has; a line with no node left goes.
      const node = upstreams.shift();
      if (node !== undefined) lines.push(line.replace(/10\.0\.0\.\d+:8080/u, `${HOST}:${node}`));
    } else lines.push(line);
  }
  const dir = await tempDir("stoa-cluster-nginx-");
  const conf = join(dir, "nginx.conf");
  await writeFile(
    conf,
    `daemon off;\nuser root;\nworker_processes 1;\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log warn;\n` +
      `events { worker_connections 1024; }\nhttp {\n  access_log off;\n  client_body_temp_path ${dir}/body;\n` +
      `  proxy_temp_path ${dir}/proxy;\n  fastcgi_temp_path ${dir}/fastcgi;\n  uwsgi_temp_path ${dir}/uwsgi;\n` +
      `  scgi_temp_path ${dir}/scgi;\n${lines.join("\n")}\n}\n`,
  );
  const nginx = await startProcess("nginx", ["-c", conf, "-p", dir], { log: "cluster-nginx.log" });
  await until(() => listening(port), `nginx on ${port} (see ${nginx.log})`);
  return `http://${HOST}:${port}`;
}

/**
 * One Stoa node of the cluster; `cluster` and `media` are more lines for those sections.
 * @param {{ name: string, port: number, shared: string, redis: string, database: string, cluster?: string, media?: string }} options
 */
async function startNode({ name, port, shared, redis, database, cluster = "", media = "" }) {
  const dir = await tempDir(`stoa-cluster-${name}-`);
  const config = join(dir, "stoa.toml");
  await writeFile(
    config,
    `trust_forwarded_for = true\n[cluster]\nheartbeat_ms = 200\nnode_ttl_ms = 1000\n${cluster}` +
      `[media]\n${media}[limits]\njoins_per_minute = 10000\njoin_burst = 10000\n`,
  );
  const own = `http://${HOST}:${port}`;
  const node = await startProcess(
    STOA,
    ["serve", "--bind", `${HOST}:${port}`, "--public-url", shared, "--node-url", own, "--data-dir", join(dir, "data"), "--no-demo", "--config", config],
    {
      log: `cluster-${name}.log`,
      env: {
        ...process.env,
        STOA_API_KEY: API_KEY,
        STOA_SIGNING_KEY: SIGNING_KEY,
        STOA_REDIS_URL: redis,
        STOA_DATABASE_URL: database,
        STOA_NODE_NAME: name,
        RUST_LOG: process.env.RUST_LOG ?? "info",
      },
    },
  );
  await until(async () => {
    if (!node.running()) throw new Error(`${name} exited at start: ${node.output().slice(-2000)}`);
    try {
      return (await fetch(`${own}/healthz`)).ok;
    } catch {
      return false;
    }
  }, `${name} healthy (see ${node.log})`, 20_000);
  return { name, own, node };
}

/** An operator call through `base`. */
async function api(/** @type {string} */ base, /** @type {string} */ method, /** @type {string} */ path, /** @type {unknown} */ body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${API_KEY}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return { json: text ? JSON.parse(text) : null, node: response.headers.get("stoa-node") };
}

/**
 * Runs `scenario`; if it fails, prints what the nodes and nginx said (warnings and errors,
 * and the nodes' cluster lines) before the error, so a failure in CI explains itself.
 * @param {() => Promise<void>} scenario
 */
async function withLogsOnFailure(scenario) {
  try {
    await scenario();
  } catch (error) {
    for (const name of ["node-a", "node-b", "node-c", "nginx", "redis", "postgres"]) {
      let text = "";
      try {
        text = readFileSync(join(ARTIFACTS, `cluster-${name}.log`), "utf8");
      } catch {
        continue;
      }
      const lines = text
        .split("\n")
        .filter((line) => !line.includes(" DEBUG ") && !line.includes("Unsupported Extension Type"))
        .filter((line) => !name.startsWith("node-") ? true : / (WARN|ERROR) |cluster|room|shutting|listening|redeemed/u.test(line));
      console.log(`--- cluster-${name}.log (${lines.length} lines kept, the last 40) ---\n${lines.slice(-40).join("\n")}`);
    }
    throw error;
  }
}

/**
 * Redis, PostgreSQL, three nodes and nginx in front of them, as in docs/operations.md.
 * @param {{ cluster?: string, media?: string }} [config]  more lines for every node's sections
 */
async function startCluster(config = {}) {
  const [redis, database] = await Promise.all([startRedis(), startPostgres()]);
  const [lbPort, portA, portB, portC] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const shared = `http://${HOST}:${lbPort}`;
  // One at a time: the first runs the migrations, and the nodes' key fingerprints agree.
  const nodes = [];
  for (const [name, port] of [["node-a", portA], ["node-b", portB], ["node-c", portC]]) {
    nodes.push(await startNode({ name, port: Number(port), shared, redis, database, ...config }));
  }
  await startLoadBalancer(lbPort, [portA, portB, portC]);
  return { shared, nodes, redis };
}

/** A node's metric, summed over its labels. */
async function nodeMetric(/** @type {{ own: string }} */ node, /** @type {string} */ name) {
  const text = await (await fetch(`${node.own}/metrics`)).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .reduce((sum, line) => sum + Number(line.split(" ").pop()), 0);
}

/** Waits until `name` is on stage as a speaker in each of `pages`. */
async function onStageAsSpeaker(/** @type {import("playwright-core").Page[]} */ pages, /** @type {string} */ name) {
  for (const page of pages) {
    const person = page.getByTestId("stage").locator(`[data-testid="participant"][data-name="${name}"]`);
    await person.waitFor({ timeout: 10_000 });
    assert.equal(await person.getAttribute("data-role"), "speaker");
  }
}

/** Waits until `page` has replaced the connection it had at `window.__oldPc` with one that is up. */
const newMediaConnection = (/** @type {import("playwright-core").Page} */ page, /** @type {string} */ message) =>
  until(
    () => page.evaluate(() => {
      const w = /** @type {any} */ (window);
      return w.stoa.pc !== w.__oldPc && w.stoa.pc.connectionState === "connected";
    }),
    message,
  );

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
      await onStageAsSpeaker([speakerBrowser.page, listenerBrowser.page], "Sam");
      await newMediaConnection(listenerBrowser.page, `${what}: the listener's new media connection is up`);
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
    const { node: homeName } = await api(shared, "GET", `/api/v1/rooms/${room.id}`);
    const home = nodes.find((n) => n.name === homeName);
    assert.ok(home, `the room lives on a node: ${homeName}`);
    // Placement reads the nodes' heartbeats: wait until the home's says it holds the speaker.
    await until(async () => {
      const { json } = await api(shared, "GET", "/api/v1/cluster/nodes");
      return json.nodes.some((/** @type {any} */ n) => n.name === homeName && n.load.connections >= 1);
    }, "the home's heartbeat counts the speaker");

    /** The signaling sockets Lee's page opens, in order. */
    const sockets = /** @type {string[]} */ ([]);
    listenerBrowser.page.on("websocket", (ws) => sockets.push(ws.url()));
    const homeHost = new URL(home.own).host;
    await joinRoom(listener, invites.listener.url, "Lee");
    await mediaConnected(listener);
    const edge = nodes.find((n) => n !== home && sockets[0]?.includes(new URL(n.own).host));
    assert.ok(edge, `Lee's page was sent to another node than the room's (${homeHost}): ${sockets.join(", ")}`);
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
    const { json: people } = await api(shared, "GET", `/api/v1/rooms/${room.id}/participants`);
    const lee = people.items.find((/** @type {any} */ p) => p.display_name === "Lee");
    assert.ok(lee, `Lee is in the room: ${JSON.stringify(people)}`);
    await listenerBrowser.page.evaluate(() => {
      const w = /** @type {any} */ (window);
      w.__oldPc = w.stoa.pc;
    });
    await api(shared, "POST", `/api/v1/rooms/${room.id}/participants/${lee.id}/role`, { role: "speaker" });
    await listener.waitForTestId("accept-invitation");
    await listener.click("accept-invitation");
    await onStageAsSpeaker([speakerBrowser.page, listenerBrowser.page], "Lee");
    await newMediaConnection(listenerBrowser.page, "Lee's page made a new media connection at the room's node");
    assert.ok(sockets.at(-1)?.includes(homeHost), `Lee's page resumed at the room's node: ${sockets.join(", ")}`);
    await until(async () => (await nodeMetric(home, "stoa_signal_sockets_from_edges")) === 0, "no socket of Lee's comes through an edge any more");
    await listener.waitForTestId("connection-state", "connected");
    await hearsAudio(speaker);
    console.log(`edge: Lee's sockets ${sockets.join(" → ")}; aiortc at ${aiortcSignal}, heard ${JSON.stringify(loudest)}`);
  }));
});
