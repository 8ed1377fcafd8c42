// @ts-check
/**
 * The page of a listen link (`/l/<code>`): a room's public broadcast, heard without joining.
 * Asks the link's entry point for the room's title and broadcast link (again before the link
 * expires), plays it with the broadcast player, and reports in with a heartbeat so the room
 * counts this page in its audience. No name, no identity, no signaling.
 */

import { ApiError, openListenLink } from "./api.js";
import { BroadcastPlayer } from "./broadcast.js";
import { h, setText, show } from "./dom.js";
import { brandMark } from "./landing.js";

/** @typedef {import("./api.js").ListenAnswer} ListenAnswer */

/** Why the page stopped, as the listener is told. */
const ENDINGS = {
  room_ended: ["The broadcast has ended", "The room has ended. Thanks for listening."],
  listen_link_invalid: ["This link doesn't work", "This listen link is not valid, or it was revoked."],
  listen_link_expired: ["This link has expired", "This listen link has expired. Ask for a new one."],
  broadcast_disabled: ["No broadcast here", "This server does not broadcast rooms."],
};

const root = /** @type {HTMLElement} */ (document.getElementById("app"));
const code = decodeURIComponent(location.pathname.split("/").pop() ?? "");
/** This page's random id in the room's count of anonymous listeners. */
const clientId = randomId();

/** @type {ListenAnswer | null} */
let current = null;
/** @type {BroadcastPlayer | null} */
let player = null;
/** @type {number | undefined} */
let heartbeatTimer;

const els = {
  title: h("h1", { class: "landing-title", "data-testid": "room-title" }, ""),
  status: h("p", { class: "lead", "data-testid": "listen-status", role: "status" }, "Connecting…"),
  play: h("button", { type: "button", class: "button primary wide", "data-testid": "listen-play", hidden: true }, "Listen"),
  audio: h("div", { hidden: true }),
};

// For tests and for the curious.
Object.defineProperty(window, "stoa", {
  value: {
    get broadcast() {
      return player;
    },
    clientId,
  },
});

void start();

async function start() {
  try {
    current = await openListenLink(code);
  } catch (error) {
    stop(error instanceof ApiError ? error.code : "network");
    return;
  }
  document.title = `${current.title} · Stoa`;
  setText(els.title, current.title);
  showCard(h("p", { class: "eyebrow" }, "Listening to"), els.title, els.status, els.play, els.audio);
  els.play.addEventListener("click", () => void player?.resumePlayback());
  player = new BroadcastPlayer({ link: current, fetchLink: renew, container: els.audio });
  player.addEventListener("state", (event) => {
    const state = /** @type {CustomEvent<string>} */ (event).detail;
    if (state === "connected") setText(els.status, "Live: you're hearing the room.");
    else if (state === "connecting") setText(els.status, "Connecting…");
    else if (state === "failed") stop("room_ended");
  });
  player.addEventListener("autoplay-blocked", () => {
    show(els.play, true);
    setText(els.status, "Press Listen to hear the room.");
  });
  player.addEventListener("playing", () => show(els.play, false));
  player.addEventListener("ended", () => stop("room_ended"));
  player.start();
  void heartbeat();
}

/**
 * A fresh broadcast link from the entry point; a link that stopped working ends the page.
 * @returns {Promise<import("./broadcast.js").BroadcastLink>}
 */
async function renew() {
  try {
    current = await openListenLink(code);
    return current;
  } catch (error) {
    if (error instanceof ApiError && error.code in ENDINGS) stop(error.code);
    throw error;
  }
}

/** Tells the room this page listens, then again every `heartbeat_secs`. */
async function heartbeat() {
  if (!current) return;
  try {
    const response = await fetch(current.heartbeat_url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client: clientId }),
      credentials: "omit",
      cache: "no-store",
    });
    if (response.status === 403) await renew().catch(() => {});
    if (response.status === 410) stop("room_ended");
  } catch {
    // The next one may get through.
  }
  if (current) heartbeatTimer = window.setTimeout(() => void heartbeat(), current.heartbeat_secs * 1000);
}

/**
 * Stops playing and says why.
 * @param {string} reason a problem code
 */
function stop(reason) {
  window.clearTimeout(heartbeatTimer);
  current = null;
  player?.close();
  player = null;
  const [heading, message] = ENDINGS[/** @type {keyof typeof ENDINGS} */ (reason)] ?? [
    "Can't reach the room",
    "The server could not be reached. Reload to try again.",
  ];
  showCard(h("h1", { class: "landing-title" }, heading), h("p", { class: "lead", "data-testid": "listen-problem", "data-reason": reason }, message));
}

/**
 * The page: one card under the brand.
 * @param {...Node} children
 */
function showCard(...children) {
  root.replaceChildren(h("main", { class: "landing" }, h("div", { class: "landing-card" }, h("p", { class: "brand" }, brandMark(), "Stoa"), ...children)));
}

/** 128 random bits, URL-safe. */
function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
