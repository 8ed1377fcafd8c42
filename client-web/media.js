// @ts-check
/**
 * The audio path: one RTCPeerConnection with a receive-only transceiver per slot, the
 * microphone on the first one while on stage, renegotiated over signaling; playback and a
 * mic level meter. It asks for the microphone only when told the person is on stage.
 */

import { startPlayback } from "./dom.js";
import { SignalError } from "./signal.js";

/**
 * A connection comes up ~0.1 s after the answer (~0.8 s over ICE-TCP); one still down after
 * this is replaced by a new one. That is rare but real: Firefox sometimes leaves its only
 * working pair (ICE-TCP, when UDP is blocked) waiting and never checks it. The new
 * connection has new ICE credentials, so the server closes its side of the old one when the
 * new offer arrives. After a replacement that does not come up either, the wait doubles (once),
 * so a slow network is not flooded with offers.
 */
const CONNECT_WATCHDOG_MS = 4000;
const RETRY_OFFER_MS = 1500;

/**
 * @typedef {Object} MediaSignal
 * @property {(type: string, fields?: Record<string, unknown>) => Promise<any>} request
 */

/**
 * Events:
 * - `autoplay-blocked`: the browser refused to start playback without a gesture; call
 *   `resumePlayback()` from a click;
 * - `playing`: playback runs (after a refusal);
 * - `mic`: the microphone started or stopped (see `sending`);
 * - `mic-error`: `{ name }`, getUserMedia failed (`NotAllowedError`, `NotFoundError`, …);
 * - `error`: `{ code, message }`, the server refused an offer;
 * - `state`: the connection state changed (`pc.connectionState`).
 */
export class MediaSession extends EventTarget {
  /** @type {RTCPeerConnection} */
  pc;
  #signal;
  #slots;
  /** @type {HTMLAudioElement[]} */
  #players = [];
  /** @type {MediaStream | null} */
  #mic = null;
  #wantSend = false;
  #muted = false;
  #micRefused = false;
  #needsOffer = true;
  /**
   * The connection `restart()` gave up on, until it is replaced: nothing more is offered or
   * answered on it. A step already under way (the microphone starting after `joined_stage`,
   * while the socket moved to a node that has no connection of ours) would otherwise offer it
   * to that node, whose answer is for a new connection, with new ICE credentials.
   * @type {RTCPeerConnection | null}
   */
  #abandoned = null;
  #closed = false;
  #playbackBlocked = false;
  /** @type {Promise<void>} */
  #queue = Promise.resolve();
  /** @type {number | undefined} */
  #watchdog;
  /** @type {number | undefined} */
  #retryTimer;
  /**
   * The connection offered ahead, until its offer is sent (or found stale).
   * @type {PreparedConnection | null}
   */
  #prepared = null;
  /** Connections in a row the watchdog replaced: see CONNECT_WATCHDOG_MS. */
  #stalled = 0;
  /** Connections the watchdog replaced since the start. */
  replacements = 0;
  /** @type {AudioContext | null} */
  #audioContext = null;
  /** @type {AnalyserNode | null} */
  #analyser = null;
  /** @type {Float32Array | null} */
  #samples = null;

  /**
   * @param {{ signal: MediaSignal, slots: number, container: HTMLElement, prepared?: PreparedConnection | null }} options
   *   `container`: where the (invisible) audio elements go; `prepared`: a connection offered
   *   ahead (adopted if it has `slots` slots, closed otherwise)
   */
  constructor({ signal, slots, container, prepared = null }) {
    super();
    this.#signal = signal;
    this.#slots = slots;
    for (let i = 0; i < slots; i++) {
      const audio = document.createElement("audio");
      audio.autoplay = true;
      audio.dataset.slot = String(i);
      container.append(audio);
      this.#players.push(audio);
    }
    if (prepared && prepared.slots === slots) {
      this.pc = this.#wire(prepared.pc);
      this.#prepared = prepared;
    } else {
      prepared?.close();
      this.pc = this.#createConnection();
    }
  }

  /** Whether the microphone is live (on stage, granted). */
  get sending() {
    return this.#mic !== null;
  }

  /**
   * Tells the session where the person stands; it catches up in the background.
   * @param {{ onStage: boolean, muted: boolean }} standing
   */
  sync({ onStage, muted }) {
    if (!onStage) this.#micRefused = false;
    this.#wantSend = onStage;
    this.#muted = muted;
    if (this.#mic) for (const track of this.#mic.getAudioTracks()) track.enabled = !muted;
    this.#schedule();
  }

  /** Tries the microphone again after it was refused (the person changed the permission). */
  retryMic() {
    this.#micRefused = false;
    this.#schedule();
  }

  /** The signaling socket is back: send any offer that could not go out meanwhile. */
  resync() {
    this.#schedule();
  }

  /**
   * The server no longer has our media connection (we joined afresh): start a new one.
   */
  restart() {
    this.#abandoned = this.pc;
    this.#enqueue(async () => {
      this.#replaceConnection();
    });
    this.#schedule();
  }

  /** Starts playback after a user gesture, when autoplay was refused. */
  async resumePlayback() {
    await this.#audioContext?.resume().catch(() => {});
    const results = await Promise.allSettled(this.#players.filter((a) => a.srcObject).map((a) => a.play()));
    if (results.every((r) => r.status === "fulfilled")) {
      this.#playbackBlocked = false;
      this.dispatchEvent(new Event("playing"));
    }
  }

  /** The microphone's level now, 0 (silence or muted) to 1 (loud). */
  level() {
    if (!this.#analyser || !this.#samples || this.#muted) return 0;
    this.#analyser.getFloatTimeDomainData(/** @type {Float32Array<ArrayBuffer>} */ (this.#samples));
    let sum = 0;
    for (const s of this.#samples) sum += s * s;
    const rms = Math.sqrt(sum / this.#samples.length);
    // -60 dBFS → 0, 0 dBFS → 1: speech sits in the middle of the bar.
    const db = 20 * Math.log10(Math.max(rms, 1e-6));
    return Math.min(1, Math.max(0, (db + 60) / 60));
  }

  /** Stops everything: microphone, playback, the connection. */
  close() {
    this.#closed = true;
    window.clearTimeout(this.#watchdog);
    window.clearTimeout(this.#retryTimer);
    this.#stopMic();
    this.pc.close();
    for (const audio of this.#players) {
      audio.srcObject = null;
      audio.remove();
    }
    this.#audioContext?.close().catch(() => {});
    this.#audioContext = null;
  }

  #schedule() {
    this.#enqueue(() => this.#reconcile());
  }

  /** @param {() => Promise<void>} step */
  #enqueue(step) {
    this.#queue = this.#queue.then(step).catch((error) => {
      console.error("media:", error);
    });
  }

  /** One step towards the wanted state; every change of wish schedules another. */
  async #reconcile() {
    if (this.#closed) return;
    const first = this.pc.getTransceivers()[0];
    if (this.#wantSend && !this.#mic && !this.#micRefused) {
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
          video: false,
        });
      } catch (error) {
        this.#micRefused = true;
        const name = error instanceof DOMException ? error.name : "Error";
        this.dispatchEvent(new CustomEvent("mic-error", { detail: { name } }));
        return;
      }
      if (this.#closed || !this.#wantSend) {
        for (const track of stream.getTracks()) track.stop();
        return;
      }
      this.#mic = stream;
      const track = stream.getAudioTracks()[0];
      track.enabled = !this.#muted;
      await first.sender.replaceTrack(track);
      first.direction = "sendrecv";
      this.#needsOffer = true;
      this.#startMeter(stream);
      this.dispatchEvent(new Event("mic"));
    } else if (!this.#wantSend && this.#mic) {
      this.#stopMic();
      this.dispatchEvent(new Event("mic"));
      await first.sender.replaceTrack(null);
      first.direction = "recvonly";
      this.#needsOffer = true;
    }
    if (!this.#needsOffer) return;
    await this.#offer();
  }

  async #offer() {
    const pc = this.pc;
    if (pc === this.#abandoned) return;
    // Made ahead and already the local description, or made now.
    let offer = await this.#preparedOffer(pc);
    if (!offer) {
      offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
    }
    let answer;
    try {
      answer = await this.#signal.request("media_offer", { sdp: offer.sdp });
    } catch (error) {
      // Keep the offer wanted; it goes out again on resync (disconnected) or soon (busy).
      await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      const code = error instanceof SignalError ? error.code : "internal";
      if (code === "media_unavailable") {
        window.clearTimeout(this.#retryTimer);
        this.#retryTimer = window.setTimeout(() => this.restart(), RETRY_OFFER_MS);
      } else if (code !== "disconnected") {
        this.dispatchEvent(new CustomEvent("error", { detail: { code, message: error instanceof Error ? error.message : "" } }));
      }
      return;
    }
    if (pc !== this.pc || pc === this.#abandoned || pc.signalingState !== "have-local-offer") {
      await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      return;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    this.#needsOffer = false;
    this.#armWatchdog(pc);
  }

  /**
   * A connection that does not come up (the server dropped it, or kept an older one of ours
   * after a reload) is replaced by a new one.
   * @param {RTCPeerConnection} pc
   */
  #armWatchdog(pc) {
    window.clearTimeout(this.#watchdog);
    if (pc.connectionState === "connected") return;
    this.#watchdog = window.setTimeout(() => {
      if (pc !== this.pc || pc.connectionState === "connected" || this.#closed) return;
      this.#stalled += 1;
      this.replacements += 1;
      this.restart();
    }, this.#stalled === 0 ? CONNECT_WATCHDOG_MS : 2 * CONNECT_WATCHDOG_MS);
  }

  /**
   * The offer made ahead on `pc` (already its local description), if it still says what is
   * wanted: every slot receive-only, no microphone yet. Used once.
   * @param {RTCPeerConnection} pc
   * @returns {Promise<RTCSessionDescriptionInit | null>}
   */
  async #preparedOffer(pc) {
    const prepared = this.#prepared;
    this.#prepared = null;
    if (!prepared || prepared.pc !== pc) return null;
    if (!pc.getTransceivers().every((t) => t.direction === "recvonly")) return null;
    return prepared.offer;
  }

  #createConnection() {
    return this.#wire(newConnection(this.#slots));
  }

  /**
   * Plays what arrives on `pc` and reports its state.
   * @param {RTCPeerConnection} pc
   */
  #wire(pc) {
    pc.addEventListener("track", (event) => {
      const index = pc.getTransceivers().indexOf(event.transceiver);
      const audio = this.#players[index];
      if (!audio) return;
      audio.srcObject = new MediaStream([event.track]);
      void this.#play(audio);
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc !== this.pc) return;
      this.dispatchEvent(new CustomEvent("state", { detail: pc.connectionState }));
      if (pc.connectionState === "connected") {
        window.clearTimeout(this.#watchdog);
        this.#stalled = 0;
      }
      if (pc.connectionState === "failed" && !this.#closed) this.restart();
    });
    return pc;
  }

  /** A new RTCPeerConnection; the next reconcile offers it, with the mic if on stage. */
  #replaceConnection() {
    window.clearTimeout(this.#watchdog);
    const old = this.pc;
    this.pc = this.#createConnection();
    old.close();
    if (this.#mic) {
      const track = this.#mic.getAudioTracks()[0];
      const first = this.pc.getTransceivers()[0];
      first.sender.replaceTrack(track).catch(() => {});
      first.direction = "sendrecv";
    }
    this.#needsOffer = true;
    this.dispatchEvent(new CustomEvent("state", { detail: this.pc.connectionState }));
  }

  /** @param {HTMLAudioElement} audio */
  async #play(audio) {
    const outcome = await startPlayback(audio);
    if (outcome === "playing" && this.#playbackBlocked && this.#players.every((a) => !a.srcObject || !a.paused)) {
      this.#playbackBlocked = false;
      this.dispatchEvent(new Event("playing"));
    } else if (outcome === "blocked" && !this.#playbackBlocked) {
      this.#playbackBlocked = true;
      this.dispatchEvent(new Event("autoplay-blocked"));
    }
  }

  /** @param {MediaStream} stream */
  #startMeter(stream) {
    try {
      this.#audioContext ??= new AudioContext();
      this.#audioContext.resume().catch(() => {});
      const source = this.#audioContext.createMediaStreamSource(stream);
      const analyser = this.#audioContext.createAnalyser();
      analyser.fftSize = 1024;
      source.connect(analyser);
      this.#analyser = analyser;
      this.#samples = new Float32Array(analyser.fftSize);
    } catch {
      // No meter is better than no microphone.
      this.#analyser = null;
    }
  }

  #stopMic() {
    if (this.#mic) for (const track of this.#mic.getTracks()) track.stop();
    this.#mic = null;
    this.#analyser?.disconnect();
    this.#analyser = null;
    this.#samples = null;
  }
}

/**
 * A receive-only connection with `slots` audio slots, as the server expects a listener's.
 * @param {number} slots
 */
function newConnection(slots) {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
  for (let i = 0; i < slots; i++) pc.addTransceiver("audio", { direction: "recvonly" });
  return pc;
}

/**
 * A listener's connection made and offered before the server has said anything about media:
 * while the invite is redeemed and the signaling socket opens. Creating the connection and its
 * offer takes Chromium ~50-100 ms; made ahead, the offer goes out as soon as the welcome
 * comes. The first `MediaSession` adopts it when the room's slot count matches; otherwise, or
 * if the join fails, it is closed.
 */
export class PreparedConnection {
  /** @param {number} slots */
  constructor(slots) {
    this.slots = slots;
    this.pc = newConnection(slots);
    /** Resolves once the offer is the connection's local description; null if that failed. */
    this.offer = this.pc
      .createOffer()
      .then(async (offer) => {
        await this.pc.setLocalDescription(offer);
        return offer;
      })
      .catch(() => null);
  }

  close() {
    this.pc.close();
  }
}
