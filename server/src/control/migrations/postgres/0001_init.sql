-- Stoa control-plane schema, version 1, PostgreSQL dialect: the same tables, columns and
-- constraints as ../0001_init.sql. Times are Unix milliseconds (UTC); `seq` columns give a
-- stable order for keyset pagination; public ids are random strings.

CREATE TABLE rooms (
    seq              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    title            TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL,
    ended_at         BIGINT,
    max_participants BIGINT,
    max_stage        BIGINT,
    is_demo          BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE invites (
    seq        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    room_id    TEXT    NOT NULL REFERENCES rooms(id),
    -- SHA-256 of the code: the code itself is shown once, when created, and never stored.
    code_hash  BYTEA   NOT NULL UNIQUE,
    role       TEXT    NOT NULL CHECK (role IN ('listener', 'speaker', 'moderator')),
    label      TEXT,
    max_uses   BIGINT  CHECK (max_uses IS NULL OR max_uses > 0),
    uses       BIGINT  NOT NULL DEFAULT 0 CHECK (uses >= 0),
    expires_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT  NOT NULL,
    created_by TEXT    NOT NULL,
    -- Printed by `stoa serve` at start; replaced (revoked) at the next start.
    is_startup BOOLEAN NOT NULL DEFAULT FALSE,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
CREATE INDEX invites_by_room ON invites(room_id, seq);

-- A participant identity is per room: the browser keeps an opaque secret, we keep its hash.
CREATE TABLE identities (
    id             TEXT    PRIMARY KEY,
    room_id        TEXT    NOT NULL REFERENCES rooms(id),
    secret_hash    BYTEA   NOT NULL,
    display_name   TEXT    NOT NULL,
    invite_id      TEXT    REFERENCES invites(id),
    created_at     BIGINT  NOT NULL,
    last_joined_at BIGINT  NOT NULL,
    UNIQUE (room_id, secret_hash)
);

CREATE TABLE bans (
    room_id        TEXT    NOT NULL REFERENCES rooms(id),
    participant_id TEXT    NOT NULL REFERENCES identities(id),
    created_at     BIGINT  NOT NULL,
    created_by     TEXT    NOT NULL,
    PRIMARY KEY (room_id, participant_id)
);

CREATE TABLE audit_events (
    seq     BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id TEXT    NOT NULL REFERENCES rooms(id),
    at      BIGINT  NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT,
    detail  TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_by_room ON audit_events(room_id, seq);
