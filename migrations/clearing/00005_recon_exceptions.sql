-- +goose Up
-- Reconciliation exceptions, listed on the statements of every province in
-- provinces (DESIGN §4):
--   AMOUNT_DIFFERS / FIELD_DIFFERS  one row per differing field (field,
--       payer_value, payee_value in canonical text: amounts with two decimals,
--       times RFC 3339 with +08:00), so both reports can be rebuilt from the
--       usages row (the authoritative report) and these rows;
--   REJECTED   a side reported a key again with another payload (not applied);
--   ONE_SIDED  still reported by one side only when the period closed.
-- setlym is the period of the usage row while it is open, else the period in
-- which the report that revealed the difference arrived. reporter_province /
-- reporter_seq name that report ('' / 0 for ONE_SIDED, found at close).
-- Distribution key: payer_province.
CREATE TABLE recon_exceptions (
    setlym            integer NOT NULL,
    payer_province    text COLLATE "C" NOT NULL,
    usage_id          text COLLATE "C" NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('ONE_SIDED', 'AMOUNT_DIFFERS', 'FIELD_DIFFERS', 'REJECTED')),
    field             text NOT NULL DEFAULT '',
    reporter_province text COLLATE "C" NOT NULL DEFAULT '',
    reporter_seq      bigint NOT NULL DEFAULT 0,
    payee_province    text NOT NULL,
    provinces         text[] NOT NULL,
    payer_value       text NOT NULL DEFAULT '',
    payee_value       text NOT NULL DEFAULT '',
    detail            text NOT NULL,
    created_at        timestamptz NOT NULL,
    PRIMARY KEY (setlym, payer_province, usage_id, kind, field, reporter_province, reporter_seq)
);
CREATE INDEX recon_exceptions_usage ON recon_exceptions (usage_id);

-- +goose Down
DROP TABLE recon_exceptions;
