-- +goose Up
-- Cleared cross-province usages and reversals (DESIGN §11 usages.csv), one row
-- per usage key, partitioned by period (setlym) with one partition per period,
-- created on demand by clearing_ensure_usage_partition. Distribution key in a
-- distributed engine: payer_province (docs/partitioning.md). Codes and keys
-- use the C (byte-order) collation: the order of usages.csv and every index
-- comparison are then independent of the server's locale.
--
-- The row holds the authoritative report: the payer's once it has arrived
-- (DESIGN §4), else the payee's. payer_reported/payee_reported say which sides
-- have reported while the period was open; a difference between the two
-- reports is a recon_exceptions row per field (payer value, payee value), so
-- both reports can be reconstructed at close.
CREATE TABLE usages (
    setlym          integer NOT NULL,
    payer_province  text COLLATE "C" NOT NULL,
    usage_id        text COLLATE "C" NOT NULL,
    entry_type      text NOT NULL CHECK (entry_type IN ('USAGE', 'REVERSAL', 'ADJUSTMENT')),
    kind            text NOT NULL,
    payer_region    text COLLATE "C" NOT NULL,
    payee_province  text COLLATE "C" NOT NULL,
    payee_region    text COLLATE "C" NOT NULL,
    -- signed: > 0 usage, < 0 reversal, either sign (never 0) adjustment
    amount          numeric(18,2) NOT NULL CHECK (amount <> 0),
    occurred_at     timestamptz NOT NULL,
    late            boolean NOT NULL,
    reversal_of     text COLLATE "C",
    sharer_ref      text NOT NULL,
    beneficiary_ref text NOT NULL,
    relationship_id text NOT NULL,
    payer_reported  boolean NOT NULL,
    payee_reported  boolean NOT NULL,
    first_at        timestamptz NOT NULL, -- arrival of the first report
    both_at         timestamptz,          -- arrival of the second side's report
    CHECK (payer_province <> payee_province),
    CHECK ((entry_type = 'USAGE') = (reversal_of IS NULL)),
    CHECK (entry_type <> 'USAGE' OR amount > 0),
    CHECK (entry_type <> 'REVERSAL' OR amount < 0),
    PRIMARY KEY (setlym, payer_province, usage_id)
) PARTITION BY LIST (setlym);

-- The global dedup index of usage keys across partitions: the two sides'
-- reports of one usage may arrive in different months, and a partitioned
-- table cannot have a unique index without its partition key. One row per
-- usage key: where its usages row lives (setlym, payer_province) and which
-- report of each side was accepted ((province, seq) and a 16-byte SHA-256 of
-- its content: every compared field, not the role, so the two sides' hashes
-- are equal exactly when their reports agree): the same side with the same
-- hash is a duplicate, with another hash a rejected conflict. Updated by the second side even after
-- the row's period has closed (the report is compared, never applied then).
-- Distribution key in a distributed engine: usage_id (docs/partitioning.md).
CREATE TABLE usage_keys (
    usage_id           text COLLATE "C" PRIMARY KEY,
    setlym             integer NOT NULL,
    row_payer_province text COLLATE "C" NOT NULL,
    payer_from         text,
    payer_seq          bigint,
    payer_hash         bytea,
    payee_from         text,
    payee_seq          bigint,
    payee_hash         bytea,
    first_at           timestamptz NOT NULL,
    both_at            timestamptz,
    CHECK (payer_hash IS NOT NULL OR payee_hash IS NOT NULL),
    CHECK ((payer_hash IS NULL) = (payer_seq IS NULL) AND (payer_hash IS NULL) = (payer_from IS NULL)),
    CHECK ((payee_hash IS NULL) = (payee_seq IS NULL) AND (payee_hash IS NULL) = (payee_from IS NULL))
) WITH (fillfactor = 50); -- room for the one in-place (HOT) update of every row by the second side

-- usages_guard: a closed period is immutable. After every INSERT, UPDATE or
-- DELETE statement on usages it locks (FOR SHARE) the periods of the rows the
-- statement touched and refuses (GJ002) if any is CLOSED or SETTLED. The lock
-- makes the check race-free: a close that moves a period to CLOSED either
-- commits first (and is seen here) or waits for this transaction.
-- +goose StatementBegin
CREATE FUNCTION usages_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad integer;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT min(x.setlym) FILTER (WHERE x.state IN ('CLOSED', 'SETTLED')) INTO bad
          FROM (SELECT p.setlym, p.state FROM periods p
                 WHERE p.setlym IN (SELECT n.setlym FROM new_rows n)
                 ORDER BY p.setlym FOR SHARE) x;
    END IF;
    IF bad IS NULL AND TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT min(x.setlym) FILTER (WHERE x.state IN ('CLOSED', 'SETTLED')) INTO bad
          FROM (SELECT p.setlym, p.state FROM periods p
                 WHERE p.setlym IN (SELECT o.setlym FROM old_rows o)
                 ORDER BY p.setlym FOR SHARE) x;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'period % is closed: its usages are immutable (% refused)', bad, TG_OP
            USING ERRCODE = 'GJ002';
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER usages_guard_insert AFTER INSERT ON usages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usages_guard();
CREATE TRIGGER usages_guard_update AFTER UPDATE ON usages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usages_guard();
CREATE TRIGGER usages_guard_delete AFTER DELETE ON usages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION usages_guard();

-- usages_partition_guard (TG_ARGV[0] = the partition's setlym) guards a
-- statement that names a partition directly, which does not fire the parent's
-- statement triggers, and TRUNCATE of the parent (TG_ARGV empty: refused when
-- any period is frozen).
-- +goose StatementBegin
CREATE FUNCTION usages_partition_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    st text;
    bad integer;
BEGIN
    IF TG_NARGS = 0 THEN
        SELECT min(setlym) INTO bad FROM periods WHERE state IN ('CLOSED', 'SETTLED');
    ELSE
        SELECT state INTO st FROM periods WHERE setlym = TG_ARGV[0]::integer FOR SHARE;
        IF st IN ('CLOSED', 'SETTLED') THEN
            bad := TG_ARGV[0]::integer;
        END IF;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'period % is closed: its usages are immutable (% refused)', bad, TG_OP
            USING ERRCODE = 'GJ002';
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER usages_guard_truncate BEFORE TRUNCATE ON usages
    FOR EACH STATEMENT EXECUTE FUNCTION usages_partition_guard();

-- clearing_ensure_usage_partition creates the partition of period p if it is
-- missing; idempotent and safe under concurrency (an advisory lock per period
-- serialises creators). The partition is created standalone and then attached,
-- which needs only SHARE UPDATE EXCLUSIVE on usages, so concurrent ingest
-- transactions are not blocked. fillfactor 50: nearly every row is updated
-- exactly once (the second side's report), and half a page free lets that
-- update stay on the page (HOT, no index insert); pruning then reclaims the
-- old version.
-- +goose StatementBegin
CREATE FUNCTION clearing_ensure_usage_partition(p integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    part text := 'usages_p' || p::text;
BEGIN
    IF p IS NULL OR p NOT BETWEEN 200001 AND 299912 OR p % 100 NOT BETWEEN 1 AND 12 THEN
        RAISE EXCEPTION 'bad period %', p USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('gongji.usages.partition'), p);
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'usages'::regclass AND c.relname = part) THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE usages INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH (fillfactor = 50)', part);
    EXECUTE format('ALTER TABLE usages ATTACH PARTITION %I FOR VALUES IN (%s)', part, p);
    EXECUTE format('CREATE TRIGGER usages_partition_guard BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION usages_partition_guard(%s)', part, p);
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION clearing_ensure_usage_partition(integer);
DROP TABLE usages; -- drops every partition
DROP FUNCTION usages_partition_guard();
DROP FUNCTION usages_guard();
DROP TABLE usage_keys;
