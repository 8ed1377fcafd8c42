-- Stoa control-plane schema, version 9, PostgreSQL dialect (see ../0009_listen_links.sql):
-- listen links, a room's public broadcast. A listen link lets anyone who holds it hear the
-- room's broadcast (LL-HLS) without joining: no role, no identity, no signaling. Like an
-- invite it has a label, an expiry and can be revoked; it has no uses to count.

CREATE TABLE listen_links (
    seq        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    room_id    TEXT    NOT NULL REFERENCES rooms(id),
    -- SHA-256 of the code: the code itself is shown once, when created, and never stored.
    code_hash  BYTEA   NOT NULL UNIQUE,
    label      TEXT,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT  NOT NULL,
    created_by TEXT    NOT NULL
);
CREATE INDEX listen_links_by_room ON listen_links(room_id, seq);
