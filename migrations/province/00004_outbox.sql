-- +goose Up
-- Transactional outbox (reports to the clearing service) and the relay queue
-- (durable cross-province relationship messages). docs/architecture.md
-- "Outbox and reporting", "Relationships across provinces".

-- Rows commit out of seq order; the streamer reads unacknowledged rows (the
-- partial index), never "everything after a cursor".
CREATE TABLE outbox (
    seq            bigserial PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('USAGE', 'REVERSAL', 'RELATIONSHIP')),
    role           text NOT NULL CHECK (role IN ('PAYER', 'PAYEE', 'LOCAL')),
    cross_province boolean NOT NULL,
    record_key     text NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL,
    acked_at       timestamptz
);
CREATE INDEX outbox_unacked ON outbox (seq) WHERE acked_at IS NULL;

-- At-least-once messages to another province's node through the clearing
-- service: SNAPSHOT (a relationship for its replica, applied if newer) and
-- DISSOLVE (an automatic dissolution command for the authority, applied by key).
CREATE TABLE relay_queue (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('SNAPSHOT', 'DISSOLVE')),
    target_province text NOT NULL CHECK (target_province ~ '^[0-9]{2}0000$'),
    message_key     text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    CONSTRAINT relay_queue_once UNIQUE (kind, target_province, message_key)
);
CREATE INDEX relay_queue_due ON relay_queue (next_attempt_at, id) WHERE delivered_at IS NULL;

-- +goose Down
DROP TABLE relay_queue;
DROP TABLE outbox;
