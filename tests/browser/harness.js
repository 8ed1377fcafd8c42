/**
 * What the browser tests stand on: a real `stoa serve` on a free port, headless Chromium with
 * fake media devices (one browser process per person), REST calls as the operator, and WebRTC
 * stats read from the page. Owns every process it starts and stops them all in `cleanup()`.
 */

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
 * Starts `stoa serve` with a fresh data folder and a known operator key. `host`: the address
 * it binds (HTTP and media; its ICE candidates carry it), 127.0.0.1 unless told; the Firefox
 * tests give it their network namespace's address. `log`: its file name in artifacts/.
 * @param {{ host?: string, log?: string }} [options]
 * @returns {Promise<Server>}
 */
export async function startServer({ host = "127.0.0.1", log: logName = "server.log" } = {}) {
  const bin = process.env.STOA_BIN ? resolve(process.env.STOA_BIN) : resolve(here, "../../target/release/stoa");
  const dataDir = await tempDir("stoa-browser-data-");
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
    const serveArgs = ["serve", "--bind", `${host}:${port}`, "--data-dir", dataDir, "--no-demo"];
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
  return { name, context, page, errors };
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
