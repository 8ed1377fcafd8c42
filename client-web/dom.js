// @ts-check
/**
 * Tiny DOM building helpers, starting audio playback, and the app's icons.
 * No state and no knowledge of the room: views build on these.
 */

/**
 * @typedef {Record<string, string | number | boolean | null | undefined | EventListener>} Attrs
 * Keys starting with `on` are event listeners; `class` sets className; `false`/`null`/
 * `undefined` values are left out; `true` sets an empty attribute.
 */

/**
 * Creates an element.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attrs} [attrs]
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = String(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

/**
 * @param {Element} parent
 * @param {(Node | string | null | undefined | false)[]} children
 */
function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child);
  }
}

/**
 * Sets an attribute only when it changes, so re-rendering does not disturb assistive tech.
 * @param {Element} el
 * @param {string} name
 * @param {string | null} value  null removes it
 */
export function setAttr(el, name, value) {
  if (value === null) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== value) {
    el.setAttribute(name, value);
  }
}

/**
 * @param {Node} el
 * @param {string} text
 */
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/**
 * Shows or hides an element with the `hidden` attribute.
 * @param {HTMLElement} el
 * @param {boolean} visible
 */
export function show(el, visible) {
  if (el.hidden === visible) el.hidden = !visible;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Stroke icons drawn on a 24×24 grid. */
const ICONS = {
  mic: ["M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z", "M19 11a7 7 0 0 1-14 0", "M12 18v3"],
  micOff: [
    "M15 9.3V6a3 3 0 0 0-5.7-1.3",
    "M9 9v3a3 3 0 0 0 5.1 2.1",
    "M19 11a7 7 0 0 1-1.1 3.8",
    "M5 11a7 7 0 0 0 11.2 5.6",
    "M12 18v3",
    "M3 3l18 18",
  ],
  hand: [
    "M8 13V5.5a1.5 1.5 0 0 1 3 0V12",
    "M11 11.5V4a1.5 1.5 0 0 1 3 0v7.5",
    "M14 11.5V5.5a1.5 1.5 0 0 1 3 0V14",
    "M17 9.5a1.5 1.5 0 0 1 3 0V15a6 6 0 0 1-6 6h-1.5a6 6 0 0 1-4.9-2.6L4.3 14.6a1.5 1.5 0 0 1 2.4-1.8L8 14.5",
  ],
  leave: ["M10 17l5-5-5-5", "M15 12H3", "M14 3h5a2 2 0 0 1 2 2v14a2 2 0 0 1-2 2h-5"],
  down: ["M12 5v14", "M6 13l6 6 6-6"],
  link: [
    "M10 13a5 5 0 0 0 7.5.5l3-3a5 5 0 0 0-7.1-7.1l-1.7 1.7",
    "M14 11a5 5 0 0 0-7.5-.5l-3 3a5 5 0 0 0 7.1 7.1l1.7-1.7",
  ],
  more: ["M5 12h.01", "M12 12h.01", "M19 12h.01"],
  speaker: ["M11 5L6 9H2v6h4l5 4V5z", "M15.5 8.5a5 5 0 0 1 0 7", "M19 5a10 10 0 0 1 0 14"],
  power: ["M12 2v10", "M18.4 6.6a9 9 0 1 1-12.8 0"],
  people: [
    "M16 21v-2a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v2",
    "M9 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8z",
    "M22 21v-2a4 4 0 0 0-3-3.9",
    "M16 3.1a4 4 0 0 1 0 7.8",
  ],
  copy: ["M9 9h11v11H9z", "M5 15H4V4h11v1"],
  scissors: ["M6 9a3 3 0 1 0 0-6 3 3 0 0 0 0 6z", "M6 21a3 3 0 1 0 0-6 3 3 0 0 0 0 6z", "M20 4L8.1 15.9", "M14.5 14.5L20 20", "M8.1 8.1L12 12"],
  check: ["M20 6L9 17l-5-5"],
};

/** @typedef {keyof typeof ICONS} IconName */

/**
 * An icon; decorative (hidden from assistive tech): the control carries the label.
 * @param {IconName} name
 * @returns {SVGSVGElement}
 */
export function icon(name) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.setAttribute("class", `icon icon-${name}`);
  for (const d of ICONS[name]) {
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

/**
 * Up to two initials for an avatar.
 * @param {string} name
 */
export function initials(name) {
  const words = name.trim().split(/\s+/u).filter(Boolean);
  if (words.length === 0) return "?";
  const first = Array.from(words[0])[0] ?? "";
  const last = words.length > 1 ? Array.from(words[words.length - 1])[0] ?? "" : "";
  return (first + last).toUpperCase();
}

/**
 * A stable colour index (0–7) for an avatar, from the participant id.
 * @param {string} id
 */
export function hue(id) {
  let hash = 0;
  for (let i = 0; i < id.length; i++) hash = (hash * 31 + id.charCodeAt(i)) >>> 0;
  return hash % 8;
}

/**
 * Starts an element's playback: `playing`, or `blocked` when the browser wants a user gesture
 * first (its autoplay policy), or `failed`.
 * @param {HTMLMediaElement} element
 * @returns {Promise<"playing" | "blocked" | "failed">}
 */
export function startPlayback(element) {
  return element.play().then(
    () => "playing",
    (error) => (error instanceof DOMException && error.name === "NotAllowedError" ? "blocked" : "failed"),
  );
}

/**
 * A "Copy" button for the link shown in `link`, and the status line that tells screen-reader
 * users what happened. When the browser refuses the clipboard, the link is selected instead.
 * @param {HTMLElement} link
 * @param {string} testId
 * @returns {[HTMLElement, HTMLElement]}
 */
export function copyButton(link, testId) {
  const label = h("span", {}, "Copy");
  const button = h("button", { type: "button", class: "button secondary small", "data-testid": testId }, icon("copy"), label);
  const status = h("span", { class: "sr-only", role: "status" });
  button.addEventListener("click", async () => {
    const ok = await navigator.clipboard.writeText(link.textContent ?? "").then(
      () => true,
      () => false,
    );
    label.textContent = ok ? "Copied" : "Select and copy";
    status.textContent = ok ? "Link copied." : "Could not copy; select the link and copy it.";
    if (!ok) window.getSelection()?.selectAllChildren(link);
    window.setTimeout(() => {
      label.textContent = "Copy";
    }, 2000);
  });
  return [button, status];
}
