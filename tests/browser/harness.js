/**
 * What the browser tests stand on: a real `stoa serve` on a free port, headless Chromium with
 * fake media devices (one browser process per person), REST calls as the operator, and WebRTC
 * stats read from the page. Owns every process it starts and stops them all in `cleanup()`.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = join(here, "artifacts");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";

/** Flags measured to work here (see the field notes), plus autoplay without a gesture. */
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
];

/** @type {(() => Promise<void>)[]} */
const cleanups = [];
/** @type {import("node:child_process").ChildProcess[]} */
const children = [];

// If the runner dies, do not leave a server behind.
process.on("exit", () => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
});

/** Stops everything started here, newest first. */
export async function cleanup() {
  while (cleanups.length) {
    const step = /** @type {() => Promise<void>} */ (cleanups.pop());
    await step().catch((error) => console.error("cleanup:", error));
  }
}

export async function tempDir(/** @type {string} */ prefix) {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A TCP port nobody is listening on right now (on `host`, 127.0.0.1 by default). */
export function freePort(host = "127.0.0.1") {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/**
 * @typedef {Object} Server
 * @property {string} base   e.g. http://127.0.0.1:40123
 * @property {(method: string, path: string, body?: unknown) => Promise<any>} api  operator REST call
 */

/**
 * `STOA_LISTENER_TRANSPORT=lean|rtc`: the server's `[media] listener_transport`, added to the
 * config a test gives (into its `[media]` table when it has one). How the lean run of the suite
 * (`npm run test:rtc`, the `rtc` run of the interop tests) and `bench-join.js` choose the transport without a test of their own.
 * @param {string | undefined} config
 */
export function withListenerTransport(config) {
  const transport = process.env.STOA_LISTENER_TRANSPORT;
  if (!transport) return config;
  if (!/^[a-z]+$/u.test(transport)) throw new Error(`STOA_LISTENER_TRANSPORT=${transport}: rtc or lean`);
  const line = `listener_transport = "${transport}"`;
  if (config === undefined) return `[media]\n${line}\n`;
  if (/^\[media\][ \t]*$/mu.test(config)) return config.replace(/^\[media\][ \t]*$/mu, `[media]\n${line}`);
  return `${config}\n[media]\n${line}\n`;
}

/**
 * Starts `stoa serve` with a fresh data folder and a known operator key. `host`: the address
 * it binds (HTTP and media; its ICE candidates carry it), 127.0.0.1 unless told; the Firefox
 * tests give it their network namespace's address. `log`: its file name in artifacts/.
 * `config`: the text of a TOML configuration file to start it with (`--config`).
 * @param {{ host?: string, log?: string, config?: string }} [options]
 * @returns {Promise<Server>}
 */
export async function startServer({ host = "127.0.0.1", log: logName = "server.log", config } = {}) {
  config = withListenerTransport(config);
  const bin = process.env.STOA_BIN ? resolve(process.env.STOA_BIN) : resolve(here, "../../target/release/stoa");
  const dataDir = await tempDir("stoa-browser-data-");
  const configArgs = [];
  if (config !== undefined) {
    const file = join(dataDir, "stoa.toml");
    await writeFile(file, config);
    configArgs.push("--config", file);
  }
  const key = `test-${randomBytes(18).toString("base64url")}`;
  await mkdir(ARTIFACTS, { recursive: true });
  const log = createWriteStream(join(ARTIFACTS, logName));

  let lastError = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort(host);
    // STOA_WEB_FROM_DISK=1: pages come from client-web/ through dev-server.js, so client
    // changes are tested without rebuilding the server (which embeds the files).
    const fromDisk = Boolean(process.env.STOA_WEB_FROM_DISK);
    const proxyPort = fromDisk ? await freePort(host) : port;
    const base = `http://${host}:${proxyPort}`;
    if (fromDisk) {
      const proxy = spawn(process.execPath, [join(here, "dev-server.js")], {
        env: { ...process.env, HOST: host, PORT: String(proxyPort), STOA_URL: `http://${host}:${port}` },
        stdio: ["ignore", "ignore", "inherit"],
      });
      children.push(proxy);
      cleanups.push(async () => {
        proxy.kill("SIGKILL");
      });
    }
    const serveArgs = ["serve", "--bind", `${host}:${port}`, "--data-dir", dataDir, "--no-demo", ...configArgs];
    if (fromDisk) serveArgs.push("--public-url", base);
    // Off loopback, say where media goes, so that ICE candidates carry this address.
    if (host !== "127.0.0.1") serveArgs.push("--media-bind", host, "--public-ip", host);
    const child = spawn(bin, serveArgs, {
      env: { ...process.env, STOA_API_KEY: key, RUST_LOG: process.env.RUST_LOG ?? "info" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(child);
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    const exited = new Promise((resolveExit) => child.once("exit", (code) => resolveExit(code)));
    const up = await waitForHealth(base, exited);
    if (up) {
      cleanups.push(async () => {
        if (child.exitCode === null) {
          child.kill("SIGTERM");
          const killer = setTimeout(() => child.kill("SIGKILL"), 3000);
          await exited;
          clearTimeout(killer);
        }
        log.end();
      });
      return { base, api: (method, path, body) => operatorCall(base, key, method, path, body) };
    }
    child.kill("SIGKILL");
    lastError = `stoa did not become healthy on ${base}`;
    // Another process may have taken the port between the probe and the bind: try another.
  }
  throw new Error(`${lastError}; see ${join(ARTIFACTS, logName)} (binary: ${bin})`);
}

/**
 * The sum of a counter or gauge over its label sets, from the server's `/metrics`.
 * @param {Server} server
 * @param {string} name  e.g. stoa_media_rtp_in_total
 */
export async function serverMetric(server, name) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .reduce((sum, line) => sum + Number(line.split(" ").pop()), 0);
}

/**
 * @typedef {Object} Process  a helper process that `cleanup()` stops
 * @property {import("node:child_process").ChildProcess} child
 * @property {Promise<string>} exited   settles when it has ended, with how ("exit 1", "SIGTERM", "spawn error: …")
 * @property {() => boolean} running
 * @property {() => Promise<void>} stop  SIGTERM, then SIGKILL after 3 s; waits for the end
 * @property {() => string} output       what it wrote so far, stdout and stderr interleaved
 * @property {string} log               the file in artifacts/ that keeps the same
 */

/**
 * Starts a helper process (the aiortc client, say) that `cleanup()` stops if it still runs.
 * Its stdout and stderr go to artifacts/`log` and are kept for failure messages.
 * @param {string} command
 * @param {string[]} args
 * @param {{ log: string, env?: NodeJS.ProcessEnv }} options
 * @returns {Promise<Process>}
 */
export async function startProcess(command, args, { log: logName, env = process.env }) {
  await mkdir(ARTIFACTS, { recursive: true });
  const logPath = join(ARTIFACTS, logName);
  const log = createWriteStream(logPath);
  let output = "";
  const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  for (const stream of [child.stdout, child.stderr]) {
    stream?.on("data", (/** @type {Buffer} */ chunk) => {
      output += chunk.toString();
      log.write(chunk);
    });
  }
  let ended = false;
  /** @type {Promise<string>} */
  const exited = new Promise((resolveExit) => {
    child.once("error", (error) => {
      ended = true;
      resolveExit(`spawn error: ${error.message}`);
    });
    child.once("close", (code, signal) => {
      ended = true;
      resolveExit(signal ? signal : `exit ${code}`);
    });
  });
  exited.then(() => log.end());
  const stop = async () => {
    if (!ended) {
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 3000);
      await exited;
      clearTimeout(killer);
    }
  };
  cleanups.push(stop);
  return { child, exited, running: () => !ended, stop, output: () => output, log: logPath };
}

/**
 * @param {string} base
 * @param {Promise<unknown>} exited
 */
async function waitForHealth(base, exited) {
  let gone = false;
  exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && !gone) {
    try {
      const response = await fetch(`${base}/healthz`);
      if (response.ok) return true;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/**
 * @param {string} base
 * @param {string} key
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 */
async function operatorCall(base, key, method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: {
      Authorization: `Bearer ${key}`,
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/**
 * A WAV file the fake microphone can play: 48 kHz mono 16-bit, a sine tone. With `burstMs`,
 * the tone comes in bursts (that long on, half as long off, with soft edges) like syllables:
 * a browser's noise suppression learns a steady tone as background noise and turns it down
 * by ~25 dB within two seconds, bursts it leaves alone.
 * @param {string} path
 * @param {{ hz?: number, seconds?: number, amplitude?: number, burstMs?: number }} [options]
 */
export async function writeToneWav(path, { hz = 440, seconds = 4, amplitude = 0.5, burstMs = 0 } = {}) {
  const rate = 48_000;
  const samples = rate * seconds;
  const data = Buffer.alloc(samples * 2);
  const period = Math.round((burstMs * 1.5 * rate) / 1000);
  const on = Math.round((burstMs * rate) / 1000);
  const edge = Math.round(0.02 * rate);
  for (let i = 0; i < samples; i++) {
    let envelope = 1;
    if (burstMs > 0) {
      const t = i % period;
      envelope = t >= on ? 0 : Math.min(1, t / edge, (on - t) / edge);
    }
    data.writeInt16LE(Math.round(Math.sin((2 * Math.PI * hz * i) / rate) * amplitude * envelope * 32767), i * 2);
  }
  const header = Buffer.alloc(44);
  header.write("RIFF", 0, "ascii");
  header.writeUInt32LE(36 + data.length, 4);
  header.write("WAVE", 8, "ascii");
  header.write("fmt ", 12, "ascii");
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28); // byte rate
  header.writeUInt16LE(2, 32); // block align
  header.writeUInt16LE(16, 34); // bits per sample
  header.write("data", 36, "ascii");
  header.writeUInt32LE(data.length, 40);
  await writeFile(path, Buffer.concat([header, data]));
}

/**
 * One person's browser: its own Chromium process and profile, one page.
 * `refusePlayback`: media elements refuse to play (NotAllowedError, as a browser's autoplay
 * policy does) until the person clicks the page's "Tap to listen" button. Chromium's own policy
 * cannot be provoked reliably under automation, whose input counts as user activation.
 * `origin`: a page origin that is not loopback (the Firefox tests' namespace address), which
 * Chromium is told to treat as secure so that it offers the microphone; without it, the
 * browser gathers a 127.0.0.1 candidate (`--allow-loopback-in-peer-connection`).
 * The returned `errors` collects the page's console errors and uncaught exceptions.
 * @param {{ name: string, wav?: string, viewport?: { width: number, height: number }, refusePlayback?: boolean, origin?: string }} options
 */
export async function openBrowser({ name, wav, viewport = { width: 1280, height: 800 }, refusePlayback = false, origin }) {
  const profile = await tempDir(`stoa-browser-${name}-`);
  const args = [...CHROMIUM_FLAGS, "--autoplay-policy=no-user-gesture-required"];
  args.push(origin ? `--unsafely-treat-insecure-origin-as-secure=${origin}` : "--allow-loopback-in-peer-connection");
  if (wav) args.push(`--use-file-for-fake-audio-capture=${wav}`);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args,
    // Playwright mutes audio by default; remote audio must play for its energy to count.
    ignoreDefaultArgs: ["--mute-audio"],
    viewport,
    permissions: ["clipboard-read", "clipboard-write"],
  });
  cleanups.push(() => context.close());
  // Everything here happens within a second or two; fail fast rather than wait 30 s.
  context.setDefaultTimeout(15_000);
  // Count every request for the microphone, before any of the page's own code runs.
  await context.addInitScript(() => {
    const devices = navigator.mediaDevices;
    const original = devices.getUserMedia.bind(devices);
    /** @type {any} */ (window).__getUserMediaCalls = 0;
    devices.getUserMedia = (constraints) => {
      /** @type {any} */ (window).__getUserMediaCalls += 1;
      return original(constraints);
    };
  });
  if (refusePlayback) {
    await context.addInitScript(() => {
      const play = HTMLMediaElement.prototype.play;
      let allowed = false;
      document.addEventListener(
        "click",
        (event) => {
          const target = /** @type {Element | null} */ (event.target);
          if (event.isTrusted && target?.closest?.('[data-testid="tap-to-listen"]')) allowed = true;
        },
        true,
      );
      HTMLMediaElement.prototype.play = function () {
        if (!allowed) return Promise.reject(new DOMException("play() needs a user gesture", "NotAllowedError"));
        return play.call(this);
      };
    });
  }
  const page = context.pages()[0] ?? (await context.newPage());
  return { name, context, page, errors: pageErrors(name, page) };
}

/**
 * Collects a Chromium page's console errors and uncaught exceptions (and logs them as they come).
 * @param {string} name
 * @param {import("playwright-core").Page} page
 */
function pageErrors(name, page) {
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (error) => {
    errors.push(`page error: ${error.message}`);
    console.error(`[${name}] page error:`, error);
  });
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    errors.push(message.text());
    console.error(`[${name}] console:`, message.text());
  });
  return errors;
}

/**
 * Several people's pages in one Chromium process, each in its own isolated context (no shared
 * storage or cookies): cheaper than a browser each when many listeners are needed. No fake
 * microphone file (that is one per process: speakers get `openBrowser`). `origin` as in
 * `openBrowser`. Each page's `errors` collects its console errors and uncaught exceptions.
 * @param {{ names: string[], origin?: string }} options
 */
export async function openPages({ names, origin }) {
  const args = [...CHROMIUM_FLAGS, "--autoplay-policy=no-user-gesture-required"];
  args.push(origin ? `--unsafely-treat-insecure-origin-as-secure=${origin}` : "--allow-loopback-in-peer-connection");
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, timeout: 30_000, args, ignoreDefaultArgs: ["--mute-audio"] });
  cleanups.push(() => browser.close());
  const pages = [];
  for (const name of names) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(15_000);
    const page = await context.newPage();
    pages.push({ name, context, page, errors: pageErrors(name, page) });
  }
  return pages;
}

const FIREFOX = process.env.FIREFOX_BIN ?? "/usr/bin/firefox-esr";

/**
 * Prefs for a headless Firefox with a fake microphone (a tone) and autoplay allowed, on a page
 * that is not a secure context (the Firefox tests' namespace address): see the field notes.
 */
const FIREFOX_PREFS = {
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
  "media.devices.insecure.enabled": true,
  "media.getusermedia.insecure.enabled": true,
  "media.autoplay.default": 0,
  "media.autoplay.blocking_policy": 0,
};

/**
 * One person's Firefox (Debian's firefox-esr, headless), driven over WebDriver BiDi by
 * puppeteer-core, with its own profile and one page. `errors` collects console errors and
 * uncaught exceptions. Firefox never gathers a loopback candidate: open it inside the
 * namespace of netns.js, with the server on the namespace's address.
 * @param {{ name: string }} options
 */
export async function openFirefox({ name }) {
  /** @type {typeof import("puppeteer-core").launch} */
  let launch;
  try {
    ({ launch } = await import("puppeteer-core"));
  } catch (error) {
    throw new Error(`the Firefox tests need puppeteer-core: run \`npm ci\` in tests/browser (${/** @type {Error} */ (error).message})`);
  }
  if (!existsSync(FIREFOX)) throw new Error(`the Firefox tests need Debian's firefox-esr at ${FIREFOX}: apt-get install firefox-esr`);
  const profile = await tempDir(`stoa-firefox-${name}-`);
  const browser = await launch({
    browser: "firefox",
    protocol: "webDriverBiDi",
    executablePath: FIREFOX,
    headless: true,
    userDataDir: profile,
    extraPrefsFirefox: FIREFOX_PREFS,
    timeout: 30_000,
    // The test process owns signals; cleanup() closes the browser.
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  const pid = browser.process()?.pid;
  cleanups.push(async () => {
    const closing = browser.close();
    const killer = setTimeout(() => {
      try {
        if (pid) process.kill(pid, "SIGKILL");
      } catch {
        // Gone meanwhile.
      }
    }, 5000);
    await closing.finally(() => clearTimeout(killer));
  });
  const page = (await browser.pages())[0] ?? (await browser.newPage());
  page.setDefaultTimeout(15_000);
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (error) => {
    const message = error instanceof Error ? error.message : String(error);
    errors.push(`page error: ${message}`);
    console.error(`[${name}] page error:`, message);
  });
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    errors.push(message.text());
    console.error(`[${name}] console:`, message.text());
  });
  // WebDriver BiDi passes an Error logged to the console without its name or message: log
  // errors as text, so that "media: InvalidAccessError: …" reaches the test.
  await page.evaluateOnNewDocument(() => {
    const error = console.error.bind(console);
    console.error = (...args) => error(...args.map((a) => (a instanceof Error || a instanceof DOMException ? `${a.name}: ${a.message}` : a)));
  });
  return { name, browser, page, errors };
}

/**
 * @typedef {{ key: string, packets: number, energy: number }} InboundAudio
 */

/**
 * Inbound audio streams of the page's RTCPeerConnection (`window.stoa.pc`).
 * @param {import("playwright-core").Page} page
 * @returns {Promise<InboundAudio[]>}
 */
export function inboundAudio(page) {
  return page.evaluate(async () => {
    const pc = /** @type {any} */ (window).stoa?.pc;
    if (!pc) return [];
    /** @type {RTCStatsReport} */
    const report = await pc.getStats();
    /** @type {{ key: string, packets: number, energy: number }[]} */
    const streams = [];
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        streams.push({ key: String(s.mid ?? s.ssrc), packets: s.packetsReceived ?? 0, energy: s.totalAudioEnergy ?? 0 });
      }
    });
    return streams;
  });
}

/**
 * Polls until `check` returns a truthy value, or fails after `timeout` ms with `message`.
 * @template T
 * @param {() => Promise<T>} check
 * @param {{ timeout?: number, interval?: number, message: string }} options
 * @returns {Promise<T>}
 */
export async function waitFor(check, { timeout = 10_000, interval = 200, message }) {
  const deadline = Date.now() + timeout;
  /** @type {unknown} */
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
      last = value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`${message} (waited ${timeout} ms; last: ${describe(last)})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** @param {unknown} value */
function describe(value) {
  if (value instanceof Error) return value.message;
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/**
 * How much audio energy each inbound stream gained over a window.
 * @param {import("playwright-core").Page} page
 * @param {number} windowMs
 */
export async function energyGain(page, windowMs) {
  const before = await inboundAudio(page);
  await new Promise((r) => setTimeout(r, windowMs));
  const after = await inboundAudio(page);
  const start = new Map(before.map((s) => [s.key, s]));
  return after.map((s) => ({
    key: s.key,
    packets: s.packets - (start.get(s.key)?.packets ?? 0),
    energy: s.energy - (start.get(s.key)?.energy ?? 0),
  }));
}

// ---------------------------------------------------------------------------------------------
// One person's page, Chromium or Firefox, and its media as the page's getStats() reports it
// (firefox.test.js and aiortc.test.js).
// ---------------------------------------------------------------------------------------------

/**
 * Energy one inbound stream must gain in a second to count as audio arriving. Chromium's
 * default fake microphone (a short beep each second) gives ~0.006 per second; a tone, ~0.2.
 */
export const AUDIBLE = 0.002;

/**
 * @typedef {Object} Peer  one person's browser, Chromium or Firefox
 * @property {string} name
 * @property {"chromium" | "firefox"} engine
 * @property {string[]} errors   console errors and uncaught exceptions so far
 * @property {number} mark       where the current test's errors start in `errors`
 * @property {(url: string) => Promise<unknown>} goto
 * @property {(testid: string, state?: string) => Promise<unknown>} waitForTestId
 * @property {(testid: string, text: string) => Promise<void>} fill
 * @property {(testid: string) => Promise<void>} click
 * @property {<T>(fn: () => T | Promise<T>) => Promise<T>} evaluate
 */

/**
 * @param {Awaited<ReturnType<typeof openBrowser>>} chromium
 * @returns {Peer}
 */
export function chromiumPeer({ name, page, errors }) {
  return {
    name,
    engine: "chromium",
    errors,
    mark: 0,
    goto: (url) => page.goto(url),
    waitForTestId: (testid, state) => page.locator(selector(testid, state)).waitFor(),
    fill: (testid, text) => page.getByTestId(testid).fill(text),
    click: (testid) => page.getByTestId(testid).click(),
    evaluate: (fn) => page.evaluate(fn),
  };
}

/**
 * @param {Awaited<ReturnType<typeof openFirefox>>} firefox
 * @returns {Peer}
 */
export function firefoxPeer({ name, page, errors }) {
  return {
    name,
    engine: "firefox",
    errors,
    mark: 0,
    goto: (url) => page.goto(url),
    waitForTestId: (testid, state) => page.waitForSelector(selector(testid, state)),
    fill: (testid, text) => page.locator(selector(testid)).fill(text),
    click: (testid) => page.locator(selector(testid)).click(),
    evaluate: (fn) => /** @type {any} */ (page.evaluate(fn)),
  };
}

/**
 * @param {string} testid
 * @param {string} [state]
 */
function selector(testid, state) {
  return `[data-testid="${testid}"]${state ? `[data-state="${state}"]` : ""}`;
}

/**
 * Records, before any of the page's code runs, every answer the page applies and how that
 * went: a browser's refusal of the server's answer is the first thing to know when audio fails.
 */
export function recordDescriptions() {
  const w = /** @type {any} */ (window);
  w.__descriptions = [];
  const original = /** @type {(this: RTCPeerConnection, d: RTCSessionDescriptionInit) => Promise<void>} */ (
    RTCPeerConnection.prototype.setRemoteDescription
  );
  /** @this {RTCPeerConnection} @param {RTCSessionDescriptionInit} description */
  RTCPeerConnection.prototype.setRemoteDescription = async function (description) {
    const entry = { offer: this.localDescription?.sdp ?? null, answer: description?.sdp ?? null, error: /** @type {string | null} */ (null) };
    w.__descriptions.push(entry);
    try {
      return await original.call(this, description);
    } catch (error) {
      entry.error = `${/** @type {Error} */ (error).name}: ${/** @type {Error} */ (error).message}`;
      throw error;
    }
  };
}

/**
 * What a page's RTCPeerConnection says about itself and its audio.
 * @param {Peer} peer
 */
export function mediaStats(peer) {
  return peer.evaluate(async () => {
    const pc = /** @type {RTCPeerConnection | null} */ (/** @type {any} */ (window).stoa?.pc ?? null);
    const descriptions = /** @type {{ error: string | null }[]} */ (/** @type {any} */ (window).__descriptions ?? []);
    const refused = descriptions.map((d) => d.error).filter(Boolean);
    const replaced = Number(/** @type {any} */ (window).stoa?.mediaReplacements ?? 0);
    if (!pc) return { pc: false, refused, replaced, connectionState: "none", iceConnectionState: "none", signalingState: "none", offered: false, answered: false, inbound: [], outbound: [], pairs: [] };
    /** @type {{ key: string, packets: number, energy: number, level: number }[]} */
    const inbound = [];
    /** @type {{ key: string, packets: number }[]} */
    const outbound = [];
    /** Each ICE candidate pair, for failure messages: "udp host→host in-progress 12/0 N". */
    /** @type {string[]} */
    const pairs = [];
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === "candidate-pair") {
        /** @type {any} */
        const local = report.get(s.localCandidateId);
        /** @type {any} */
        const remote = report.get(s.remoteCandidateId);
        const requests = `${s.requestsSent ?? "?"}/${s.responsesReceived ?? "?"}`;
        pairs.push(`${local?.protocol ?? "?"} ${local?.candidateType ?? "?"}→${remote?.candidateType ?? "?"}:${remote?.port ?? "?"} ${s.state} ${requests}${s.nominated ? " N" : ""}`);
      }
      if (s.kind !== "audio" && s.mediaType !== "audio") return;
      if (s.type === "inbound-rtp") {
        inbound.push({ key: String(s.mid ?? s.ssrc), packets: s.packetsReceived ?? 0, energy: s.totalAudioEnergy ?? 0, level: s.audioLevel ?? 0 });
      } else if (s.type === "outbound-rtp") {
        outbound.push({ key: String(s.mid ?? s.ssrc), packets: s.packetsSent ?? 0 });
      }
    });
    return {
      pc: true,
      refused,
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
      offered: pc.localDescription?.type === "offer" || descriptions.length > 0,
      answered: pc.currentRemoteDescription !== null,
      inbound,
      outbound,
      pairs,
      replaced,
    };
  });
}

/** @typedef {Awaited<ReturnType<typeof mediaStats>>} MediaStats */

/**
 * A short account of a page's media, for failure messages.
 * @param {Peer} peer
 * @param {MediaStats | null} stats
 */
export function account(peer, stats) {
  const parts = [`${peer.name} (${peer.engine})`];
  if (stats) {
    parts.push(`pc ${stats.connectionState}/ice ${stats.iceConnectionState}/signaling ${stats.signalingState}`);
    parts.push(`offer sent: ${stats.offered}, answer applied: ${stats.answered}`);
    if (stats.refused.length) parts.push(`answer refused: ${stats.refused.join(" | ")}`);
    if (stats.inbound.length) parts.push(`inbound ${JSON.stringify(stats.inbound)}`);
    if (stats.outbound.length) parts.push(`outbound ${JSON.stringify(stats.outbound)}`);
    // Requests sent / responses received per pair: which side of ICE went quiet.
    if (stats.pairs.length) parts.push(`candidate pairs: ${stats.pairs.join(", ")}`);
    if (stats.replaced) parts.push(`connections replaced by the client's watchdog: ${stats.replaced}`);
  }
  const errors = peer.errors.slice(peer.mark);
  if (errors.length) parts.push(`console errors: ${errors.join(" | ")}`);
  return parts.join("; ");
}

/**
 * Opens an invite link, joins with a name, and waits for the room.
 * @param {Peer} peer
 * @param {string} link
 * @param {string} name
 */
export async function joinRoom(peer, link, name) {
  await peer.goto(link);
  await peer.fill("display-name", name);
  await peer.click("join");
  await peer.waitForTestId("connection-state", "connected");
}

/**
 * Waits for the media connection to come up: the offer goes out, the answer is applied, and
 * `connectionState` is "connected".
 * @param {Peer} peer
 */
export async function mediaConnected(peer) {
  /** @type {MediaStats | null} */
  let last = null;
  try {
    await waitFor(
      async () => {
        last = await mediaStats(peer);
        return last.connectionState === "connected";
      },
      { timeout: 15_000, interval: 100, message: "connectionState connected" },
    );
  } catch (error) {
    throw new Error(`${peer.name}'s media connection did not come up: ${account(peer, last)}`, { cause: error });
  }
}

/**
 * Waits until the listener receives audio: over one second, an inbound stream gains packets
 * and energy, and its level is above zero. Returns that stream's gain.
 * @param {Peer} listener
 */
export async function hearsAudio(listener) {
  /** @type {MediaStats | null} */
  let last = null;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const before = await mediaStats(listener);
    await new Promise((r) => setTimeout(r, 1000));
    last = await mediaStats(listener);
    const start = new Map(before.inbound.map((s) => [s.key, s]));
    const gains = last.inbound.map((s) => ({
      key: s.key,
      packets: s.packets - (start.get(s.key)?.packets ?? 0),
      energy: s.energy - (start.get(s.key)?.energy ?? 0),
      level: s.level,
    }));
    const heard = gains.find((g) => g.packets > 0 && g.energy > AUDIBLE && g.level > 0);
    if (heard) return heard;
  }
  throw new Error(`${listener.name} hears no audio within 15 s: ${account(listener, last)}`);
}

/** @param {Peer[]} peers */
export function noConsoleErrors(peers) {
  for (const peer of peers) assert.deepEqual(peer.errors.slice(peer.mark), [], `${peer.name} (${peer.engine}) logged errors`);
}

/**
 * Keeps what a failed test leaves behind: each page's offers, answers and refusals, in
 * artifacts/`test`-`peer`.sdp.json (the page needs `recordDescriptions` as an init script).
 * @param {string} test
 * @param {Peer[]} peers
 */
export async function keepDescriptions(test, peers) {
  await mkdir(ARTIFACTS, { recursive: true });
  for (const peer of peers) {
    const descriptions = await peer.evaluate(() => /** @type {any} */ (window).__descriptions ?? []).catch(() => []);
    const file = join(ARTIFACTS, `${test}-${peer.name}.sdp.json`);
    await writeFile(file, JSON.stringify(descriptions, null, 2)).catch(() => {});
  }
}
