package console

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/money"
	"gongji/region"
)

// The console's own read queries. They read the clearing database's tables
// directly (the frozen results of a close, the settlement's prepayment rows,
// statements, disputes, exceptions, late usages) because the console needs
// views clearingdb has no reason to offer (one province's slice, bounded
// lists, counts by kind); everything that clearingdb already offers read-only
// (periods, a period's status, the prepayment accounts, the export) comes
// from clearingdb.
//
// Every function takes the request's read-only transaction (see read) and a
// province filter: "" reads every province, a code reads only the rows that
// name it; the filter is in the SQL, so nothing of another province leaves
// the database for a province caller. Amounts are read as NUMERIC text and
// parsed with money.Parse: no float anywhere.

// errBadAmount wraps a stored amount that does not parse (a bug or a damaged
// row; answered 500).
var errBadAmount = errors.New("console: stored amount does not parse")

// read runs fn in a read-only REPEATABLE READ transaction: one snapshot for
// everything a page shows, and PostgreSQL refuses any write.
func (s *Server) read(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.o.Store.Pool().BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// yuans parses NUMERIC text columns into their destinations.
func yuans(pairs ...any) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		dst, src := pairs[i].(*money.Yuan), pairs[i+1].(string)
		y, err := money.Parse(src)
		if err != nil {
			return fmt.Errorf("%w: %q: %w", errBadAmount, src, err)
		}
		*dst = y
	}
	return nil
}

// closeFigures are period_close's totals of a frozen period.
type closeFigures struct {
	grossAbs, positiveNet money.Yuan
}

// qCloseFigures reads period_close; ok is false before the close.
func qCloseFigures(ctx context.Context, tx pgx.Tx, p region.Period) (closeFigures, bool, error) {
	var abs, pos string
	err := tx.QueryRow(ctx, `SELECT gross_abs::text, positive_net_total::text FROM period_close WHERE setlym = $1`, p.Int()).Scan(&abs, &pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return closeFigures{}, false, nil
	}
	if err != nil {
		return closeFigures{}, false, fmt.Errorf("close figures of %s: %w", p, err)
	}
	var c closeFigures
	return c, true, yuans(&c.grossAbs, abs, &c.positiveNet, pos)
}

// statementRow is one statements row.
type statementRow struct {
	province                        string
	status                          string
	issuedAt, confirmBy, answeredAt time.Time
}

// qStatements lists the statements of p (one province's when province != "").
func qStatements(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]statementRow, error) {
	rows, err := tx.Query(ctx, `SELECT province, status, issued_at, confirm_by, answered_at FROM statements
		WHERE setlym = $1 AND ($2 = '' OR province = $2) ORDER BY province`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("statements of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (statementRow, error) {
		var (
			st statementRow
			at *time.Time
		)
		err := r.Scan(&st.province, &st.status, &st.issuedAt, &st.confirmBy, &at)
		if at != nil {
			st.answeredAt = *at
		}
		return st, err
	})
}

// positionRow is one period_positions row.
type positionRow struct {
	province                   string
	receivable, payable, net   money.Yuan
	payerEntries, payeeEntries int64
	payerSum, payeeSum         money.Yuan
}

// qPositions reads the net positions of a frozen period in code order.
func qPositions(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]positionRow, error) {
	rows, err := tx.Query(ctx, `SELECT province, receivable::text, payable::text, net::text,
			payer_entries, payer_sum::text, payee_entries, payee_sum::text
		FROM period_positions WHERE setlym = $1 AND ($2 = '' OR province = $2) ORDER BY province`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("positions of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (positionRow, error) {
		var (
			x                     positionRow
			rec, pay, net, ps, es string
		)
		if err := r.Scan(&x.province, &rec, &pay, &net, &x.payerEntries, &ps, &x.payeeEntries, &es); err != nil {
			return x, err
		}
		return x, yuans(&x.receivable, rec, &x.payable, pay, &x.net, net, &x.payerSum, ps, &x.payeeSum, es)
	})
}

// grossRow is one period_gross cell.
type grossRow struct {
	payer, payee string
	amount       money.Yuan
}

// qGross reads the gross matrix of a frozen period: every non-zero pair, or
// the pairs where province pays or receives; largest amount first.
func qGross(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]grossRow, error) {
	// ORDER BY g.amount: the NUMERIC column, not the text output column.
	rows, err := tx.Query(ctx, `SELECT g.payer_province, g.payee_province, g.amount::text FROM period_gross g
		WHERE g.setlym = $1 AND ($2 = '' OR g.payer_province = $2 OR g.payee_province = $2)
		ORDER BY g.amount DESC, g.payer_province, g.payee_province`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("gross of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (grossRow, error) {
		var (
			g   grossRow
			amt string
		)
		if err := r.Scan(&g.payer, &g.payee, &amt); err != nil {
			return g, err
		}
		return g, yuans(&g.amount, amt)
	})
}

// allocationRow is one period_allocation row.
type allocationRow struct {
	region                   string
	receivable, payable, net money.Yuan
}

// qAllocation reads one province's pooling-region figures of a frozen period.
func qAllocation(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]allocationRow, error) {
	rows, err := tx.Query(ctx, `SELECT region, receivable::text, payable::text, net::text FROM period_allocation
		WHERE setlym = $1 AND province = $2 ORDER BY region`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("allocation of %s %s: %w", p, province, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (allocationRow, error) {
		var (
			a             allocationRow
			rec, pay, net string
		)
		if err := r.Scan(&a.region, &rec, &pay, &net); err != nil {
			return a, err
		}
		return a, yuans(&a.receivable, rec, &a.payable, pay, &a.net, net)
	})
}

// instructionRow is one period_instructions row.
type instructionRow struct {
	tier, from, to string
	amount         money.Yuan
}

// qInstructions reads the instructions of a frozen period that name
// province: its NATIONAL instruction and the PROVINCE tier inside it.
func qInstructions(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]instructionRow, error) {
	rows, err := tx.Query(ctx, `SELECT tier, from_code, to_code, amount::text FROM period_instructions
		WHERE setlym = $1 AND (from_code = $2 OR to_code = $2) ORDER BY tier, from_code, to_code`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("instructions of %s %s: %w", p, province, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (instructionRow, error) {
		var (
			x   instructionRow
			amt string
		)
		if err := r.Scan(&x.tier, &x.from, &x.to, &amt); err != nil {
			return x, err
		}
		return x, yuans(&x.amount, amt)
	})
}

// prepayRow is one prepay_rows row of a settled period with the receiver's
// payout and the emergency top-up request, if any.
type prepayRow struct {
	province                                                 string
	depositBefore, drawn, outstanding, depositAfter, reqNext money.Yuan
	warning                                                  bool
	due, paid, unpaid                                        money.Yuan // payout (receivers); zero otherwise
	topUp                                                    *money.Yuan
}

// qPrepay reads the settlement's prepayment rows in code order (none before
// the settlement).
func qPrepay(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]prepayRow, error) {
	rows, err := tx.Query(ctx, `SELECT r.province, r.deposit_before::text, r.drawn::text, r.outstanding::text,
			r.deposit_after::text, r.required_next::text, r.warning,
			coalesce(po.due, 0)::text, coalesce(po.paid, 0)::text, coalesce(po.unpaid, 0)::text,
			t.deposit_topup::text
		FROM prepay_rows r
		LEFT JOIN prepay_payouts po ON po.setlym = r.setlym AND po.province = r.province
		LEFT JOIN prepay_topups t ON t.setlym = r.setlym AND t.province = r.province
		WHERE r.setlym = $1 AND ($2 = '' OR r.province = $2) ORDER BY r.province`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("prepay rows of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (prepayRow, error) {
		var (
			x                                   prepayRow
			db, dr, out, da, rn, due, paid, unp string
			top                                 *string
		)
		if err := r.Scan(&x.province, &db, &dr, &out, &da, &rn, &x.warning, &due, &paid, &unp, &top); err != nil {
			return x, err
		}
		if top != nil {
			var t money.Yuan
			if err := yuans(&t, *top); err != nil {
				return x, err
			}
			x.topUp = &t
		}
		return x, yuans(&x.depositBefore, db, &x.drawn, dr, &x.outstanding, out, &x.depositAfter, da,
			&x.reqNext, rn, &x.due, due, &x.paid, paid, &x.unpaid, unp)
	})
}

// reconRow is one recon_exceptions row.
type reconRow struct {
	usageID, payer, payee, kind, field string
	payerValue, payeeValue, detail     string
	reporter                           string
	reporterSeq                        int64
	createdAt                          time.Time
}

// qRecon lists at most limit reconciliation exceptions of p naming province
// ("" every one), in the statement's order.
func qRecon(ctx context.Context, tx pgx.Tx, p region.Period, province string, limit int) ([]reconRow, error) {
	rows, err := tx.Query(ctx, `SELECT usage_id, payer_province, payee_province, kind, field, payer_value, payee_value,
			detail, reporter_province, reporter_seq, created_at
		FROM recon_exceptions WHERE setlym = $1 AND ($2 = '' OR $2 = ANY (provinces))
		ORDER BY usage_id, kind, field, reporter_province, reporter_seq LIMIT $3`, p.Int(), province, limit)
	if err != nil {
		return nil, fmt.Errorf("exceptions of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (reconRow, error) {
		var x reconRow
		err := r.Scan(&x.usageID, &x.payer, &x.payee, &x.kind, &x.field, &x.payerValue, &x.payeeValue,
			&x.detail, &x.reporter, &x.reporterSeq, &x.createdAt)
		return x, err
	})
}

// provinceKindCount counts the exceptions of one kind naming one province.
type provinceKindCount struct {
	province, kind string
	n              int64
}

// qReconCounts counts p's exceptions by named province and kind (an
// exception naming two provinces counts for each), restricted to province
// when it is not "".
func qReconCounts(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]provinceKindCount, error) {
	rows, err := tx.Query(ctx, `SELECT x.prov, e.kind, count(*) FROM recon_exceptions e, unnest(e.provinces) AS x(prov)
		WHERE e.setlym = $1 AND ($2 = '' OR x.prov = $2) GROUP BY x.prov, e.kind ORDER BY x.prov, e.kind`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("exception counts of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (provinceKindCount, error) {
		var c provinceKindCount
		return c, r.Scan(&c.province, &c.kind, &c.n)
	})
}

// qReconTotal counts p's exceptions naming province ("" all) by kind.
func qReconTotal(ctx context.Context, tx pgx.Tx, p region.Period, province string) (map[string]int64, error) {
	rows, err := tx.Query(ctx, `SELECT kind, count(*) FROM recon_exceptions
		WHERE setlym = $1 AND ($2 = '' OR $2 = ANY (provinces)) GROUP BY kind`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("exception totals of %s: %w", p, err)
	}
	out := map[string]int64{}
	var (
		kind string
		n    int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&kind, &n}, func() error { out[kind] = n; return nil }); err != nil {
		return nil, fmt.Errorf("exception totals of %s: %w", p, err)
	}
	return out, nil
}

// qPendingOneSided counts the usages of an OPEN or CLOSING period still
// reported by one side only (they become ONE_SIDED exceptions at close).
func qPendingOneSided(ctx context.Context, tx pgx.Tx, p region.Period, province string) (int64, error) {
	var n int64
	err := tx.QueryRow(ctx, `SELECT count(*) FROM usages WHERE setlym = $1 AND entry_type <> 'ADJUSTMENT'
		AND NOT (payer_reported AND payee_reported) AND ($2 = '' OR payer_province = $2 OR payee_province = $2)`,
		p.Int(), province).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("one-sided usages of %s: %w", p, err)
	}
	return n, nil
}

// lateRow is one late usages row.
type lateRow struct {
	usageID, entryType, kind               string
	payer, payerRegion, payee, payeeRegion string
	amount                                 money.Yuan
	occurredAt, firstAt                    time.Time
}

// qLate lists at most limit of p's late records (arrived after their own
// month's cut-off) where province pays or receives ("" all), oldest first.
// It reads the partial index usages_late (late rows only, in this order),
// so it costs the rows it returns, not the period's size.
func qLate(ctx context.Context, tx pgx.Tx, p region.Period, province string, limit int) ([]lateRow, error) {
	rows, err := tx.Query(ctx, `SELECT usage_id, entry_type, kind, payer_province, payer_region, payee_province,
			payee_region, amount::text, occurred_at, first_at
		FROM usages WHERE setlym = $1 AND late AND ($2 = '' OR payer_province = $2 OR payee_province = $2)
		ORDER BY occurred_at, usage_id LIMIT $3`, p.Int(), province, limit)
	if err != nil {
		return nil, fmt.Errorf("late records of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (lateRow, error) {
		var (
			x   lateRow
			amt string
		)
		if err := r.Scan(&x.usageID, &x.entryType, &x.kind, &x.payer, &x.payerRegion, &x.payee, &x.payeeRegion,
			&amt, &x.occurredAt, &x.firstAt); err != nil {
			return x, err
		}
		return x, yuans(&x.amount, amt)
	})
}

// latePair is the late records of one (payer, payee) province pair.
type latePair struct {
	payer, payee string
	n            int64
	amount       money.Yuan
}

// qLateCounts counts p's late records by province pair.
func qLateCounts(ctx context.Context, tx pgx.Tx, p region.Period, province string) ([]latePair, error) {
	rows, err := tx.Query(ctx, `SELECT payer_province, payee_province, count(*), sum(amount)::text
		FROM usages WHERE setlym = $1 AND late AND ($2 = '' OR payer_province = $2 OR payee_province = $2)
		GROUP BY payer_province, payee_province ORDER BY payer_province, payee_province`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("late counts of %s: %w", p, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (latePair, error) {
		var (
			x   latePair
			amt string
		)
		if err := r.Scan(&x.payer, &x.payee, &x.n, &amt); err != nil {
			return x, err
		}
		return x, yuans(&x.amount, amt)
	})
}

// disputeRow is one statement_disputes row with the disputed record's payee.
type disputeRow struct {
	province, usageID, payer, payee string
	cleared, claimed                money.Yuan
	reason                          string
	disputedAt, resolvedAt          time.Time
	resolved, accepted              bool
	adjustmentID                    string
	adjustmentSetlym                int
	adjustment                      *money.Yuan
}

// qDisputes lists at most limit disputed items of p's statements that name
// province: disputed by it, or about a record it pays or receives.
func qDisputes(ctx context.Context, tx pgx.Tx, p region.Period, province string, limit int) ([]disputeRow, int64, error) {
	const where = `d.setlym = $1 AND ($2 = '' OR d.province = $2 OR d.payer_province = $2 OR u.payee_province = $2)`
	const from = `FROM statement_disputes d LEFT JOIN usages u
		ON u.setlym = d.setlym AND u.payer_province = d.payer_province AND u.usage_id = d.usage_id`
	var total int64
	if err := tx.QueryRow(ctx, `SELECT count(*) `+from+` WHERE `+where, p.Int(), province).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("disputes of %s: %w", p, err)
	}
	rows, err := tx.Query(ctx, `SELECT d.province, d.usage_id, d.payer_province, coalesce(u.payee_province, ''),
			d.cleared_amount::text, d.claimed_amount::text, d.reason, d.disputed_at, d.resolved_at,
			coalesce(d.accepted, false), coalesce(d.adjustment_id, ''), coalesce(d.adjustment_setlym, 0),
			d.adjustment_amount::text
		`+from+` WHERE `+where+` ORDER BY d.province, d.usage_id LIMIT $3`, p.Int(), province, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("disputes of %s: %w", p, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (disputeRow, error) {
		var (
			x                disputeRow
			cleared, claimed string
			resolvedAt       *time.Time
			adj              *string
		)
		if err := r.Scan(&x.province, &x.usageID, &x.payer, &x.payee, &cleared, &claimed, &x.reason, &x.disputedAt,
			&resolvedAt, &x.accepted, &x.adjustmentID, &x.adjustmentSetlym, &adj); err != nil {
			return x, err
		}
		if resolvedAt != nil {
			x.resolved, x.resolvedAt = true, *resolvedAt
		}
		if adj != nil {
			var a money.Yuan
			if err := yuans(&a, *adj); err != nil {
				return x, err
			}
			x.adjustment = &a
		}
		return x, yuans(&x.cleared, cleared, &x.claimed, claimed)
	})
	return out, total, err
}
