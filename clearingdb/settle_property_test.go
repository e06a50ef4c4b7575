package clearingdb_test

import (
	"fmt"
	"strings"
	"testing"

	"pgregory.net/rapid"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// opGenRows draws a period's rows over a few provinces and at most three
// regions each, with amounts of either sign (reversals), so that pairs and
// regions repeat and sums cancel.
func opGenRows(t *rapid.T) []settlement.Row {
	all := region.Provinces()
	provs := rapid.SliceOfNDistinct(rapid.IntRange(0, len(all)-1), 2, 5, rapid.ID[int]).Draw(t, "provinces")
	n := rapid.IntRange(0, 40).Draw(t, "rows")
	rows := make([]settlement.Row, 0, n)
	for range n {
		pi := rapid.SampledFrom(provs).Draw(t, "payer")
		ei := rapid.SampledFrom(provs).Filter(func(i int) bool { return i != pi }).Draw(t, "payee")
		payer, payee := all[pi], all[ei]
		pr := payer.Regions[rapid.IntRange(0, min(2, len(payer.Regions)-1)).Draw(t, "payerRegion")]
		er := payee.Regions[rapid.IntRange(0, min(2, len(payee.Regions)-1)).Draw(t, "payeeRegion")]
		fen := rapid.Int64Range(-30_000, 500_000).Filter(func(f int64) bool { return f != 0 }).Draw(t, "fen")
		rows = append(rows, settlement.Row{
			PayerProvince: payer.Code, PayerRegion: pr.Code,
			PayeeProvince: payee.Code, PayeeRegion: er.Code,
			Amount: money.FromFen(fen),
		})
	}
	return rows
}

// TestPropertyCloseSettleMatchesDomain runs a sequence of random periods
// through the database (one database, one period per check, so deposits and
// sizing history carry over) and through the domain's reference models side
// by side: the SQL close equals settlement.Compute on the same rows and passes
// CheckResult; the SQL settlement equals prepay.Pool's (which runs
// Config.Settle and CheckSettlement); each payer's drawn + outstanding is its
// −net; the journal verifies and its prepayment balances equal the pool's.
func TestPropertyCloseSettleMatchesDomain(t *testing.T) {
	t.Parallel()
	b := opSetup(t)
	pool, err := prepay.NewPool(prepay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := opPeriod(t, "200101")
	payables := map[string][]money.Yuan{} // per province, oldest first
	var moves int
	// The checks share one database, so a failed check leaves its period
	// open and every later check (rapid's shrinking included) would fail
	// with "an earlier period is still open". Report the first failure
	// instead.
	var first string

	rapid.Check(t, func(rt *rapid.T) {
		if first != "" {
			rt.Fatalf("an earlier check failed: %s", first)
		}
		fail := func(format string, args ...any) {
			rt.Helper()
			first = fmt.Sprintf(format, args...)
			rt.Fatal(first)
		}
		// The close's aggregate in 1–4 block ranges (settle_close_split.go);
		// drawn before anything is written.
		splits := rapid.IntRange(1, 4).Draw(rt, "closeSplits")
		p = p.Next()
		at := p.Start().Add(12 * 3600e9)

		// Operator movements before the period closes.
		for range rapid.IntRange(0, 3).Draw(rt, "funds") {
			prov := rapid.SampledFrom(region.ProvinceCodes()[:8]).Draw(rt, "fundProvince")
			amt := money.FromFen(rapid.Int64Range(1, 300_000).Draw(rt, "fundFen"))
			moves++
			m := clearingdb.PrepayMovement{Province: prov, Amount: amt, Key: fmt.Sprintf("f%d", moves)}
			if _, err := b.store.FundPrepay(b.ctx, m, at); err != nil {
				fail("fund: %v", err)
			}
			if _, err := pool.Fund(prov, amt, at, m.Key); err != nil {
				fail("%v", err)
			}
		}
		for _, prov := range region.ProvinceCodes() {
			due := pool.ReplenishDue(prov)
			if !due.IsPositive() || !rapid.Bool().Draw(rt, "replenish") {
				continue
			}
			amt := money.FromFen(rapid.Int64Range(1, due.Fen()).Draw(rt, "replenishFen"))
			moves++
			m := clearingdb.PrepayMovement{Province: prov, Amount: amt, Key: fmt.Sprintf("r%d", moves)}
			acct, err := b.store.ReplenishPrepay(b.ctx, m, at)
			if err != nil {
				fail("replenish %s of %s due: %v", amt, due, err)
			}
			if _, err := pool.Replenish(prov, amt, at, m.Key); err != nil {
				fail("%v", err)
			}
			if !acct.ReplenishDue.Equal(pool.ReplenishDue(prov)) {
				fail("%s replenish due %s, pool says %s", prov, acct.ReplenishDue, pool.ReplenishDue(prov))
			}
		}

		rows := opGenRows(rt)
		opCopyRows(rt, b, p, rows, at)
		if _, err := b.store.ClosePeriod(clearingdb.WithCloseSplits(b.ctx, splits), p, opAfterCutOff(p)); err != nil {
			fail("close %s: %v", p, err)
		}
		res, err := b.store.PeriodResult(b.ctx, p) // runs CheckResult
		if err != nil {
			fail("%v", err)
		}
		if got, want := opRender(res), opRender(settlement.Compute(rows)); got != want {
			fail("SQL close ≠ settlement.Compute:\n%s\nwant\n%s", got, want)
		}

		settledAt := opAfterCutOff(p).Add(3600e9)
		if _, err := b.store.SettlePeriod(b.ctx, p, prepay.Config{}, settledAt); err != nil {
			fail("settle %s: %v", p, err)
		}
		prior := map[string][]money.Yuan{}
		for prov, hist := range payables {
			prior[prov] = hist[max(0, len(hist)-(prepay.DefaultTrailingMonths-1)):]
		}
		want, err := pool.Settle(p, res.Positions, prior, settledAt)
		if err != nil {
			fail("pool settle: %v", err)
		}
		for _, pos := range res.Positions {
			payables[pos.Province] = append(payables[pos.Province], pos.Payable)
		}
		got, err := b.store.PrepayRows(b.ctx, p)
		if err != nil {
			fail("%v", err)
		}
		if opPrepayCSV(got) != opPrepayCSV(want.Rows) {
			fail("SQL settlement ≠ prepay.Pool:\n%s\nwant\n%s", opNonZeroPrepay(got), opNonZeroPrepay(want.Rows))
		}
		for i, r := range got {
			if net := res.Positions[i].Net; net.IsNegative() && !r.Drawn.Add(r.Outstanding).Equal(net.Neg()) {
				fail("%s: drawn %s + outstanding %s ≠ −net %s", r.Province, r.Drawn, r.Outstanding, net)
			}
		}

		chk, err := b.store.VerifyJournal(b.ctx)
		if err != nil || !chk.OK {
			fail("journal: %+v, %v", chk, err)
		}
		bal, err := b.store.JournalBalances(b.ctx, "")
		if err != nil {
			fail("%v", err)
		}
		for acct, v := range bal {
			if want := pool.Balance(acct); !strings.HasPrefix(acct, "clearing:") && !v.Equal(want) {
				fail("%s is %s in the journal, %s in the pool", acct, v, want)
			} else if strings.HasPrefix(acct, "clearing:") && !v.IsZero() {
				fail("%s is %s after settlement", acct, v)
			}
		}
		if err := pool.Check(); err != nil {
			fail("%v", err)
		}
	})
}
