-- Stoa control-plane schema, PostgreSQL dialect: the webhook outbox, as ../0007_webhooks.sql.

CREATE TABLE webhook_deliveries (
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    room_id         TEXT    NOT NULL REFERENCES rooms(id),
    event_type      TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    finished_at     BIGINT
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(room_id, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_state ON webhook_deliveries(state, seq);
