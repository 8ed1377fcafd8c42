-- Stoa control-plane schema: a room's own webhook endpoint, set through the API by whoever
-- manages the room, and the outbox rows meant for it. (Number 0012: 0011 is another change's.)

CREATE TABLE room_webhooks (
    -- `rwh_…`: named on the outbox rows meant for this endpoint.
    id                TEXT    PRIMARY KEY,
    room_id           TEXT    NOT NULL UNIQUE REFERENCES rooms(id),
    url               TEXT    NOT NULL,
    -- `whsec_…`, kept as the server's own is (in its config): it signs every attempt.
    secret            TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    -- Who set it: `operator` or a participant id (the audit log has every change).
    created_by        TEXT    NOT NULL,
    updated_at        INTEGER NOT NULL,
    secret_rotated_at INTEGER NOT NULL
);

-- NULL: the server's `[webhooks] url`; otherwise the `room_webhooks` row the event is for.
-- Not a foreign key: delivered and failed rows outlive a deleted endpoint, as its history.
ALTER TABLE webhook_deliveries ADD COLUMN endpoint TEXT;

-- A room's events are sent in order per endpoint: one queue per (room, endpoint).
DROP INDEX webhook_deliveries_pending;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(room_id, endpoint, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_room_endpoints ON webhook_deliveries(room_id, seq)
    WHERE endpoint IS NOT NULL;
