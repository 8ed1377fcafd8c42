-- Stoa control-plane schema, version 10: clips. A clip is a short piece of a room's mix (the
-- last seconds of a live room, or a range of one of its recordings) written as its own Ogg
-- Opus file on `node`, opened by its own link. Only the code's hash is kept. A clip of a
-- recording goes with it when the recording is deleted.

CREATE TABLE clips (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    room_id      TEXT    NOT NULL REFERENCES rooms(id),
    recording_id TEXT    REFERENCES recordings(id),
    code_hash    BLOB    NOT NULL UNIQUE,
    start_ms     INTEGER NOT NULL CHECK (start_ms >= 0),
    duration_ms  INTEGER NOT NULL CHECK (duration_ms >= 0),
    size_bytes   INTEGER NOT NULL CHECK (size_bytes >= 0),
    node         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT    NOT NULL
);
CREATE INDEX clips_by_room ON clips(room_id, seq);
CREATE INDEX clips_by_recording ON clips(recording_id);
