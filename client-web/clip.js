// @ts-check
/**
 * The clip page (`/c/<code>`): reads what the clip's link opens and plays it in an `<audio>`
 * element (the server answers its range requests, so seeking works), with a download link.
 * The code is the key: no token, nothing kept.
 */

import { ApiError, openClip } from "./api.js";
import { h } from "./dom.js";
import { describeError } from "./errors.js";
import { clock } from "./replay-timeline.js";

/** @typedef {import("./api.js").ClipAnswer} ClipAnswer */

const root = /** @type {HTMLElement} */ (document.getElementById("app"));
const code = decodeURIComponent(location.pathname.split("/").pop() ?? "");

/** What the tests and the curious can read: `loading`, `ready` or `failed`, and the reason. */
const status = { state: "loading", reason: "" };
/** @type {any} */ (window).stoa = { clip: status };

openClip(code)
  .then((clip) => {
    render(clip);
    status.state = "ready";
  })
  .catch((error) => {
    const reason = error instanceof ApiError ? error.code : "internal";
    const message = error instanceof ApiError ? describeError(error.code, error.message) : describeError("internal");
    status.state = "failed";
    status.reason = reason;
    card(h("p", { class: "lead", role: "alert", "data-testid": "clip-error", "data-reason": reason }, message));
  });

/** @param {ClipAnswer} clip */
function render(clip) {
  const made = new Date(clip.created_at);
  const from = clip.recording_id ? `From a recording, at ${clock(clip.start_ms)}` : "The last moments of a live room";
  card(
    h(
      "h1",
      { class: "landing-title" },
      `Clip made ${made.toLocaleDateString(undefined, { dateStyle: "medium" })}, ${made.toLocaleTimeString(undefined, { timeStyle: "short" })}`,
    ),
    h("p", { class: "lead", "data-testid": "clip-duration" }, `${clock(clip.duration_ms)} long`),
    h("p", { class: "hint", "data-testid": "clip-source" }, from),
    h("audio", { controls: true, preload: "metadata", src: clip.audio_path, class: "replay-audio", "data-testid": "clip-audio" }),
    h("p", {}, h("a", { href: clip.audio_path, download: `${clip.id}.ogg`, "data-testid": "clip-download" }, "Download (Ogg Opus)")),
  );
}

/** @param {...Node} content */
function card(...content) {
  root.replaceChildren(
    h(
      "main",
      { class: "landing" },
      h(
        "div",
        { class: "landing-card replay-card" },
        h("p", { class: "brand" }, h("img", { class: "brand-mark", src: "/app/logo.svg", alt: "", width: 20, height: 20 }), "Stoa"),
        h("p", { class: "eyebrow" }, "Clip"),
        ...content,
      ),
    ),
  );
}
