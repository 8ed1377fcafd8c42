// @ts-check
/**
 * The broadcast tier in the page: the room's LL-HLS playlist played through Media Source
 * Extensions (Opus in fragmented MP4), or by the browser itself where it plays HLS natively
 * (Safari without MSE Opus). Follows the live edge part by part with blocking playlist reloads
 * and the server's preload hints. Knows nothing of the room: it is given a link and a way to
 * get a fresh one when the link expires.
 */

import { startPlayback } from "./dom.js";
import { blockingQuery, parsePlaylist, startPosition, stepFor } from "./hls.js";

const MIME = 'audio/mp4; codecs="opus"';
/** A blocking reload may wait three seconds on the server; past this, the request is dropped. */
const REQUEST_TIMEOUT_MS = 8000;
/** Playback further than this behind what is buffered skips ahead (after a stall, say). */
const MAX_LAG_S = 2.5;
/** Kept behind the playback position; older audio is removed from the buffer. */
const KEEP_BEHIND_S = 20;
/** A fresh link is asked for this long before the current one expires. */
const RENEW_AHEAD_MS = 60_000;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 4000;

/** @typedef {{ playlist_url: string, expires_at: string }} BroadcastLink */
/** @typedef {import("./hls.js").Playlist} Playlist */
/** @typedef {import("./hls.js").Position} Position */

/** An answer other than 2xx, with the problem's `code` when the server sent one. */
class HttpError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   */
  constructor(status, code) {
    super(`HTTP ${status} ${code}`);
    this.status = status;
    this.code = code;
  }
}

/** The stream changed under us (a new broadcast, or we fell behind): start over from the edge. */
class Restart extends Error {}

/** @returns {typeof MediaSource | null} */
function mediaSourceClass() {
  const w = /** @type {any} */ (window);
  const candidate = w.MediaSource ?? w.ManagedMediaSource ?? null;
  return candidate && candidate.isTypeSupported(MIME) ? candidate : null;
}

/**
 * Events:
 * - `state`: `"connecting"`, `"connected"` (audio is playing) or `"failed"`, as `MediaSession`'s;
 * - `autoplay-blocked` and `playing`, as `MediaSession`'s;
 * - `ended`: the broadcast is over.
 */
export class BroadcastPlayer extends EventTarget {
  /** @type {HTMLAudioElement} */
  audio;
  /** @type {BroadcastLink | null} */
  #link;
  #fetchLink;
  /** @type {Promise<void> | null} */
  #renewing = null;
  /** @type {number | undefined} */
  #renewTimer;
  #closed = false;
  #abort = new AbortController();
  /** @type {MediaSource | null} */
  #mediaSource = null;
  /** @type {SourceBuffer | null} */
  #sourceBuffer = null;
  /** @type {string | null} */
  #objectUrl = null;
  /** The init segment's URI: it names the stream. */
  /** @type {string | null} */
  #map = null;
  #holdBack = 0.6;
  #started = false;
  #playbackBlocked = false;
  /** The state last told (`state` events). */
  #told = "";
  /** Requests already under way for parts the server hinted at, by URI. */
  /** @type {Map<string, Promise<ArrayBuffer>>} */
  #prefetched = new Map();

  /** Whether this browser can play the broadcast at all. */
  static supported() {
    return mediaSourceClass() !== null || document.createElement("audio").canPlayType("application/vnd.apple.mpegurl") !== "";
  }

  /**
   * @param {{ link: BroadcastLink | null, fetchLink: () => Promise<BroadcastLink>, container: HTMLElement }} options
   *   `link`: the join answer's, if still good; `fetchLink`: a fresh one (the room's current link)
   */
  constructor({ link, fetchLink, container }) {
    super();
    this.#link = link;
    this.#fetchLink = fetchLink;
    this.audio = document.createElement("audio");
    this.audio.dataset.broadcast = "";
    container.append(this.audio);
    this.audio.addEventListener("playing", () => this.#state("connected"));
    this.audio.addEventListener("waiting", () => this.#state("connecting"));
  }

  /** `mse` or `native`, for the debug info. */
  get mode() {
    return mediaSourceClass() ? "mse" : "native";
  }

  /** Seconds of audio buffered ahead of what is playing. */
  get bufferedAhead() {
    const b = this.audio.buffered;
    return b.length ? Math.max(0, b.end(b.length - 1) - this.audio.currentTime) : 0;
  }

  start() {
    this.#state("connecting");
    this.#planRenewal();
    if (mediaSourceClass()) void this.#runMse();
    else void this.#runNative();
  }

  /** Starts playback after a user gesture, when autoplay was refused. */
  async resumePlayback() {
    try {
      await this.audio.play();
      this.#playbackBlocked = false;
      this.dispatchEvent(new Event("playing"));
    } catch {
      // Still refused: the button stays.
    }
  }

  /** Stops playback and every request. */
  close() {
    this.#closed = true;
    this.#abort.abort();
    window.clearTimeout(this.#renewTimer);
    this.audio.pause();
    this.audio.removeAttribute("src");
    this.audio.load();
    this.audio.remove();
    if (this.#objectUrl) URL.revokeObjectURL(this.#objectUrl);
  }

  /** @param {string} state */
  #state(state) {
    if (this.#closed) return;
    this.#told = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  /** Whether sound is coming out now: playing, with audio ahead of the playback position. */
  #audible() {
    return !this.audio.paused && this.audio.readyState >= HTMLMediaElement.HAVE_FUTURE_DATA;
  }

  // -------------------------------------------------------------------------------------------
  // Media Source Extensions

  async #runMse() {
    let delay = RETRY_MIN_MS;
    while (!this.#closed) {
      try {
        await this.#followStream();
        this.dispatchEvent(new Event("ended"));
        return;
      } catch (error) {
        if (this.#closed) return;
        if (error instanceof Restart) {
          // After a short pause, so that a server refusing again and again is not hammered.
          await new Promise((r) => setTimeout(r, RETRY_MIN_MS));
          continue;
        }
        if (error instanceof HttpError && (error.status === 410 || (error.status === 404 && error.code !== "not_found"))) {
          // The room ended, or broadcasts are off: nothing will come.
          this.#state("failed");
          return;
        }
        if (!(error instanceof HttpError && error.status === 404)) console.warn("broadcast:", error);
        // What is buffered still plays while we try again: the listener hears the room until
        // it runs out (the element's `waiting`), and is not told otherwise before.
        if (!this.#audible()) this.#state("connecting");
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(RETRY_MAX_MS, delay * 2);
      }
    }
  }

  /** Plays the stream from near its live edge until it ends or changes. */
  async #followStream() {
    this.#prefetched.clear();
    let playlist = await this.#playlist(null);
    await this.#openStream(playlist);
    let next = startPosition(playlist);
    for (;;) {
      const step = stepFor(playlist, next);
      switch (step.kind) {
        case "fetch":
          await this.#appendMedia(await this.#media(step.uri));
          next = step.next;
          break;
        case "wait":
          // At the live edge: play what is buffered, if not playing yet.
          this.#begin();
          // The part the server is making: ask for it now (the server holds the request until
          // it exists), and for the playlist that lists it.
          if (playlist.preloadHint) this.#prefetch(playlist.preloadHint);
          playlist = await this.#playlist(next);
          if (playlist.map !== this.#map) throw new Restart();
          break;
        case "behind":
          playlist = await this.#playlist(null);
          if (playlist.map !== this.#map) throw new Restart();
          next = startPosition(playlist);
          break;
        case "ended":
          if (this.#mediaSource?.readyState === "open") this.#mediaSource.endOfStream();
          return;
      }
    }
  }

  /**
   * A MediaSource for the stream the playlist names, unless the current one is already it.
   * @param {Playlist} playlist
   */
  async #openStream(playlist) {
    if (!playlist.map) throw new Error("the playlist names no init segment");
    this.#holdBack = playlist.partHoldBack || 3 * playlist.partTarget || this.#holdBack;
    if (playlist.map === this.#map && this.#sourceBuffer && this.#mediaSource?.readyState === "open") return;
    const Source = /** @type {typeof MediaSource} */ (mediaSourceClass());
    const mediaSource = new Source();
    const opened = new Promise((resolve) => mediaSource.addEventListener("sourceopen", resolve, { once: true }));
    if (this.#objectUrl) URL.revokeObjectURL(this.#objectUrl);
    this.#objectUrl = URL.createObjectURL(mediaSource);
    // Safari's ManagedMediaSource plays only with remote playback turned off.
    this.audio.disableRemotePlayback = true;
    this.audio.src = this.#objectUrl;
    await opened;
    this.#mediaSource = mediaSource;
    this.#sourceBuffer = mediaSource.addSourceBuffer(MIME);
    this.#started = false;
    this.#map = playlist.map;
    await this.#append(await this.#media(playlist.map));
  }

  /** @param {ArrayBuffer} bytes */
  async #appendMedia(bytes) {
    await this.#append(bytes);
    // Back after a failed request that the element did not notice (it played on from its
    // buffer, so it fires no `playing`): say so.
    if (this.#told === "connecting" && this.#audible()) this.#state("connected");
    const buffered = this.audio.buffered;
    if (!buffered.length) return;
    const end = buffered.end(buffered.length - 1);
    const now = this.audio.currentTime;
    const inside = Array.from({ length: buffered.length }, (_, i) => [buffered.start(i), buffered.end(i)]).some(([a, b]) => now >= a && now < b);
    if (!this.#started) {
      // Playback starts once the hold-back is buffered: the parts behind the live edge come
      // back to back, and starting on the first alone ran the buffer dry while the next was
      // fetched (a gap, and "Connecting…" again, a moment after the sound began). At the live
      // edge it starts with what there is (the "wait" step).
      if (end - buffered.start(buffered.length - 1) + 0.001 >= this.#holdBack) this.#begin();
    } else if (!inside) {
      // A hole (we started over further on): play from what is there.
      this.audio.currentTime = Math.max(buffered.start(buffered.length - 1), end - this.#holdBack);
    } else if (end - now > MAX_LAG_S) {
      this.audio.currentTime = end - this.#holdBack;
    }
    const first = buffered.start(0);
    if (now - first > KEEP_BEHIND_S) await this.#remove(first, now - KEEP_BEHIND_S / 2);
  }

  /** Starts playing what is buffered, the hold-back behind its end; once per stream. */
  #begin() {
    const buffered = this.audio.buffered;
    if (this.#started || !buffered.length) return;
    const end = buffered.end(buffered.length - 1);
    this.audio.currentTime = Math.max(buffered.start(buffered.length - 1), end - this.#holdBack);
    this.#started = true;
    void this.#play();
  }

  /** @param {ArrayBuffer} bytes */
  #append(bytes) {
    return this.#whenUpdated((sb) => sb.appendBuffer(bytes));
  }

  /**
   * @param {number} from
   * @param {number} to
   */
  #remove(from, to) {
    return this.#whenUpdated((sb) => sb.remove(from, to));
  }

  /** @param {(sb: SourceBuffer) => void} change */
  #whenUpdated(change) {
    const sb = this.#sourceBuffer;
    if (!sb || this.#closed) return Promise.reject(new Restart());
    return new Promise((resolve, reject) => {
      const done = () => {
        sb.removeEventListener("updateend", done);
        sb.removeEventListener("error", failed);
        resolve(undefined);
      };
      const failed = () => {
        sb.removeEventListener("updateend", done);
        sb.removeEventListener("error", failed);
        reject(new Error("the browser could not use a part of the broadcast"));
      };
      sb.addEventListener("updateend", done);
      sb.addEventListener("error", failed);
      change(sb);
    });
  }

  async #play() {
    const outcome = await startPlayback(this.audio);
    if (outcome === "playing" && this.#playbackBlocked) {
      this.#playbackBlocked = false;
      this.dispatchEvent(new Event("playing"));
    } else if (outcome === "blocked" && !this.#playbackBlocked) {
      this.#playbackBlocked = true;
      this.dispatchEvent(new Event("autoplay-blocked"));
    }
  }

  // -------------------------------------------------------------------------------------------
  // HTTP

  /**
   * The playlist, at once (`position` null) or once it lists `position` (blocking reload).
   * @param {Position | null} position
   */
  async #playlist(position) {
    const text = await this.#get((link) => `${link.playlist_url}${position ? `?${blockingQuery(position)}` : ""}`, "text");
    return parsePlaylist(/** @type {string} */ (text));
  }

  /** @param {string} uri */
  #media(uri) {
    const prefetched = this.#prefetched.get(uri);
    this.#prefetched.delete(uri);
    return prefetched ?? this.#fetchMedia(uri);
  }

  /** @param {string} uri */
  #prefetch(uri) {
    if (this.#prefetched.has(uri)) return;
    // Only the hint of the moment is worth keeping.
    this.#prefetched.clear();
    const request = this.#fetchMedia(uri);
    request.catch(() => {});
    this.#prefetched.set(uri, request);
  }

  /** @param {string} uri */
  async #fetchMedia(uri) {
    return /** @type {ArrayBuffer} */ (await this.#get((link) => new URL(uri, link.playlist_url).href, "bytes"));
  }

  /**
   * One request under the current link; an expired link is renewed and the request made again.
   * @param {(link: BroadcastLink) => string} url
   * @param {"text" | "bytes"} as
   */
  async #get(url, as) {
    for (let attempt = 0; ; attempt++) {
      const link = this.#link ?? (await this.#renew());
      const response = await fetch(url(link), {
        credentials: "omit",
        signal: AbortSignal.any([this.#abort.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]),
      });
      if (response.ok) return as === "text" ? response.text() : response.arrayBuffer();
      const code = await response.json().then(
        (problem) => String(problem?.code ?? ""),
        () => "",
      );
      const linkRefused = response.status === 403 && (code === "broadcast_link_expired" || code === "broadcast_link_invalid");
      if (linkRefused && attempt === 0) {
        await this.#renew();
        continue;
      }
      // Asked too far ahead: the stream restarted under us.
      if (response.status === 400 && code === "invalid_hls_request") throw new Restart();
      throw new HttpError(response.status, code);
    }
  }

  /** Replaces the link (one request at a time), and plans the next renewal. */
  #renew() {
    this.#renewing ??= this.#fetchLink()
      .then((link) => {
        this.#link = link;
        this.#planRenewal();
      })
      .finally(() => {
        this.#renewing = null;
      });
    return this.#renewing.then(() => /** @type {BroadcastLink} */ (this.#link));
  }

  #planRenewal() {
    window.clearTimeout(this.#renewTimer);
    if (this.#closed || !this.#link) return;
    const wait = Math.max(10_000, Date.parse(this.#link.expires_at) - Date.now() - RENEW_AHEAD_MS);
    this.#renewTimer = window.setTimeout(() => {
      this.#renew().catch(() => {
        // Tried again when a request is refused.
      });
    }, wait);
  }

  // -------------------------------------------------------------------------------------------
  // The browser's own HLS (Safari)

  async #runNative() {
    let delay = RETRY_MIN_MS;
    const play = async () => {
      const link = this.#link ?? (await this.#renew());
      this.audio.src = link.playlist_url;
      await this.#play();
    };
    // An expired link shows as a media error: take a fresh one and carry on.
    this.audio.addEventListener("error", () => {
      if (this.#closed) return;
      this.#state("connecting");
      this.#link = null;
      setTimeout(() => play().catch(() => this.#state("failed")), delay);
      delay = Math.min(RETRY_MAX_MS, delay * 2);
    });
    this.audio.addEventListener("playing", () => {
      delay = RETRY_MIN_MS;
    });
    await play().catch(() => this.#state("failed"));
  }
}
