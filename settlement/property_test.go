package settlement_test

import (
	"bytes"
	"testing"

	"github.com/shopspring/decimal"
	"pgregory.net/rapid"

	"gongji/money"
	"gongji/region"
	"gongji/settlement"
	"gongji/settlement/settlementtest"
)

// genRows draws a period's rows over a few provinces and at most three
// regions each (so that pairs and regions repeat and sums cancel), with
// amounts of either sign (reversals of earlier periods make negative sums).
func genRows(t *rapid.T) []settlement.Row {
	all := region.Provinces()
	provs := rapid.SliceOfNDistinct(rapid.IntRange(0, len(all)-1), 2, 6, rapid.ID[int]).Draw(t, "provinces")
	n := rapid.IntRange(0, 60).Draw(t, "rows")
	rows := make([]settlement.Row, 0, n)
	for range n {
		pi := rapid.SampledFrom(provs).Draw(t, "payer")
		ei := rapid.SampledFrom(provs).Filter(func(i int) bool { return i != pi }).Draw(t, "payee")
		payer, payee := all[pi], all[ei]
		pr := payer.Regions[rapid.IntRange(0, min(2, len(payer.Regions)-1)).Draw(t, "payerRegion")]
		er := payee.Regions[rapid.IntRange(0, min(2, len(payee.Regions)-1)).Draw(t, "payeeRegion")]
		fen := rapid.Int64Range(-50_000, 500_000).Filter(func(f int64) bool { return f != 0 }).Draw(t, "fen")
		rows = append(rows, settlement.Row{
			PayerProvince: payer.Code, PayerRegion: pr.Code,
			PayeeProvince: payee.Code, PayeeRegion: er.Code,
			Amount: money.FromFen(fen),
		})
	}
	return rows
}

func render(res settlement.Result) []byte {
	return bytes.Join([][]byte{
		settlementtest.GrossCSV(res), settlementtest.PositionsCSV(res),
		settlementtest.AllocationCSV(res), settlementtest.InstructionsCSV(res),
	}, nil)
}

func TestPropertyCompute(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		rows := genRows(t)
		if err := settlement.ValidateRows(rows); err != nil {
			t.Fatalf("generator made a bad row: %v", err)
		}
		res := settlement.Compute(rows)

		// Independent oracle: positions straight from the rows.
		rec, pay := map[string]money.Yuan{}, map[string]money.Yuan{}
		total := money.Zero
		for _, r := range rows {
			rec[r.PayeeProvince] = rec[r.PayeeProvince].Add(r.Amount)
			pay[r.PayerProvince] = pay[r.PayerProvince].Add(r.Amount)
			total = total.Add(r.Amount)
		}
		sum := money.Zero
		for _, p := range res.Positions {
			if !p.Receivable.Equal(rec[p.Province]) || !p.Payable.Equal(pay[p.Province]) {
				t.Fatalf("%s: %s/%s, rows say %s/%s", p.Province, p.Receivable, p.Payable, rec[p.Province], pay[p.Province])
			}
			if !p.Net.Equal(p.Receivable.Sub(p.Payable)) {
				t.Fatalf("%s: net ≠ receivable − payable", p.Province)
			}
			sum = sum.Add(p.Net)
		}
		if !sum.IsZero() {
			t.Fatalf("nets sum to %s", sum)
		}
		if !res.GrossTotal().Equal(total) {
			t.Fatalf("gross total %s, rows total %s", res.GrossTotal(), total)
		}

		// Region allocation sums exactly to each province.
		type sums struct{ rec, pay, net money.Yuan }
		byProv := map[string]sums{}
		for _, a := range res.Allocation {
			if !a.Net.Equal(a.Receivable.Sub(a.Payable)) {
				t.Fatalf("%s: region net ≠ receivable − payable", a.Region)
			}
			s := byProv[a.Province]
			byProv[a.Province] = sums{s.rec.Add(a.Receivable), s.pay.Add(a.Payable), s.net.Add(a.Net)}
		}
		for _, p := range res.Positions {
			s := byProv[p.Province]
			if !s.rec.Equal(p.Receivable) || !s.pay.Equal(p.Payable) || !s.net.Equal(p.Net) {
				t.Fatalf("%s: regions %v ≠ position %v", p.Province, s, p)
			}
		}

		// Instructions reconcile per tier.
		toCentre, fromCentre := money.Zero, money.Zero
		provOut := map[string]money.Yuan{}
		for _, in := range res.Instructions {
			if !in.Amount.IsPositive() {
				t.Fatalf("non-positive instruction %+v", in)
			}
			switch {
			case in.Tier == settlement.TierNational && in.To == region.NationalCentre:
				toCentre = toCentre.Add(in.Amount)
			case in.Tier == settlement.TierNational && in.From == region.NationalCentre:
				fromCentre = fromCentre.Add(in.Amount)
			case in.Tier == settlement.TierProvince && in.From[2:] == "0000":
				provOut[in.From] = provOut[in.From].Add(in.Amount)
			case in.Tier == settlement.TierProvince && in.To[2:] == "0000":
				provOut[in.To] = provOut[in.To].Sub(in.Amount)
			default:
				t.Fatalf("unexpected instruction %+v", in)
			}
		}
		if !toCentre.Equal(fromCentre) || !fromCentre.Equal(res.PositiveNetTotal()) {
			t.Fatalf("national tier: to centre %s, from centre %s, positive nets %s", toCentre, fromCentre, res.PositiveNetTotal())
		}
		for _, p := range res.Positions {
			if !provOut[p.Province].Equal(p.Net) {
				t.Fatalf("%s: province tier %s ≠ net %s", p.Province, provOut[p.Province], p.Net)
			}
		}

		if err := settlement.CheckResult(res); err != nil {
			t.Fatalf("CheckResult: %v", err)
		}
		if e := res.NettingEfficiency(); e.IsNegative() || e.GreaterThan(decimal.NewFromInt(1)) {
			t.Fatalf("efficiency %s outside [0, 1]", e)
		}

		// Independent of input order.
		perm := rapid.Permutation(rows).Draw(t, "permutation")
		if !bytes.Equal(render(res), render(settlement.Compute(perm))) {
			t.Fatalf("result depends on row order")
		}

		// Tallies reconcile with positions through the statements.
		if _, err := settlement.BuildStatements(region.Period{Year: 2026, Month: 8}, res, settlement.CountTallies(rows), nil); err != nil {
			t.Fatalf("BuildStatements: %v", err)
		}
	})
}

// TestPropertyCheckCatchesTampering: changing any one amount of a correct
// result by a non-zero number of fen is always caught.
func TestPropertyCheckCatchesTampering(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		res := settlement.Compute(genRows(t))
		delta := money.FromFen(rapid.Int64Range(-1000, 1000).Filter(func(f int64) bool { return f != 0 }).Draw(t, "delta"))
		r := cloneResult(res)
		switch target := rapid.IntRange(0, 3).Draw(t, "target"); {
		case target == 0 && len(r.Gross) > 0:
			i := rapid.IntRange(0, len(r.Gross)-1).Draw(t, "i")
			r.Gross[i].Amount = r.Gross[i].Amount.Add(delta)
		case target == 1:
			i := rapid.IntRange(0, len(r.Positions)-1).Draw(t, "i")
			r.Positions[i].Net = r.Positions[i].Net.Add(delta)
		case target == 2 && len(r.Allocation) > 0:
			i := rapid.IntRange(0, len(r.Allocation)-1).Draw(t, "i")
			r.Allocation[i].Payable = r.Allocation[i].Payable.Add(delta)
		case target == 3 && len(r.Instructions) > 0:
			i := rapid.IntRange(0, len(r.Instructions)-1).Draw(t, "i")
			r.Instructions[i].Amount = r.Instructions[i].Amount.Add(delta)
		default:
			t.Skip("nothing to tamper with")
		}
		if err := settlement.CheckResult(r); err == nil {
			t.Fatalf("tampering by %s not detected", delta)
		}
	})
}
