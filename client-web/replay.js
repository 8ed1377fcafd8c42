// @ts-check
/**
 * The replay page (`/r/<code>`): redeems the replay link, reads the recording and who spoke
 * when, plays the audio in an `<audio>` element (the server answers its range requests, so
 * seeking works), and shows who was speaking at the playhead as it moves. A redeemed token is
 * kept for the tab, so a reload does not use the link again.
 */

import { ApiError, recordingDetail, redeemReplay } from "./api.js";
import { h, setAttr, setText } from "./dom.js";
import { describeError } from "./errors.js";
import { clock, entryAt, speakersAt } from "./replay-timeline.js";

/** @typedef {import("./api.js").ReplayAnswer} ReplayAnswer */
/** @typedef {import("./api.js").RecordingDetail} RecordingDetail */

const root = /** @type {HTMLElement} */ (document.getElementById("app"));
const code = decodeURIComponent(location.pathname.split("/").pop() ?? "");
/** Where the tab keeps the redeemed token. */
const KEY = `stoa.replay.${code}`;

/** What the tests and the curious can read: `loading`, `ready` or `failed`, and the reason. */
const status = { state: "loading", reason: "" };
/** @type {any} */ (window).stoa = { replay: status };

start().catch((error) => {
  const reason = error instanceof ApiError ? error.code : "internal";
  const message = error instanceof ApiError ? describeError(error.code, error.message) : describeError("internal");
  status.state = "failed";
  status.reason = reason;
  fail(message, reason);
});

async function start() {
  let answer = kept();
  let detail;
  try {
    if (!answer) throw new ApiError("token_expired", "no token yet", 401);
    detail = await recordingDetail(answer.recording_path, answer.token);
  } catch (error) {
    // A kept token that no longer works (expired) is replaced by a new redemption; any other
    // refusal (revoked, deleted) is the answer.
    if (!(error instanceof ApiError) || (error.code !== "token_expired" && error.code !== "invalid_token")) throw error;
    forget();
    answer = await redeemReplay(code);
    keep(answer);
    detail = await recordingDetail(answer.recording_path, answer.token);
  }
  render(answer, detail);
  status.state = "ready";
}

/** @param {ReplayAnswer} answer @param {RecordingDetail} detail */
function render(answer, detail) {
  const audio = h("audio", {
    controls: true,
    preload: "metadata",
    src: answer.audio_url,
    class: "replay-audio",
    "data-testid": "replay-audio",
  });
  const speaking = h("p", { class: "replay-speaking", "data-testid": "replay-speaking", "aria-live": "polite" });
  const entries = detail.speakers.map((entry) =>
    h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: "replay-change",
          "data-testid": "replay-change",
          "data-at-ms": entry.at_ms,
          onclick: () => {
            audio.currentTime = entry.at_ms / 1000;
          },
        },
        h("span", { class: "replay-change-at" }, clock(entry.at_ms)),
        " ",
        entry.speakers.length ? entry.speakers.map((id) => detail.names[id] ?? "Someone").join(", ") : "Nobody",
      ),
    ),
  );
  const follow = () => {
    const ms = audio.currentTime * 1000;
    const names = speakersAt(detail.speakers, detail.names, ms);
    setText(speaking, names.length ? names.join(", ") : "Nobody");
    const current = entryAt(detail.speakers, ms);
    entries.forEach((li, i) => setAttr(li, "aria-current", i === current ? "true" : null));
  };
  for (const event of ["timeupdate", "seeked", "loadedmetadata"]) audio.addEventListener(event, follow);
  follow();
  const started = new Date(detail.started_at);
  root.replaceChildren(
    h(
      "main",
      { class: "landing" },
      h(
        "div",
        { class: "landing-card replay-card" },
        h("p", { class: "brand" }, h("img", { class: "brand-mark", src: "/app/logo.svg", alt: "", width: 20, height: 20 }), "Stoa"),
        h("p", { class: "eyebrow" }, "Replay"),
        h(
          "h1",
          { class: "landing-title" },
          `Recorded ${started.toLocaleDateString(undefined, { dateStyle: "medium" })}, ${started.toLocaleTimeString(undefined, { timeStyle: "short" })}`,
        ),
        h("p", { class: "lead", "data-testid": "replay-duration" }, `${clock(detail.duration_ms)} long`),
        audio,
        h("p", { class: "field-label" }, "Speaking now"),
        speaking,
        entries.length
          ? h("ol", { class: "replay-timeline", "aria-label": "Who spoke when" }, ...entries)
          : h("p", { class: "hint" }, "Nobody spoke in this recording."),
      ),
    ),
  );
}

/** @param {string} message @param {string} reason */
function fail(message, reason) {
  root.replaceChildren(
    h(
      "main",
      { class: "landing" },
      h(
        "div",
        { class: "landing-card" },
        h("p", { class: "brand" }, h("img", { class: "brand-mark", src: "/app/logo.svg", alt: "", width: 20, height: 20 }), "Stoa"),
        h("p", { class: "eyebrow" }, "Replay"),
        h("p", { class: "lead", role: "alert", "data-testid": "replay-error", "data-reason": reason }, message),
      ),
    ),
  );
}

/** @returns {ReplayAnswer | null} */
function kept() {
  try {
    const answer = JSON.parse(sessionStorage.getItem(KEY) ?? "null");
    if (answer && Date.parse(answer.expires_at) > Date.now()) return answer;
  } catch {
    // Storage off or damaged: redeem again.
  }
  return null;
}

/** @param {ReplayAnswer} answer */
function keep(answer) {
  try {
    sessionStorage.setItem(KEY, JSON.stringify(answer));
  } catch {
    // Storage off: a reload redeems again.
  }
}

function forget() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // Nothing kept.
  }
}
