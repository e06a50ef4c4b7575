package clearingdb

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/internal/auditlog"
	"gongji/ledger"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// closeWorkMem is the work_mem of the close transaction, so that the
// aggregate over a national month's usages partition always stays a hash
// aggregate in memory (its groups are few, but the planner's estimate of
// them may not be).
const closeWorkMem = "64MB"

// The close's set operations ($1 = setlym). Everything is derived from one
// pass over the period's usages partition: a hashed GROUPING SETS aggregate
// with three small hash tables, by (payer province, payee province), by
// (payer province, payer region) and by (payee province, payee region), each
// with the count of rows, late rows, rows still reported by one side, and the
// signed sum. Its output has at most 32 × 31 + 2 × 387 rows whatever the
// number of usages, so the only statement whose cost grows with the period is
// sqlCloseSums, and it costs about what a bare GROUP BY over the same rows
// does (BenchmarkClose); on a large partition the same aggregate runs in
// parallel over block ranges and their partial sums are added up
// (settle_close_split.go). close_sums is a temporary table dropped at the end
// of the close's transaction: no WAL, nothing to clean up after a crash.
//
// close_sums.g is GROUPING(payer_province, payee_province, payer_region,
// payee_region): 3 = province pair, 5 = payer region, 10 = payee region.
const (
	sqlCloseSumsTable = `CREATE TEMP TABLE close_sums (
			g integer NOT NULL,
			payer_province text, payee_province text, payer_region text, payee_region text,
			entries bigint NOT NULL, late_entries bigint NOT NULL, one_sided bigint NOT NULL,
			amount numeric(18,2) NOT NULL
		) ON COMMIT DROP`

	sqlCloseSums = `INSERT INTO close_sums
		SELECT GROUPING(payer_province, payee_province, payer_region, payee_region),
			payer_province, payee_province, payer_region, payee_region,
			count(*), count(*) FILTER (WHERE late),
			count(*) FILTER (WHERE NOT (payer_reported AND payee_reported) AND entry_type <> 'ADJUSTMENT'),
			sum(amount)
		FROM usages WHERE setlym = $1
		GROUP BY GROUPING SETS ((payer_province, payee_province), (payer_province, payer_region), (payee_province, payee_region))`

	sqlCloseGross = `INSERT INTO period_gross (setlym, payer_province, payee_province, amount)
		SELECT $1, payer_province, payee_province, amount
		FROM close_sums WHERE g = 3 AND amount <> 0`

	// Positions of all 32 provincial units ($2) from the gross matrix; the
	// statement tallies from the region sets (a second path to the same
	// sums, which BuildStatements reconciles).
	sqlClosePositions = `INSERT INTO period_positions (setlym, province, receivable, payable, net,
			payer_entries, payer_sum, payee_entries, payee_sum)
		SELECT $1, c.code, coalesce(r.amount, 0), coalesce(p.amount, 0), coalesce(r.amount, 0) - coalesce(p.amount, 0),
			coalesce(tp.entries, 0), coalesce(tp.amount, 0), coalesce(te.entries, 0), coalesce(te.amount, 0)
		FROM unnest($2::text[]) AS c(code)
		LEFT JOIN (SELECT payee_province AS code, sum(amount) AS amount FROM period_gross
		            WHERE setlym = $1 GROUP BY payee_province) r USING (code)
		LEFT JOIN (SELECT payer_province AS code, sum(amount) AS amount FROM period_gross
		            WHERE setlym = $1 GROUP BY payer_province) p USING (code)
		LEFT JOIN (SELECT payer_province AS code, sum(entries) AS entries, sum(amount) AS amount FROM close_sums
		            WHERE g = 5 GROUP BY payer_province) tp USING (code)
		LEFT JOIN (SELECT payee_province AS code, sum(entries) AS entries, sum(amount) AS amount FROM close_sums
		            WHERE g = 10 GROUP BY payee_province) te USING (code)`

	// Every pooling region named by a row: receivable by payee region,
	// payable by payer region.
	sqlCloseAllocation = `INSERT INTO period_allocation (setlym, province, region, receivable, payable, net)
		SELECT $1, province, region, sum(rec), sum(pay), sum(rec) - sum(pay)
		FROM (SELECT payee_province, payee_region, amount, 0::numeric FROM close_sums WHERE g = 10
		      UNION ALL
		      SELECT payer_province, payer_region, 0::numeric, amount FROM close_sums WHERE g = 5)
		     AS x(province, region, rec, pay)
		GROUP BY province, region`

	// Both tiers (R16): the payer in from_code; zero nets get none.
	sqlCloseInstructions = `INSERT INTO period_instructions (setlym, tier, from_code, to_code, amount)
		SELECT $1, 'NATIONAL',
			CASE WHEN net < 0 THEN province ELSE '` + region.NationalCentre + `' END,
			CASE WHEN net < 0 THEN '` + region.NationalCentre + `' ELSE province END,
			abs(net)
		FROM period_positions WHERE setlym = $1 AND net <> 0
		UNION ALL
		SELECT $1, 'PROVINCE',
			CASE WHEN net < 0 THEN region ELSE province END,
			CASE WHEN net < 0 THEN province ELSE region END,
			abs(net)
		FROM period_allocation WHERE setlym = $1 AND net <> 0`

	sqlCloseCounts = `SELECT coalesce(sum(entries), 0), coalesce(sum(late_entries), 0), coalesce(sum(one_sided), 0)
		FROM close_sums WHERE g = 3`
)

// ClosePeriod closes clearing period p (R14, R15, R16) at now and returns its
// status. The steps:
//
//  1. In a short transaction: lock the period row; refuse unless
//     settlement.Config.CheckClose allows it (ErrBeforeCutOff while now is not
//     after the period's stored cut-off, ErrEarlierPeriodOpen while an earlier
//     period is OPEN or CLOSING); move OPEN → CLOSING and commit. From then on
//     ingest assigns nothing to the period (records go to the next open
//     period, marked late) and the second side of a usage no longer changes
//     its row, so what follows reads a fixed set of rows.
//  2. In one transaction (all or nothing): aggregate the period's usages
//     partition in one pass (GROUPING SETS by province pair, payer region and
//     payee region, into a temporary table; on a large partition in parallel
//     block ranges read on connections sharing this transaction's snapshot,
//     see closeSumsSplit) and derive the gross matrix, the
//     positions of all 32 provinces, the region allocation and both
//     instruction tiers from it with set operations in SQL;
//     record every usage still reported by one side as a ONE_SIDED exception
//     (OneSidedAtClose, only when the aggregate counted any); load that small
//     result and check it (settlement.CheckResult, and the instructions equal
//     settlement.Instructions of the loaded positions and allocation); build
//     and reconcile the 32 statements (settlement.BuildStatements) and issue
//     them (confirmation window from now); book the cleared net obligations
//     as one CLEARING_CLOSE journal entry dated at the cut-off; write the
//     summary; move CLOSING → CLOSED with closed_at = the cut-off instant, so
//     an export of the period is reproducible.
//
// A crash or cancellation anywhere leaves either OPEN (before 1 commits),
// CLOSING with nothing written (step 2 rolled back), or CLOSED; calling
// ClosePeriod again resumes from CLOSING and, since the rows are fixed,
// computes the same figures and the same journal entry. Closing a CLOSED or
// SETTLED period returns its status unchanged. When the figures fail their
// checks (a bug), the close is aborted back to OPEN and an error wrapping
// errInvariant is returned.
//
// Needs no transaction from the caller. Errors: ErrNotFound (no such period:
// nothing was ever assigned to it); settlement.ErrBeforeCutOff,
// settlement.ErrEarlierPeriodOpen, settlement.ErrBadTransition (a concurrent
// abort); ErrRetriesExhausted; errInvariant; database errors.
func (s *Store) ClosePeriod(ctx context.Context, p region.Period, now time.Time) (PeriodStatus, error) {
	state, err := s.beginClose(ctx, p, now)
	if err != nil {
		return PeriodStatus{}, err
	}
	if state != settlement.PeriodClosing {
		// Closed before: nothing changes, and the audit row says so.
		auditlog.SetOutcome(ctx, auditlog.OutcomeReplayed)
	}
	if state == settlement.PeriodClosing {
		err := s.retry(ctx, "close "+p.String(), func(ctx context.Context) error {
			return s.inTx(ctx, func(tx pgx.Tx) error { return s.finishClose(ctx, tx, p, now) })
		})
		if err != nil {
			if errors.Is(err, errInvariant) || errors.Is(err, settlement.ErrInconsistent) || errors.Is(err, settlement.ErrStatementMismatch) {
				if !errors.Is(err, errInvariant) {
					err = fmt.Errorf("%w: %w", errInvariant, err)
				}
				if aerr := s.abortClose(context.WithoutCancel(ctx), p); aerr != nil {
					return PeriodStatus{}, fmt.Errorf("%w (and the abort to OPEN failed: %w)", err, aerr)
				}
				return PeriodStatus{}, fmt.Errorf("close aborted, period is OPEN again: %w", err)
			}
			return PeriodStatus{}, err
		}
	}
	return s.PeriodStatus(ctx, p)
}

// beginClose is step 1 of ClosePeriod; it returns the state the period is in
// afterwards (CLOSING, or CLOSED/SETTLED when there is nothing to do).
func (s *Store) beginClose(ctx context.Context, p region.Period, now time.Time) (settlement.PeriodState, error) {
	var state settlement.PeriodState
	// The audit row of a close commits with step 2 (the figures), not with
	// this marker: a close that fails after it is recorded by its error.
	err := s.retry(auditlog.Without(ctx), "begin close "+p.String(), func(ctx context.Context) error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			st, cutOff, err := lockPeriod(ctx, tx, p)
			if err != nil {
				return err
			}
			state = st
			if st != settlement.PeriodOpen {
				return nil // CLOSING: resume; CLOSED/SETTLED: done
			}
			var earlierOpen bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM periods
				WHERE setlym < $1 AND state IN ('OPEN', 'CLOSING'))`, p.Int()).Scan(&earlierOpen); err != nil {
				return err
			}
			if err := s.periodConfig(p, cutOff).CheckClose(p, st, now, earlierOpen); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE periods SET state = 'CLOSING', closing_at = $2 WHERE setlym = $1`, p.Int(), now); err != nil {
				return err
			}
			state = settlement.PeriodClosing
			return step(ctx, "close:closing")
		})
	})
	return state, err
}

// periodConfig is the settlement timetable with the cut-off stored with
// period p (fixed when the period was created, so a later change of
// --cutoff-grace never moves an existing period's cut-off).
func (s *Store) periodConfig(p region.Period, cutOff time.Time) settlement.Config {
	c := s.cfg.Settlement
	c.CutOffGrace = cutOff.Sub(p.End())
	return c
}

// lockPeriod locks period p's row FOR UPDATE and returns its state and
// cut-off. Errors: ErrNotFound.
func lockPeriod(ctx context.Context, tx pgx.Tx, p region.Period) (settlement.PeriodState, time.Time, error) {
	var (
		state  string
		cutOff time.Time
	)
	if err := tx.QueryRow(ctx, `SELECT state, cut_off FROM periods WHERE setlym = $1 FOR UPDATE`, p.Int()).Scan(&state, &cutOff); err != nil {
		return "", time.Time{}, fmt.Errorf("period %s: %w", p, translate(err))
	}
	st, err := settlement.ParsePeriodState(state)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("%w: period %s: %w", errInvariant, p, err)
	}
	return st, cutOff, nil
}

// abortClose moves a CLOSING period back to OPEN (settlement: "CLOSING → OPEN
// aborts a failed close"); nothing of the failed close was committed.
func (s *Store) abortClose(ctx context.Context, p region.Period) error {
	_, err := s.pool.Exec(ctx, `UPDATE periods SET state = 'OPEN' WHERE setlym = $1 AND state = 'CLOSING'`, p.Int())
	return err
}

// finishClose is step 2 of ClosePeriod, inside tx.
func (s *Store) finishClose(ctx context.Context, tx pgx.Tx, p region.Period, now time.Time) error {
	st, cutOff, err := lockPeriod(ctx, tx, p)
	if err != nil {
		return err
	}
	switch st {
	case settlement.PeriodClosed, settlement.PeriodSettled:
		return nil // a concurrent close finished first
	case settlement.PeriodOpen:
		return fmt.Errorf("close %s: %w: the close was aborted (period is OPEN again)", p, settlement.ErrBadTransition)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL work_mem = '`+closeWorkMem+`'`); err != nil {
		return err
	}
	// Created before the batch: pgx prepares every statement of a batch
	// before it runs the first.
	if _, err := tx.Exec(ctx, sqlCloseSumsTable); err != nil {
		return fmt.Errorf("close %s: %w", p, err)
	}
	splits, pages, err := closeSplits(ctx, tx, p)
	if err != nil {
		return err
	}
	codes := region.ProvinceCodes()
	b := &pgx.Batch{}
	if splits > 1 {
		if err := s.closeSumsSplit(ctx, tx, p, splits, pages); err != nil {
			return err
		}
		b.Queue(sqlCloseSumsMerge)
	} else {
		b.Queue(sqlCloseSums, p.Int())
	}
	b.Queue(sqlCloseGross, p.Int())
	b.Queue(sqlClosePositions, p.Int(), codes)
	b.Queue(sqlCloseAllocation, p.Int())
	b.Queue(sqlCloseInstructions, p.Int())
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("close %s: compute figures: %w", p, translate(err))
	}
	if err := step(ctx, "close:computed"); err != nil {
		return err
	}
	var usageCount, lateCount, oneSidedRows int64
	if err := tx.QueryRow(ctx, sqlCloseCounts).Scan(&usageCount, &lateCount, &oneSidedRows); err != nil {
		return err
	}
	// The usages still reported by one side become ONE_SIDED exceptions.
	// The aggregate above counted them, so the second pass over the
	// partition runs only when there is something to record, and must then
	// record exactly that many.
	var oneSided int64
	if oneSidedRows > 0 {
		var err error
		if oneSided, err = OneSidedAtClose(ctx, tx, p, now); err != nil {
			return err
		}
		if oneSided != oneSidedRows {
			return fmt.Errorf("%w: close %s: %d one-sided rows, %d ONE_SIDED exceptions recorded", errInvariant, p, oneSidedRows, oneSided)
		}
	}
	if err := step(ctx, "close:exceptions"); err != nil {
		return err
	}

	res, tallies, err := loadResult(ctx, tx, p)
	if err != nil {
		return err
	}
	if err := settlement.CheckResult(res); err != nil {
		return fmt.Errorf("%w: close %s: SQL figures: %w", errInvariant, p, err)
	}
	want := settlement.Instructions(res.Positions, res.Allocation)
	if !slices.EqualFunc(want, res.Instructions, func(a, b settlement.Instruction) bool {
		return a.Tier == b.Tier && a.From == b.From && a.To == b.To && a.Amount.Equal(b.Amount)
	}) {
		return fmt.Errorf("%w: close %s: SQL instructions differ from settlement.Instructions", errInvariant, p)
	}
	statements, err := settlement.BuildStatements(p, res, tallies, nil)
	if err != nil {
		return fmt.Errorf("%w: close %s: statements: %w", errInvariant, p, err)
	}
	provinces := make([]string, len(statements))
	for i, st := range statements {
		provinces[i] = st.Province
	}
	if _, err := tx.Exec(ctx, `INSERT INTO statements (setlym, province, status, issued_at, confirm_by)
		SELECT $1, province, 'ISSUED', $3, $4 FROM unnest($2::text[]) AS x(province)`,
		p.Int(), provinces, now, s.cfg.Settlement.ConfirmationDeadline(now)); err != nil {
		return fmt.Errorf("close %s: issue statements: %w", p, translate(err))
	}

	var entries []ledger.Entry
	if e, ok := closeEntry(p, res.Positions, cutOff); ok {
		entries = append(entries, e)
	}
	_, head, err := appendJournal(ctx, tx, entries)
	if err != nil {
		return fmt.Errorf("close %s: %w", p, err)
	}
	if err := step(ctx, "close:journal"); err != nil {
		return err
	}

	grossAbs := money.Zero
	for _, g := range res.Gross {
		grossAbs = grossAbs.Add(g.Amount.Abs())
	}
	if _, err := tx.Exec(ctx, `INSERT INTO period_close (setlym, usage_count, late_count, gross_total, gross_abs,
			positive_net_total, netting_efficiency, one_sided_at_close, journal_head_id, journal_head, closed_at, closed_by_at)
		VALUES ($1, $2, $3, $4::numeric, $5::numeric, $6::numeric, $7::numeric, $8, $9, $10, $11, $12)`,
		p.Int(), usageCount, lateCount, res.GrossTotal().String(), grossAbs.String(), res.PositiveNetTotal().String(),
		res.NettingEfficiency().String(), oneSided, head.LastID, head.Hash, cutOff, now); err != nil {
		return fmt.Errorf("close %s: summary: %w", p, translate(err))
	}
	if _, err := tx.Exec(ctx, `UPDATE periods SET state = 'CLOSED', closed_at = cut_off WHERE setlym = $1`, p.Int()); err != nil {
		return fmt.Errorf("close %s: %w", p, translate(err))
	}
	return step(ctx, "close:commit")
}

// closeEntry is the CLEARING_CLOSE entry of a period: each province's net
// into clearing:receivable:<prov> (payers, negative) or clearing:payable:<prov>
// (receivers, positive), in code order, dated at the cut-off. false when every
// net is zero (nothing moved).
func closeEntry(p region.Period, positions []settlement.Position, at time.Time) (ledger.Entry, bool) {
	e := ledger.Entry{Kind: KindClearingClose, Ref: p.String(), At: at}
	for _, pos := range positions {
		switch {
		case pos.Net.IsNegative():
			e.Postings = append(e.Postings, ledger.Posting{Account: ClearingReceivableAccount(pos.Province), Amount: pos.Net})
		case pos.Net.IsPositive():
			e.Postings = append(e.Postings, ledger.Posting{Account: ClearingPayableAccount(pos.Province), Amount: pos.Net})
		}
	}
	return e, len(e.Postings) > 0
}

// loadResult reads the stored figures of period p (in the export's sort
// order) and the statement tallies.
func loadResult(ctx context.Context, q Querier, p region.Period) (settlement.Result, map[string]settlement.Tallies, error) {
	var res settlement.Result
	tallies := map[string]settlement.Tallies{}
	fail := func(what string, err error) (settlement.Result, map[string]settlement.Tallies, error) {
		return settlement.Result{}, nil, fmt.Errorf("load %s of %s: %w", what, p, err)
	}
	var (
		a, b, c    string
		x, y, z, w string
		n1, n2     int64
	)
	rows, err := q.Query(ctx, `SELECT payer_province, payee_province, amount::text FROM period_gross
		WHERE setlym = $1 ORDER BY payer_province COLLATE "C", payee_province COLLATE "C"`, p.Int())
	if err != nil {
		return fail("gross", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&a, &b, &x}, func() error {
		amt, err := money.Parse(x)
		res.Gross = append(res.Gross, settlement.GrossCell{PayerProvince: a, PayeeProvince: b, Amount: amt})
		return err
	}); err != nil {
		return fail("gross", err)
	}

	rows, err = q.Query(ctx, `SELECT province, receivable::text, payable::text, net::text,
			payer_entries, payer_sum::text, payee_entries, payee_sum::text
		FROM period_positions WHERE setlym = $1 ORDER BY province COLLATE "C"`, p.Int())
	if err != nil {
		return fail("positions", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&a, &x, &y, &z, &n1, &w, &n2, &b}, func() error {
		pos := settlement.Position{Province: a}
		var t settlement.Tallies
		t.AsPayer.Entries, t.AsPayee.Entries = int(n1), int(n2)
		for _, f := range []struct {
			dst *money.Yuan
			src string
		}{{&pos.Receivable, x}, {&pos.Payable, y}, {&pos.Net, z}, {&t.AsPayer.Sum, w}, {&t.AsPayee.Sum, b}} {
			v, err := money.Parse(f.src)
			if err != nil {
				return err
			}
			*f.dst = v
		}
		res.Positions = append(res.Positions, pos)
		tallies[a] = t
		return nil
	}); err != nil {
		return fail("positions", err)
	}

	rows, err = q.Query(ctx, `SELECT province, region, receivable::text, payable::text, net::text
		FROM period_allocation WHERE setlym = $1 ORDER BY province COLLATE "C", region COLLATE "C"`, p.Int())
	if err != nil {
		return fail("allocation", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&a, &b, &x, &y, &z}, func() error {
		r := settlement.RegionPosition{Province: a, Region: b}
		for _, f := range []struct {
			dst *money.Yuan
			src string
		}{{&r.Receivable, x}, {&r.Payable, y}, {&r.Net, z}} {
			v, err := money.Parse(f.src)
			if err != nil {
				return err
			}
			*f.dst = v
		}
		res.Allocation = append(res.Allocation, r)
		return nil
	}); err != nil {
		return fail("allocation", err)
	}

	rows, err = q.Query(ctx, `SELECT tier, from_code, to_code, amount::text FROM period_instructions
		WHERE setlym = $1 ORDER BY tier COLLATE "C", from_code COLLATE "C", to_code COLLATE "C"`, p.Int())
	if err != nil {
		return fail("instructions", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&a, &b, &c, &x}, func() error {
		amt, err := money.Parse(x)
		res.Instructions = append(res.Instructions, settlement.Instruction{Tier: settlement.Tier(a), From: b, To: c, Amount: amt})
		return err
	}); err != nil {
		return fail("instructions", err)
	}
	return res, tallies, nil
}

// PeriodResult returns the frozen figures of a CLOSED or SETTLED period in
// the export's sort order (gross.csv, positions.csv, allocation.csv,
// instructions.csv) and checks them again with settlement.CheckResult before
// returning them. Errors: ErrNotFound; ErrPeriodNotFrozen when the period is
// not closed; errInvariant when the stored figures fail the check.
func (s *Store) PeriodResult(ctx context.Context, p region.Period) (settlement.Result, error) {
	var res settlement.Result
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		per, err := GetPeriodTx(ctx, tx, p)
		if err != nil {
			return err
		}
		if !per.State.Frozen() {
			return fmt.Errorf("%w: period %s is %s", ErrPeriodNotFrozen, p, per.State)
		}
		res, _, err = loadResult(ctx, tx, p)
		if err != nil {
			return err
		}
		if err := settlement.CheckResult(res); err != nil {
			return fmt.Errorf("%w: stored figures of %s: %w", errInvariant, p, err)
		}
		return nil
	})
	if err != nil {
		return settlement.Result{}, err
	}
	return res, nil
}
