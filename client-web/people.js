// @ts-check
/**
 * One list of people on the room page: the stage's cards, the raised hands or the audience's
 * rows. Keeps each person's element in step with the room (reused, so focus and open menus
 * survive updates) and offers the moderator's actions on them; acts through a handler only.
 */

import { h, hue, icon, initials, setAttr, setText, show } from "./dom.js";
import { actionsFor } from "./permissions.js";

/** @typedef {import("./room.js").Room} Room */
/** @typedef {import("./room.js").Participant} Participant */
/** @typedef {import("./permissions.js").ParticipantAction} ParticipantAction */
/** @typedef {(action: ParticipantAction, participant: Participant) => void} OnParticipantAction */

/** How a list shows a person: a stage card, a raised hand (invite inline), an audience row. */
/** @typedef {"card" | "hand" | "row"} Kind */

export const ROLE_LABELS = { listener: "Listener", speaker: "Speaker", moderator: "Moderator" };

/** @type {Record<ParticipantAction, string>} */
const ACTION_LABELS = {
  "invite-to-stage": "Invite to speak",
  "cancel-invitation": "Cancel invitation",
  "lower-hand": "Lower hand",
  mute: "Mute",
  "move-to-audience": "Move to audience",
  "make-moderator": "Make moderator",
  "remove-moderator": "Remove as moderator",
  remove: "Remove from room",
  ban: "Remove and ban",
};

/** Actions that take someone out: set apart at the end of the menu. */
const DANGEROUS = new Set(["remove", "ban"]);

/** Actions a raised hand shows as buttons of their own; the rest go in its menu. */
const INLINE_FOR_HANDS = new Set(["invite-to-stage", "cancel-invitation"]);

export class PeopleList {
  /** @type {Map<string, HTMLLIElement>} */
  #items = new Map();
  #list;
  #kind;
  #onAction;

  /**
   * @param {HTMLUListElement} list  the element the people go in
   * @param {Kind} kind
   * @param {OnParticipantAction} onAction
   */
  constructor(list, kind, onAction) {
    this.#list = list;
    this.#kind = kind;
    this.#onAction = onAction;
  }

  /**
   * Shows the people with these ids, in this order.
   * @param {string[]} ids
   * @param {Room} room
   */
  update(ids, room) {
    const wanted = new Set(ids);
    for (const [id, el] of this.#items) {
      if (!wanted.has(id)) {
        el.remove();
        this.#items.delete(id);
      }
    }
    const list = this.#list;
    ids.forEach((id, index) => {
      const p = room.people.get(id);
      if (!p) return;
      let el = this.#items.get(id);
      if (!el) {
        el = this.#create();
        this.#items.set(id, el);
      }
      this.#updatePerson(el, p, room);
      if (list.children[index] !== el) list.insertBefore(el, list.children[index] ?? null);
    });
  }

  #create() {
    const li = h("li", { class: `person person-${this.#kind}`, "data-testid": "participant" });
    const avatar = h("span", { class: "avatar", "aria-hidden": "true" },
      h("span", { class: "initials" }),
      h("span", { class: "muted-badge", hidden: true }, icon("micOff")),
    );
    const text = h("span", { class: "person-text" },
      h("span", { class: "person-name" }, h("span", { class: "name-text" }), h("span", { class: "sr-only state-text" })),
      h("span", { class: "person-meta" }),
    );
    li.append(avatar, text, h("span", { class: "person-actions" }));
    return li;
  }

  /**
   * @param {HTMLLIElement} li
   * @param {Participant} p
   * @param {Room} room
   */
  #updatePerson(li, p, room) {
    const kind = this.#kind;
    const self = p.id === room.meId;
    const speaking = room.speaking.has(p.id) && !p.muted;
    const muted = p.on_stage && p.muted;
    setAttr(li, "data-participant-id", p.id);
    setAttr(li, "data-name", p.display_name);
    setAttr(li, "data-role", p.role);
    setAttr(li, "data-speaking", String(speaking));
    setAttr(li, "data-muted", String(muted));
    setAttr(li, "data-presence", p.presence);
    li.classList.toggle("speaking", speaking);
    li.classList.toggle("is-muted", muted);
    li.classList.toggle("away", p.presence !== "connected");
    li.classList.toggle("self", self);

    const avatar = /** @type {HTMLElement} */ (li.querySelector(".avatar"));
    avatar.className = `avatar hue-${hue(p.id)}`;
    setText(/** @type {HTMLElement} */ (li.querySelector(".initials")), initials(p.display_name));
    show(/** @type {HTMLElement} */ (li.querySelector(".muted-badge")), muted);

    const name = self ? `${p.display_name} (you)` : p.display_name;
    const nameText = /** @type {HTMLElement} */ (li.querySelector(".name-text"));
    setText(nameText, name);
    // A name cut short by an ellipsis is still there in full on hover.
    setAttr(nameText, "title", name);
    // Muted and speaking show as the badge and the ring; words for screen readers.
    setText(/** @type {HTMLElement} */ (li.querySelector(".state-text")), [muted ? ", muted" : "", speaking ? ", speaking" : ""].join(""));
    /** @type {string[]} */
    const meta = [];
    if (kind === "card" || p.role === "moderator") meta.push(ROLE_LABELS[p.role]);
    if (room.pendingInvitations.has(p.id)) meta.push("invited");
    if (p.presence !== "connected") meta.push("reconnecting…");
    setText(/** @type {HTMLElement} */ (li.querySelector(".person-meta")), meta.join(" · "));

    this.#updateActions(li, p, actionsFor(room, p));
  }

  /**
   * @param {HTMLLIElement} li
   * @param {Participant} p
   * @param {ParticipantAction[]} actions
   */
  #updateActions(li, p, actions) {
    const inline = this.#kind === "hand" ? actions.filter((a) => INLINE_FOR_HANDS.has(a)) : [];
    const inMenu = actions.filter((a) => !inline.includes(a));
    const key = `${inline.join()}|${inMenu.join()}`;
    const holder = /** @type {HTMLElement} */ (li.querySelector(".person-actions"));
    if (holder.dataset.key === key) return;
    holder.dataset.key = key;
    const wasOpen = holder.querySelector("details.menu")?.hasAttribute("open") ?? false;
    const hadFocus = holder.contains(document.activeElement);
    holder.replaceChildren(
      ...inline.map((action) => this.#actionButton(action, p, action === "invite-to-stage" ? "button primary small" : "button quiet small")),
      ...(inMenu.length ? [this.#menu(inMenu, p, wasOpen)] : []),
    );
    // Keyboard users keep their place when the actions change under them.
    if (hadFocus) /** @type {HTMLElement | null} */ (holder.querySelector("summary, button"))?.focus();
  }

  /**
   * @param {ParticipantAction[]} actions
   * @param {Participant} p
   * @param {boolean} open
   */
  #menu(actions, p, open) {
    const list = h("div", { class: "menu-list", role: "group", "aria-label": `Actions for ${p.display_name}` });
    for (const action of actions) {
      if (DANGEROUS.has(action) && !list.querySelector(".menu-separator")) list.append(h("hr", { class: "menu-separator" }));
      list.append(this.#actionButton(action, p, DANGEROUS.has(action) ? "menu-item danger-text" : "menu-item"));
    }
    return h("details", { class: "menu", open },
      h("summary", { class: "menu-button", "aria-label": `Actions for ${p.display_name}`, "data-testid": "participant-menu" }, icon("more")),
      list,
    );
  }

  /**
   * @param {ParticipantAction} action
   * @param {Participant} p
   * @param {string} className
   */
  #actionButton(action, p, className) {
    return h("button", {
      type: "button",
      class: className,
      "data-testid": `action-${action}`,
      onclick: (/** @type {Event} */ event) => {
        /** @type {HTMLElement} */ (event.currentTarget).closest("details")?.removeAttribute("open");
        this.#onAction(action, p);
      },
    }, ACTION_LABELS[action]);
  }
}
