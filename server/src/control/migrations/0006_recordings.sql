-- Stoa control-plane schema, version 6: recordings of a room's mix. The file itself lives in
-- the data folder of the node that wrote it (`node`); this row says what it is and how far
-- it got. `state` is 'recording' while it is written, then 'ready' or 'failed'.

CREATE TABLE recordings (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    room_id     TEXT    NOT NULL REFERENCES rooms(id),
    state       TEXT    NOT NULL CHECK (state IN ('recording', 'ready', 'failed')),
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    size_bytes  INTEGER NOT NULL DEFAULT 0,
    node        TEXT    NOT NULL
);
CREATE INDEX recordings_by_room ON recordings(room_id, seq);
-- One recording at a time per room.
CREATE UNIQUE INDEX recordings_one_live_per_room ON recordings(room_id) WHERE state = 'recording';
