package clearingdb

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/ledger"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// SettlePeriod executes the settlement of closed period p at now (R16, R18)
// with the prepayment policy pcfg (built in cmd/ from --prepay-multiple and
// --prepay-threshold; WithDefaults is applied here) and returns its status.
//
// In one transaction: lock the period row (so concurrent calls queue), refuse
// unless it is CLOSED and every earlier closed period is SETTLED, lock the
// journal head (so deposits cannot move meanwhile), read each province's
// deposit balance from the journal and its payables of the last
// TrailingMonths−1 closed periods, run prepay.Config.Settle (which checks its
// own result with CheckSettlement), book per province with a non-zero net a
// CLEARING_DISCHARGE entry (its cleared obligation into centre:pool) and then
// prepay's draw and payout entries (the pool back to zero), write the
// prepay.csv rows, payouts and top-up requests, add each payer's draw to what
// it must replenish, store each province's required deposit, check that the
// deposits in the journal now equal the rows' deposit_after, and move
// CLOSED → SETTLED.
//
// Exactly one draw per province: the whole settlement commits or nothing
// does; a rerun after a crash or cancellation starts again from CLOSED; a call
// on a SETTLED period returns its status unchanged; and the prepay rows'
// primary key (setlym, province) and the journal's unique (kind, ref) refuse a
// second draw even past the period lock.
//
// Needs no transaction from the caller. Errors: ErrNotFound;
// ErrPeriodNotFrozen (OPEN or CLOSING: close it first);
// ErrEarlierPeriodUnsettled; prepay.ErrBadConfig and the other errors of
// prepay.Config.Settle; ErrRetriesExhausted; errInvariant; database errors.
func (s *Store) SettlePeriod(ctx context.Context, p region.Period, pcfg prepay.Config, now time.Time) (PeriodStatus, error) {
	pcfg = pcfg.WithDefaults()
	if err := pcfg.Validate(); err != nil {
		return PeriodStatus{}, err
	}
	err := s.retry(ctx, "settle "+p.String(), func(ctx context.Context) error {
		return s.inTx(ctx, func(tx pgx.Tx) error { return settleOnce(ctx, tx, p, pcfg, now) })
	})
	if err != nil {
		return PeriodStatus{}, err
	}
	return s.PeriodStatus(ctx, p)
}

func settleOnce(ctx context.Context, tx pgx.Tx, p region.Period, pcfg prepay.Config, now time.Time) error {
	st, _, err := lockPeriod(ctx, tx, p)
	if err != nil {
		return err
	}
	switch st {
	case settlement.PeriodSettled:
		return nil
	case settlement.PeriodOpen, settlement.PeriodClosing:
		return fmt.Errorf("settle %s: %w: it is %s", p, ErrPeriodNotFrozen, st)
	}
	var earlier *int
	if err := tx.QueryRow(ctx, `SELECT max(setlym) FROM periods WHERE setlym < $1 AND state = 'CLOSED'`, p.Int()).Scan(&earlier); err != nil {
		return err
	}
	if earlier != nil {
		return fmt.Errorf("settle %s: %w: %06d is CLOSED", p, ErrEarlierPeriodUnsettled, *earlier)
	}
	if _, err := lockJournal(ctx, tx); err != nil {
		return err
	}

	res, _, err := loadResult(ctx, tx, p)
	if err != nil {
		return err
	}
	deposits, err := journalBalances(ctx, tx, "deposit:")
	if err != nil {
		return err
	}
	depositsBefore := map[string]money.Yuan{}
	for _, code := range region.ProvinceCodes() {
		if d, ok := deposits[prepay.DepositAccount(code)]; ok {
			depositsBefore[code] = d
		}
	}
	prior, err := priorPayables(ctx, tx, p, pcfg.TrailingMonths-1)
	if err != nil {
		return err
	}
	sett, err := pcfg.Settle(prepay.SettleInput{
		Period: p, Positions: res.Positions, DepositsBefore: depositsBefore, PriorPayables: prior, At: now,
	})
	if err != nil {
		return fmt.Errorf("settle %s: %w", p, err)
	}

	entries := dischargeEntries(p, res.Positions, now)
	entries = append(entries, sett.Entries...)
	if _, _, err := appendJournal(ctx, tx, entries); err != nil {
		return fmt.Errorf("settle %s: %w", p, err)
	}
	if err := step(ctx, "settle:journal"); err != nil {
		return err
	}
	if err := writeSettlement(ctx, tx, p, sett, now); err != nil {
		return fmt.Errorf("settle %s: %w", p, err)
	}
	if err := step(ctx, "settle:rows"); err != nil {
		return err
	}

	// Pair assertion: the journal's deposits are now what the rows say.
	after, err := journalBalances(ctx, tx, "deposit:")
	if err != nil {
		return err
	}
	for _, r := range sett.Rows {
		if got := after[prepay.DepositAccount(r.Province)]; !got.Equal(r.DepositAfter) {
			return fmt.Errorf("%w: settle %s: journal deposit of %s is %s, row says %s", errInvariant, p, r.Province, got, r.DepositAfter)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE periods SET state = 'SETTLED', settled_at = $2 WHERE setlym = $1`, p.Int(), now); err != nil {
		return fmt.Errorf("settle %s: %w", p, translate(err))
	}
	return step(ctx, "settle:commit")
}

// priorPayables returns each province's payable in the last n closed periods
// before p, oldest first (the sizing history of prepay.Config.RequiredNext;
// months that were never opened have no period and are not counted).
func priorPayables(ctx context.Context, q Querier, p region.Period, n int) (map[string][]money.Yuan, error) {
	out := map[string][]money.Yuan{}
	if n <= 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `SELECT pp.province, pp.payable::text
		FROM period_positions pp
		JOIN (SELECT setlym FROM periods WHERE setlym < $1 AND state IN ('CLOSED', 'SETTLED')
		       ORDER BY setlym DESC LIMIT $2) last USING (setlym)
		ORDER BY pp.setlym, pp.province`, p.Int(), n)
	if err != nil {
		return nil, fmt.Errorf("prior payables: %w", err)
	}
	var prov, amt string
	_, err = pgx.ForEachRow(rows, []any{&prov, &amt}, func() error {
		y, err := money.Parse(amt)
		if err != nil {
			return err
		}
		out[prov] = append(out[prov], y)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("prior payables: %w", err)
	}
	return out, nil
}

// dischargeEntries hands each province's cleared obligation of period p to
// centre:pool, in code order: a payer's clearing:receivable back to zero
// against the pool (which then expects the draw), a receiver's
// clearing:payable back to zero against the pool (which then owes the payout).
func dischargeEntries(p region.Period, positions []settlement.Position, at time.Time) []ledger.Entry {
	var out []ledger.Entry
	for _, pos := range positions {
		ref := p.String() + ":" + pos.Province
		switch {
		case pos.Net.IsNegative():
			out = append(out, ledger.Entry{Kind: KindClearingDischarge, Ref: ref, At: at, Postings: ledger.Postings{
				{Account: ClearingReceivableAccount(pos.Province), Amount: pos.Net.Neg()},
				{Account: prepay.AccountPool, Amount: pos.Net},
			}})
		case pos.Net.IsPositive():
			out = append(out, ledger.Entry{Kind: KindClearingDischarge, Ref: ref, At: at, Postings: ledger.Postings{
				{Account: ClearingPayableAccount(pos.Province), Amount: pos.Net.Neg()},
				{Account: prepay.AccountPool, Amount: pos.Net},
			}})
		}
	}
	return out
}

// writeSettlement stores a settlement's rows, payouts and top-up requests and
// updates each province's replenishment due and required deposit.
func writeSettlement(ctx context.Context, tx pgx.Tx, p region.Period, sett prepay.Settlement, now time.Time) error {
	n := len(sett.Rows)
	provs := make([]string, n)
	before, drawn, outstanding, after, required := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	warning := make([]bool, n)
	for i, r := range sett.Rows {
		provs[i] = r.Province
		before[i], drawn[i], outstanding[i] = r.DepositBefore.String(), r.Drawn.String(), r.Outstanding.String()
		after[i], required[i], warning[i] = r.DepositAfter.String(), r.RequiredNext.String(), r.Warning
	}
	var poProv, poDue, poPaid, poUnpaid []string
	for _, po := range sett.Payouts {
		poProv, poDue = append(poProv, po.Province), append(poDue, po.Due.String())
		poPaid, poUnpaid = append(poPaid, po.Paid.String()), append(poUnpaid, po.Unpaid.String())
	}
	var tuProv, tuOut, tuAfter, tuReq, tuTop []string
	var tuWarn []bool
	for _, tu := range sett.TopUps {
		tuProv, tuWarn, tuOut = append(tuProv, tu.Province), append(tuWarn, tu.Warning), append(tuOut, tu.Outstanding.String())
		tuAfter, tuReq, tuTop = append(tuAfter, tu.DepositAfter.String()), append(tuReq, tu.RequiredNext.String()), append(tuTop, tu.DepositTopUp.String())
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO prepay_rows (setlym, province, deposit_before, drawn, outstanding, deposit_after, required_next, warning)
		SELECT $1, * FROM unnest($2::text[], $3::numeric[], $4::numeric[], $5::numeric[], $6::numeric[], $7::numeric[], $8::boolean[])`,
		p.Int(), provs, before, drawn, outstanding, after, required, warning)
	if len(poProv) > 0 {
		b.Queue(`INSERT INTO prepay_payouts (setlym, province, due, paid, unpaid)
			SELECT $1, * FROM unnest($2::text[], $3::numeric[], $4::numeric[], $5::numeric[])`,
			p.Int(), poProv, poDue, poPaid, poUnpaid)
	}
	if len(tuProv) > 0 {
		b.Queue(`INSERT INTO prepay_topups (setlym, province, warning, outstanding, deposit_after, required_next, deposit_topup, requested_at)
			SELECT $1, x.*, $8 FROM unnest($2::text[], $3::boolean[], $4::numeric[], $5::numeric[], $6::numeric[], $7::numeric[]) AS x`,
			p.Int(), tuProv, tuWarn, tuOut, tuAfter, tuReq, tuTop, now)
	}
	b.Queue(`INSERT INTO prepay_accounts AS a (province, replenish_due, required, updated_at)
		SELECT x.province, x.drawn, x.required, $4
		FROM unnest($1::text[], $2::numeric[], $3::numeric[]) AS x(province, drawn, required)
		ORDER BY x.province
		ON CONFLICT (province) DO UPDATE SET replenish_due = a.replenish_due + excluded.replenish_due,
			required = excluded.required, updated_at = excluded.updated_at`,
		provs, drawn, required, now)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write prepay rows: %w", translate(err))
	}
	return nil
}

// PrepayRows returns the prepay.csv rows of a SETTLED period (all 32
// provinces in code order). Errors: ErrNotFound (no such period);
// ErrPeriodNotFrozen when it is not settled yet.
func (s *Store) PrepayRows(ctx context.Context, p region.Period) ([]prepay.Row, error) {
	var out []prepay.Row
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		per, err := GetPeriodTx(ctx, tx, p)
		if err != nil {
			return err
		}
		if per.State != settlement.PeriodSettled {
			return fmt.Errorf("prepay rows of %s: %w: it is %s, not SETTLED", p, ErrPeriodNotFrozen, per.State)
		}
		out, err = prepayRows(ctx, tx, p, "")
		return err
	})
	return out, err
}

// prepayRows reads the prepay rows of p, of one province when province is
// not "".
func prepayRows(ctx context.Context, q Querier, p region.Period, province string) ([]prepay.Row, error) {
	rows, err := q.Query(ctx, `SELECT province, deposit_before::text, drawn::text, outstanding::text,
			deposit_after::text, required_next::text, warning
		FROM prepay_rows WHERE setlym = $1 AND ($2 = '' OR province = $2) ORDER BY province COLLATE "C"`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("prepay rows of %s: %w", p, err)
	}
	var out []prepay.Row
	var (
		r          prepay.Row
		a, b, c, d string
		e          string
	)
	_, err = pgx.ForEachRow(rows, []any{&r.Province, &a, &b, &c, &d, &e, &r.Warning}, func() error {
		row := prepay.Row{Province: r.Province, Warning: r.Warning}
		for _, f := range []struct {
			dst *money.Yuan
			src string
		}{{&row.DepositBefore, a}, {&row.Drawn, b}, {&row.Outstanding, c}, {&row.DepositAfter, d}, {&row.RequiredNext, e}} {
			v, err := money.Parse(f.src)
			if err != nil {
				return err
			}
			*f.dst = v
		}
		out = append(out, row)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("prepay rows of %s: %w", p, err)
	}
	return out, nil
}
