// @ts-check
/**
 * The room page's "Clip" dialog: anyone in a live room makes a link to its last seconds (the
 * server keeps about 30 s of the room's mix), then copies or opens it. Making the clip is the
 * handler's job (it calls the server).
 */

import { copyButton, h } from "./dom.js";

/** @typedef {() => Promise<{ url: string, durationMs: number } | { error: string }>} MakeClip */

const SUBMIT = "Clip the last 30 seconds";

export class ClipDialog {
  #dialog;
  /** @type {HTMLElement | null} */
  #opener = null;

  /** @param {MakeClip} makeClip */
  constructor(makeClip) {
    this.#dialog = /** @type {HTMLDialogElement} */ (h("dialog", { class: "dialog", "aria-labelledby": "clip-heading", "data-testid": "clip-dialog" }));
    this.#build(makeClip);
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
    /** @type {HTMLElement | null} */ (this.#dialog.querySelector('button[type="submit"]'))?.focus();
  }

  /** @param {MakeClip} makeClip */
  #build(makeClip) {
    const dialog = this.#dialog;
    const error = h("p", { class: "form-error", role: "alert", "data-testid": "clip-error" });
    const submit = h("button", { type: "submit", class: "button primary", "data-testid": "clip-submit" }, SUBMIT);
    const link = h("code", { class: "invite-link", "data-testid": "clip-link" });
    const [copy, copied] = copyButton(link, "copy-clip");
    const openLink = /** @type {HTMLAnchorElement} */ (h("a", { class: "button quiet small", target: "_blank", rel: "noopener", "data-testid": "open-clip" }, "Open"));
    const summary = h("p", { class: "hint", "data-testid": "clip-summary" });
    const result = h("div", { class: "invite-result", hidden: true },
      h("p", { class: "field-label" }, "Share this clip"),
      h("div", { class: "link-row" }, link, copy, openLink),
      summary,
      copied,
    );
    const form = h("form", { class: "invite-form", novalidate: true },
      h("h2", { id: "clip-heading", class: "dialog-heading" }, "Clip this moment"),
      h("p", { class: "dialog-body" }, "Makes a link to what the room just heard, for anyone to play. Your clip is saved on the server."),
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
      submit.disabled = true;
      const answer = await makeClip();
      submit.disabled = false;
      if ("error" in answer) {
        error.textContent = answer.error;
        return;
      }
      link.textContent = answer.url;
      openLink.href = answer.url;
      summary.textContent = `${Math.round(answer.durationMs / 1000)} seconds · anyone with the link can play it`;
      result.hidden = false;
      submit.textContent = "Clip again";
      copy.focus();
    });
    dialog.append(form);
    dialog.addEventListener("close", () => {
      result.hidden = true;
      submit.textContent = SUBMIT;
      error.textContent = "";
      this.#opener?.focus();
    });
  }
}
