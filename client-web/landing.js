// @ts-check
/**
 * The page an invite link opens: the room's title, a name field and Join; or a plain message
 * when the link does not work. It only collects the name: joining is the caller's business.
 */

import { h, icon } from "./dom.js";

/**
 * @typedef {Object} InviteInfo  what the server put in the page (`#stoa-invite`)
 * @property {boolean} valid
 * @property {string} [code]
 * @property {string} [room_title]
 * @property {string} [room_id]
 * @property {"listener" | "speaker" | "moderator"} [role]
 * @property {string | null} [expires_at]  when the invite stops working (RFC 3339), if it does
 * @property {string} [reason]
 * @property {string} [message]
 */

const ROLE_HINTS = {
  listener: "You'll join as a listener. Nobody hears you unless a moderator invites you to speak and you accept.",
  speaker: "You'll join on stage as a speaker. Your browser will ask to use your microphone.",
  moderator: "You'll join as a moderator, on stage. Your browser will ask to use your microphone.",
};

/**
 * @param {HTMLElement} root
 * @param {{
 *   invite: InviteInfo,
 *   name: string,
 *   note?: string | null,
 *   onJoin: (name: string) => Promise<string | null>,
 * }} options  `onJoin` resolves to an error sentence to show, or null once joined
 */
export function mountLanding(root, { invite, name, note, onJoin }) {
  const nameInput = h("input", {
    id: "display-name",
    name: "display_name",
    type: "text",
    "data-testid": "display-name",
    autocomplete: "nickname",
    maxlength: 40,
    required: true,
    spellcheck: "false",
    "aria-describedby": "display-name-hint",
    value: name,
  });
  const error = h("p", { class: "form-error", id: "join-error", "data-testid": "join-error", role: "alert" });
  const joinButton = h("button", { type: "submit", class: "button primary wide", "data-testid": "join" }, "Join room");
  const form = h(
    "form",
    { class: "join-form", novalidate: true },
    h("label", { for: "display-name", class: "field-label" }, "Your name"),
    nameInput,
    h("p", { class: "hint", id: "display-name-hint" }, "Shown to everyone in the room."),
    error,
    joinButton,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = nameInput.value.trim();
    if (!value) {
      error.textContent = "Enter the name people will see.";
      nameInput.setAttribute("aria-invalid", "true");
      nameInput.focus();
      return;
    }
    nameInput.removeAttribute("aria-invalid");
    error.textContent = "";
    joinButton.disabled = true;
    joinButton.textContent = "Joining…";
    const problem = await onJoin(value);
    if (problem) {
      error.textContent = problem;
      joinButton.disabled = false;
      joinButton.textContent = "Join room";
      nameInput.focus();
    }
  });

  const role = invite.role ?? "listener";
  root.replaceChildren(
    h(
      "main",
      { class: "landing" },
      h(
        "div",
        { class: "landing-card" },
        h("p", { class: "brand" }, brandMark(), "Stoa"),
        note ? h("p", { class: "landing-note", role: "status" }, note) : null,
        h("p", { class: "eyebrow" }, "You're invited to"),
        h("h1", { class: "landing-title", "data-testid": "room-title" }, invite.room_title ?? "a room"),
        h("p", { class: "role-hint" }, icon(role === "listener" ? "speaker" : "mic"), h("span", {}, ROLE_HINTS[role])),
        form,
      ),
    ),
  );
  if (!name) nameInput.focus();
  else joinButton.focus();
}

/**
 * A link that does not work, or no link at all.
 * @param {HTMLElement} root
 * @param {InviteInfo} invite
 */
export function mountInvalid(root, invite) {
  const heading = invite.reason === "no_invite" ? "Join a room with an invite link" : "This link doesn't work";
  root.replaceChildren(
    h(
      "main",
      { class: "landing" },
      h(
        "div",
        { class: "landing-card" },
        h("p", { class: "brand" }, brandMark(), "Stoa"),
        h("h1", { class: "landing-title" }, heading),
        h("p", { class: "lead", "data-testid": "invite-problem", "data-reason": invite.reason ?? "" }, invite.message ?? ""),
      ),
    ),
  );
}

export function brandMark() {
  return h("img", { class: "brand-mark", src: "/app/logo.svg", alt: "", width: 20, height: 20 });
}
