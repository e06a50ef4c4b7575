-- +goose Up
-- Clearing periods (R14): one row per Asia/Shanghai calendar month, written only
-- by the clearing service. The lifecycle is settlement.Transition:
--   OPEN -> CLOSING -> CLOSED -> SETTLED, and CLOSING -> OPEN (a close aborted
--   before anything was frozen). Nothing else: a period never goes back from
--   CLOSED or SETTLED, and a frozen period's cut-off and timestamps never change.
-- In a distributed engine (Citus) this is a reference table (docs/partitioning.md).
CREATE TABLE periods (
    setlym     integer PRIMARY KEY
               CHECK (setlym BETWEEN 200001 AND 299912 AND setlym % 100 BETWEEN 1 AND 12),
    state      text NOT NULL DEFAULT 'OPEN' CHECK (state IN ('OPEN', 'CLOSING', 'CLOSED', 'SETTLED')),
    -- records arriving after cut_off go to a later open period, marked late
    cut_off    timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    closing_at timestamptz, -- last time a close started
    closed_at  timestamptz,
    settled_at timestamptz,
    CHECK ((state IN ('CLOSED', 'SETTLED')) = (closed_at IS NOT NULL)),
    CHECK ((state = 'SETTLED') = (settled_at IS NOT NULL))
);

-- periods_guard refuses: inserting a period in any state but OPEN, deleting a
-- period, changing setlym, an illegal state move, and changing the cut-off or
-- the timestamps of a CLOSED or SETTLED period. Columns added later (figures
-- written at close) are not guarded here. SQLSTATE GJ003 (illegal transition)
-- and GJ002 (frozen period) are mapped by clearingdb.
-- +goose StatementBegin
CREATE FUNCTION periods_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state <> 'OPEN' THEN
            RAISE EXCEPTION 'period %: a new period must be OPEN, not %', NEW.setlym, NEW.state
                USING ERRCODE = 'GJ003';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'period %: periods are never deleted', OLD.setlym USING ERRCODE = 'GJ003';
    END IF;
    IF NEW.setlym <> OLD.setlym THEN
        RAISE EXCEPTION 'period %: setlym cannot change', OLD.setlym USING ERRCODE = 'GJ003';
    END IF;
    IF NEW.state <> OLD.state AND NOT (
           (OLD.state = 'OPEN'    AND NEW.state = 'CLOSING')
        OR (OLD.state = 'CLOSING' AND NEW.state = 'CLOSED')
        OR (OLD.state = 'CLOSING' AND NEW.state = 'OPEN')
        OR (OLD.state = 'CLOSED'  AND NEW.state = 'SETTLED')) THEN
        RAISE EXCEPTION 'period %: illegal transition % -> %', OLD.setlym, OLD.state, NEW.state
            USING ERRCODE = 'GJ003';
    END IF;
    IF OLD.state IN ('CLOSED', 'SETTLED') AND (
           NEW.cut_off IS DISTINCT FROM OLD.cut_off
        OR NEW.created_at IS DISTINCT FROM OLD.created_at
        OR NEW.closing_at IS DISTINCT FROM OLD.closing_at
        OR NEW.closed_at IS DISTINCT FROM OLD.closed_at
        OR (OLD.state = 'SETTLED' AND NEW.settled_at IS DISTINCT FROM OLD.settled_at)) THEN
        RAISE EXCEPTION 'period % is %: its cut-off and timestamps are immutable', OLD.setlym, OLD.state
            USING ERRCODE = 'GJ002';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER periods_guard BEFORE INSERT OR UPDATE OR DELETE ON periods
    FOR EACH ROW EXECUTE FUNCTION periods_guard();

-- +goose StatementBegin
CREATE FUNCTION periods_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'periods are never deleted' USING ERRCODE = 'GJ003';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER periods_no_truncate BEFORE TRUNCATE ON periods
    FOR EACH STATEMENT EXECUTE FUNCTION periods_no_truncate();

-- clearing_lock_open_periods is the first statement of every ingest
-- transaction. It takes a FOR SHARE lock on every OPEN period (a handful at
-- any time), in setlym order, so that no period the transaction writes into
-- can start closing before it commits (a close's UPDATE waits for the lock),
-- and then checks that every period in targets is OPEN and that at is not
-- after its cut-off. Otherwise it raises GJ001: the caller re-reads the periods,
-- assigns again and retries.
-- +goose StatementBegin
CREATE FUNCTION clearing_lock_open_periods(targets integer[], at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    PERFORM 1 FROM periods WHERE state = 'OPEN' ORDER BY setlym FOR SHARE;
    SELECT string_agg(t.setlym::text, ',' ORDER BY t.setlym) INTO bad
      FROM unnest(targets) AS t(setlym)
      LEFT JOIN periods p ON p.setlym = t.setlym
     WHERE p.setlym IS NULL OR p.state <> 'OPEN' OR at > p.cut_off;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'periods % no longer accept records', bad USING ERRCODE = 'GJ001';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION clearing_lock_open_periods(integer[], timestamptz);
DROP TABLE periods;
DROP FUNCTION periods_no_truncate();
DROP FUNCTION periods_guard();
