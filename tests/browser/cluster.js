/**
 * A Stoa cluster for the browser tests: Redis, PostgreSQL, three nodes and nginx in front of
 * them with the load balancer block from docs/operations.md (the addresses replaced). Real
 * engines, started on ephemeral ports in temporary folders: Debian's redis-server, PostgreSQL
 * (as its `postgres` user when run as root) and nginx. Used by cluster.test.js (Chromium and
 * aiortc, on loopback) and cluster-firefox.test.js (in a network namespace).
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { chmod, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ARTIFACTS, freePort, startProcess, tempDir, waitFor } from "./harness.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const STOA = process.env.STOA_BIN ? resolve(process.env.STOA_BIN) : resolve(here, "../../target/release/stoa");
const API_KEY = "stoa_sk_browserclusterkeybrowserclusterkey01";
const SIGNING_KEY = "YnJvd3Nlci1jbHVzdGVyLXRlc3Qtc2lnbmluZy1rZXk";
/** Redis and PostgreSQL listen here; the nodes and nginx on the address `startCluster` is given. */
const LOOPBACK = "127.0.0.1";

/** Resolves once `check` is true or throws after `timeout` ms. */
export const until = (/** @type {() => Promise<boolean>} */ check, /** @type {string} */ message, timeout = 15_000) =>
  waitFor(check, { timeout, interval: 50, message });

/** Whether something accepts TCP connections at host:port. */
async function listening(/** @type {number} */ port, host = LOOPBACK) {
  const { connect } = await import("node:net");
  return new Promise((done) => {
    const socket = connect({ host, port }, () => {
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
    ["--port", String(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no", "--dir", dir],
    { log: "cluster-redis.log" },
  );
  await until(() => listening(port), `redis-server on ${port} (see ${redis.log})`);
  return `redis://${LOOPBACK}:${port}`;
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
    "-c", `listen_addresses=${LOOPBACK}`, "-c", "fsync=off", "-c", "full_page_writes=off",
  ]);
  const pg = await startProcess(postgres, args, { log: "cluster-postgres.log" });
  await until(async () => pg.output().includes("ready to accept connections"), `PostgreSQL (see ${pg.log})`);
  return `postgres://postgres@${LOOPBACK}:${port}/postgres`;
}

/** nginx in front of `nodes` with the documented load balancer block. */
async function startLoadBalancer(/** @type {string} */ host, /** @type {number} */ port, /** @type {number[]} */ nodes) {
  const doc = readFileSync(resolve(here, "../../docs/operations.md"), "utf8");
  const section = doc.slice(doc.indexOf("### Behind a load balancer"));
  const block = section.slice(section.indexOf("```nginx\n") + 9, section.indexOf("```", section.indexOf("```nginx\n") + 9));
  const upstreams = [...nodes];
  const lines = [];
  for (const line of block.split("\n")) {
    const trimmed = line.trim();
    if (trimmed.startsWith("ssl_certificate")) continue;
    if (trimmed === "listen 443 ssl;") lines.push(`    listen ${host}:${port};`);
    else if (trimmed.startsWith("server 10.0.0.")) {
      // The docs list three nodes, as this cluster has; a line with no node left goes.
      const node = upstreams.shift();
      if (node !== undefined) lines.push(line.replace(/10\.0\.0\.\d+:8080/u, `${host}:${node}`));
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
  await until(() => listening(port, host), `nginx on ${port} (see ${nginx.log})`);
  return `http://${host}:${port}`;
}

/**
 * One Stoa node of the cluster on `host`; `cluster` and `media` are more lines for those
 * sections. Off loopback its media binds `host` too, so that ICE candidates carry it.
 * @param {{ name: string, host: string, port: number, shared: string, redis: string, database: string, cluster?: string, media?: string }} options
 */
async function startNode({ name, host, port, shared, redis, database, cluster = "", media = "" }) {
  const dir = await tempDir(`stoa-cluster-${name}-`);
  const config = join(dir, "stoa.toml");
  await writeFile(
    config,
    `trust_forwarded_for = true\n[cluster]\nheartbeat_ms = 200\nnode_ttl_ms = 1000\n${cluster}` +
      `[media]\n${media}[limits]\njoins_per_minute = 10000\njoin_burst = 10000\n`,
  );
  const own = `http://${host}:${port}`;
  const args = ["serve", "--bind", `${host}:${port}`, "--public-url", shared, "--node-url", own, "--data-dir", join(dir, "data"), "--no-demo", "--config", config];
  if (host !== LOOPBACK) args.push("--media-bind", host, "--public-ip", host);
  const node = await startProcess(
    STOA,
    args,
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
export async function api(/** @type {string} */ base, /** @type {string} */ method, /** @type {string} */ path, /** @type {unknown} */ body) {
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
export async function withLogsOnFailure(scenario) {
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
 * The nodes and nginx listen on `host` (loopback unless given; a network namespace's address
 * for Firefox, which never uses a loopback candidate).
 * @param {{ host?: string, cluster?: string, media?: string }} [config]  `cluster`, `media`: more lines for every node's sections
 */
export async function startCluster({ host = LOOPBACK, ...config } = {}) {
  const [redis, database] = await Promise.all([startRedis(), startPostgres()]);
  const [lbPort, portA, portB, portC] = [await freePort(host), await freePort(host), await freePort(host), await freePort(host)];
  const shared = `http://${host}:${lbPort}`;
  // One at a time: the first runs the migrations, and the nodes' key fingerprints agree.
  const nodes = [];
  for (const [name, port] of [["node-a", portA], ["node-b", portB], ["node-c", portC]]) {
    nodes.push(await startNode({ name, host, port: Number(port), shared, redis, database, ...config }));
  }
  await startLoadBalancer(host, lbPort, [portA, portB, portC]);
  return { shared, nodes, redis };
}

/** A node's metric, summed over its labels. */
export async function nodeMetric(/** @type {{ own: string }} */ node, /** @type {string} */ name) {
  const text = await (await fetch(`${node.own}/metrics`)).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .reduce((sum, line) => sum + Number(line.split(" ").pop()), 0);
}

/**
 * Waits until `name` is on stage as a speaker for each of `peers` (Chromium or Firefox).
 * @param {import("./harness.js").Peer[]} peers
 * @param {string} name
 */
export async function onStageAsSpeaker(peers, name) {
  for (const peer of peers) {
    /** @type {string[][]} */
    let stage = [];
    await until(async () => {
      stage = await peer.evaluate(() =>
        [...document.querySelectorAll('[data-testid="stage"] [data-testid="participant"]')].map((e) => [
          /** @type {HTMLElement} */ (e).dataset.name ?? "",
          /** @type {HTMLElement} */ (e).dataset.role ?? "",
        ]),
      );
      return stage.some(([who]) => who === name);
    }, `${name} on stage in ${peer.name}'s page`, 10_000);
    assert.deepEqual(stage.find(([who]) => who === name), [name, "speaker"], `${name} is on stage as a speaker in ${peer.name}'s page`);
  }
}

/**
 * Keeps the peer's media connection as `window.__oldPc`, for [`newMediaConnection`].
 * @param {import("./harness.js").Peer} peer
 */
export const keepMediaConnection = (peer) =>
  peer.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.__oldPc = w.stoa.pc;
  });

/**
 * Waits until `peer` has replaced the connection kept by `keepMediaConnection` with one that
 * is up.
 * @param {import("./harness.js").Peer} peer
 * @param {string} message
 */
export const newMediaConnection = (peer, message) =>
  until(
    () => peer.evaluate(() => {
      const w = /** @type {any} */ (window);
      return w.stoa.pc !== w.__oldPc && w.stoa.pc.connectionState === "connected";
    }),
    message,
  );

/**
 * The node the room lives on, once that node's heartbeat counts the speaker who placed it
 * there (placement reads the heartbeats: only then is it full for the next person).
 * @param {string} shared
 * @param {{ name: string, own: string }[]} nodes
 * @param {string} room
 */
export async function homeWithSpeaker(shared, nodes, room) {
  const { node: homeName } = await api(shared, "GET", `/api/v1/rooms/${room}`);
  const home = nodes.find((n) => n.name === homeName);
  assert.ok(home, `the room lives on a node: ${homeName}`);
  await until(async () => {
    const { json } = await api(shared, "GET", "/api/v1/cluster/nodes");
    return json.nodes.some((/** @type {any} */ n) => n.name === homeName && n.load.connections >= 1);
  }, "the home's heartbeat counts the speaker");
  return home;
}

/**
 * `name`, a listener on an edge, is invited on stage through the REST API and accepts in
 * `listener`'s page: the edge sends the page home (`moved`), where it resumes, makes a new
 * media connection and is on stage in both pages; the home holds no socket from an edge any
 * more. The page must record its sockets (`recordSockets`). Returns them.
 * @param {{ shared: string, room: string, home: { own: string }, speaker: import("./harness.js").Peer, listener: import("./harness.js").Peer, name: string }} options
 */
export async function invitedOnStageAndSentHome({ shared, room, home, speaker, listener, name }) {
  const { json: people } = await api(shared, "GET", `/api/v1/rooms/${room}/participants`);
  const id = people.items.find((/** @type {any} */ p) => p.display_name === name)?.id;
  assert.ok(id, `${name} is in the room: ${JSON.stringify(people)}`);
  await keepMediaConnection(listener);
  await api(shared, "POST", `/api/v1/rooms/${room}/participants/${id}/role`, { role: "speaker" });
  await listener.waitForTestId("accept-invitation");
  await listener.click("accept-invitation");
  await onStageAsSpeaker([speaker, listener], name);
  await newMediaConnection(listener, `${name}'s page made a new media connection at the room's node`);
  const sockets = await socketsOf(listener);
  const homeHost = new URL(home.own).host;
  assert.ok(sockets.at(-1)?.includes(homeHost), `${name}'s page resumed at the room's node: ${sockets.join(", ")}`);
  await until(async () => (await nodeMetric(home, "stoa_signal_sockets_from_edges")) === 0, `no socket of ${name}'s comes through an edge any more`);
  await listener.waitForTestId("connection-state", "connected");
  return sockets;
}

/**
 * Records, before any of the page's code runs, the address of every WebSocket the page opens
 * (`window.__sockets`): which node a page's signaling went to, in any browser.
 */
export function recordSockets() {
  const w = /** @type {any} */ (window);
  w.__sockets = [];
  const Native = WebSocket;
  w.WebSocket = class extends Native {
    /** @param {string | URL} url @param {string | string[]} [protocols] */
    constructor(url, protocols) {
      super(url, protocols);
      w.__sockets.push(String(url));
    }
  };
}

/**
 * The addresses of the WebSockets `peer`'s page opened since it loaded, in order.
 * @param {import("./harness.js").Peer} peer
 * @returns {Promise<string[]>}
 */
export const socketsOf = (peer) => peer.evaluate(() => /** @type {any} */ (window).__sockets ?? []);
