-- +goose Up
-- Late records (arrived after their own month's cut-off, R14) are listed and
-- counted per period by the operator console (late records page, exceptions)
-- while the rest of the period's rows are not needed. A partial index holds
-- only the late rows, so those pages read a handful of index entries instead
-- of scanning a national month's partition (tens of millions of rows).
-- Cost on ingest: the predicate is evaluated per inserted row and only late
-- rows are indexed; the second side's merge changes neither late nor
-- occurred_at, so it stays a HOT update. Every partition gets the index: the
-- existing ones now, new ones when clearing_ensure_usage_partition attaches
-- them (an attached partition inherits the parent's indexes).
CREATE INDEX usages_late ON usages (setlym, occurred_at, usage_id) WHERE late;

-- +goose Down
DROP INDEX usages_late;
