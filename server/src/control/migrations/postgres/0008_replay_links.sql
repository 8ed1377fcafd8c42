-- Stoa control-plane schema, version 8, PostgreSQL dialect (see ../0008_replay_links.sql):
-- replay links. A replay link is made like an invite (role-less; uses, expiry, revocable) for
-- one recording, and opens only that recording: its detail, who spoke when, its audio. As
-- with invites, only the code's hash is kept.

CREATE TABLE replay_links (
    seq          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    room_id      TEXT    NOT NULL REFERENCES rooms(id),
    recording_id TEXT    NOT NULL REFERENCES recordings(id),
    code_hash    BYTEA   NOT NULL UNIQUE,
    label        TEXT,
    max_uses     BIGINT  CHECK (max_uses IS NULL OR max_uses > 0),
    uses         BIGINT  NOT NULL DEFAULT 0 CHECK (uses >= 0),
    expires_at   BIGINT,
    revoked_at   BIGINT,
    created_at   BIGINT  NOT NULL,
    created_by   TEXT    NOT NULL,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
CREATE INDEX replay_links_by_room ON replay_links(room_id, seq);
CREATE INDEX replay_links_by_recording ON replay_links(recording_id);
