-- +goose Up
-- Figures of a closed period (R15, R16), written once by ClosePeriod in the
-- transaction that moves the period from CLOSING to CLOSED, and immutable
-- afterwards: period_results_guard refuses an INSERT for a period that is not
-- CLOSING and every UPDATE, DELETE and TRUNCATE (GJ002, mapped by clearingdb
-- to ErrPeriodClosed). All are tiny next to usages: at most 32 x 31 province
-- pairs, 387 regions, 32 positions per period. (The close derives them from
-- one aggregate of the usages partition by region pair, kept in a temporary
-- table for the close's transaction only.)
-- In a distributed engine they are reference tables or co-located by setlym.
-- No foreign key to periods: the insert guard already requires the period to
-- exist and be CLOSING.

-- gross.csv: non-zero sums per ordered province pair.
CREATE TABLE period_gross (
    setlym         integer NOT NULL,
    payer_province text NOT NULL,
    payee_province text NOT NULL,
    amount         numeric(18,2) NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (setlym, payer_province, payee_province),
    CHECK (payer_province <> payee_province)
);

-- positions.csv (all 32 provincial units) plus the statement tallies: the
-- number of entries and their signed sum as payer and as payee.
CREATE TABLE period_positions (
    setlym        integer NOT NULL,
    province      text NOT NULL,
    receivable    numeric(18,2) NOT NULL,
    payable       numeric(18,2) NOT NULL,
    net           numeric(18,2) NOT NULL,
    payer_entries bigint NOT NULL CHECK (payer_entries >= 0),
    payer_sum     numeric(18,2) NOT NULL,
    payee_entries bigint NOT NULL CHECK (payee_entries >= 0),
    payee_sum     numeric(18,2) NOT NULL,
    PRIMARY KEY (setlym, province),
    CHECK (net = receivable - payable)
);

-- allocation.csv: every pooling region named by a row of the period.
CREATE TABLE period_allocation (
    setlym     integer NOT NULL,
    province   text NOT NULL,
    region     text NOT NULL,
    receivable numeric(18,2) NOT NULL,
    payable    numeric(18,2) NOT NULL,
    net        numeric(18,2) NOT NULL,
    PRIMARY KEY (setlym, province, region),
    CHECK (net = receivable - payable)
);

-- instructions.csv: both tiers.
CREATE TABLE period_instructions (
    setlym    integer NOT NULL,
    tier      text NOT NULL CHECK (tier IN ('NATIONAL', 'PROVINCE')),
    from_code text NOT NULL,
    to_code   text NOT NULL,
    amount    numeric(18,2) NOT NULL CHECK (amount > 0),
    PRIMARY KEY (setlym, tier, from_code, to_code)
);

-- period_close: the close's summary. closed_at is the period's cut-off (the
-- moment it logically closed, so an export is reproducible); closed_by_at is
-- when the operator's close actually ran. journal_head is the chain hash
-- after the close's entry (manifest.json journal_head).
CREATE TABLE period_close (
    setlym              integer PRIMARY KEY,
    usage_count         bigint NOT NULL CHECK (usage_count >= 0),
    late_count          bigint NOT NULL CHECK (late_count BETWEEN 0 AND usage_count),
    gross_total         numeric(18,2) NOT NULL,
    gross_abs           numeric(18,2) NOT NULL CHECK (gross_abs >= 0),
    positive_net_total  numeric(18,2) NOT NULL CHECK (positive_net_total >= 0),
    netting_efficiency  numeric(7,6) NOT NULL CHECK (netting_efficiency BETWEEN 0 AND 1),
    one_sided_at_close  bigint NOT NULL CHECK (one_sided_at_close >= 0),
    -- the chain after the close's CLEARING_CLOSE entry (none when every net is 0)
    journal_head_id     bigint NOT NULL CHECK (journal_head_id >= 0),
    journal_head        bytea NOT NULL,
    closed_at           timestamptz NOT NULL,
    closed_by_at        timestamptz NOT NULL
);

-- +goose StatementBegin
CREATE FUNCTION period_results_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad integer;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT min(n.setlym) INTO bad
          FROM new_rows n LEFT JOIN periods p ON p.setlym = n.setlym
         WHERE p.state IS DISTINCT FROM 'CLOSING';
        IF bad IS NULL THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'period %: % is written only while the period is CLOSING', bad, TG_TABLE_NAME
            USING ERRCODE = 'GJ002';
    END IF;
    RAISE EXCEPTION 'the figures of a closed period are immutable: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'GJ002';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER period_gross_insert AFTER INSERT ON period_gross
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_gross_frozen BEFORE UPDATE OR DELETE OR TRUNCATE ON period_gross
    FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_positions_insert AFTER INSERT ON period_positions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_positions_frozen BEFORE UPDATE OR DELETE OR TRUNCATE ON period_positions
    FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_allocation_insert AFTER INSERT ON period_allocation
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_allocation_frozen BEFORE UPDATE OR DELETE OR TRUNCATE ON period_allocation
    FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_instructions_insert AFTER INSERT ON period_instructions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_instructions_frozen BEFORE UPDATE OR DELETE OR TRUNCATE ON period_instructions
    FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_close_insert AFTER INSERT ON period_close
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();
CREATE TRIGGER period_close_frozen BEFORE UPDATE OR DELETE OR TRUNCATE ON period_close
    FOR EACH STATEMENT EXECUTE FUNCTION period_results_guard();

-- +goose Down
DROP TABLE period_close;
DROP TABLE period_instructions;
DROP TABLE period_allocation;
DROP TABLE period_positions;
DROP TABLE period_gross;
DROP FUNCTION period_results_guard();
