/**
 * The web client's permission rule (client-web/permissions.js) without a browser: what a
 * participant's menu offers, for every role of the server's table (client-web/permissions.json)
 * looking at every role, and that the offer follows the table rather than a copy of it.
 */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";

import { ROLES, actionsFor, commandOf, may, mayToOthers, rolesFrom } from "../../client-web/permissions.js";
import { fromSnapshot } from "../../client-web/room.js";
import { participant } from "./fixtures.js";

const server = JSON.parse(await readFile(new URL("../../client-web/permissions.json", import.meta.url), "utf8"));
const table = { roles: rolesFrom(server) };

/**
 * Each role as the person may find it in the room: a listener quiet, with a hand up or invited;
 * a speaker live or muted; a moderator on stage or in the audience.
 * @type {Record<string, Record<string, ReturnType<typeof participant>>>}
 */
const TARGETS = {
  listener: {
    quiet: participant({ id: "pt_quiet", role: "listener" }),
    "hand raised": participant({ id: "pt_hand", role: "listener", hand_raised: true }),
    invited: participant({ id: "pt_invited", role: "listener" }),
  },
  speaker: {
    live: participant({ id: "pt_live", role: "speaker", on_stage: true }),
    muted: participant({ id: "pt_muted", role: "speaker", on_stage: true, muted: true }),
  },
  moderator: {
    "on stage": participant({ id: "pt_mod_on", role: "moderator", on_stage: true }),
    "in the audience": participant({ id: "pt_mod_off", role: "moderator" }),
  },
};

/** What the menu must offer: by the viewer's role, then the target's role and situation. */
const EXPECTED = {
  listener: {
    listener: { quiet: [], "hand raised": [], invited: [] },
    speaker: { live: [], muted: [] },
    moderator: { "on stage": [], "in the audience": [] },
  },
  speaker: {
    listener: { quiet: [], "hand raised": [], invited: [] },
    speaker: { live: [], muted: [] },
    moderator: { "on stage": [], "in the audience": [] },
  },
  moderator: {
    listener: {
      quiet: ["invite-to-stage", "make-moderator", "remove", "ban"],
      "hand raised": ["invite-to-stage", "lower-hand", "make-moderator", "remove", "ban"],
      invited: ["cancel-invitation", "make-moderator", "remove", "ban"],
    },
    speaker: {
      live: ["mute", "move-to-audience", "make-moderator", "remove", "ban"],
      muted: ["move-to-audience", "make-moderator", "remove", "ban"],
    },
    moderator: {
      "on stage": ["mute", "move-to-audience", "remove-moderator", "remove", "ban"],
      "in the audience": ["remove-moderator", "remove", "ban"],
    },
  },
};

/**
 * The room as a viewer of `role` sees it, with every target in it (a moderator's view lists
 * the audience; the others see the stage and the hands).
 * @param {string} role
 */
function roomSeenBy(role) {
  const you = participant({ id: "pt_you", role, on_stage: role !== "listener" });
  const everyone = Object.values(TARGETS).flatMap((situations) => Object.values(situations));
  const audience = everyone.filter((p) => !p.on_stage);
  return fromSnapshot("Friday jam", {
    room: "rm_1",
    you,
    invitation_pending: false,
    stage: [you, ...everyone].filter((p) => p.on_stage),
    raised_hands: everyone.filter((p) => p.hand_raised),
    active_speakers: [],
    audience_count: audience.length,
    ...(role === "moderator" ? { audience: { participants: audience, next: null }, pending_invitations: ["pt_invited"] } : {}),
  });
}

describe("permissions", () => {
  it("reads the server's table: listener, speaker and moderator, each with `may` and `may_to_others`", () => {
    assert.ok(Object.keys(server.actions).length > 10, "the server's table lists its actions");
    assert.deepEqual(ROLES, table.roles);
    assert.deepEqual(Object.keys(ROLES), ["listener", "speaker", "moderator"]);
    // The derivation, on what the server says today.
    assert.deepEqual(new Set(ROLES.listener.may), new Set(["raise_hand", "lower_hand", "accept_invitation", "decline_invitation", "leave"]));
    assert.deepEqual(ROLES.listener.may_to_others, []);
    assert.deepEqual(new Set(ROLES.speaker.may), new Set(["join_stage", "leave_stage", "mute_self", "unmute", "leave"]));
    assert.deepEqual(
      new Set(ROLES.moderator.may_to_others),
      new Set(["lower_hand", "invite_to_stage", "cancel_invitation", "move_to_audience", "mute", "remove", "ban", "promote", "demote", "set_role"]),
    );
    for (const [role, rights] of Object.entries(table.roles)) {
      assert.deepEqual(Object.keys(rights), ["may", "may_to_others"], role);
      for (const list of Object.values(rights)) assert.ok(list.every((c) => typeof c === "string" && /^[a-z_]+$/u.test(c)), role);
    }
    assert.equal(may("listener", "raise_hand"), true);
    assert.equal(may("speaker", "raise_hand"), false);
    assert.equal(mayToOthers("moderator", "ban"), true);
    assert.equal(mayToOthers("speaker", "ban"), false);
  });

  it("offers each role exactly its actions on every role, in every situation", () => {
    const failures = [];
    for (const viewer of Object.keys(ROLES)) {
      assert.ok(viewer in EXPECTED, `the table has a role the test does not know: ${viewer}`);
      const room = roomSeenBy(viewer);
      for (const target of Object.keys(ROLES)) {
        assert.ok(target in TARGETS, `no target of role ${target}`);
        for (const [situation, p] of Object.entries(TARGETS[target])) {
          const expected = EXPECTED[/** @type {keyof typeof EXPECTED} */ (viewer)][target][situation];
          const got = actionsFor(room, /** @type {any} */ (room.people.get(p.id) ?? p));
          if (JSON.stringify(got) !== JSON.stringify(expected)) {
            failures.push(`${viewer} → ${target} (${situation}): expected ${expected.join(", ") || "nothing"}, got ${got.join(", ") || "nothing"}`);
          }
        }
      }
    }
    assert.deepEqual(failures, []);
  });

  it("offers nothing on oneself", () => {
    for (const role of Object.keys(ROLES)) {
      const room = roomSeenBy(role);
      assert.deepEqual(actionsFor(room, /** @type {any} */ (room.people.get("pt_you"))), [], role);
    }
  });

  it("every action it offers is one the table allows the viewer", () => {
    for (const viewer of Object.keys(ROLES)) {
      const room = roomSeenBy(viewer);
      for (const p of room.people.values()) {
        for (const action of actionsFor(room, p)) {
          assert.ok(table.roles[viewer].may_to_others.includes(commandOf(action)), `${viewer}: ${action}`);
        }
      }
    }
  });

  it("follows the table it is given, not a copy of the rules", () => {
    const room = roomSeenBy("moderator");
    const live = /** @type {any} */ (room.people.get("pt_live"));
    const noBans = structuredClone(table.roles);
    noBans.moderator.may_to_others = noBans.moderator.may_to_others.filter((/** @type {string} */ c) => c !== "ban");
    assert.deepEqual(actionsFor(room, live, noBans), ["mute", "move-to-audience", "make-moderator", "remove"]);

    const speakerRoom = roomSeenBy("speaker");
    const speakersMute = structuredClone(table.roles);
    speakersMute.speaker.may_to_others.push("mute");
    assert.deepEqual(actionsFor(speakerRoom, /** @type {any} */ (speakerRoom.people.get("pt_live")), speakersMute), ["mute"]);
  });
});
