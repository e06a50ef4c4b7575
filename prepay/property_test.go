package prepay_test

import (
	"errors"
	"testing"
	"time"

	"pgregory.net/rapid"

	"gongji/ledger"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// genPositions draws a period's positions from random cross-province rows
// (some negative, as reversals of earlier periods are) over a few provinces.
func genPositions(t *rapid.T) []settlement.Position {
	all := region.Provinces()
	provs := rapid.SliceOfNDistinct(rapid.IntRange(0, len(all)-1), 2, 6, rapid.ID[int]).Draw(t, "provinces")
	n := rapid.IntRange(0, 30).Draw(t, "rows")
	var rows []settlement.Row
	for range n {
		pi := rapid.SampledFrom(provs).Draw(t, "payer")
		ei := rapid.SampledFrom(provs).Filter(func(i int) bool { return i != pi }).Draw(t, "payee")
		rows = append(rows, settlement.Row{
			PayerProvince: all[pi].Code, PayerRegion: all[pi].Regions[0].Code,
			PayeeProvince: all[ei].Code, PayeeRegion: all[ei].Regions[0].Code,
			Amount: money.FromFen(rapid.Int64Range(-20_000, 400_000).Filter(func(f int64) bool { return f != 0 }).Draw(t, "fen")),
		})
	}
	return settlement.Compute(rows).Positions
}

func genDeposits(t *rapid.T) map[string]money.Yuan {
	out := map[string]money.Yuan{}
	for _, code := range region.ProvinceCodes() {
		// Often zero, often small, sometimes large, to hit shortfalls and warnings.
		switch rapid.IntRange(0, 3).Draw(t, "depositKind") {
		case 1:
			out[code] = money.FromFen(rapid.Int64Range(1, 200_000).Draw(t, "small"))
		case 2:
			out[code] = money.FromFen(rapid.Int64Range(0, 100_000_000).Draw(t, "large"))
		}
	}
	return out
}

func TestPropertySettle(t *testing.T) {
	t.Parallel()
	cfg := prepay.Config{}.WithDefaults()
	rapid.Check(t, func(t *rapid.T) {
		pos := genPositions(t)
		deposits := genDeposits(t)
		s, err := cfg.Settle(prepay.SettleInput{Period: region.Period{Year: 2026, Month: 8}, Positions: pos, DepositsBefore: deposits})
		if err != nil {
			t.Fatal(err)
		}
		paid, unpaid := money.Zero, money.Zero
		for _, po := range s.Payouts {
			if po.Paid.IsNegative() || po.Paid.GreaterThan(po.Due) || !po.Paid.Add(po.Unpaid).Equal(po.Due) {
				t.Fatalf("payout %+v", po)
			}
			paid, unpaid = paid.Add(po.Paid), unpaid.Add(po.Unpaid)
		}
		for i, r := range s.Rows {
			obligation := pos[i].Net.Neg().Max(money.Zero)
			// drawn + outstanding = net payable
			if !r.Drawn.Add(r.Outstanding).Equal(obligation) || !r.Due().Equal(obligation) {
				t.Fatalf("%s: drawn %s + outstanding %s ≠ %s", r.Province, r.Drawn, r.Outstanding, obligation)
			}
			if r.Drawn.GreaterThan(r.DepositBefore) || r.DepositAfter.IsNegative() || !r.DepositAfter.Add(r.Drawn).Equal(r.DepositBefore) {
				t.Fatalf("%s: deposit %s → %s after drawing %s", r.Province, r.DepositBefore, r.DepositAfter, r.Drawn)
			}
			if r.Outstanding.IsPositive() && !r.DepositAfter.IsZero() {
				t.Fatalf("%s: shortfall while deposit left", r.Province)
			}
		}
		if !paid.Equal(s.Covered()) || !unpaid.Equal(s.Shortfall()) {
			t.Fatalf("paid %s unpaid %s, drawn %s outstanding %s", paid, unpaid, s.Covered(), s.Shortfall())
		}
		// Postings conserve money: every entry balanced, the pool empty again.
		for _, e := range s.Entries {
			if _, err := e.Validate(); err != nil {
				t.Fatal(err)
			}
		}
		if b := ledger.Balances(s.Entries)[prepay.AccountPool]; !b.IsZero() {
			t.Fatalf("centre:pool holds %s after settlement", b)
		}
	})
}

func TestPropertyProRata(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		fen := rapid.SliceOfN(rapid.Int64Range(0, 1_000_000), 1, 10).Draw(t, "weights")
		var ws []money.Yuan
		var sum int64
		for _, f := range fen {
			ws = append(ws, money.FromFen(f))
			sum += f
		}
		total := rapid.Int64Range(0, sum).Draw(t, "total")
		shares, err := prepay.ProRata(money.FromFen(total), ws)
		if err != nil {
			t.Fatal(err)
		}
		var got int64
		for i, s := range shares {
			got += s.Fen()
			if s.IsNegative() || s.GreaterThan(ws[i]) {
				t.Fatalf("share %d = %s of weight %s", i, s, ws[i])
			}
			// Within one fen of the exact proportion: |share×Σ − total×w| < Σ.
			if sum > 0 {
				diff := s.Fen()*sum - total*fen[i]
				if diff <= -sum || diff >= sum {
					t.Fatalf("share %d = %s is not within a fen of %d×%d/%d", i, s, total, fen[i], sum)
				}
			}
		}
		if got != total {
			t.Fatalf("shares sum to %d fen, want %d", got, total)
		}
	})
}

// TestPropertyPoolConservation drives the pool with random sequences of
// funding, settlements, replenishments and shortfall payments (valid and
// invalid) and checks after every step that money is conserved: every entry
// balanced, balances derived from the journal, no negative deposit,
// outstanding = unpaid, and net inflow from outside = deposits.
func TestPropertyPoolConservation(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		pool, err := prepay.NewPool(prepay.Config{})
		if err != nil {
			t.Fatal(err)
		}
		codes := region.ProvinceCodes()
		period := region.Period{Year: 2026, Month: 1}
		at := time.Date(2026, 2, 10, 9, 0, 0, 0, region.Shanghai)
		steps := rapid.IntRange(1, 25).Draw(t, "steps")
		for range steps {
			prov := rapid.SampledFrom(codes).Draw(t, "province")
			switch op := rapid.IntRange(0, 3).Draw(t, "op"); op {
			case 0:
				amt := money.FromFen(rapid.Int64Range(1, 50_000_000).Draw(t, "fund"))
				if _, err := pool.Fund(prov, amt, at, "fund"); err != nil {
					t.Fatal(err)
				}
			case 1:
				pos := genPositions(t)
				s, err := pool.Settle(period, pos, nil, at)
				if err != nil {
					t.Fatal(err)
				}
				for i, r := range s.Rows {
					if !r.Drawn.Add(r.Outstanding).Equal(pos[i].Net.Neg().Max(money.Zero)) {
						t.Fatalf("%s: drawn + outstanding ≠ net payable", r.Province)
					}
				}
				period = period.Next()
			case 2:
				due := pool.ReplenishDue(prov)
				over := rapid.Bool().Draw(t, "overReplenish")
				if over {
					if _, err := pool.Replenish(prov, due.Add(money.FromFen(1)), at, "replenish"); !errors.Is(err, prepay.ErrExceedsDue) {
						t.Fatalf("over-replenish: %v", err)
					}
				} else if due.IsPositive() {
					amt := money.FromFen(rapid.Int64Range(1, due.Fen()).Draw(t, "replenish"))
					if _, err := pool.Replenish(prov, amt, at, "replenish"); err != nil {
						t.Fatal(err)
					}
				}
			case 3:
				out := pool.Outstanding(prov)
				if rapid.Bool().Draw(t, "overpay") {
					if _, err := pool.PayShortfall(prov, out.Add(money.FromFen(1)), at, "shortfall"); !errors.Is(err, prepay.ErrExceedsOutstanding) {
						t.Fatalf("overpay: %v", err)
					}
				} else if out.IsPositive() {
					amt := money.FromFen(rapid.Int64Range(1, out.Fen()).Draw(t, "pay"))
					if _, err := pool.PayShortfall(prov, amt, at, "shortfall"); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := pool.Check(); err != nil {
				t.Fatal(err)
			}
		}
		sum := money.Zero
		for _, b := range ledger.Balances(pool.Journal()) {
			sum = sum.Add(b)
		}
		if !sum.IsZero() {
			t.Fatalf("journal sums to %s", sum)
		}
	})
}
