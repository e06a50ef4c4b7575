-- +goose Up
-- report_receipts: the per-node stream dedup. One row per outbox record a node
-- has delivered, written in the same transaction as the record's effect, so a
-- replayed record is recognised by (province, seq) and acknowledged again
-- without being applied twice. Distribution key: province (the reporter).
CREATE TABLE report_receipts (
    province    text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL CHECK (seq > 0),
    received_at timestamptz NOT NULL,
    PRIMARY KEY (province, seq)
);

-- report_rejects: records refused at the edge (bad codes or amount, a node
-- reporting another province's record, a conflicting payload for a key it has
-- already reported). Acknowledged all the same, so the node's outbox moves on;
-- the record is kept here for the province's support staff. usage_id is ''
-- when the record had none. Distribution key: province (the reporter).
CREATE TABLE report_rejects (
    province    text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    usage_id    text NOT NULL,
    reason      text NOT NULL,
    record      jsonb NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (province, seq)
);

-- relationship_events: RELATIONSHIP outbox records, counted (not cleared).
-- setlym is the Asia/Shanghai month of the change. Distribution key:
-- sharer_province (the relationship's authority, the payer side).
CREATE TABLE relationship_events (
    sharer_province      text COLLATE "C" NOT NULL,
    reporter_province    text COLLATE "C" NOT NULL,
    seq                  bigint NOT NULL,
    setlym               integer NOT NULL,
    relationship_id      text NOT NULL,
    version              bigint NOT NULL CHECK (version > 0),
    status               text NOT NULL,
    beneficiary_province text NOT NULL,
    changed_at           timestamptz NOT NULL,
    received_at          timestamptz NOT NULL,
    PRIMARY KEY (sharer_province, reporter_province, seq)
);
CREATE INDEX relationship_events_setlym ON relationship_events (setlym, sharer_province);

-- local_usage_counts: LOCAL (same-province) usages and reversals, settled
-- inside the province (R13): counted per month, never cleared. amount is the
-- signed sum. Distribution key: province.
CREATE TABLE local_usage_counts (
    province   text COLLATE "C" NOT NULL,
    setlym     integer NOT NULL,
    entry_type text NOT NULL,
    kind       text NOT NULL,
    records    bigint NOT NULL,
    amount     numeric(18,2) NOT NULL,
    PRIMARY KEY (province, setlym, entry_type, kind)
);

-- +goose Down
DROP TABLE local_usage_counts;
DROP TABLE relationship_events;
DROP TABLE report_rejects;
DROP TABLE report_receipts;
