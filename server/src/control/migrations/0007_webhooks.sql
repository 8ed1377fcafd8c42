-- Stoa control-plane schema: the webhook outbox. Every event sent to the integration's URL is
-- a row here first, written in the same transaction as the fact it reports; rows of a room
-- are sent one after the other in `seq` order. (Number 0007: 0006 is another change's.)

CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The `webhook-id` header: the same on every attempt, so receivers can drop repeats.
    id              TEXT    NOT NULL UNIQUE,
    room_id         TEXT    NOT NULL REFERENCES rooms(id),
    event_type      TEXT    NOT NULL,
    -- The JSON body exactly as sent (and signed) on every attempt.
    body            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- The node sending it now, and until when; another node may take it after that.
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    finished_at     INTEGER
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(room_id, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries(state, seq);
