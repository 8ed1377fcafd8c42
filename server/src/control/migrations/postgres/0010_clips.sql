-- Stoa control-plane schema, version 10, PostgreSQL dialect (see ../0010_clips.sql): clips.
-- A clip is a short piece of a room's mix (the last seconds of a live room, or a range of one
-- of its recordings) written as its own Ogg Opus file on `node`, opened by its own link. Only
-- the code's hash is kept. A clip of a recording goes with it when the recording is deleted.

CREATE TABLE clips (
    seq          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    room_id      TEXT    NOT NULL REFERENCES rooms(id),
    recording_id TEXT    REFERENCES recordings(id),
    code_hash    BYTEA   NOT NULL UNIQUE,
    start_ms     BIGINT  NOT NULL CHECK (start_ms >= 0),
    duration_ms  BIGINT  NOT NULL CHECK (duration_ms >= 0),
    size_bytes   BIGINT  NOT NULL CHECK (size_bytes >= 0),
    node         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    created_by   TEXT    NOT NULL
);
CREATE INDEX clips_by_room ON clips(room_id, seq);
CREATE INDEX clips_by_recording ON clips(recording_id);
