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
 * One Stoa node of the cluster.
 * @param {{ name: string, port: number, shared: string, redis: string, database: string }} options
 */
async function startNode({ name, port, shared, redis, database }) {
  const dir = await tempDir(`stoa-cluster-${name}-`);
  const config = join(dir, "stoa.toml");
  await writeFile(
    config,
    "trust_forwarded_for = true\n[cluster]\nheartbeat_ms = 200\nnode_ttl_ms = 1000\n" +
      "[limits]\njoins_per_minute = 10000\njoin_burst = 10000\n",
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

describe("a room's node dies under people in Chromium", { timeout: 120_000 }, () => {
  after(cleanup);

  it("they come back on the other node by themselves, on stage and heard", () => withLogsOnFailure(async () => {
    const [redis, database] = await Promise.all([startRedis(), startPostgres()]);
    const [lbPort, portA, portB, portC] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const shared = `http://${HOST}:${lbPort}`;
    // One at a time: the first runs the migrations, and the nodes' key fingerprints agree.
    const nodes = [];
    for (const [name, port] of [["node-a", portA], ["node-b", portB], ["node-c", portC]]) {
      nodes.push(await startNode({ name, port, shared, redis, database }));
    }
    await startLoadBalancer(lbPort, [portA, portB, portC]);

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
      for (const { page } of [speakerBrowser, listenerBrowser]) {
        const sam = page.getByTestId("stage").locator('[data-testid="participant"][data-name="Sam"]');
        await sam.waitFor({ timeout: 10_000 });
        assert.equal(await sam.getAttribute("data-role"), "speaker");
      }
      await until(
        () => listenerBrowser.page.evaluate(() => {
          const w = /** @type {any} */ (window);
          return w.stoa.pc !== w.__oldPc && w.stoa.pc.connectionState === "connected";
        }),
        `${what}: the listener's new media connection is up`,
      );
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
