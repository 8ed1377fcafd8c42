// @ts-check
/**
 * The moderator's "Invite people" dialog: role (and, for listeners, how they hear the room),
 * number of uses and expiry in, a link to copy out. Checks the form; making the link is the handler's job (it calls the server).
 */

import { copyButton, h } from "./dom.js";
import { ROLE_LABELS } from "./people.js";

/**
 * @typedef {Object} InviteRequest
 * @property {"listener" | "speaker" | "moderator"} role
 * @property {"webrtc" | "broadcast"} [delivery]  `broadcast` for listener links only
 * @property {number} [max_uses]
 * @property {number} [expires_in_secs]
 */

/** @typedef {(request: InviteRequest) => Promise<{ url: string } | { error: string }>} CreateInvite */

const MAX_USES = 1_000_000;

export class InviteDialog {
  #dialog;
  /** @type {HTMLElement | null} */
  #opener = null;

  /** @param {CreateInvite} createInvite */
  constructor(createInvite) {
    this.#dialog = /** @type {HTMLDialogElement} */ (h("dialog", { class: "dialog", "aria-labelledby": "invite-heading" }));
    this.#build(createInvite);
  }

  /** The dialog element, for the page to place. */
  get element() {
    return this.#dialog;
  }

  /**
   * Opens the dialog; focus goes back to `opener` when it closes.
   * @param {HTMLElement} opener
   */
  open(opener) {
    this.#opener = opener;
    this.#dialog.showModal();
    /** @type {HTMLElement | null} */ (this.#dialog.querySelector("select"))?.focus();
  }

  /** @param {CreateInvite} createInvite */
  #build(createInvite) {
    const dialog = this.#dialog;
    const role = h("select", { id: "invite-role", "data-testid": "invite-role" },
      h("option", { value: "listener" }, "Listener"),
      h("option", { value: "speaker" }, "Speaker (on stage)"),
      h("option", { value: "moderator" }, "Moderator"),
    );
    // Listeners only: whoever may speak needs WebRTC (the server refuses anything else).
    const delivery = h("select", { id: "invite-delivery", "data-testid": "invite-delivery" },
      h("option", { value: "webrtc" }, "Live, as on stage"),
      h("option", { value: "broadcast" }, "Broadcast, a few seconds behind (large audiences)"),
    );
    const deliveryField = h("div", { class: "field" },
      h("label", { for: "invite-delivery", class: "field-label" }, "Hears the room"),
      delivery,
    );
    role.addEventListener("change", () => {
      deliveryField.hidden = role.value !== "listener";
    });
    const maxUses = h("input", { id: "invite-max-uses", "data-testid": "invite-max-uses", type: "number", min: 1, max: MAX_USES, inputmode: "numeric", placeholder: "No limit" });
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
    const [copy, copied] = copyButton(link, "copy-invite");
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
      deliveryField,
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
      if (request.role === "listener" && delivery.value === "broadcast") request.delivery = "broadcast";
      if (maxUses.value.trim()) {
        const uses = Number(maxUses.value);
        if (!Number.isInteger(uses) || uses < 1 || uses > MAX_USES) {
          error.textContent = "The number of uses must be a whole number from 1 to 1,000,000, or empty for no limit.";
          maxUses.focus();
          return;
        }
        request.max_uses = uses;
      }
      if (expiry.value) request.expires_in_secs = Number(expiry.value);
      submit.disabled = true;
      const answer = await createInvite(request);
      submit.disabled = false;
      if ("error" in answer) {
        error.textContent = answer.error;
        return;
      }
      link.textContent = answer.url;
      const uses = request.max_uses ? `${request.max_uses} use${request.max_uses === 1 ? "" : "s"}` : "no use limit";
      const ends = expiry.value ? `expires ${expiry.selectedOptions[0].text.toLowerCase()}` : "never expires";
      const tier = request.delivery === "broadcast" ? " · broadcast" : "";
      summary.textContent = `${ROLE_LABELS[request.role]} link${tier} · ${uses} · ${ends}`;
      result.hidden = false;
      submit.textContent = "Create another";
      copy.focus();
    });
    dialog.append(form);
    dialog.addEventListener("close", () => {
      result.hidden = true;
      submit.textContent = "Create link";
      error.textContent = "";
      this.#opener?.focus();
    });
  }
}
