// @ts-check
/**
 * The person's own controls at the foot of the room page: microphone (with its live level),
 * hand, the invitation to speak, stage, leave, and a line saying where they stand. Which
 * buttons show follows the role table; what they do is the handler's job.
 */

import { h, icon, setText, show } from "./dom.js";
import { me } from "./room.js";
import { may } from "./permissions.js";

/** @typedef {import("./room.js").Room} Room */
/** @typedef {import("./room.js").Participant} Participant */
/** @typedef {import("./room-view.js").OwnAction} OwnAction */

export class Controls {
  #els;
  #level;
  /** The microphone is live: the level meter moves while it is. */
  #micLive = false;
  #meterRunning = false;

  /**
   * @param {(action: OwnAction) => void} onAction
   * @param {() => number} level  the microphone's level now, 0–1
   */
  constructor(onAction, level) {
    this.#level = level;
    const act = (/** @type {OwnAction} */ action) => () => onAction(action);
    const els = {
      footer: h("footer", { class: "controls", "aria-label": "Your controls" }),
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
    };
    this.#els = els;

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
    const row = h("div", { class: "control-row" },
      els.micGroup, els.raiseHand, els.lowerHand, els.joinStage, els.leaveStage,
      h("span", { class: "spacer" }), els.leaveRoom);
    els.footer.append(els.invitation, h("div", { class: "controls-inner" }, els.roleLine, row));
  }

  /** The footer, for the page to place. */
  get element() {
    return this.#els.footer;
  }

  /**
   * @param {Room} room
   * @param {{ micLive: boolean, live: boolean }} state  live: the signaling connection is up
   */
  update(room, { micLive, live }) {
    const els = this.#els;
    const self = me(room);
    const onStage = self.on_stage;
    const offStage = (/** @type {string} */ command) => !onStage && may(self.role, command);
    const invited = room.invitationPending && offStage("accept_invitation");
    show(els.micGroup, onStage && may(self.role, "mute_self"));
    show(els.mute, onStage && !self.muted);
    show(els.unmute, onStage && self.muted);
    els.meter.classList.toggle("off", !micLive || self.muted);
    show(els.raiseHand, offStage("raise_hand") && !self.hand_raised && !room.invitationPending);
    show(els.lowerHand, offStage("lower_hand") && self.hand_raised && !room.invitationPending);
    show(els.invitation, invited);
    show(els.joinStage, offStage("join_stage"));
    show(els.leaveStage, onStage && may(self.role, "leave_stage"));
    setText(els.roleLine, roleLine(self, micLive));
    show(els.roleLine, !invited);
    for (const button of els.footer.querySelectorAll("button")) {
      if (button !== els.leaveRoom) button.disabled = !live;
    }
    this.#micLive = micLive;
    if (micLive && !this.#meterRunning) this.#runMeter();
  }

  /** Moves the level bar while the microphone is live and the page shows these controls. */
  #runMeter() {
    this.#meterRunning = true;
    const fill = this.#els.meterFill;
    const tick = () => {
      if (!this.#micLive || !fill.isConnected) {
        this.#meterRunning = false;
        fill.style.transform = "scaleX(0)";
        return;
      }
      fill.style.transform = `scaleX(${this.#level().toFixed(3)})`;
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }
}

/**
 * @param {Participant} self
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
