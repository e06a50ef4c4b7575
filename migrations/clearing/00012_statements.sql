-- +goose Up
-- Statements (R17): one per provincial unit and closed period, issued by the
-- close. The figures are not copied here: they live in the period's result
-- tables (00011), which are immutable. This table holds only the answer.
--   ISSUED -> CONFIRMED | DISPUTED    the province answered within the window
--   ISSUED -> DEEMED_CONFIRMED        the window passed (applied lazily on read
--                                     and by the sweep; answered_at = confirm_by)
-- statements_guard refuses any other change, and deleting a statement.
CREATE TABLE statements (
    setlym      integer NOT NULL REFERENCES periods (setlym),
    province    text NOT NULL,
    status      text NOT NULL CHECK (status IN ('ISSUED', 'CONFIRMED', 'DISPUTED', 'DEEMED_CONFIRMED')),
    issued_at   timestamptz NOT NULL,
    confirm_by  timestamptz NOT NULL CHECK (confirm_by > issued_at),
    answered_at timestamptz,
    -- the province's idempotency key and sha256 of its canonical answer
    answer_key  text,
    answer_hash bytea,
    PRIMARY KEY (setlym, province),
    CHECK ((status = 'ISSUED') = (answered_at IS NULL)),
    CHECK ((answer_key IS NULL) = (answer_hash IS NULL)),
    CHECK (answer_key IS NULL OR status IN ('CONFIRMED', 'DISPUTED'))
);
-- the sweep of overdue statements
CREATE INDEX statements_issued ON statements (confirm_by) WHERE status = 'ISSUED';

-- +goose StatementBegin
CREATE FUNCTION statements_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'statements are never deleted (% refused)', TG_OP USING ERRCODE = 'GJ003';
    END IF;
    IF NEW.setlym <> OLD.setlym OR NEW.province <> OLD.province
       OR NEW.issued_at <> OLD.issued_at OR NEW.confirm_by <> OLD.confirm_by
       OR OLD.status <> 'ISSUED' OR NEW.status = 'ISSUED' THEN
        RAISE EXCEPTION 'statement %/%: an answered statement is final (% -> %)',
            OLD.setlym, OLD.province, OLD.status, NEW.status USING ERRCODE = 'GJ003';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER statements_guard BEFORE UPDATE OR DELETE ON statements
    FOR EACH ROW EXECUTE FUNCTION statements_guard();
CREATE TRIGGER statements_no_truncate BEFORE TRUNCATE ON statements
    FOR EACH STATEMENT EXECUTE FUNCTION statements_guard();

-- Disputed items of a DISPUTED statement, and their resolution by an operator.
-- cleared_amount is the amount the item was cleared with; payer_province
-- locates its usages row. A resolution is final: accepted items name the
-- ADJUSTMENT cleared in a later open period (never an edit of this period).
CREATE TABLE statement_disputes (
    setlym            integer NOT NULL,
    province          text NOT NULL,
    usage_id          text NOT NULL,
    payer_province    text NOT NULL,
    cleared_amount    numeric(18,2) NOT NULL,
    claimed_amount    numeric(18,2) NOT NULL,
    reason            text NOT NULL,
    disputed_at       timestamptz NOT NULL,
    resolved_at       timestamptz,
    accepted          boolean,
    adjustment_id     text,
    adjustment_setlym integer,
    adjustment_amount numeric(18,2),
    resolution_key    text UNIQUE,
    resolution_hash   bytea,
    PRIMARY KEY (setlym, province, usage_id),
    FOREIGN KEY (setlym, province) REFERENCES statements (setlym, province),
    CHECK ((resolved_at IS NULL) = (accepted IS NULL)),
    CHECK ((resolved_at IS NULL) = (resolution_key IS NULL)),
    CHECK ((resolution_key IS NULL) = (resolution_hash IS NULL)),
    CHECK ((accepted IS TRUE) = (adjustment_id IS NOT NULL)),
    CHECK ((adjustment_id IS NULL) = (adjustment_setlym IS NULL)),
    CHECK ((adjustment_id IS NULL) = (adjustment_amount IS NULL))
);
-- A disputed record is adjusted at most once, whichever province disputed it.
CREATE UNIQUE INDEX statement_disputes_one_adjustment ON statement_disputes (setlym, usage_id) WHERE accepted;

-- +goose StatementBegin
CREATE FUNCTION statement_disputes_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'disputed items are never deleted (% refused)', TG_OP USING ERRCODE = 'GJ003';
    END IF;
    IF OLD.resolved_at IS NOT NULL
       OR (NEW.setlym, NEW.province, NEW.usage_id, NEW.payer_province, NEW.cleared_amount,
           NEW.claimed_amount, NEW.reason, NEW.disputed_at)
          IS DISTINCT FROM
          (OLD.setlym, OLD.province, OLD.usage_id, OLD.payer_province, OLD.cleared_amount,
           OLD.claimed_amount, OLD.reason, OLD.disputed_at) THEN
        RAISE EXCEPTION 'disputed item %/%/%: only an unresolved item can be resolved',
            OLD.setlym, OLD.province, OLD.usage_id USING ERRCODE = 'GJ003';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER statement_disputes_guard BEFORE UPDATE OR DELETE ON statement_disputes
    FOR EACH ROW EXECUTE FUNCTION statement_disputes_guard();
CREATE TRIGGER statement_disputes_no_truncate BEFORE TRUNCATE ON statement_disputes
    FOR EACH STATEMENT EXECUTE FUNCTION statement_disputes_guard();

-- Adjustments the clearing service itself cleared (usages rows with
-- entry_type ADJUSTMENT): where each row lives, for lookups by id (reports
-- from nodes are found through usage_keys; adjustments have no report).
CREATE TABLE clearing_adjustments (
    usage_id        text PRIMARY KEY,
    setlym          integer NOT NULL,
    payer_province  text NOT NULL,
    disputed_setlym integer NOT NULL,
    disputed_id     text NOT NULL,
    created_at      timestamptz NOT NULL,
    UNIQUE (disputed_setlym, disputed_id)
);

-- +goose Down
DROP TABLE clearing_adjustments;
DROP TABLE statement_disputes;
DROP TABLE statements;
DROP FUNCTION statement_disputes_guard();
DROP FUNCTION statements_guard();
