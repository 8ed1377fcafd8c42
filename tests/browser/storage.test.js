/**
 * What the web client keeps in the browser (client-web/storage.js), without a browser: invite
 * codes are forgotten when their invite expires, so a shared computer does not keep them.
 */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";

/** A Storage (the part storage.js uses) over a Map. */
class MemoryStorage {
  constructor() {
    /** @type {Map<string, string>} */
    this.items = new Map();
  }
  get length() {
    return this.items.size;
  }
  /** @param {number} i */
  key(i) {
    return [...this.items.keys()][i] ?? null;
  }
  /** @param {string} k */
  getItem(k) {
    return this.items.get(k) ?? null;
  }
  /** @param {string} k @param {string} v */
  setItem(k, v) {
    this.items.set(k, String(v));
  }
  /** @param {string} k */
  removeItem(k) {
    this.items.delete(k);
  }
}

const local = new MemoryStorage();
/** @type {any} */ (globalThis).window = { localStorage: local, sessionStorage: new MemoryStorage() };
const source = await readFile(new URL("../../client-web/storage.js", import.meta.url), "utf8");
const storage = await import(`data:text/javascript;charset=utf-8,${encodeURIComponent(source)}`);

const HOUR = 3_600_000;

describe("invite codes in localStorage", () => {
  it("are forgotten once the invite expires", () => {
    const now = Date.now();
    storage.setRoomOfInvite("code-a", "rm_a", new Date(now + HOUR).toISOString());
    assert.equal(storage.roomOfInvite("code-a"), "rm_a");
    storage.forgetExpiredInvites(now + 2 * HOUR);
    assert.equal(storage.roomOfInvite("code-a"), null);
    assert.equal(
      [...local.items.keys()].filter((k) => k.includes("code-a")).length,
      0,
      "the code itself must leave the browser",
    );
  });

  it("do not outlive their invite even if nobody sweeps", () => {
    storage.setRoomOfInvite("code-b", "rm_b", new Date(Date.now() - 1).toISOString());
    assert.equal(storage.roomOfInvite("code-b"), null);
    assert.equal(local.getItem("stoa.inviteRoom.code-b"), null);
  });

  it("without an expiry are kept for a bounded time, and old entries are swept", () => {
    const now = Date.now();
    storage.setRoomOfInvite("code-c", "rm_c", null);
    assert.equal(storage.roomOfInvite("code-c"), "rm_c");
    local.setItem("stoa.inviteRoom.code-old", "rm_old");
    storage.forgetExpiredInvites(now + 31 * 24 * HOUR);
    assert.equal(storage.roomOfInvite("code-c"), null);
    assert.equal(local.getItem("stoa.inviteRoom.code-old"), null);
  });
});
