package prepay_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"gongji/ledger"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

func y(s string) money.Yuan { return money.MustParse(s) }

const (
	bj = "110000"
	sh = "310000"
	ha = "410000"
	gd = "440000"
)

// positionsOf builds all 32 positions from (province → receivable, payable).
func positionsOf(t testing.TB, figures map[string][2]string) []settlement.Position {
	t.Helper()
	var out []settlement.Position
	for _, code := range region.ProvinceCodes() {
		p := settlement.Position{Province: code}
		if f, ok := figures[code]; ok {
			p.Receivable, p.Payable = y(f[0]), y(f[1])
		}
		p.Net = p.Receivable.Sub(p.Payable)
		out = append(out, p)
	}
	return out
}

// august: the four-province period of the settlement package's hand
// scenario: nets 110000 +424.91, 310000 +359.75, 410000 −690.25, 440000 −94.41.
func august(t testing.TB) []settlement.Position {
	return positionsOf(t, map[string][2]string{
		bj: {"824.90", "399.99"},
		sh: {"480.00", "120.25"},
		ha: {"420.25", "1110.50"},
		gd: {"350.49", "444.90"},
	})
}

func postingsString(ps ledger.Postings) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, p.Account+" "+p.Amount.String())
	}
	return strings.Join(parts, ", ")
}

// TestShortfallScenario walks one period with a shortfall through the pool,
// every figure computed by hand:
//
//	deposits: 110000 1000.00, 410000 500.00, 440000 200.00, 310000 none
//	410000 owes 690.25: drawn 500.00 (all of it: warning), outstanding 190.25
//	440000 owes 94.41: drawn 94.41 (47 % < 70 %: no warning), after 105.59
//	covered 594.41 of 784.66 due: pro rata 594.41 × 424.91/784.66 = 321.8856
//	→ 321.88 + the left-over fen (larger remainder) = 321.89 to 110000,
//	594.41 × 359.75/784.66 = 272.5244 → 272.52 to 310000;
//	unpaid 103.02 and 87.23 (= 190.25).
func TestShortfallScenario(t *testing.T) {
	t.Parallel()
	pool, err := prepay.NewPool(prepay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 9, 1, 9, 0, 0, 0, region.Shanghai)
	for prov, amt := range map[string]string{bj: "1000.00", ha: "500.00", gd: "200.00"} {
		if _, err := pool.Fund(prov, y(amt), t0, "initial "+prov); err != nil {
			t.Fatal(err)
		}
	}
	prior := map[string][]money.Yuan{
		ha: {y("900.00"), y("1200.50")},
		bj: {y("100.00"), y("200.00"), y("300.00")},
	}
	s, err := pool.Settle(region.Period{Year: 2026, Month: 8}, august(t), prior, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, r := range s.Rows {
		rows[r.Province] = fmt.Sprintf("%s %s %s %s %s %v", r.DepositBefore, r.Drawn, r.Outstanding, r.DepositAfter, r.RequiredNext, r.Warning)
	}
	for prov, want := range map[string]string{
		// required_next: 2 × avg(200.00, 300.00, 399.99) = 599.993… → 599.99 (oldest of 4 months dropped)
		bj: "1000.00 0.00 0.00 1000.00 599.99 false",
		// 2 × 120.25 (one month of history)
		sh: "0.00 0.00 0.00 0.00 240.50 false",
		// 2 × avg(900.00, 1200.50, 1110.50) = 2140.666… → 2140.67
		ha:       "500.00 500.00 190.25 0.00 2140.67 true",
		gd:       "200.00 94.41 0.00 105.59 889.80 false",
		"650000": "0.00 0.00 0.00 0.00 0.00 false",
	} {
		if rows[prov] != want {
			t.Errorf("%s: %s, want %s", prov, rows[prov], want)
		}
	}
	var payouts []string
	for _, po := range s.Payouts {
		payouts = append(payouts, fmt.Sprintf("%s %s %s %s", po.Province, po.Due, po.Paid, po.Unpaid))
	}
	if got, want := strings.Join(payouts, "; "), "110000 424.91 321.89 103.02; 310000 359.75 272.52 87.23"; got != want {
		t.Errorf("payouts %s, want %s", got, want)
	}
	if len(s.TopUps) != 1 || s.TopUps[0].Province != ha || s.TopUps[0].DepositTopUp.String() != "2140.67" || s.TopUps[0].Outstanding.String() != "190.25" {
		t.Errorf("top-ups %+v", s.TopUps)
	}
	var entries []string
	for _, e := range s.Entries {
		entries = append(entries, e.Kind+" "+e.Ref+": "+postingsString(e.Postings))
	}
	wantEntries := []string{
		"PREPAY_DRAW 202608:410000: centre:pool 690.25, deposit:410000 -500.00, receivable:410000 -190.25",
		"PREPAY_DRAW 202608:440000: centre:pool 94.41, deposit:440000 -94.41",
		"PREPAY_PAY_RECEIVER 202608:110000: centre:pool -424.91, ext:bank 321.89, payable:110000 103.02",
		"PREPAY_PAY_RECEIVER 202608:310000: centre:pool -359.75, ext:bank 272.52, payable:310000 87.23",
	}
	if got := strings.Join(entries, "\n"); got != strings.Join(wantEntries, "\n") {
		t.Errorf("entries\n%s\nwant\n%s", got, strings.Join(wantEntries, "\n"))
	}
	mustCheck := func() {
		t.Helper()
		if err := pool.Check(); err != nil {
			t.Fatal(err)
		}
	}
	mustCheck()
	if got := pool.Outstanding(ha).String(); got != "190.25" {
		t.Fatalf("outstanding %s", got)
	}

	// Settling the same period twice is refused.
	if _, err := pool.Settle(region.Period{Year: 2026, Month: 8}, august(t), nil, t0); !errors.Is(err, prepay.ErrAlreadySettled) {
		t.Fatalf("second settle: %v", err)
	}

	// Replenishment: due is what was drawn.
	if got := pool.ReplenishDue(ha).String() + " " + pool.ReplenishDue(gd).String(); got != "500.00 94.41" {
		t.Fatalf("replenishment due %s", got)
	}
	if _, err := pool.Replenish(gd, y("94.42"), t0, "r1"); !errors.Is(err, prepay.ErrExceedsDue) {
		t.Fatalf("over-replenish: %v", err)
	}
	if _, err := pool.Replenish(bj, y("1.00"), t0, "r0"); !errors.Is(err, prepay.ErrExceedsDue) {
		t.Fatalf("replenish without draw: %v", err)
	}
	if _, err := pool.Replenish(ha, y("500.00"), t0, "r2"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Replenish(gd, y("94.41"), t0, "r3"); err != nil {
		t.Fatal(err)
	}
	mustCheck()
	if pool.Deposit(ha).String() != "500.00" || pool.Deposit(gd).String() != "200.00" || !pool.ReplenishDue(ha).IsZero() {
		t.Fatalf("after replenishment: %s %s", pool.Deposit(ha), pool.Deposit(gd))
	}

	// Shortfall: 100.00 now, passed on pro rata to 103.02 and 87.23:
	// 100 × 103.02/190.25 = 54.1498 → 54.14 + left-over fen = 54.15; 45.85.
	if _, err := pool.PayShortfall(ha, y("190.26"), t0, "s0"); !errors.Is(err, prepay.ErrExceedsOutstanding) {
		t.Fatalf("overpay shortfall: %v", err)
	}
	e, err := pool.PayShortfall(ha, y("100.00"), t0, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := postingsString(e.Postings), "ext:bank -100.00, receivable:410000 100.00, payable:110000 -54.15, ext:bank 54.15, payable:310000 -45.85, ext:bank 45.85"; got != want {
		t.Fatalf("shortfall entry %s\nwant %s", got, want)
	}
	mustCheck()
	if got := pool.Unpaid(bj).String() + " " + pool.Unpaid(sh).String() + " " + pool.Outstanding(ha).String(); got != "48.87 41.38 90.25" {
		t.Fatalf("after partial shortfall payment: %s", got)
	}
	if _, err := pool.PayShortfall(ha, y("90.25"), t0, "s2"); err != nil {
		t.Fatal(err)
	}
	mustCheck()
	if !pool.Unpaid(bj).IsZero() || !pool.Unpaid(sh).IsZero() || !pool.Outstanding(ha).IsZero() {
		t.Fatalf("shortfall not cleared")
	}
	// Money in from outside: 1700.00 funded + 594.41 replenished + 190.25
	// shortfall = 2484.66; out: 594.41 + 190.25 paid to receivers = 784.66;
	// net 1700.00 = the deposits, which are back where they started.
	if got := pool.Balance(prepay.AccountBank).String(); got != "-1700.00" {
		t.Fatalf("ext:bank %s", got)
	}
	sum := money.Zero
	for _, b := range ledger.Balances(pool.Journal()) {
		sum = sum.Add(b)
	}
	if !sum.IsZero() {
		t.Fatalf("journal sums to %s", sum)
	}
}
