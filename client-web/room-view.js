// @ts-check
/**
 * Renders the live room: stage, raised hands, audience, own controls, moderator tools and the
 * connection state. Builds its skeleton once and updates it in place (so focus and open menus
 * survive updates); reports what the person does through handlers, never acts itself.
 */

import { h, hue, icon, initials, setAttr, setText, show } from "./dom.js";
import { me, isModerator } from "./room.js";
import { brandMark } from "./landing.js";

/** @typedef {import("./room.js").Room} Room */
/** @typedef {import("./room.js").Participant} Participant */
/** @typedef {"joining" | "connected" | "reconnecting" | "removed" | "ended"} ConnectionState */

/**
 * @typedef {Object} ViewModel
 * @property {ConnectionState} connection
 * @property {string} title
 * @property {Room | null} room
 * @property {string | null} endReason    sentence shown when removed or ended
 * @property {string | null} endHeading
 * @property {boolean} canRejoin
 * @property {boolean} playbackBlocked
 * @property {boolean} micLive            the microphone is captured and sent
 * @property {string | null} notice       the latest problem, in plain words
 * @property {boolean} audioConnecting    the audio connection is taking a while
 */

/**
 * @typedef {"raise-hand" | "lower-hand" | "accept-invitation" | "decline-invitation" | "mute" |
 *   "unmute" | "leave-stage" | "join-stage" | "leave-room" | "end-room" | "tap-to-listen" |
 *   "more-audience" | "rejoin" | "dismiss-notice" | "create-invite"} OwnAction
 */

/**
 * @typedef {"invite-to-stage" | "cancel-invitation" | "lower-hand" | "mute" | "move-to-audience" |
 *   "make-moderator" | "remove-moderator" | "remove" | "ban"} ParticipantAction
 */

/**
 * @typedef {Object} InviteRequest
 * @property {"listener" | "speaker" | "moderator"} role
 * @property {number} [max_uses]
 * @property {number} [expires_in_secs]
 */

/**
 * @typedef {Object} RoomHandlers
 * @property {(action: OwnAction) => void} onAction
 * @property {(action: ParticipantAction, participant: Participant) => void} onParticipantAction
 * @property {(request: InviteRequest) => Promise<{ url: string } | { error: string }>} onCreateInvite
 */

const ROLE_LABELS = { listener: "Listener", speaker: "Speaker", moderator: "Moderator" };

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

/**
 * What a moderator may do to someone, in menu order.
 * @param {Room} room
 * @param {Participant} p
 * @returns {ParticipantAction[]}
 */
function actionsFor(room, p) {
  if (!isModerator(room) || p.id === room.meId) return [];
  /** @type {ParticipantAction[]} */
  const actions = [];
  if (!p.on_stage && p.role === "listener") {
    actions.push(room.pendingInvitations.has(p.id) ? "cancel-invitation" : "invite-to-stage");
  }
  if (p.hand_raised) actions.push("lower-hand");
  if (p.on_stage && !p.muted) actions.push("mute");
  if (p.on_stage) actions.push("move-to-audience");
  actions.push(p.role === "moderator" ? "remove-moderator" : "make-moderator");
  actions.push("remove", "ban");
  return actions;
}

export class RoomView {
  #handlers;
  /** @type {Map<string, HTMLLIElement>} */
  #stageItems = new Map();
  /** @type {Map<string, HTMLLIElement>} */
  #handItems = new Map();
  /** @type {Map<string, HTMLLIElement>} */
  #audienceItems = new Map();
  /** @type {ConnectionState | null} */
  #shownConnection = null;
  #els;

  /**
   * @param {HTMLElement} root
   * @param {RoomHandlers} handlers
   */
  constructor(root, handlers) {
    this.#handlers = handlers;
    const act = (/** @type {OwnAction} */ action) => () => handlers.onAction(action);

    const els = {
      title: h("h1", { class: "room-title", "data-testid": "room-title" }),
      state: h("span", { class: "state-pill", "data-testid": "connection-state", "data-state": "joining" }, "joining"),
      tools: h("div", { class: "room-tools" }),
      inviteButton: h("button", { type: "button", class: "button secondary small", "data-testid": "create-invite", onclick: () => this.#openInviteDialog() }, icon("link"), h("span", {}, "Invite")),
      endButton: h("button", { type: "button", class: "button danger-quiet small", "data-testid": "end-room", onclick: act("end-room") }, icon("power"), h("span", {}, "End room")),
      banner: h("div", { class: "banner", role: "status", hidden: true }),
      notice: h("div", { class: "notice", role: "alert", hidden: true }),
      noticeText: h("p", { class: "notice-text" }),
      tapToListen: h("button", { type: "button", class: "tap-to-listen", "data-testid": "tap-to-listen", hidden: true, onclick: act("tap-to-listen") }, icon("speaker"), h("span", {}, "Tap to listen")),
      main: h("main", { class: "room-main", id: "room-main", tabindex: "-1" }),
      stage: h("ul", { class: "stage-grid", "data-testid": "stage", "aria-label": "On stage" }),
      stageEmpty: h("p", { class: "empty" }, "Nobody is on the stage yet."),
      handsSection: h("section", { class: "panel", "aria-labelledby": "hands-heading" }),
      hands: h("ul", { class: "rows", "data-testid": "raised-hands", "aria-label": "Raised hands" }),
      handsEmpty: h("p", { class: "empty" }, "No hands raised."),
      handsCount: h("span", { class: "count-tag" }),
      audienceCount: h("span", { "data-testid": "audience-count" }, "0"),
      audienceWord: h("span", {}, " listening"),
      audience: h("ul", { class: "rows", "aria-label": "Audience" }),
      moreAudience: h("button", { type: "button", class: "button quiet small", hidden: true, onclick: act("more-audience") }, "Show more"),
      endCard: h("section", { class: "end-card", hidden: true }),
      endHeading: h("h2", { class: "end-heading", tabindex: "-1" }),
      endReason: h("p", { class: "end-reason", "data-testid": "removed-reason" }),
      rejoin: h("button", { type: "button", class: "button primary", onclick: act("rejoin") }, "Rejoin"),
      controls: h("footer", { class: "controls", "aria-label": "Your controls" }),
      invitation: h("div", { class: "invitation", role: "region", "aria-labelledby": "invitation-heading", hidden: true }),
      mute: h("button", { type: "button", class: "button control", "data-testid": "mute", onclick: act("mute") }, icon("mic"), h("span", {}, "Mute")),
      unmute: h("button", { type: "button", class: "button control attention", "data-testid": "unmute", onclick: act("unmute") }, icon("micOff"), h("span", {}, "Unmute")),
      meter: h("span", { class: "meter", "aria-hidden": "true" }),
      meterFill: h("span", { class: "meter-fill" }),
      micGroup: h("div", { class: "mic-group" }),
      raiseHand: h("button", { type: "button", class: "button control", "data-testid": "raise-hand", onclick: act("raise-hand") }, icon("hand"), h("span", {}, "Raise hand")),
      lowerHand: h("button", { type: "button", class: "button control active", "data-testid": "lower-hand", onclick: act("lower-hand") }, icon("hand"), h("span", {}, "Lower hand")),
      joinStage: h("button", { type: "button", class: "button control", "data-testid": "join-stage", onclick: act("join-stage") }, icon("mic"), h("span", {}, "Join the stage")),
      leaveStage: h("button", { type: "button", class: "button control", "data-testid": "leave-stage", onclick: act("leave-stage") }, icon("down"), h("span", {}, "Leave stage")),
      leaveRoom: h("button", { type: "button", class: "button control leave", "data-testid": "leave-room", onclick: act("leave-room") }, icon("leave"), h("span", {}, "Leave")),
      roleLine: h("p", { class: "role-line" }),
      announcer: h("div", { class: "sr-only", "aria-live": "polite", "aria-atomic": "true" }),
      players: h("div", { class: "players", hidden: true }),
      inviteDialog: /** @type {HTMLDialogElement} */ (h("dialog", { class: "dialog", "aria-labelledby": "invite-heading" })),
      confirmDialog: /** @type {HTMLDialogElement} */ (h("dialog", { class: "dialog", role: "alertdialog", "aria-labelledby": "confirm-heading", "aria-describedby": "confirm-body" })),
    };
    this.#els = els;

    els.tools.append(els.inviteButton, els.endButton);
    els.notice.append(
      els.noticeText,
      h("button", { type: "button", class: "icon-button", "aria-label": "Dismiss", onclick: act("dismiss-notice") }, "×"),
    );
    els.meter.append(els.meterFill);
    // The live level sits inside the Mute button: it shows what "Mute" would silence.
    els.mute.append(els.meter);
    els.micGroup.append(els.mute, els.unmute);
    els.invitation.append(
      h("div", { class: "invitation-text" },
        h("p", { class: "invitation-heading", id: "invitation-heading" }, "You're invited to speak"),
        h("p", { class: "invitation-body" }, "When you accept, your browser asks to use your microphone and everyone can hear you."),
      ),
      h("div", { class: "invitation-actions" },
        h("button", { type: "button", class: "button quiet", "data-testid": "decline-invitation", onclick: act("decline-invitation") }, "Not now"),
        h("button", { type: "button", class: "button primary", "data-testid": "accept-invitation", onclick: act("accept-invitation") }, icon("mic"), h("span", {}, "Join the stage")),
      ),
    );
    els.handsSection.append(
      h("h2", { id: "hands-heading", class: "panel-heading" }, icon("hand"), h("span", {}, "Raised hands"), els.handsCount),
      els.hands,
      els.handsEmpty,
    );
    const stageSection = h("section", { class: "stage", "aria-labelledby": "stage-heading" },
      h("h2", { id: "stage-heading", class: "section-heading" }, "On stage"),
      els.stage,
      els.stageEmpty,
    );
    const audienceSection = h("section", { class: "panel", "aria-labelledby": "audience-heading" },
      h("h2", { id: "audience-heading", class: "panel-heading" }, icon("people"), h("span", {}, "Audience"),
        h("span", { class: "count-tag" }, els.audienceCount, els.audienceWord)),
      els.audience,
      els.moreAudience,
    );
    els.endCard.append(els.endHeading, els.endReason, els.rejoin);
    els.main.append(
      els.tapToListen,
      stageSection,
      h("div", { class: "side" }, els.handsSection, audienceSection),
      els.endCard,
    );
    const controlRow = h("div", { class: "control-row" },
      els.micGroup, els.raiseHand, els.lowerHand, els.joinStage, els.leaveStage,
      h("span", { class: "spacer" }), els.leaveRoom);
    els.controls.append(els.invitation, h("div", { class: "controls-inner" }, els.roleLine, controlRow));

    this.#buildInviteDialog();

    root.replaceChildren(
      h("div", { class: "room-page" },
        h("a", { class: "skip-link", href: "#room-main" }, "Skip to the room"),
        h("header", { class: "topbar" },
          h("div", { class: "topbar-inner" },
            h("div", { class: "title-block" },
              h("p", { class: "brand small" }, brandMark(), "Stoa"),
              els.title,
            ),
            h("div", { class: "topbar-side" },
              h("span", { class: "sr-only" }, "Connection: "),
              els.state,
              els.tools,
            ),
          ),
        ),
        els.banner,
        els.notice,
        els.main,
        els.controls,
        els.inviteDialog,
        els.confirmDialog,
        els.announcer,
        els.players,
      ),
    );

    // Close an open participant menu on outside click or Escape.
    document.addEventListener("click", (event) => {
      for (const open of root.querySelectorAll("details.menu[open]")) {
        if (!open.contains(/** @type {Node} */ (event.target))) open.removeAttribute("open");
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape") return;
      for (const open of root.querySelectorAll("details.menu[open]")) {
        open.removeAttribute("open");
        /** @type {HTMLElement | null} */ (open.querySelector("summary"))?.focus();
      }
    });
  }

  /** Where the audio elements go. */
  get playerContainer() {
    return this.#els.players;
  }

  /**
   * Says something to screen-reader users.
   * @param {string} text
   */
  announce(text) {
    const el = this.#els.announcer;
    el.textContent = "";
    window.setTimeout(() => {
      el.textContent = text;
    }, 50);
  }

  /** @param {number} level 0–1 */
  setLevel(level) {
    this.#els.meterFill.style.transform = `scaleX(${level.toFixed(3)})`;
  }

  /**
   * Asks to confirm something that cannot be undone.
   * @param {{ heading: string, body: string, confirmLabel: string, checkbox?: string }} question
   * @returns {Promise<{ confirmed: boolean, checked: boolean }>}
   */
  confirm({ heading, body, confirmLabel, checkbox }) {
    const dialog = this.#els.confirmDialog;
    const box = h("input", { type: "checkbox", id: "confirm-check" });
    const confirmButton = h("button", { type: "button", class: "button danger", "data-testid": "confirm" }, confirmLabel);
    const cancelButton = h("button", { type: "button", class: "button quiet", "data-testid": "cancel" }, "Cancel");
    dialog.replaceChildren(
      h("h2", { id: "confirm-heading", class: "dialog-heading" }, heading),
      h("p", { id: "confirm-body", class: "dialog-body" }, body),
      checkbox ? h("label", { class: "check-row", for: "confirm-check" }, box, h("span", {}, checkbox)) : "",
      h("div", { class: "dialog-actions" }, cancelButton, confirmButton),
    );
    return new Promise((resolve) => {
      let confirmed = false;
      confirmButton.addEventListener("click", () => {
        confirmed = true;
        dialog.close();
      });
      cancelButton.addEventListener("click", () => dialog.close());
      dialog.addEventListener("close", () => resolve({ confirmed, checked: box.checked }), { once: true });
      dialog.showModal();
      cancelButton.focus();
    });
  }

  /** @param {ViewModel} vm */
  update(vm) {
    const els = this.#els;
    const room = vm.room;
    setText(els.title, vm.title);
    document.title = vm.title ? `${vm.title} · Stoa` : "Stoa";
    setText(els.state, vm.connection);
    setAttr(els.state, "data-state", vm.connection);

    const over = vm.connection === "removed" || vm.connection === "ended";
    const live = vm.connection === "connected";
    this.#updateBanner(vm);
    this.#updateNotice(vm.notice);

    // The end of the road: only the reason and, maybe, a way back.
    show(els.endCard, over);
    show(els.controls, !over && room !== null);
    for (const child of els.main.children) {
      if (child !== els.endCard && child !== els.tapToListen) show(/** @type {HTMLElement} */ (child), !over && room !== null);
    }
    if (over) {
      setText(els.endHeading, vm.endHeading ?? "Disconnected");
      setText(els.endReason, vm.endReason ?? "");
      show(els.rejoin, vm.canRejoin);
      show(els.tools, false);
      show(els.tapToListen, false);
      if (this.#shownConnection !== vm.connection) els.endHeading.focus();
      this.#shownConnection = vm.connection;
      return;
    }
    this.#shownConnection = vm.connection;
    show(els.tapToListen, vm.playbackBlocked);
    if (!room) return;

    const self = me(room);
    const moderator = isModerator(room);
    show(els.tools, moderator);

    // Stage.
    this.#syncList(els.stage, this.#stageItems, room.stage, room, "card");
    show(els.stageEmpty, room.stage.length === 0);

    // Raised hands: public, everyone sees them.
    this.#syncList(els.hands, this.#handItems, room.hands, room, "hand");
    show(els.handsEmpty, room.hands.length === 0);
    setText(els.handsCount, room.hands.length ? String(room.hands.length) : "");

    // Audience: a count for everyone, names for moderators (hands are listed above).
    setText(els.audienceCount, String(room.audienceCount));
    const listed = room.listsAudience ? room.audience.filter((id) => !room.hands.includes(id)) : [];
    this.#syncList(els.audience, this.#audienceItems, listed, room, "row");
    show(els.audience, room.listsAudience);
    els.audience.closest(".panel")?.classList.toggle("compact", !room.listsAudience || listed.length === 0);
    show(els.moreAudience, room.listsAudience && room.audienceNext !== null);

    // Own controls.
    const onStage = self.on_stage;
    const listener = !onStage && self.role === "listener";
    show(els.micGroup, onStage);
    show(els.mute, onStage && !self.muted);
    show(els.unmute, onStage && self.muted);
    els.meter.classList.toggle("off", !vm.micLive || self.muted);
    show(els.raiseHand, listener && !self.hand_raised && !room.invitationPending);
    show(els.lowerHand, listener && self.hand_raised && !room.invitationPending);
    show(els.invitation, listener && room.invitationPending);
    show(els.joinStage, !onStage && self.role === "moderator");
    show(els.leaveStage, onStage);
    setText(els.roleLine, roleLine(self, vm.micLive));
    show(els.roleLine, !(listener && room.invitationPending));
    for (const button of els.controls.querySelectorAll("button")) {
      if (button !== els.leaveRoom) button.disabled = !live;
    }
    els.inviteButton.disabled = !live;
    els.endButton.disabled = !live;
  }

  /** @param {ViewModel} vm */
  #updateBanner(vm) {
    const banner = this.#els.banner;
    /** @type {string | null} */
    let text = null;
    if (vm.connection === "reconnecting") text = "Connection lost. Reconnecting… your place in the room is kept for a few seconds.";
    if (vm.connection === "joining") text = vm.room ? "Reconnecting…" : "Joining the room…";
    if (vm.connection === "connected" && vm.audioConnecting) text = "Connecting audio…";
    show(banner, text !== null);
    banner.classList.toggle("warn", vm.connection === "reconnecting");
    if (text !== null) setText(banner, text);
  }

  /** @param {string | null} notice */
  #updateNotice(notice) {
    show(this.#els.notice, notice !== null);
    if (notice !== null) setText(this.#els.noticeText, notice);
  }

  /**
   * Keeps a list's items in step with ids, reusing each person's element.
   * @param {HTMLUListElement} list
   * @param {Map<string, HTMLLIElement>} items
   * @param {string[]} ids
   * @param {Room} room
   * @param {"card" | "hand" | "row"} kind
   */
  #syncList(list, items, ids, room, kind) {
    const wanted = new Set(ids);
    for (const [id, el] of items) {
      if (!wanted.has(id)) {
        el.remove();
        items.delete(id);
      }
    }
    ids.forEach((id, index) => {
      const p = room.people.get(id);
      if (!p) return;
      let el = items.get(id);
      if (!el) {
        el = this.#createPerson(kind);
        items.set(id, el);
      }
      this.#updatePerson(el, p, room, kind);
      if (list.children[index] !== el) list.insertBefore(el, list.children[index] ?? null);
    });
  }

  /** @param {"card" | "hand" | "row"} kind */
  #createPerson(kind) {
    const li = h("li", { class: `person person-${kind}`, "data-testid": "participant" });
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
   * @param {"card" | "hand" | "row"} kind
   */
  #updatePerson(li, p, room, kind) {
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

    setText(/** @type {HTMLElement} */ (li.querySelector(".name-text")), self ? `${p.display_name} (you)` : p.display_name);
    // Muted and speaking show as the badge and the ring; words for screen readers.
    setText(/** @type {HTMLElement} */ (li.querySelector(".state-text")), [muted ? ", muted" : "", speaking ? ", speaking" : ""].join(""));
    /** @type {string[]} */
    const meta = [];
    if (kind === "card" || p.role === "moderator") meta.push(ROLE_LABELS[p.role]);
    if (room.pendingInvitations.has(p.id)) meta.push("invited");
    if (p.presence !== "connected") meta.push("reconnecting…");
    setText(/** @type {HTMLElement} */ (li.querySelector(".person-meta")), meta.join(" · "));

    const actions = actionsFor(room, p);
    /** @type {ParticipantAction[]} */
    const inline = kind === "hand" ? actions.filter((a) => a === "invite-to-stage" || a === "cancel-invitation") : [];
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
        // The person may have changed since this button was made: act on the latest.
        this.#handlers.onParticipantAction(action, p);
      },
    }, ACTION_LABELS[action]);
  }

  #buildInviteDialog() {
    const dialog = this.#els.inviteDialog;
    const role = h("select", { id: "invite-role", "data-testid": "invite-role" },
      h("option", { value: "listener" }, "Listener"),
      h("option", { value: "speaker" }, "Speaker (on stage)"),
      h("option", { value: "moderator" }, "Moderator"),
    );
    const maxUses = h("input", { id: "invite-max-uses", "data-testid": "invite-max-uses", type: "number", min: 1, max: 1000000, inputmode: "numeric", placeholder: "No limit" });
    const expiry = h("select", { id: "invite-expiry", "data-testid": "invite-expiry" },
      h("option", { value: "" }, "Never"),
      h("option", { value: "3600" }, "In 1 hour"),
      h("option", { value: "86400" }, "In 1 day"),
      h("option", { value: "604800" }, "In 7 days"),
      h("option", { value: "2592000" }, "In 30 days"),
    );
    const error = h("p", { class: "form-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "button primary", "data-testid": "invite-submit" }, "Create link");
    const link = h("code", { class: "invite-link", "data-testid": "invite-link" });
    const copy = h("button", { type: "button", class: "button secondary small", "data-testid": "copy-invite" }, icon("copy"), h("span", {}, "Copy"));
    const copied = h("span", { class: "sr-only", role: "status" });
    const summary = h("p", { class: "hint" });
    const result = h("div", { class: "invite-result", hidden: true },
      h("p", { class: "field-label" }, "Share this link"),
      h("div", { class: "link-row" }, link, copy),
      summary,
      copied,
    );
    const form = h("form", { class: "invite-form", novalidate: true },
      h("h2", { id: "invite-heading", class: "dialog-heading" }, "Invite people"),
      h("p", { class: "dialog-body" }, "Anyone with the link can join this room with the role you choose."),
      h("div", { class: "field" }, h("label", { for: "invite-role", class: "field-label" }, "Joins as"), role),
      h("div", { class: "field-pair" },
        h("div", { class: "field" }, h("label", { for: "invite-max-uses", class: "field-label" }, "Number of uses"), maxUses),
        h("div", { class: "field" }, h("label", { for: "invite-expiry", class: "field-label" }, "Expires"), expiry),
      ),
      error,
      result,
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "button quiet", onclick: () => dialog.close() }, "Close"),
        submit,
      ),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      /** @type {InviteRequest} */
      const request = { role: /** @type {InviteRequest["role"]} */ (role.value) };
      if (maxUses.value.trim()) {
        const uses = Number(maxUses.value);
        if (!Number.isInteger(uses) || uses < 1 || uses > 1000000) {
          error.textContent = "The number of uses must be a whole number from 1 to 1,000,000, or empty for no limit.";
          maxUses.focus();
          return;
        }
        request.max_uses = uses;
      }
      if (expiry.value) request.expires_in_secs = Number(expiry.value);
      submit.disabled = true;
      const answer = await this.#handlers.onCreateInvite(request);
      submit.disabled = false;
      if ("error" in answer) {
        error.textContent = answer.error;
        return;
      }
      link.textContent = answer.url;
      const uses = request.max_uses ? `${request.max_uses} use${request.max_uses === 1 ? "" : "s"}` : "no use limit";
      const ends = expiry.value ? `expires ${expiry.selectedOptions[0].text.toLowerCase()}` : "never expires";
      summary.textContent = `${ROLE_LABELS[request.role]} link · ${uses} · ${ends}`;
      result.hidden = false;
      submit.textContent = "Create another";
      copy.focus();
    });
    copy.addEventListener("click", async () => {
      const ok = await copyText(link.textContent ?? "");
      const label = /** @type {HTMLElement} */ (copy.querySelector("span"));
      label.textContent = ok ? "Copied" : "Select and copy";
      copied.textContent = ok ? "Link copied." : "Could not copy; select the link and copy it.";
      if (!ok) window.getSelection()?.selectAllChildren(link);
      window.setTimeout(() => {
        label.textContent = "Copy";
      }, 2000);
    });
    dialog.append(form);
    dialog.addEventListener("close", () => {
      result.hidden = true;
      submit.textContent = "Create link";
      error.textContent = "";
      this.#els.inviteButton.focus();
    });
  }

  #openInviteDialog() {
    this.#els.inviteDialog.showModal();
    /** @type {HTMLElement | null} */ (this.#els.inviteDialog.querySelector("select"))?.focus();
  }
}

/**
 * @param {import("./room.js").Participant} self
 * @param {boolean} micLive
 */
function roleLine(self, micLive) {
  if (self.on_stage) {
    if (self.muted) return "You're on stage, muted.";
    return micLive ? "You're on stage. Everyone can hear you." : "You're on stage. Waiting for your microphone…";
  }
  if (self.role === "moderator") return "You're moderating from the audience.";
  if (self.hand_raised) return "Your hand is raised. A moderator may invite you to speak.";
  return "You're listening.";
}

/**
 * @param {string} text
 * @returns {Promise<boolean>}
 */
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}
