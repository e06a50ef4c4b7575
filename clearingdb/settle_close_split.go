package clearingdb

import (
	"context"
	"fmt"
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"golang.org/x/sync/errgroup"

	"gongji/region"
)

// The close's aggregate in parallel.
//
// PostgreSQL cannot run the close's GROUPING SETS aggregate in parallel
// (partial aggregation does not support grouping sets, and an INSERT … SELECT
// never gets a parallel plan), while the bare GROUP BY of the same rows does
// go parallel once a partition holds a few million rows. A bare GROUP BY by
// region pair is no way out: its hash table of up to 387² groups misses the
// CPU caches, where the close's three hash tables (≤ 32 × 31, 387 and 387
// groups) fit in them, and it costs more than the whole GROUPING SETS
// aggregate run on one core (measured at 10M rows: 9.2 s against 7.1 s).
//
// So the close splits the scan itself: the partition's blocks are cut into
// ranges, and each range is aggregated by the same GROUPING SETS statement on
// a connection of its own, reading the close transaction's snapshot
// (pg_export_snapshot / SET TRANSACTION SNAPSHOT, REPEATABLE READ, READ
// ONLY), with a TID range scan (ctid >= '(lo,0)' AND ctid < '(hi,0)'), so
// the ranges read exactly the rows the close transaction sees, each once.
// Their partial sums (at most 32 × 31 + 2 × 387 rows each) are copied into
// the close transaction and summed there into close_sums, from which the rest
// of the close is derived as before. Every sum is an exact NUMERIC or bigint
// sum, so the result does not depend on the number of ranges; the property
// test runs the close with 1 to 4 ranges against the domain's
// settlement.Compute.
//
// The number of ranges is the server's own parallel degree for one query,
// max_parallel_workers_per_gather + 1 (the leader takes part too), at most
// closeMaxSplits; a partition smaller than closeSplitMinPages is aggregated
// by one statement in the close transaction (connections cost more than they
// save there). The range connections are opened for the close and closed
// after it, outside the pool, so a close never waits for pool connections
// held by the work it runs beside (nor holds them).
const (
	closeSplitMinPages = 8192 // 64 MiB of 8 KiB pages: ≈ 200,000 usages
	closeMaxSplits     = 8
)

// closeSplitsKey carries a test's forced number of ranges in a context.
type closeSplitsKey struct{}

// withCloseSplits returns ctx forcing the close to aggregate in n block
// ranges whatever the partition's size (n = 1: one statement). Tests use it
// to run the parallel path on small periods; production contexts carry none.
func withCloseSplits(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, closeSplitsKey{}, n)
}

// closeSplits returns into how many block ranges the close aggregates period
// p's partition, and the partition's size in blocks. 1 means one statement
// (sqlCloseSums) in the close transaction.
func closeSplits(ctx context.Context, tx pgx.Tx, p region.Period) (splits int, pages int64, err error) {
	var degree int
	if err := tx.QueryRow(ctx, `SELECT coalesce(pg_relation_size(to_regclass($1)), 0) / current_setting('block_size')::bigint,
			current_setting('max_parallel_workers_per_gather')::integer`,
		"usages_p"+strconv.Itoa(p.Int())).Scan(&pages, &degree); err != nil {
		return 0, 0, fmt.Errorf("close %s: partition size: %w", p, err)
	}
	if n, ok := ctx.Value(closeSplitsKey{}).(int); ok && n > 0 {
		return n, pages, nil
	}
	if pages < closeSplitMinPages {
		return 1, pages, nil
	}
	return max(1, min(degree+1, closeMaxSplits)), pages, nil
}

// sqlCloseSumsRange is sqlCloseSums over one block range of the period's
// partition, returning the partial sums instead of inserting them. The
// first %s is the partition, the second the range condition (closeRange):
// plain comparisons of ctid with tid parameters, which the planner turns
// into a TID range scan of exactly those blocks.
const sqlCloseSumsRange = `SELECT GROUPING(payer_province, payee_province, payer_region, payee_region),
		payer_province, payee_province, payer_region, payee_region,
		count(*), count(*) FILTER (WHERE late),
		count(*) FILTER (WHERE NOT (payer_reported AND payee_reported) AND entry_type <> 'ADJUSTMENT'),
		sum(amount)
	FROM %s WHERE %s
	GROUP BY GROUPING SETS ((payer_province, payee_province), (payer_province, payer_region), (payee_province, payee_region))`

// closeRange is the condition and arguments of the block range [lo, hi)
// (hi nil: to the end of the table).
func closeRange(lo string, hi *string) (string, []any) {
	if hi == nil {
		return `ctid >= $1::tid`, []any{lo}
	}
	return `ctid >= $1::tid AND ctid < $2::tid`, []any{lo, *hi}
}

// sqlCloseSumsMerge sums the ranges' partial rows into close_sums.
const (
	sqlCloseParts     = `CREATE TEMP TABLE close_parts (LIKE close_sums) ON COMMIT DROP`
	sqlCloseSumsMerge = `INSERT INTO close_sums
		SELECT g, payer_province, payee_province, payer_region, payee_region,
			sum(entries), sum(late_entries), sum(one_sided), sum(amount)
		FROM close_parts GROUP BY g, payer_province, payee_province, payer_region, payee_region`
)

var closeParts = []string{"g", "payer_province", "payee_province", "payer_region", "payee_region",
	"entries", "late_entries", "one_sided", "amount"}

// snapshotID is the form of pg_export_snapshot()'s result, checked before it
// is spliced into SET TRANSACTION SNAPSHOT (which takes no parameter).
var snapshotID = regexp.MustCompile(`^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$`)

// closeSumsSplit aggregates period p's partition (pages blocks) in splits
// block ranges on connections of their own, reading tx's snapshot, and
// copies their partial sums into the temporary table close_parts of tx
// (which must already hold close_sums). The caller then runs
// sqlCloseSumsMerge. Needs the close transaction tx, in which the period's
// rows can no longer change (the period is CLOSING).
func (s *Store) closeSumsSplit(ctx context.Context, tx pgx.Tx, p region.Period, splits int, pages int64) error {
	var snap string
	if err := tx.QueryRow(ctx, `SELECT pg_export_snapshot()`).Scan(&snap); err != nil {
		return fmt.Errorf("close %s: export snapshot: %w", p, err)
	}
	if !snapshotID.MatchString(snap) {
		return fmt.Errorf("%w: close %s: unexpected snapshot id %q", errInvariant, p, snap)
	}
	part := "usages_p" + strconv.Itoa(p.Int())
	results := make([][][]any, splits)
	g, gctx := errgroup.WithContext(ctx)
	for i := range splits {
		lo := pages * int64(i) / int64(splits)
		var hi *string
		if i < splits-1 {
			h := fmt.Sprintf("(%d,0)", pages*int64(i+1)/int64(splits))
			hi = &h
		}
		g.Go(func() error {
			rows, err := s.closeSumsRange(gctx, snap, part, fmt.Sprintf("(%d,0)", lo), hi)
			results[i] = rows
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("close %s: aggregate in %d ranges: %w", p, splits, err)
	}
	var all [][]any
	for _, r := range results {
		all = append(all, r...)
	}
	if _, err := tx.Exec(ctx, sqlCloseParts); err != nil {
		return fmt.Errorf("close %s: %w", p, err)
	}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"close_parts"}, closeParts, pgx.CopyFromRows(all))
	if err != nil {
		return fmt.Errorf("close %s: copy partial sums: %w", p, err)
	}
	if n != int64(len(all)) {
		return fmt.Errorf("%w: close %s: copied %d of %d partial sums", errInvariant, p, n, len(all))
	}
	return nil
}

// closeSumsRange runs sqlCloseSumsRange over the block range [lo, hi) of
// partition part (hi nil: to the end) on a new connection that imports
// snapshot snap, and returns its rows in close_parts' column order.
func (s *Store) closeSumsRange(ctx context.Context, snap, part, lo string, hi *string) (_ [][]any, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SET TRANSACTION SNAPSHOT '`+snap+`'`); err != nil {
		return nil, fmt.Errorf("import snapshot: %w", err)
	}
	// One core per range: the ranges are this query's parallelism.
	if _, err := tx.Exec(ctx, `SET LOCAL work_mem = '`+closeWorkMem+`'; SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
		return nil, err
	}
	cond, args := closeRange(lo, hi)
	rows, err := tx.Query(ctx, fmt.Sprintf(sqlCloseSumsRange, pgx.Identifier{part}.Sanitize(), cond), args...)
	if err != nil {
		return nil, err
	}
	var out [][]any
	for rows.Next() {
		var (
			g                  int32
			pp, ep, pr, er     pgtype.Text
			entries, late, one int64
			amount             pgtype.Numeric
		)
		if err := rows.Scan(&g, &pp, &ep, &pr, &er, &entries, &late, &one, &amount); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, []any{g, pp, ep, pr, er, entries, late, one, amount})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
