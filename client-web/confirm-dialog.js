// @ts-check
/**
 * The question asked before something that cannot be undone (remove, ban, end the room): a
 * modal with Cancel focused first. Answers with what the person chose; does nothing itself.
 */

import { h } from "./dom.js";

/**
 * @typedef {Object} Question
 * @property {string} heading
 * @property {string} body
 * @property {string} confirmLabel
 * @property {string} [checkbox]  an extra choice, e.g. also revoke the invite link
 */

export class ConfirmDialog {
  #dialog = /** @type {HTMLDialogElement} */ (
    h("dialog", { class: "dialog", role: "alertdialog", "aria-labelledby": "confirm-heading", "aria-describedby": "confirm-body" })
  );

  /** The dialog element, for the page to place. */
  get element() {
    return this.#dialog;
  }

  /**
   * @param {Question} question
   * @returns {Promise<{ confirmed: boolean, checked: boolean }>}
   */
  ask({ heading, body, confirmLabel, checkbox }) {
    const dialog = this.#dialog;
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
}
