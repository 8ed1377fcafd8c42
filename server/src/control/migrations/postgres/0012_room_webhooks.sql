-- Stoa control-plane schema, PostgreSQL dialect: rooms' own webhook endpoints, as
-- ../0012_room_webhooks.sql.

CREATE TABLE room_webhooks (
    id                TEXT    PRIMARY KEY,
    room_id           TEXT    NOT NULL UNIQUE REFERENCES rooms(id),
    url               TEXT    NOT NULL,
    secret            TEXT    NOT NULL,
    created_at        BIGINT  NOT NULL,
    created_by        TEXT    NOT NULL,
    updated_at        BIGINT  NOT NULL,
    secret_rotated_at BIGINT  NOT NULL
);

ALTER TABLE webhook_deliveries ADD COLUMN endpoint TEXT;

DROP INDEX webhook_deliveries_pending;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(room_id, endpoint, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_room_endpoints ON webhook_deliveries(room_id, seq)
    WHERE endpoint IS NOT NULL;
