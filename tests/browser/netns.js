/**
 * A private network namespace for tests that cannot use loopback: Firefox never gathers a
 * loopback ICE candidate, so its WebRTC tests run the server, the browsers and the test process
 * itself inside a namespace made here, with `lo` up and a veth pair whose two ends (and two
 * addresses from a random 10.x.y.0/24) are both inside it, and a default route onto that pair.
 * Traffic never leaves the namespace.
 *
 * The test process re-runs itself inside the namespace (`runInsideNetns`), so the browsers'
 * control sockets (Firefox's WebDriver BiDi WebSocket listens on the namespace's 127.0.0.1), the
 * server's HTTP port and the operator's REST calls all live in one network. The outer process
 * owns the namespace: it deletes it when the inner run ends, and on SIGINT/SIGTERM. A namespace
 * left by a run that was killed outright (its name carries the creator's pid) is swept, with any
 * process still inside it, by the next run.
 *
 * Needs root and `ip` from iproute2 with `ip netns` (CI runs as root).
 */

import { execFileSync, spawn } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { readlinkSync, statSync } from "node:fs";
import { it } from "node:test";

/** Every namespace made here is called `stoa-test-<pid of its creator>-<random hex>`. */
const PREFIX = "stoa-test-";
const NAME = /^stoa-test-(\d+)-[0-9a-f]+$/u;

/**
 * @typedef {Object} Netns
 * @property {string} name      e.g. stoa-test-1234-a1b2c3
 * @property {string} serverIp  the address the server binds (one end of the veth pair)
 * @property {string} clientIp  the other end (the browsers' candidates carry both)
 */

/**
 * Runs `ip` and returns its standard output; throws with its standard error.
 * @param {string[]} args
 */
function ip(args) {
  try {
    return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 10_000 });
  } catch (error) {
    const e = /** @type {{ stderr?: string, message: string, code?: string }} */ (error);
    const detail = e.code === "ENOENT" ? "the `ip` command is not installed (apt-get install iproute2)" : (e.stderr || e.message).trim();
    throw new Error(`ip ${args.join(" ")}: ${detail}`);
  }
}

/** @param {number} pid */
function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return /** @type {{ code?: string }} */ (error).code === "EPERM";
  }
}

/**
 * Processes inside a namespace (the server and browsers a test started there).
 * @param {string} name
 */
function pidsIn(name) {
  try {
    return ip(["netns", "pids", name])
      .split(/\s+/u)
      .filter(Boolean)
      .map(Number)
      .filter((pid) => pid !== process.pid);
  } catch {
    return [];
  }
}

/**
 * Kills what is left inside one of our namespaces and deletes it. Idempotent.
 * @param {string} name
 */
export function destroyNetns(name) {
  if (!NAME.test(name)) throw new Error(`not a test namespace: ${name}`);
  for (const pid of pidsIn(name)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  try {
    ip(["netns", "del", name]);
  } catch (error) {
    if (!/No such file|Cannot remove namespace file/u.test(String(error))) throw error;
  }
}

/** Deletes namespaces left by earlier runs whose creating process is gone. */
export function sweepStaleNetns() {
  let listing = "";
  try {
    listing = ip(["netns", "list"]);
  } catch {
    return;
  }
  for (const line of listing.split("\n")) {
    const name = line.split(" ")[0];
    const match = NAME.exec(name);
    if (match && !alive(Number(match[1]))) {
      try {
        destroyNetns(name);
      } catch (error) {
        console.error(`could not remove the stale namespace ${name}:`, error);
      }
    }
  }
}

/**
 * Makes a namespace with `lo` up and a veth pair, both ends inside, on a random /24 of 10/8,
 * and a default route to the pair's client end (Firefox needs one to gather candidates).
 * Throws a clear error when namespaces cannot be made here (not root, no `ip netns`).
 * @returns {Netns}
 */
export function createNetns() {
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new Error("the Firefox tests make a private network namespace (ip netns add) and need root");
  }
  sweepStaleNetns();
  const name = `${PREFIX}${process.pid}-${randomBytes(3).toString("hex")}`;
  const subnet = `10.${randomInt(16, 250)}.${randomInt(0, 256)}`;
  const netns = { name, serverIp: `${subnet}.1`, clientIp: `${subnet}.2` };
  try {
    ip(["netns", "add", name]);
  } catch (error) {
    throw new Error(`cannot make a private network namespace for the Firefox tests (needs root and iproute2's ip netns): ${/** @type {Error} */ (error).message}`);
  }
  try {
    ip(["-n", name, "link", "set", "lo", "up"]);
    ip(["-n", name, "link", "add", "stoa0", "type", "veth", "peer", "name", "stoa1"]);
    // No IPv6 link-local addresses on the pair: the kernel would add them a second or two
    // after the links come up (after duplicate address detection), while the browsers run,
    // and Chromium takes an address change for a network change and fails every request in
    // flight with ERR_NETWORK_CHANGED (one broadcast run in four did).
    ip(["-n", name, "link", "set", "stoa0", "addrgenmode", "none"]);
    ip(["-n", name, "link", "set", "stoa1", "addrgenmode", "none"]);
    ip(["-n", name, "addr", "add", `${netns.serverIp}/24`, "dev", "stoa0"]);
    ip(["-n", name, "addr", "add", `${netns.clientIp}/24`, "dev", "stoa1"]);
    ip(["-n", name, "link", "set", "stoa0", "up"]);
    ip(["-n", name, "link", "set", "stoa1", "up"]);
    // Firefox gathers no host candidate at all without a default route (it asks which address
    // the default route would use). This one leads to the veth's other end, also inside the
    // namespace, which forwards nothing: anything not for the two addresses is dropped.
    ip(["-n", name, "route", "add", "default", "dev", "stoa1", "src", netns.clientIp]);
  } catch (error) {
    destroyNetns(name);
    throw new Error(`cannot set up the network namespace ${name} (veth pair): ${/** @type {Error} */ (error).message}`);
  }
  return netns;
}

/**
 * The namespace this process runs in, when it was started by `runInsideNetns`.
 * @returns {Netns | null}
 */
export function currentNetns() {
  const name = process.env.STOA_NETNS;
  const serverIp = process.env.STOA_NETNS_SERVER_IP;
  const clientIp = process.env.STOA_NETNS_CLIENT_IP;
  if (!name || !serverIp || !clientIp) return null;
  return { name, serverIp, clientIp };
}

/**
 * Whether this process runs in the namespace called `name` (its /run/netns file is the same
 * namespace as /proc/self/ns/net, `net:[inode]`).
 * @param {string} name
 */
export function inNetns(name) {
  try {
    return readlinkSync("/proc/self/ns/net") === `net:[${statSync(`/run/netns/${name}`).ino}]`;
  } catch {
    return false;
  }
}

/**
 * Runs this script again inside a fresh namespace, with the same Node options, environment
 * and standard output (so that `node --test` reads the inner run's results as this file's),
 * then deletes the namespace. Resolves to the inner run's exit code.
 * @param {string} script  absolute path of the test file
 * @returns {Promise<number>}
 */
export async function runInsideNetns(script) {
  const netns = createNetns();
  /** @type {import("node:child_process").ChildProcess | null} */
  let child = null;
  let destroyed = false;
  const teardown = () => {
    if (destroyed) return;
    destroyed = true;
    try {
      destroyNetns(netns.name);
    } catch (error) {
      console.error(`could not remove the namespace ${netns.name}:`, error);
    }
  };
  process.once("exit", teardown);
  /** @param {NodeJS.Signals} signal */
  const forward = (signal) => {
    // Give the inner run a moment to close its browsers and server, then remove everything.
    child?.kill(signal);
    setTimeout(() => {
      teardown();
      process.exit(1);
    }, 5000).unref();
  };
  process.on("SIGINT", forward);
  process.on("SIGTERM", forward);
  try {
    child = spawn("ip", ["netns", "exec", netns.name, process.execPath, ...process.execArgv, script], {
      env: {
        ...process.env,
        STOA_NETNS: netns.name,
        STOA_NETNS_SERVER_IP: netns.serverIp,
        STOA_NETNS_CLIENT_IP: netns.clientIp,
      },
      stdio: "inherit",
    });
    const running = /** @type {import("node:child_process").ChildProcess} */ (child);
    return await new Promise((resolveCode, reject) => {
      running.once("error", reject);
      running.once("exit", (code, signal) => resolveCode(code ?? (signal ? 128 : 1)));
    });
  } finally {
    process.off("SIGINT", forward);
    process.off("SIGTERM", forward);
    teardown();
  }
}

/**
 * The two halves of a test file that needs its own namespace. In the outer run (no namespace
 * yet) it makes one and runs `script` again inside it; under `node --test` the inner run writes
 * its results to the same standard output, as if they were this file's, and a failure to make
 * the namespace is reported as the failed test `title`. In the inner run it calls `tests` with
 * the namespace, having arranged for `stop` to run when the outer process goes away.
 * @param {string} script  the test file's absolute path
 * @param {string} title
 * @param {(netns: Netns) => void} tests
 * @param {() => Promise<void>} stop
 */
export async function inOwnNetns(script, title, tests, stop) {
  const netns = currentNetns();
  if (netns) {
    exitWithParent(stop);
    tests(netns);
    return;
  }
  /** @type {Error | null} */
  let failure = null;
  try {
    process.exitCode = await runInsideNetns(script);
  } catch (error) {
    failure = /** @type {Error} */ (error);
  }
  if (failure) {
    const reason = failure;
    it(title, () => {
      throw reason;
    });
  }
}

/**
 * For the inner run: when the outer process is gone (killed outright), run `stop` and exit,
 * so that no browser or server outlives the test. Also runs `stop` on SIGINT/SIGTERM.
 * @param {() => Promise<void>} stop
 */
export function exitWithParent(stop) {
  const parent = process.ppid;
  let stopping = false;
  const finish = () => {
    if (stopping) return;
    stopping = true;
    const hard = setTimeout(() => process.exit(1), 5000);
    hard.unref();
    stop().finally(() => process.exit(1));
  };
  setInterval(() => {
    if (process.ppid !== parent) finish();
  }, 500).unref();
  process.once("SIGINT", finish);
  process.once("SIGTERM", finish);
}

const UDP_BLOCK_TABLE = "stoa_block_udp";

/**
 * Drops every UDP datagram sent inside the namespace this process runs in (nftables), as on a
 * network that lets only TCP through. Only ever call it inside a namespace of our own.
 */
export function blockUdp() {
  if (!currentNetns()) throw new Error("blockUdp outside the test's network namespace");
  const rules = `table inet ${UDP_BLOCK_TABLE} {\n chain out {\n type filter hook output priority 0; policy accept;\n meta l4proto udp drop\n }\n}\n`;
  execFileSync("nft", ["-f", "-"], { input: rules });
}

/** Lets UDP through again. */
export function unblockUdp() {
  execFileSync("nft", ["delete", "table", "inet", UDP_BLOCK_TABLE]);
}

const MEDIA_BLOCK_TABLE = "stoa_block_media";

/**
 * Drops everything that arrives inside this process's namespace for `addr` except TCP to or
 * from `keepPort` (the server's HTTP and signaling; browsers and server share the address, so
 * the server's answers arrive there too): no UDP, no ICE-TCP, so no media connection can come
 * up. On the input hook, as a network loses packets: the sender is not told (on the output
 * hook its send would fail with EPERM, and Firefox gives up on a pair whose send failed).
 * Only ever call it inside a namespace of our own.
 * @param {string} addr
 * @param {number} keepPort
 */
export function blockMediaTo(addr, keepPort) {
  if (!currentNetns()) throw new Error("blockMediaTo outside the test's network namespace");
  if (!/^[\d.]+$/u.test(addr) || !Number.isInteger(keepPort)) throw new Error(`bad media block ${addr}:${keepPort}`);
  const rules = `table inet ${MEDIA_BLOCK_TABLE} {\n chain in {\n type filter hook input priority 0; policy accept;\n ip daddr ${addr} tcp dport ${keepPort} accept\n ip daddr ${addr} tcp sport ${keepPort} accept\n ip daddr ${addr} drop\n }\n}\n`;
  execFileSync("nft", ["-f", "-"], { input: rules });
}

/** Lets media through again. */
export function unblockMedia() {
  execFileSync("nft", ["delete", "table", "inet", MEDIA_BLOCK_TABLE]);
}

const LOSS_TABLE = "stoa_loss";

/**
 * Drops part of the RTP packets that arrive inside this process's namespace for one
 * destination (`addr`, `port`; RTCP, STUN and DTLS pass): those for which the nftables
 * expression `pick` is true, e.g. `numgen random mod 100 < 10` (10 % at random) or
 * `numgen inc mod 30 < 3` (three in a row out of every thirty). They are dropped on the input
 * hook, as a network loses packets: the sender is not told. (On the output hook the sender's
 * `sendmmsg` would see each drop as an error.) The rule counts what it drops, and a rule before
 * it counts all RTP to that destination; `lossCounts()` reads them back as `name` and
 * `name-all`. Only ever call it inside a namespace of our own.
 * @param {string} name  a label for the rule (letters, digits, dashes)
 * @param {string} addr
 * @param {number} port
 * @param {string} pick
 */
export function dropUdpTo(name, addr, port, pick) {
  if (!currentNetns()) throw new Error("dropUdpTo outside the test's network namespace");
  if (!/^[\w-]+$/u.test(name) || !/^[\d.]+$/u.test(addr) || !Number.isInteger(port)) throw new Error(`bad loss rule ${name} ${addr}:${port}`);
  // RTP only: version 2 in the first two bits, and not an RTCP packet type (200-207, which
  // read as 72-79 without the marker bit). STUN and DTLS start with other bits.
  const match = `ip daddr ${addr} udp dport ${port} @th,64,2 2 @th,73,7 != 72-79`;
  const rules =
    `table inet ${LOSS_TABLE} {\n chain in {\n type filter hook input priority 0; policy accept;\n }\n}\n` +
    `add rule inet ${LOSS_TABLE} in ${match} counter comment "${name}-all"\n` +
    `add rule inet ${LOSS_TABLE} in ${match} ${pick} counter drop comment "${name}"\n`;
  execFileSync("nft", ["-f", "-"], { input: rules });
}

/**
 * Datagrams dropped so far by each `dropUdpTo` rule, by its name.
 * @returns {Record<string, number>}
 */
export function lossCounts() {
  const listing = JSON.parse(execFileSync("nft", ["-j", "list", "table", "inet", LOSS_TABLE], { encoding: "utf8" }));
  /** @type {Record<string, number>} */
  const counts = {};
  for (const item of listing.nftables ?? []) {
    const rule = item.rule;
    if (!rule?.comment) continue;
    const counter = (rule.expr ?? []).find((/** @type {any} */ e) => e.counter)?.counter;
    counts[rule.comment] = counter?.packets ?? 0;
  }
  return counts;
}

/** Removes every `dropUdpTo` rule. */
export function clearLoss() {
  try {
    execFileSync("nft", ["delete", "table", "inet", LOSS_TABLE], { stdio: "ignore" });
  } catch {
    // No rules were made.
  }
}
