package settlement_test

import (
	"cmp"
	"errors"
	"slices"
	"testing"

	"gongji/money"
	"gongji/settlement"
)

func cloneResult(r settlement.Result) settlement.Result {
	return settlement.Result{
		Gross:        slices.Clone(r.Gross),
		Positions:    slices.Clone(r.Positions),
		Allocation:   slices.Clone(r.Allocation),
		Instructions: slices.Clone(r.Instructions),
	}
}

func indexPos(r settlement.Result, code string) int {
	return slices.IndexFunc(r.Positions, func(p settlement.Position) bool { return p.Province == code })
}

func indexIns(r settlement.Result, tier settlement.Tier, from, to string) int {
	return slices.IndexFunc(r.Instructions, func(in settlement.Instruction) bool {
		return in.Tier == tier && in.From == from && in.To == to
	})
}

// TestCheckResultNamesFirstViolation breaks a correct result in one place at a
// time and expects CheckResult to name that rule.
func TestCheckResultNamesFirstViolation(t *testing.T) {
	t.Parallel()
	base := settlement.Compute(settlement.Rows(augustScenario()))
	if err := settlement.CheckResult(base); err != nil {
		t.Fatal(err)
	}
	cent := money.MustParse("0.01")
	for _, tc := range []struct {
		rule   string
		mutate func(r *settlement.Result)
	}{
		{"positions", func(r *settlement.Result) { r.Positions = r.Positions[1:] }},
		{"positions", func(r *settlement.Result) { r.Positions[0], r.Positions[1] = r.Positions[1], r.Positions[0] }},
		{"position-net", func(r *settlement.Result) { r.Positions[indexPos(*r, bj)].Net = money.MustParse("424.90") }},
		// Shift a cent from one net to another consistently: nets still sum to
		// zero, but the gross no longer explains the receivable.
		{"gross-positions", func(r *settlement.Result) {
			i := indexPos(*r, bj)
			r.Positions[i].Receivable = r.Positions[i].Receivable.Add(cent)
			r.Positions[i].Net = r.Positions[i].Net.Add(cent)
			j := indexPos(*r, sh)
			r.Positions[j].Receivable = r.Positions[j].Receivable.Sub(cent)
			r.Positions[j].Net = r.Positions[j].Net.Sub(cent)
		}},
		{"nets-sum", func(r *settlement.Result) {
			i := indexPos(*r, bj)
			r.Positions[i].Receivable = r.Positions[i].Receivable.Add(cent)
			r.Positions[i].Net = r.Positions[i].Net.Add(cent)
		}},
		{"gross-order", func(r *settlement.Result) { r.Gross[0], r.Gross[1] = r.Gross[1], r.Gross[0] }},
		{"gross-order", func(r *settlement.Result) { r.Gross = append(r.Gross, r.Gross[len(r.Gross)-1]) }},
		{"gross-zero", func(r *settlement.Result) {
			r.Gross = append(r.Gross, settlement.GrossCell{PayerProvince: "650000", PayeeProvince: "660000"})
		}},
		{"gross-pair", func(r *settlement.Result) {
			r.Gross = append(r.Gross, settlement.GrossCell{PayerProvince: "650000", PayeeProvince: "650000", Amount: cent})
		}},
		{"gross-pair", func(r *settlement.Result) {
			r.Gross = append(r.Gross, settlement.GrossCell{PayerProvince: "990000", PayeeProvince: "990001", Amount: cent})
		}},
		{"gross-positions", func(r *settlement.Result) { r.Gross[0].Amount = r.Gross[0].Amount.Add(cent) }},
		{"allocation-order", func(r *settlement.Result) { r.Allocation[0], r.Allocation[1] = r.Allocation[1], r.Allocation[0] }},
		{"allocation-region", func(r *settlement.Result) { r.Allocation[0].Region = "310100" }},
		{"allocation-net", func(r *settlement.Result) { r.Allocation[0].Net = r.Allocation[0].Net.Add(cent) }},
		// Move a cent of receivable between two regions of different provinces.
		{"allocation-sum", func(r *settlement.Result) {
			r.Allocation[0].Receivable = r.Allocation[0].Receivable.Add(cent)
			r.Allocation[0].Net = r.Allocation[0].Net.Add(cent)
		}},
		{"allocation-sum", func(r *settlement.Result) { r.Allocation = r.Allocation[1:] }},
		{"instruction-order", func(r *settlement.Result) {
			r.Instructions[0], r.Instructions[1] = r.Instructions[1], r.Instructions[0]
		}},
		{"instruction-amount", func(r *settlement.Result) { r.Instructions[0].Amount = r.Instructions[0].Amount.Neg() }},
		{"instruction-tier", func(r *settlement.Result) { r.Instructions[len(r.Instructions)-1].Tier = "REGION" }},
		{"national-instruction", func(r *settlement.Result) {
			r.Instructions[indexIns(*r, settlement.TierNational, "000000", bj)].Amount = money.MustParse("424.90")
		}},
		// Direction reversed: the centre "pays" a net payer.
		{"national-instruction", func(r *settlement.Result) {
			i := indexIns(*r, settlement.TierNational, ha, "000000")
			r.Instructions[i].From, r.Instructions[i].To = "000000", ha
			slices.SortFunc(r.Instructions, func(a, b settlement.Instruction) int {
				return cmp.Or(cmp.Compare(a.Tier, b.Tier), cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To))
			})
		}},
		{"national-instruction", func(r *settlement.Result) {
			r.Instructions = slices.Delete(r.Instructions, indexIns(*r, settlement.TierNational, gd, "000000"), indexIns(*r, settlement.TierNational, gd, "000000")+1)
		}},
		{"national-instruction", func(r *settlement.Result) {
			r.Instructions = slices.Insert(r.Instructions, 0, settlement.Instruction{Tier: settlement.TierNational, From: "000000", To: "000000", Amount: cent})
		}},
		{"province-instruction", func(r *settlement.Result) {
			r.Instructions[indexIns(*r, settlement.TierProvince, "410100", ha)].Amount = money.MustParse("499.99")
		}},
		{"province-instruction", func(r *settlement.Result) {
			i := indexIns(*r, settlement.TierProvince, "440100", gd)
			r.Instructions = slices.Delete(r.Instructions, i, i+1)
		}},
		{"province-instruction", func(r *settlement.Result) {
			i := indexIns(*r, settlement.TierProvince, "440100", gd)
			r.Instructions[i].To = ha // region paying another province
		}},
	} {
		r := cloneResult(base)
		tc.mutate(&r)
		err := settlement.CheckResult(r)
		var ce *settlement.CheckError
		if !errors.As(err, &ce) || !errors.Is(err, settlement.ErrInconsistent) {
			t.Errorf("%s: want *CheckError, got %v", tc.rule, err)
			continue
		}
		if ce.Rule != tc.rule {
			t.Errorf("want rule %s, got %v", tc.rule, err)
		}
	}
	// The base was not modified by the clones.
	if err := settlement.CheckResult(base); err != nil {
		t.Fatal(err)
	}
}
