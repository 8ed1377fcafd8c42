/**
 * The room page's layout, measured in a real Chromium: a moderator's raised-hands list at a
 * laptop width (1,100 px, where the side column is narrowest) and at a phone width. Names keep
 * their words: one line, cut with an ellipsis when too long, whole on hover (`title`); the
 * "Invite to speak" button and the menu go below the name instead of squeezing it.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ARTIFACTS, cleanup, openBrowser, startServer } from "./harness.js";

const LAPTOP = { width: 1100, height: 800 };
const PHONE = { width: 390, height: 844 };
/** "Lee / List / ene / r" is how this name wrapped beside the button before. */
const SHORT = "Lee Listener";
/** As long as a display name may be (40 characters). */
const LONG = "Maximiliana Wolkenstein-Hohenberg-Ruhla";

/** @type {import("./harness.js").Server} */
let server;
/** @type {Awaited<ReturnType<typeof openBrowser>>} */
let moderator;

/**
 * Joins someone by a link over signaling alone (no browser page of their own, no media) and
 * raises their hand. The socket lives in `page` until the page closes.
 * @param {import("playwright-core").Page} page  a page of the server (its origin and policy)
 * @param {string} link
 * @param {string} name
 */
async function raiseHandAs(page, link, name) {
  const code = /** @type {string} */ (link.split("/i/")[1]);
  await page.evaluate(async ({ code, name }) => {
    const response = await fetch("/api/v1/join", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ invite: code, display_name: name }),
    });
    const joined = await response.json();
    if (!response.ok) throw new Error(`join: ${JSON.stringify(joined)}`);
    const socket = new WebSocket(joined.signal_url);
    /** @type {any} */ (window).sockets = [.../** @type {any} */ (window).sockets ?? [], socket];
    await new Promise((resolve, reject) => {
      socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "join", id: 1, token: joined.token })));
      socket.addEventListener("message", (event) => {
        const message = JSON.parse(event.data);
        if (message.type === "welcome") socket.send(JSON.stringify({ type: "raise_hand", id: 2 }));
        if (message.type === "ok" && message.id === 2) resolve(undefined);
        if (message.type === "error") reject(new Error(event.data));
      });
      socket.addEventListener("close", (event) => reject(new Error(`closed: ${event.code} ${event.reason}`)));
    });
  }, { code, name });
}

/**
 * How each raised hand's name and buttons lie on the moderator's page.
 * @param {import("playwright-core").Page} page
 */
function measureHands(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid="raised-hands"] [data-testid="participant"]')].map((li) => {
      const name = /** @type {HTMLElement} */ (li.querySelector(".person-name"));
      const text = /** @type {HTMLElement} */ (li.querySelector(".name-text"));
      const actions = /** @type {HTMLElement} */ (li.querySelector(".person-actions"));
      const range = document.createRange();
      range.selectNodeContents(text);
      // One rectangle per line the name's text is laid out on.
      const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top))).size;
      const nameBox = name.getBoundingClientRect();
      const actionsBox = actions.getBoundingClientRect();
      return {
        name: /** @type {HTMLElement} */ (li).dataset.name ?? "",
        lines,
        title: text.title,
        cut: name.scrollWidth > name.clientWidth,
        textOverflow: getComputedStyle(name).textOverflow,
        nameBottom: nameBox.bottom,
        nameWidth: nameBox.width,
        actionsTop: actionsBox.top,
        buttons: actions.querySelectorAll(":scope > button, :scope > details > summary").length,
      };
    }),
  );
}

describe("the raised-hands list keeps names whole", { timeout: 90_000 }, () => {
  before(async () => {
    server = await startServer({ log: "server-layout.log" });
    const room = await server.api("POST", "/api/v1/rooms", { title: "Layout" });
    const link = async (/** @type {string} */ role) => (await server.api("POST", `/api/v1/rooms/${room.id}/invites`, { role })).url;
    const [moderatorLink, listenerLink] = [await link("moderator"), await link("listener")];
    moderator = await openBrowser({ name: "layout-moderator", viewport: LAPTOP });
    await moderator.page.goto(moderatorLink);
    await moderator.page.getByTestId("display-name").fill("Ada");
    await moderator.page.getByTestId("join").click();
    await moderator.page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor();

    // The home page: the server's origin, under the page policy that allows its own sockets.
    const hands = await moderator.context.newPage();
    await hands.goto(server.base);
    await raiseHandAs(hands, listenerLink, SHORT);
    await raiseHandAs(hands, listenerLink, LONG);
    for (const name of [SHORT, LONG]) {
      await moderator.page
        .locator(`[data-testid="raised-hands"] [data-name="${name}"] [data-testid="action-invite-to-stage"]`)
        .waitFor();
    }
  }, { timeout: 60_000 });

  after(async () => {
    await cleanup();
  }, { timeout: 30_000 });

  for (const [label, viewport] of /** @type {const} */ ([["1,100 px", LAPTOP], ["a phone", PHONE]])) {
    it(`at ${label}: each name on one line, cut with an ellipsis if at all, buttons below`, async () => {
      const page = moderator.page;
      await page.setViewportSize(viewport);
      await page.screenshot({ path: join(ARTIFACTS, `hands-${viewport.width}.png`) });
      const hands = await measureHands(page);
      assert.deepEqual(hands.map((hand) => hand.name).sort(), [LONG, SHORT].sort());
      for (const hand of hands) {
        const seen = JSON.stringify(hand);
        assert.equal(hand.lines, 1, `one line: ${seen}`);
        assert.equal(hand.title, hand.name, `the whole name on hover: ${seen}`);
        if (hand.cut) assert.equal(hand.textOverflow, "ellipsis", `cut with an ellipsis, not clipped: ${seen}`);
        assert.equal(hand.buttons, 2, `Invite to speak and the menu: ${seen}`);
        assert.ok(hand.actionsTop >= hand.nameBottom, `the buttons are below the name: ${seen}`);
      }
      const short = /** @type {(typeof hands)[number]} */ (hands.find((hand) => hand.name === SHORT));
      assert.equal(short.cut, false, `"${SHORT}" fits whole: ${JSON.stringify(short)}`);
      const long = /** @type {(typeof hands)[number]} */ (hands.find((hand) => hand.name === LONG));
      assert.equal(long.cut, true, `a name longer than the column is cut: ${JSON.stringify(long)}`);
    });
  }
});
