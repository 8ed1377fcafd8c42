/**
 * The web client's room model (client-web/room.js) without a browser: snapshots and events in,
 * the lists the page shows out. Messages are shaped like those in docs/protocol.md.
 */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, it } from "node:test";
import { participant } from "./fixtures.js";

// client-web has no package.json saying "module"; room.js imports nothing, so load it as data.
const source = await readFile(new URL("../../client-web/room.js", import.meta.url), "utf8");
const { fromSnapshot, applyEvent, addAudiencePage, me, announce } = await import(
  `data:text/javascript;charset=utf-8,${encodeURIComponent(source)}`
);

const ada = participant({ id: "pt_ada", display_name: "Ada", role: "moderator", on_stage: true });
const sam = participant({ id: "pt_sam", display_name: "Sam", role: "speaker", on_stage: true });
const lee = participant({ id: "pt_lee", display_name: "Lee" });
const bo = participant({ id: "pt_bo", display_name: "Bo" });

function listenerView() {
  return fromSnapshot("Friday jam", {
    room: "rm_1",
    you: lee,
    invitation_pending: false,
    stage: [ada, sam],
    raised_hands: [],
    active_speakers: [],
    audience_count: 2,
  });
}

function moderatorView() {
  return fromSnapshot("Friday jam", {
    room: "rm_1",
    you: ada,
    invitation_pending: false,
    stage: [ada, sam],
    raised_hands: [],
    active_speakers: ["pt_sam"],
    audience_count: 2,
    audience: { participants: [lee], next: "pt_lee" },
    pending_invitations: [],
  });
}

describe("room model", () => {
  it("files the snapshot: stage in order, audience only for moderators", () => {
    const listener = listenerView();
    assert.deepEqual(listener.stage, ["pt_ada", "pt_sam"]);
    assert.equal(listener.listsAudience, false);
    assert.deepEqual(listener.audience, []);
    assert.equal(me(listener).display_name, "Lee");

    const moderator = moderatorView();
    assert.equal(moderator.listsAudience, true);
    assert.deepEqual(moderator.audience, ["pt_lee"]);
    assert.equal(moderator.audienceNext, "pt_lee");
    assert.deepEqual([...moderator.speaking], ["pt_sam"]);
  });

  it("follows the stage flow: hand, invitation, accept", () => {
    const room = listenerView();
    applyEvent(room, { type: "hand_raised", seq: 5, participant: { ...lee, hand_raised: true } });
    assert.deepEqual(room.hands, ["pt_lee"]);
    assert.equal(announce(room, { type: "hand_raised", participant: { ...lee, hand_raised: true } }), "Your hand is raised.");

    applyEvent(room, { type: "invited_to_stage", seq: 6, by: "pt_ada", participant: "pt_lee" });
    assert.equal(room.invitationPending, true);

    const up = { ...lee, role: "speaker", on_stage: true };
    applyEvent(room, { type: "joined_stage", seq: 7, participant: up });
    assert.equal(room.invitationPending, false);
    assert.deepEqual(room.hands, [], "accepting lowers the hand");
    assert.deepEqual(room.stage, ["pt_ada", "pt_sam", "pt_lee"]);
    assert.equal(me(room).on_stage, true);
  });

  it("forgets, for non-moderators, someone who goes quiet into the audience", () => {
    const room = listenerView();
    applyEvent(room, { type: "left_stage", seq: 9, by: "pt_ada", participant: { ...sam, role: "listener", on_stage: false } });
    assert.deepEqual(room.stage, ["pt_ada"]);
    assert.equal(room.people.has("pt_sam"), false);
  });

  it("keeps the moderators' audience list up to date", () => {
    const room = moderatorView();
    applyEvent(room, { type: "participant_joined", seq: 3, participant: bo });
    assert.deepEqual(room.audience, ["pt_lee", "pt_bo"]);
    applyEvent(room, { type: "left_stage", seq: 4, by: "pt_ada", participant: { ...sam, role: "listener", on_stage: false } });
    assert.deepEqual(room.audience, ["pt_lee", "pt_bo", "pt_sam"]);
    applyEvent(room, { type: "participant_left", seq: 5, participant: "pt_bo", reason: "banned" });
    assert.deepEqual(room.audience, ["pt_lee", "pt_sam"]);
    assert.equal(room.people.has("pt_bo"), false);

    addAudiencePage(room, { participants: [participant({ id: "pt_zed", display_name: "Zed" })], next: null });
    assert.deepEqual(room.audience, ["pt_lee", "pt_sam", "pt_zed"]);
    assert.equal(room.audienceNext, null);
  });

  it("tracks invitations, mutes and who speaks", () => {
    const room = moderatorView();
    applyEvent(room, { type: "invited_to_stage", seq: 6, by: "pt_ada", participant: "pt_lee" });
    assert.deepEqual([...room.pendingInvitations], ["pt_lee"]);
    applyEvent(room, { type: "invitation_declined", seq: 7, participant: "pt_lee" });
    assert.deepEqual([...room.pendingInvitations], []);

    applyEvent(room, { type: "muted", seq: 8, by: "pt_ada", participant: { ...sam, muted: true } });
    assert.equal(room.people.get("pt_sam").muted, true);
    assert.equal(announce(room, { type: "muted", by: "pt_ada", participant: { ...sam, muted: true } }), "Sam is muted.");

    applyEvent(room, { type: "active_speakers", seq: 9, speakers: ["pt_ada"] });
    assert.deepEqual([...room.speaking], ["pt_ada"]);
    assert.equal(room.people.get("pt_sam").speaking, false);
    assert.equal(room.people.get("pt_ada").speaking, true);

    applyEvent(room, { type: "audience_count", count: 7 });
    assert.equal(room.audienceCount, 7);
  });

  it("tells the muted person who muted them", () => {
    const room = fromSnapshot("Friday jam", {
      room: "rm_1",
      you: sam,
      invitation_pending: false,
      stage: [ada, sam],
      raised_hands: [],
      active_speakers: [],
      audience_count: 0,
    });
    const event = { type: "muted", seq: 3, by: "pt_ada", participant: { ...sam, muted: true } };
    applyEvent(room, event);
    assert.equal(announce(room, event), "A moderator muted you.");
    assert.equal(me(room).muted, true);
  });
});
