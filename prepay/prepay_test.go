package prepay_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

func TestConfigDefaultsAndValidate(t *testing.T) {
	t.Parallel()
	c := prepay.Config{}.WithDefaults()
	if c.WarningThreshold.String() != "0.7" || c.Multiple.String() != "2" || c.TrailingMonths != 3 || !c.Floor.IsZero() {
		t.Fatalf("defaults %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := decimal.RequireFromString
	for name, bad := range map[string]prepay.Config{
		"threshold above 1":  {WarningThreshold: d("1.01"), Multiple: d("2"), TrailingMonths: 3},
		"negative threshold": {WarningThreshold: d("-0.5"), Multiple: d("2"), TrailingMonths: 3},
		"negative multiple":  {WarningThreshold: d("0.7"), Multiple: d("-1"), TrailingMonths: 3},
		"multiple too large": {WarningThreshold: d("0.7"), Multiple: d("12.5"), TrailingMonths: 3},
		"no trailing months": {WarningThreshold: d("0.7"), Multiple: d("2"), TrailingMonths: -1},
		"too many months":    {WarningThreshold: d("0.7"), Multiple: d("2"), TrailingMonths: 25},
		"negative floor":     {WarningThreshold: d("0.7"), Multiple: d("2"), TrailingMonths: 3, Floor: y("-0.01")},
	} {
		if err := bad.Validate(); !errors.Is(err, prepay.ErrBadConfig) {
			t.Errorf("%s: want ErrBadConfig, got %v", name, err)
		}
	}
	if _, err := prepay.NewPool(prepay.Config{TrailingMonths: 30}); !errors.Is(err, prepay.ErrBadConfig) {
		t.Errorf("NewPool accepted a bad config: %v", err)
	}
}

func TestDraw(t *testing.T) {
	t.Parallel()
	c := prepay.Config{}.WithDefaults()
	for _, tc := range []struct {
		deposit, net string
		want         string // drawn outstanding after warning
	}{
		{"1000.00", "500.00", "0.00 0.00 1000.00 false"},   // receiver
		{"1000.00", "0.00", "0.00 0.00 1000.00 false"},     // nothing moved
		{"1000.00", "-300.00", "300.00 0.00 700.00 false"}, // 30 %
		{"1000.00", "-699.99", "699.99 0.00 300.01 false"}, // just under 70 %
		{"1000.00", "-700.00", "700.00 0.00 300.00 true"},  // exactly 70 %: ≥ warns
		{"1000.00", "-1000.00", "1000.00 0.00 0.00 true"},
		{"1000.00", "-1234.56", "1000.00 234.56 0.00 true"}, // shortfall
		{"0.00", "-50.00", "0.00 50.00 0.00 false"},         // no deposit: all outstanding, no warning
		{"0.00", "0.00", "0.00 0.00 0.00 false"},
		{"0.01", "-0.01", "0.01 0.00 0.00 true"},
		// 0.70 × 0.03 = 0.021: 0.02 < 0.021 exactly (rounding the product
		// to the fen first would have warned).
		{"0.03", "-0.02", "0.02 0.00 0.01 false"},
	} {
		d, err := c.Draw(y(tc.deposit), y(tc.net))
		if err != nil {
			t.Fatal(err)
		}
		got := fmt.Sprintf("%s %s %s %v", d.Drawn, d.Outstanding, d.DepositAfter, d.Warning)
		if got != tc.want || !d.DepositBefore.Equal(y(tc.deposit)) {
			t.Errorf("Draw(%s, %s) = %s, want %s", tc.deposit, tc.net, got, tc.want)
		}
	}
	if _, err := c.Draw(y("-0.01"), y("-5.00")); !errors.Is(err, prepay.ErrNegativeDeposit) {
		t.Errorf("negative deposit: %v", err)
	}
	half := prepay.Config{WarningThreshold: decimal.RequireFromString("0.5")}.WithDefaults()
	if d, _ := half.Draw(y("100.00"), y("-50.00")); !d.Warning {
		t.Errorf("threshold 0.5 must warn at 50 %%")
	}
}

func TestRequiredNext(t *testing.T) {
	t.Parallel()
	def := prepay.Config{}.WithDefaults()
	oneAndHalf := prepay.Config{Multiple: decimal.RequireFromString("1.5")}.WithDefaults()
	floored := prepay.Config{Floor: y("5000.00")}.WithDefaults()
	ys := func(ss ...string) []money.Yuan {
		var out []money.Yuan
		for _, s := range ss {
			out = append(out, y(s))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		cfg  prepay.Config
		in   []money.Yuan
		want string
	}{
		{"no history: the floor", def, nil, "0.00"},
		{"one month: 2 × payable (example bundle 130000)", def, ys("4257.56"), "8515.12"},
		{"three months average", def, ys("100.00", "200.00", "300.00"), "400.00"},
		{"only the last three count", def, ys("1000000.00", "100.00", "200.00", "300.00"), "400.00"},
		{"two of three months", def, ys("100.00", "200.01"), "300.01"},
		{"repeating third: 2 × 0.01 / 3 = 0.00666… → 0.01", def, ys("0.01", "0.00", "0.00"), "0.01"},
		{"half-even: 1.5 × 0.01 = 0.015 → 0.02 (to even)", oneAndHalf, ys("0.01"), "0.02"},
		{"half-even: 1.5 × 0.03 = 0.045 → 0.04 (to even)", oneAndHalf, ys("0.03"), "0.04"},
		{"half-even: 1.5 × 0.05 = 0.075 → 0.08", oneAndHalf, ys("0.05"), "0.08"},
		{"negative average: floor 0", def, ys("-10.00", "5.00"), "0.00"},
		{"floor", floored, ys("100.00"), "5000.00"},
		{"above floor", floored, ys("3000.00"), "6000.00"},
	} {
		got, err := tc.cfg.RequiredNext(tc.in)
		if err != nil || got.String() != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.name, got, err, tc.want)
		}
	}
}

func TestProRata(t *testing.T) {
	t.Parallel()
	ys := func(ss ...string) []money.Yuan {
		var out []money.Yuan
		for _, s := range ss {
			out = append(out, y(s))
		}
		return out
	}
	str := func(v []money.Yuan) string {
		var p []string
		for _, x := range v {
			p = append(p, x.String())
		}
		return strings.Join(p, " ")
	}
	for _, tc := range []struct {
		total   string
		weights []money.Yuan
		want    string
	}{
		{"10.00", ys("10.00", "20.00"), "3.33 6.67"},           // remainders 1/3, 2/3: the fen to the larger
		{"0.01", ys("1.00", "1.00", "1.00"), "0.01 0.00 0.00"}, // tie: the lower index
		{"0.02", ys("1.00", "1.00", "1.00"), "0.01 0.01 0.00"},
		{"30.00", ys("10.00", "20.00"), "10.00 20.00"}, // everything covered
		{"0.00", ys("10.00", "20.00"), "0.00 0.00"},
		{"5.00", ys("0.00", "7.00"), "0.00 5.00"},
		{"594.41", ys("424.91", "359.75"), "321.89 272.52"},
	} {
		got, err := prepay.ProRata(y(tc.total), tc.weights)
		if err != nil || str(got) != tc.want {
			t.Errorf("ProRata(%s, %s) = %s, %v; want %s", tc.total, str(tc.weights), str(got), err, tc.want)
		}
	}
	for name, args := range map[string]struct {
		total   string
		weights []money.Yuan
	}{
		"negative total":  {"-1.00", ys("1.00")},
		"negative weight": {"1.00", ys("2.00", "-1.00")},
		"exceeds weights": {"3.01", ys("1.00", "2.00")},
	} {
		if _, err := prepay.ProRata(y(args.total), args.weights); !errors.Is(err, prepay.ErrBadAmount) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSettleRefusesBadPositions(t *testing.T) {
	t.Parallel()
	c := prepay.Config{}.WithDefaults()
	good := august(t)
	short := good[1:]
	unbalanced := append([]settlement.Position(nil), good...)
	unbalanced[0].Receivable = unbalanced[0].Receivable.Add(y("0.01"))
	unbalanced[0].Net = unbalanced[0].Net.Add(y("0.01"))
	badNet := append([]settlement.Position(nil), good...)
	badNet[0].Net = badNet[0].Net.Add(y("0.01"))
	badNet[1].Net = badNet[1].Net.Sub(y("0.01"))
	for name, ps := range map[string][]settlement.Position{"31 units": short, "nets ≠ 0": unbalanced, "net ≠ rec − pay": badNet} {
		if _, err := c.Settle(prepay.SettleInput{Period: region.Period{Year: 2026, Month: 8}, Positions: ps}); !errors.Is(err, prepay.ErrBadPositions) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := c.Settle(prepay.SettleInput{Positions: good, DepositsBefore: map[string]money.Yuan{ha: y("-1.00")}}); !errors.Is(err, prepay.ErrNegativeDeposit) {
		t.Errorf("negative deposit: %v", err)
	}
	if _, err := c.Settle(prepay.SettleInput{Positions: good, DepositsBefore: map[string]money.Yuan{"999999": y("1.00")}}); !errors.Is(err, prepay.ErrUnknownProvince) {
		t.Errorf("unknown province deposit: %v", err)
	}
}

// TestCheckSettlementCatchesTampering changes one figure of a correct
// settlement at a time.
func TestCheckSettlementCatchesTampering(t *testing.T) {
	t.Parallel()
	c := prepay.Config{}.WithDefaults()
	pos := august(t)
	base, err := c.Settle(prepay.SettleInput{
		Period: region.Period{Year: 2026, Month: 8}, Positions: pos,
		DepositsBefore: map[string]money.Yuan{ha: y("500.00"), gd: y("200.00")},
		At:             time.Date(2026, 9, 1, 0, 0, 0, 0, region.Shanghai),
	})
	if err != nil {
		t.Fatal(err)
	}
	idx := func(s prepay.Settlement, code string) int {
		for i, r := range s.Rows {
			if r.Province == code {
				return i
			}
		}
		return -1
	}
	clone := func() prepay.Settlement {
		s := base
		s.Rows = append([]prepay.Row(nil), base.Rows...)
		s.Payouts = append([]prepay.Payout(nil), base.Payouts...)
		s.Entries = nil
		for _, e := range base.Entries {
			e.Postings = append(e.Postings[:0:0], e.Postings...)
			s.Entries = append(s.Entries, e)
		}
		return s
	}
	for name, f := range map[string]func(s *prepay.Settlement){
		"drawn":         func(s *prepay.Settlement) { s.Rows[idx(*s, ha)].Drawn = y("499.99") },
		"outstanding":   func(s *prepay.Settlement) { s.Rows[idx(*s, ha)].Outstanding = y("0.00") },
		"deposit_after": func(s *prepay.Settlement) { s.Rows[idx(*s, gd)].DepositAfter = y("200.00") },
		"warning":       func(s *prepay.Settlement) { s.Rows[idx(*s, gd)].Warning = true },
		"paid":          func(s *prepay.Settlement) { s.Payouts[0].Paid = s.Payouts[0].Paid.Add(y("0.01")) },
		"paid and unpaid shifted": func(s *prepay.Settlement) {
			s.Payouts[0].Paid, s.Payouts[0].Unpaid = s.Payouts[0].Paid.Add(y("0.01")), s.Payouts[0].Unpaid.Sub(y("0.01"))
		},
		"missing payout": func(s *prepay.Settlement) { s.Payouts = s.Payouts[1:] },
		"entry unbalanced": func(s *prepay.Settlement) {
			s.Entries[0].Postings[0].Amount = s.Entries[0].Postings[0].Amount.Add(y("0.01"))
		},
		"entry dropped": func(s *prepay.Settlement) { s.Entries = s.Entries[1:] },
		"below floor":   func(s *prepay.Settlement) { s.Rows[0].RequiredNext = y("-1.00") },
	} {
		s := clone()
		f(&s)
		if err := c.CheckSettlement(s, pos); !errors.Is(err, prepay.ErrInconsistent) {
			t.Errorf("%s: not detected (%v)", name, err)
		}
	}
	if err := c.CheckSettlement(base, pos); err != nil {
		t.Fatalf("base was modified: %v", err)
	}
}
