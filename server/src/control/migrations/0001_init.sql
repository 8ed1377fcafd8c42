-- Stoa control-plane schema, version 1. Times are Unix milliseconds (UTC).
-- `seq` columns give a stable order for keyset pagination; public ids are random strings.

CREATE TABLE rooms (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    title            TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    ended_at         INTEGER,
    max_participants INTEGER,
    max_stage        INTEGER,
    is_demo          INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE invites (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    room_id    TEXT    NOT NULL REFERENCES rooms(id),
    -- SHA-256 of the code: the code itself is shown once, when created, and never stored.
    code_hash  BLOB    NOT NULL UNIQUE,
    role       TEXT    NOT NULL CHECK (role IN ('listener', 'speaker', 'moderator')),
    label      TEXT,
    max_uses   INTEGER CHECK (max_uses IS NULL OR max_uses > 0),
    uses       INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
    expires_at INTEGER,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    -- Printed by `stoa serve` at start; replaced (revoked) at the next start.
    is_startup INTEGER NOT NULL DEFAULT 0,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
CREATE INDEX invites_by_room ON invites(room_id, seq);

-- A participant identity is per room: the browser keeps an opaque secret, we keep its hash.
CREATE TABLE identities (
    id             TEXT    PRIMARY KEY,
    room_id        TEXT    NOT NULL REFERENCES rooms(id),
    secret_hash    BLOB    NOT NULL,
    display_name   TEXT    NOT NULL,
    invite_id      TEXT    REFERENCES invites(id),
    created_at     INTEGER NOT NULL,
    last_joined_at INTEGER NOT NULL,
    UNIQUE (room_id, secret_hash)
);

CREATE TABLE bans (
    room_id        TEXT    NOT NULL REFERENCES rooms(id),
    participant_id TEXT    NOT NULL REFERENCES identities(id),
    created_at     INTEGER NOT NULL,
    created_by     TEXT    NOT NULL,
    PRIMARY KEY (room_id, participant_id)
);

CREATE TABLE audit_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT    NOT NULL REFERENCES rooms(id),
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT,
    detail  TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_by_room ON audit_events(room_id, seq);
