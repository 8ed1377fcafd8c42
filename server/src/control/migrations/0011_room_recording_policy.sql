-- Stoa control-plane schema, version 11: a room's own recording policy. `record_by_default`
-- (0 or 1) starts a recording whenever the room goes live; `retention_days` (0 keeps them)
-- is how long its recordings and live clips are kept. NULL means the server's `[recording]`
-- setting.

ALTER TABLE rooms ADD COLUMN record_by_default INTEGER CHECK (record_by_default IN (0, 1));
ALTER TABLE rooms ADD COLUMN retention_days INTEGER
    CHECK (retention_days BETWEEN 0 AND 36500);
-- Retention finds a node's oldest live clips (clips of recordings go with their recording).
CREATE INDEX clips_live_by_node ON clips(node, created_at) WHERE recording_id IS NULL;
