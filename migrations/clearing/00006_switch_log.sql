-- +goose Up
-- switch_log: the switch's own record of every routed call (DESIGN §4: the
-- tie-breaker when the two provinces' reports disagree). One row per call the
-- switch answered: authorisations and reversals routed to the payer, and
-- relationship commands and snapshots relayed between nodes.
-- Partitioned by setlym = the Asia/Shanghai month of started_at (partitions
-- created on demand by clearing_ensure_switch_partition); distribution key
-- payer_province = the sharer's province (the target of AUTHORIZE, REVERSAL
-- and RELATIONSHIP_COMMAND, the caller of RELATIONSHIP_SNAPSHOT).
CREATE TABLE switch_log (
    setlym          integer NOT NULL,
    payer_province  text COLLATE "C" NOT NULL,
    id              bigserial NOT NULL,
    op              text NOT NULL CHECK (op IN ('AUTHORIZE', 'REVERSAL', 'RELATIONSHIP_COMMAND', 'RELATIONSHIP_SNAPSHOT')),
    caller_province text NOT NULL,
    target_province text NOT NULL,
    -- usage key (AUTHORIZE), reversal key (REVERSAL), command key
    -- (RELATIONSHIP_COMMAND), relationship id and version (RELATIONSHIP_SNAPSHOT)
    key             text COLLATE "C" NOT NULL,
    reversal_of     text NOT NULL DEFAULT '', -- REVERSAL: the usage key
    outcome         text NOT NULL CHECK (outcome IN ('APPROVED', 'REFUSED', 'UNAVAILABLE', 'ERROR')),
    code            text NOT NULL DEFAULT '', -- REFUSED/ERROR: the reason (gRPC code name or domain code)
    detail          text NOT NULL DEFAULT '',
    -- what the switch saw of the usage, for the tie-break ('' / NULL: not known)
    amount          numeric(18,2) CHECK (amount > 0), -- requested, or approved when APPROVED
    kind            text NOT NULL DEFAULT '',
    payer_region    text NOT NULL DEFAULT '',
    payee_province  text NOT NULL DEFAULT '',
    payee_region    text NOT NULL DEFAULT '',
    occurred_at     timestamptz,
    relationship_id text NOT NULL DEFAULT '',
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL CHECK (finished_at >= started_at),
    latency_us      bigint NOT NULL CHECK (latency_us >= 0),
    PRIMARY KEY (setlym, payer_province, id)
) PARTITION BY LIST (setlym);
CREATE INDEX switch_log_key ON switch_log (payer_province, key);

-- +goose StatementBegin
CREATE FUNCTION clearing_ensure_switch_partition(p integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    part text := 'switch_log_p' || p::text;
BEGIN
    IF p IS NULL OR p NOT BETWEEN 200001 AND 299912 OR p % 100 NOT BETWEEN 1 AND 12 THEN
        RAISE EXCEPTION 'bad period %', p USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('gongji.switch_log.partition'), p);
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'switch_log'::regclass AND c.relname = part) THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE switch_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format('ALTER TABLE switch_log ATTACH PARTITION %I FOR VALUES IN (%s)', part, p);
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION clearing_ensure_switch_partition(integer);
DROP TABLE switch_log;
