-- Stoa control-plane schema, version 8: replay links. A replay link is made like an invite
-- (role-less; uses, expiry, revocable) for one recording, and opens only that recording:
-- its detail, who spoke when, its audio. As with invites, only the code's hash is kept.

CREATE TABLE replay_links (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    room_id      TEXT    NOT NULL REFERENCES rooms(id),
    recording_id TEXT    NOT NULL REFERENCES recordings(id),
    code_hash    BLOB    NOT NULL UNIQUE,
    label        TEXT,
    max_uses     INTEGER CHECK (max_uses IS NULL OR max_uses > 0),
    uses         INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
    expires_at   INTEGER,
    revoked_at   INTEGER,
    created_at   INTEGER NOT NULL,
    created_by   TEXT    NOT NULL,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
CREATE INDEX replay_links_by_room ON replay_links(room_id, seq);
CREATE INDEX replay_links_by_recording ON replay_links(recording_id);
