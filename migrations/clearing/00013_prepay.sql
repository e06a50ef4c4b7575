-- +goose Up
-- The prepayment pool (R18). Money is in the journal (00010: deposit:<prov>,
-- receivable:<prov>, payable:<prov>, centre:pool, ext:bank); these tables hold
-- what the journal does not: each settlement's rows (prepay.csv), payouts and
-- top-up requests, each province's replenishment due and required deposit,
-- and the idempotency keys of operator movements.
--
-- Exactly one settlement per period and province: the primary keys below make
-- a second draw impossible even if SettlePeriod were run twice past its
-- period lock. All settlement rows are append-only (prepay_append_only).

CREATE TABLE prepay_rows (
    setlym         integer NOT NULL REFERENCES periods (setlym),
    province       text NOT NULL,
    deposit_before numeric(18,2) NOT NULL CHECK (deposit_before >= 0),
    drawn          numeric(18,2) NOT NULL CHECK (drawn >= 0),
    outstanding    numeric(18,2) NOT NULL CHECK (outstanding >= 0),
    deposit_after  numeric(18,2) NOT NULL CHECK (deposit_after >= 0),
    required_next  numeric(18,2) NOT NULL CHECK (required_next >= 0),
    warning        boolean NOT NULL,
    PRIMARY KEY (setlym, province),
    CHECK (deposit_after = deposit_before - drawn)
);

CREATE TABLE prepay_payouts (
    setlym   integer NOT NULL REFERENCES periods (setlym),
    province text NOT NULL,
    due      numeric(18,2) NOT NULL CHECK (due > 0),
    paid     numeric(18,2) NOT NULL CHECK (paid >= 0),
    unpaid   numeric(18,2) NOT NULL CHECK (unpaid >= 0),
    PRIMARY KEY (setlym, province),
    CHECK (paid + unpaid = due)
);

-- Emergency top-up requests raised by a settlement (a warning or a shortfall).
CREATE TABLE prepay_topups (
    setlym        integer NOT NULL REFERENCES periods (setlym),
    province      text NOT NULL,
    warning       boolean NOT NULL,
    outstanding   numeric(18,2) NOT NULL CHECK (outstanding >= 0),
    deposit_after numeric(18,2) NOT NULL CHECK (deposit_after >= 0),
    required_next numeric(18,2) NOT NULL CHECK (required_next >= 0),
    deposit_topup numeric(18,2) NOT NULL CHECK (deposit_topup >= 0),
    requested_at  timestamptz NOT NULL,
    PRIMARY KEY (setlym, province)
);

-- One row per province that was ever settled or funded: what it has had
-- drawn and not yet replenished, and its latest required deposit.
CREATE TABLE prepay_accounts (
    province      text PRIMARY KEY,
    replenish_due numeric(18,2) NOT NULL DEFAULT 0 CHECK (replenish_due >= 0),
    required      numeric(18,2) NOT NULL DEFAULT 0 CHECK (required >= 0),
    updated_at    timestamptz NOT NULL
);

-- Operator movements (fund, replenish, shortfall payment), idempotent by key:
-- the same key with the same request replays, with another is refused.
CREATE TABLE prepay_movements (
    movement_key text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('PREPAY_FUND', 'PREPAY_REPLENISH', 'PREPAY_SHORTFALL_SETTLEMENT')),
    province     text NOT NULL,
    amount       numeric(18,2) NOT NULL CHECK (amount > 0),
    request_hash bytea NOT NULL,
    entry_id     bigint NOT NULL UNIQUE REFERENCES journal_entries (id),
    at           timestamptz NOT NULL
);

-- +goose StatementBegin
CREATE FUNCTION prepay_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'prepayment settlement records are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'GJ010';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER prepay_rows_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON prepay_rows
    FOR EACH STATEMENT EXECUTE FUNCTION prepay_append_only();
CREATE TRIGGER prepay_payouts_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON prepay_payouts
    FOR EACH STATEMENT EXECUTE FUNCTION prepay_append_only();
CREATE TRIGGER prepay_topups_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON prepay_topups
    FOR EACH STATEMENT EXECUTE FUNCTION prepay_append_only();
CREATE TRIGGER prepay_movements_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON prepay_movements
    FOR EACH STATEMENT EXECUTE FUNCTION prepay_append_only();

-- +goose Down
DROP TABLE prepay_movements;
DROP TABLE prepay_accounts;
DROP TABLE prepay_topups;
DROP TABLE prepay_payouts;
DROP TABLE prepay_rows;
DROP FUNCTION prepay_append_only();
