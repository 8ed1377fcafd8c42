// @ts-check
/**
 * Renders the live room page: top bar with the moderator's tools, banners, the stage, raised
 * hands and audience lists, the end card, and the page's dialogs and own controls (each from a
 * module of its own). Builds its skeleton once and updates it in place (so focus and open menus
 * survive updates); reports what the person does through handlers, never acts itself.
 */

import { ClipDialog } from "./clip-dialog.js";
import { ConfirmDialog } from "./confirm-dialog.js";
import { Controls } from "./controls.js";
import { h, icon, setAttr, setText, show } from "./dom.js";
import { InviteDialog } from "./invite-dialog.js";
import { brandMark } from "./landing.js";
import { PeopleList } from "./people.js";
import { may } from "./permissions.js";
import { isModerator, me } from "./room.js";

/** @typedef {import("./room.js").Room} Room */
/** @typedef {import("./room.js").Participant} Participant */
/** @typedef {import("./permissions.js").ParticipantAction} ParticipantAction */
/** @typedef {import("./invite-dialog.js").InviteRequest} InviteRequest */
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
 *   "unmute" | "leave-stage" | "join-stage" | "leave-room" | "end-room" | "toggle-recording" | "tap-to-listen" |
 *   "more-audience" | "rejoin" | "dismiss-notice"} OwnAction
 */

/**
 * @typedef {Object} RoomHandlers
 * @property {(action: OwnAction) => void} onAction
 * @property {(action: ParticipantAction, participant: Participant) => void} onParticipantAction
 * @property {import("./invite-dialog.js").CreateInvite} onCreateInvite
 * @property {import("./clip-dialog.js").MakeClip} onMakeClip
 * @property {() => number} micLevel  the microphone's level now, 0–1
 */

export class RoomView {
  /** @type {ConnectionState | null} */
  #shownConnection = null;
  #els;
  #stage;
  #hands;
  #audience;
  #controls;
  #confirm = new ConfirmDialog();

  /**
   * @param {HTMLElement} root
   * @param {RoomHandlers} handlers
   */
  constructor(root, handlers) {
    const act = (/** @type {OwnAction} */ action) => () => handlers.onAction(action);
    const inviteDialog = new InviteDialog(handlers.onCreateInvite);
    const clipDialog = new ClipDialog(handlers.onMakeClip);

    const els = {
      title: h("h1", { class: "room-title", "data-testid": "room-title" }),
      state: h("span", { class: "state-pill", "data-testid": "connection-state", "data-state": "joining" }, "joining"),
      tools: h("div", { class: "room-tools" }),
      inviteButton: h("button", { type: "button", class: "button secondary small", "data-testid": "create-invite" }, icon("link"), h("span", {}, "Invite")),
      clipButton: h("button", { type: "button", class: "button secondary small", "data-testid": "make-clip" }, icon("scissors"), h("span", {}, "Clip")),
      recordingMark: h("span", { class: "recording-pill", "data-testid": "recording-mark", role: "status", hidden: true }, "Recording"),
      recordButton: h("button", { type: "button", class: "button secondary small", "data-testid": "toggle-recording", onclick: act("toggle-recording") }, h("span", {}, "Record")),
      endButton: h("button", { type: "button", class: "button danger-quiet small", "data-testid": "end-room", onclick: act("end-room") }, icon("power"), h("span", {}, "End room")),
      banner: h("div", { class: "banner", role: "status", hidden: true }),
      notice: h("div", { class: "notice", role: "alert", hidden: true }),
      noticeText: h("p", { class: "notice-text" }),
      tapToListen: h("button", { type: "button", class: "tap-to-listen", "data-testid": "tap-to-listen", hidden: true, onclick: act("tap-to-listen") }, icon("speaker"), h("span", {}, "Tap to listen")),
      main: h("main", { class: "room-main", id: "room-main", tabindex: "-1" }),
      stage: h("ul", { class: "stage-grid", "data-testid": "stage", "aria-label": "On stage" }),
      stageEmpty: h("p", { class: "empty" }, "Nobody is on the stage yet."),
      hands: h("ul", { class: "rows", "data-testid": "raised-hands", "aria-label": "Raised hands" }),
      handsEmpty: h("p", { class: "empty" }, "No hands raised."),
      handsCount: h("span", { class: "count-tag" }),
      audienceCount: h("span", { "data-testid": "audience-count" }, "0"),
      audience: h("ul", { class: "rows", "aria-label": "Audience" }),
      moreAudience: h("button", { type: "button", class: "button quiet small", hidden: true, onclick: act("more-audience") }, "Show more"),
      endCard: h("section", { class: "end-card", hidden: true }),
      endHeading: h("h2", { class: "end-heading", tabindex: "-1" }),
      endReason: h("p", { class: "end-reason", "data-testid": "removed-reason" }),
      rejoin: h("button", { type: "button", class: "button primary", onclick: act("rejoin") }, "Rejoin"),
      announcer: h("div", { class: "sr-only", "aria-live": "polite", "aria-atomic": "true" }),
      players: h("div", { class: "players", hidden: true }),
    };
    this.#els = els;
    this.#stage = new PeopleList(els.stage, "card", handlers.onParticipantAction);
    this.#hands = new PeopleList(els.hands, "hand", handlers.onParticipantAction);
    this.#audience = new PeopleList(els.audience, "row", handlers.onParticipantAction);
    this.#controls = new Controls(handlers.onAction, handlers.micLevel);

    els.inviteButton.addEventListener("click", () => inviteDialog.open(els.inviteButton));
    els.clipButton.addEventListener("click", () => clipDialog.open(els.clipButton));
    els.tools.append(els.inviteButton, els.recordButton, els.endButton);
    els.notice.append(
      els.noticeText,
      h("button", { type: "button", class: "icon-button", "aria-label": "Dismiss", onclick: act("dismiss-notice") }, "×"),
    );
    const stageSection = h("section", { class: "stage", "aria-labelledby": "stage-heading" },
      h("h2", { id: "stage-heading", class: "section-heading" }, "On stage"),
      els.stage,
      els.stageEmpty,
    );
    const handsSection = h("section", { class: "panel", "aria-labelledby": "hands-heading" },
      h("h2", { id: "hands-heading", class: "panel-heading" }, icon("hand"), h("span", {}, "Raised hands"), els.handsCount),
      els.hands,
      els.handsEmpty,
    );
    const audienceSection = h("section", { class: "panel", "aria-labelledby": "audience-heading" },
      h("h2", { id: "audience-heading", class: "panel-heading" }, icon("people"), h("span", {}, "Audience"),
        h("span", { class: "count-tag" }, els.audienceCount, h("span", {}, " listening"))),
      els.audience,
      els.moreAudience,
    );
    els.endCard.append(els.endHeading, els.endReason, els.rejoin);
    els.main.append(
      els.tapToListen,
      stageSection,
      h("div", { class: "side" }, handsSection, audienceSection),
      els.endCard,
    );

    root.replaceChildren(
      h("div", { class: "room-page" },
        h("a", { class: "skip-link", href: "#room-main" }, "Skip to the room"),
        h("header", { class: "topbar" },
          h("div", { class: "topbar-inner" },
            h("div", { class: "title-block" },
              h("p", { class: "brand small" }, brandMark(), "Stoa"),
              els.title,
              els.recordingMark,
            ),
            h("div", { class: "topbar-side" },
              h("span", { class: "sr-only" }, "Connection: "),
              els.state,
              els.clipButton,
              els.tools,
            ),
          ),
        ),
        els.banner,
        els.notice,
        els.main,
        this.#controls.element,
        inviteDialog.element,
        clipDialog.element,
        this.#confirm.element,
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

  /**
   * Asks to confirm something that cannot be undone.
   * @param {import("./confirm-dialog.js").Question} question
   */
  confirm(question) {
    return this.#confirm.ask(question);
  }

  /** @param {ViewModel} vm */
  update(vm) {
    const els = this.#els;
    const room = vm.room;
    const controls = this.#controls.element;
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
    show(controls, !over && room !== null);
    for (const child of els.main.children) {
      if (child !== els.endCard && child !== els.tapToListen) show(/** @type {HTMLElement} */ (child), !over && room !== null);
    }
    if (over) {
      setText(els.endHeading, vm.endHeading ?? "Disconnected");
      setText(els.endReason, vm.endReason ?? "");
      show(els.rejoin, vm.canRejoin);
      show(els.tools, false);
      show(els.clipButton, false);
      show(els.tapToListen, false);
      if (this.#shownConnection !== vm.connection) els.endHeading.focus();
      this.#shownConnection = vm.connection;
      return;
    }
    this.#shownConnection = vm.connection;
    show(els.tapToListen, vm.playbackBlocked);
    if (!room) return;

    show(els.tools, isModerator(room));
    // Anyone in the room may clip what it just heard.
    show(els.clipButton, true);
    show(els.endButton, may(me(room).role, "end_room"));
    // Everyone sees that the room is recorded; moderators start and stop it.
    show(els.recordingMark, room.recording);
    show(els.recordButton, may(me(room).role, room.recording ? "stop_recording" : "start_recording"));
    setText(/** @type {HTMLElement} */ (els.recordButton.firstChild), room.recording ? "Stop recording" : "Record");
    setAttr(els.recordButton, "aria-pressed", String(room.recording));

    this.#stage.update(room.stage, room);
    show(els.stageEmpty, room.stage.length === 0);

    // Raised hands: public, everyone sees them.
    this.#hands.update(room.hands, room);
    show(els.handsEmpty, room.hands.length === 0);
    setText(els.handsCount, room.hands.length ? String(room.hands.length) : "");

    // Audience: a count for everyone, names for moderators (hands are listed above).
    setText(els.audienceCount, String(room.audienceCount));
    const listed = room.listsAudience ? room.audience.filter((id) => !room.hands.includes(id)) : [];
    this.#audience.update(listed, room);
    show(els.audience, room.listsAudience);
    els.audience.closest(".panel")?.classList.toggle("compact", !room.listsAudience || listed.length === 0);
    show(els.moreAudience, room.listsAudience && room.audienceNext !== null);

    this.#controls.update(room, { micLive: vm.micLive, live });
    els.inviteButton.disabled = !live;
    els.clipButton.disabled = !live;
    els.endButton.disabled = !live;
    els.recordButton.disabled = !live;
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
}
