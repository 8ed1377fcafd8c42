/**
 * What a page's broadcast player plays, as heard: the `<audio data-broadcast>` element routed
 * into an AnalyserNode (Chromium) or recorded and decoded (Firefox), judged 100 ms at a time.
 * Shared by the broadcast tests (broadcast.test.js, listen.test.js).
 */

/** @typedef {import("./harness.js").Peer} Peer */

/**
 * Page code, run before the client's: routes the broadcast `<audio>` element, when it first
 * plays, into something that can be measured (see above).
 */
export function measureBroadcastElement() {
  const w = /** @type {any} */ (window);
  const play = HTMLMediaElement.prototype.play;
  HTMLMediaElement.prototype.play = function () {
    if (this.dataset.broadcast === undefined || w.__broadcastTap) return play.call(this);
    const element = /** @type {any} */ (this);
    if (typeof element.mozCaptureStream === "function") {
      const recorder = new MediaRecorder(element.mozCaptureStream());
      const chunks = /** @type {Blob[]} */ ([]);
      recorder.ondataavailable = (event) => chunks.push(event.data);
      w.__broadcastTap = { recorder, chunks };
    } else {
      const context = new AudioContext();
      const analyser = context.createAnalyser();
      analyser.fftSize = 4096;
      // Each 100 ms window judged on its own: the default smoothing (0.8) blends every reading
      // with the ones before, so the first reading after the tap began came out ~14 dB low
      // (20 % of the level), close to the test's bound, and past it once in a while.
      analyser.smoothingTimeConstant = 0;
      context.createMediaElementSource(this).connect(analyser);
      analyser.connect(context.destination);
      context.resume();
      w.__broadcastTap = { analyser };
    }
    return play.call(this);
  };
}

/**
 * Listens to the broadcast element for `seconds`; returns, per 100 ms window, the strongest of
 * the candidate frequencies and its level (dB), as heard.
 * @param {Peer} peer
 * @param {number} seconds
 * @param {number[]} candidates
 */
export async function listenToBroadcast(peer, seconds, candidates) {
  await peer.evaluate(/** @type {() => void} */ (/** @type {unknown} */ (`(() => { const t = window.__broadcastTap; if (t.recorder) t.recorder.start(); })()`)));
  /** @type {{ hz: number, db: number, at?: number, ahead?: number }[]} */
  const windows = [];
  const tapKind = await peer.evaluate(() => (/** @type {any} */ (window).__broadcastTap?.analyser ? "analyser" : "recorder"));
  if (tapKind === "analyser") {
    // Ten readings a second of listening, 100 ms apart or as soon as the last one is in (on a
    // loaded machine a round trip takes longer; counting to a deadline gave too few readings).
    let next = Date.now();
    for (let i = 0; i < seconds * 10; i++) {
      await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
      next = Math.max(next + 100, Date.now());
      const sample = await peer.evaluate(
        /** @type {() => { hz: number, db: number, at?: number, ahead?: number }} */ (
          /** @type {unknown} */ (`(() => {
            const analyser = window.__broadcastTap.analyser;
            const bins = new Float32Array(analyser.frequencyBinCount);
            analyser.getFloatFrequencyData(bins);
            const binHz = analyser.context.sampleRate / analyser.fftSize;
            const candidates = ${JSON.stringify(candidates)};
            let best = { hz: 0, db: -Infinity };
            for (const hz of candidates) {
              const db = bins[Math.round(hz / binHz)];
              if (db > best.db) best = { hz, db };
            }
            // Where the player was, and how much it had ahead (a gap says which side it is on).
            const audio = document.querySelector("audio[data-broadcast]");
            if (audio) {
              const b = audio.buffered;
              best.at = Math.round(audio.currentTime * 1000);
              best.ahead = b.length ? Math.round((b.end(b.length - 1) - audio.currentTime) * 1000) : 0;
            }
            return best;
          })()`)
        ),
      );
      windows.push(sample);
    }
    return windows;
  }
  await new Promise((r) => setTimeout(r, seconds * 1000));
  return peer.evaluate(
    /** @type {() => Promise<{ hz: number, db: number }[]>} */ (
      /** @type {unknown} */ (`(async () => {
        const { recorder, chunks } = window.__broadcastTap;
        const stopped = new Promise((r) => (recorder.onstop = r));
        recorder.stop();
        await stopped;
        const bytes = await new Blob(chunks).arrayBuffer();
        const audio = await new OfflineAudioContext(1, 48000, 48000).decodeAudioData(bytes);
        const pcm = audio.getChannelData(0);
        const size = Math.round(audio.sampleRate / 10);
        const power = (from, hz) => {
          const k = 2 * Math.cos((2 * Math.PI * hz) / audio.sampleRate);
          let s1 = 0, s2 = 0;
          for (let i = from; i < from + size; i++) { const s0 = pcm[i] + k * s1 - s2; s2 = s1; s1 = s0; }
          return s1 * s1 + s2 * s2 - k * s1 * s2;
        };
        const out = [];
        for (let at = 0; at + size <= pcm.length; at += size) {
          let best = { hz: 0, db: -Infinity };
          for (const hz of ${JSON.stringify(candidates)}) {
            const db = 10 * Math.log10(power(at, hz) + 1e-12);
            if (db > best.db) best = { hz, db };
          }
          out.push(best);
        }
        return out;
      })()`)
    ),
  );
}

