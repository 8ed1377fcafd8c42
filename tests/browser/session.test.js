// @ts-check
/**
 * A session token outlives its TTL only through the signaling socket (`renew_session`): a
 * moderator who stays in the room past it still makes invite links from the page. The server
 * runs with the shortest TTL it allows (30 s); the test waits it out, checks the page's first
 * token is refused, then makes a link through the invite dialog.
 */

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { cleanup, openBrowser, startServer, waitFor } from "./harness.js";

const TTL_SECS = 30;

after(cleanup);

describe("a session past its TTL", () => {
  it("is renewed over the socket, and the moderator still makes invite links", { timeout: 120_000 }, async () => {
    const server = await startServer({ log: "server-session.log", config: `[limits]\nsession_ttl_secs = ${TTL_SECS}\n` });
    const { id } = await server.api("POST", "/api/v1/rooms", { title: "A long evening" });
    const link = (await server.api("POST", `/api/v1/rooms/${id}/invites`, { role: "moderator" })).url;
    const { page } = await openBrowser({ name: "session-moderator", origin: server.base });
    await page.goto(link);
    await page.getByTestId("display-name").fill("Ada");
    await page.getByTestId("join").click();
    await page.locator('[data-testid="connection-state"][data-state="connected"]').waitFor({ timeout: 15_000 });
    const session = () => page.evaluate(() => {
      const s = /** @type {any} */ (window).stoa.state.session;
      return { token: String(s.token), expiresAt: String(s.expires_at) };
    });
    const first = await session();
    // The page's signaling requests that REST would need a token for are answered on the socket:
    // a broadcast link (its player renews it every few minutes) settles as an answer.
    const answer = await page.evaluate(() =>
      /** @type {any} */ (window).stoa.signal.request("broadcast_link").then(
        (/** @type {any} */ m) => m.type,
        (/** @type {Error} */ e) => `refused: ${e.message}`,
      ),
    );
    assert.equal(answer, "broadcast_link");

    // Past the token's expiry (the server's clock is the machine's).
    await waitFor(async () => Date.now() > Date.parse(first.expiresAt) + 1000, {
      timeout: (TTL_SECS + 10) * 1000,
      interval: 500,
      message: "the first token expired",
    });
    const refused = await fetch(`${server.base}/api/v1/rooms/${id}/invites`, {
      method: "POST",
      headers: { authorization: `Bearer ${first.token}`, "content-type": "application/json" },
      body: JSON.stringify({ role: "listener" }),
    });
    assert.equal(refused.status, 401);
    assert.equal((await refused.json()).code, "token_expired");

    await page.getByTestId("create-invite").click();
    await page.getByTestId("invite-role").selectOption("listener");
    await page.getByTestId("invite-submit").click();
    const made = page.getByTestId("invite-link");
    await made.waitFor({ timeout: 10_000 });
    const url = (await made.textContent()) ?? "";
    assert.match(url, /\/i\/[A-Za-z0-9_-]{22}$/u);
    const preview = await fetch(url);
    assert.equal(preview.status, 200);

    const renewed = await session();
    assert.notEqual(renewed.token, first.token, "the page holds a renewed token");
    assert.ok(Date.parse(renewed.expiresAt) > Date.now(), "good for a while yet");
    // The session is kept per tab (sessionStorage), for a reload.
    const stored = await page.evaluate(() => JSON.stringify(sessionStorage));
    assert.ok(stored.includes(renewed.token), "the renewed token is kept for a reload");
  });
});
