package settlement_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"gongji/money"
	"gongji/settlement"
	"gongji/settlement/settlementtest"
)

// Four provinces of the hand-computed scenario and their regions.
const (
	bj = "110000" // regions 110100, 119900
	sh = "310000" // region 310100
	ha = "410000" // regions 410100, 410300, 419900
	gd = "440000" // regions 440100, 440300
)

func rec(id string, typ settlement.EntryType, kind settlement.Kind, payerRegion, payeeRegion, amount, occurred string, late bool, reversalOf string) settlement.Record {
	prov := func(r string) string { return r[:2] + "0000" }
	oc := at(occurred)
	return settlement.Record{
		UsageID: id, Period: per(2026, 8), Type: typ, Kind: kind,
		Row: settlement.Row{
			PayerProvince: prov(payerRegion), PayerRegion: payerRegion,
			PayeeProvince: prov(payeeRegion), PayeeRegion: payeeRegion,
			Amount: money.MustParse(amount),
		},
		OccurredAt: oc, Late: late, ReversalOf: reversalOf,
		SharerRef: "s-" + id, BeneficiaryRef: "b-" + id,
	}
}

// augustScenario is period 202608 of four provinces, computed by hand in
// TestComputeHandScenario. It has a partial reversal in the same period (R1),
// a reversal of a usage of the already closed July (R2: the pair 440000→110000
// has no usage in August, so its gross cell is negative), and a July usage
// that arrived after July's cut-off (U6, late).
func augustScenario() []settlement.Record {
	U, R := settlement.EntryUsage, settlement.EntryReversal
	return []settlement.Record{
		rec("U1", U, settlement.KindMedical, "410100", "110100", "1000.00", "2026-08-03T09:00:00+08:00", false, ""),
		rec("U2", U, settlement.KindPharmacy, "410300", "440300", "250.50", "2026-08-04T10:00:00+08:00", false, ""),
		rec("U3", U, settlement.KindMedical, "119900", "410100", "300.00", "2026-08-05T11:00:00+08:00", false, ""),
		rec("U4", U, settlement.KindResidentPremium, "440100", "310100", "480.00", "2026-08-06T12:00:00+08:00", false, ""),
		rec("U5", U, settlement.KindLTCPremium, "310100", "419900", "120.25", "2026-08-07T13:00:00+08:00", false, ""),
		rec("R1", R, settlement.KindMedical, "410100", "110100", "-200.00", "2026-08-08T14:00:00+08:00", false, "U1"),
		rec("R2", R, settlement.KindPharmacy, "440300", "110100", "-35.10", "2026-08-09T15:00:00+08:00", false, "U2026-07-x"),
		rec("U6", U, settlement.KindMedical, "110100", "440100", "99.99", "2026-07-31T22:00:00+08:00", true, ""),
		rec("U7", U, settlement.KindMedical, "419900", "110100", "60.00", "2026-08-10T16:00:00+08:00", false, ""),
	}
}

func csvText(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

func TestComputeHandScenario(t *testing.T) {
	t.Parallel()
	records := augustScenario()
	for _, r := range records {
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	// U6 happened on 31 July and arrived on 7 August, after July's cut-off
	// (6 August 00:00): it is cleared in August, late. R2 reverses a July
	// usage but happened in August: August, on time, although July is closed.
	cfg := settlement.Config{}.WithDefaults()
	julyClosed := settlement.StateMap{per(2026, 7): settlement.PeriodClosed}
	for _, r := range records {
		arrived := r.OccurredAt.Add(time.Minute)
		if r.UsageID == "U6" {
			arrived = at("2026-08-07T10:00:00+08:00")
		}
		a, err := cfg.Assign(r.OccurredAt, arrived, julyClosed)
		if err != nil || a.Period != r.Period || a.Late != r.Late {
			t.Fatalf("%s: assigned %v, %v; scenario has %s late=%v", r.UsageID, a, err, r.Period, r.Late)
		}
	}

	res := settlement.Compute(settlement.Rows(records))
	if err := settlement.CheckResult(res); err != nil {
		t.Fatal(err)
	}

	// gross: C→A = U1 1000.00 + R1 −200.00 + U7 60.00 = 860.00;
	// D→A = R2 −35.10 alone (negative: a reversal of a closed July usage).
	wantGross := csvText(
		"payer_province,payee_province,amount",
		"110000,410000,300.00",
		"110000,440000,99.99",
		"310000,410000,120.25",
		"410000,110000,860.00",
		"410000,440000,250.50",
		"440000,110000,-35.10",
		"440000,310000,480.00",
	)
	if got := string(settlementtest.GrossCSV(res)); got != wantGross {
		t.Errorf("gross\n%s want\n%s", got, wantGross)
	}

	// positions: A rec 860.00 − 35.10 = 824.90, pay 300.00 + 99.99 = 399.99;
	// B rec 480.00, pay 120.25; C rec 300.00 + 120.25, pay 860.00 + 250.50;
	// D rec 99.99 + 250.50, pay −35.10 + 480.00. Nets: 424.91 + 359.75 −
	// 690.25 − 94.41 = 0.00.
	want := map[string]string{
		bj: "824.90,399.99,424.91",
		sh: "480.00,120.25,359.75",
		ha: "420.25,1110.50,-690.25",
		gd: "350.49,444.90,-94.41",
	}
	if len(res.Positions) != 32 {
		t.Fatalf("%d positions, want 32", len(res.Positions))
	}
	for _, p := range res.Positions {
		got := fmt.Sprintf("%s,%s,%s", p.Receivable, p.Payable, p.Net)
		w, ok := want[p.Province]
		if !ok {
			w = "0.00,0.00,0.00"
		}
		if got != w {
			t.Errorf("position %s: %s, want %s", p.Province, got, w)
		}
	}

	// allocation by region (payer_region / payee_region):
	// 110100 rec 1000 − 200 − 35.10 + 60 = 824.90, pay 99.99 (U6)
	// 119900 pay 300.00 (U3); 410100 rec 300.00, pay 1000 − 200 = 800.00
	// 410300 pay 250.50; 419900 rec 120.25, pay 60.00
	// 440100 rec 99.99, pay 480.00; 440300 rec 250.50, pay −35.10
	wantAlloc := csvText(
		"province_code,region_code,receivable,payable,net",
		"110000,110100,824.90,99.99,724.91",
		"110000,119900,0.00,300.00,-300.00",
		"310000,310100,480.00,120.25,359.75",
		"410000,410100,300.00,800.00,-500.00",
		"410000,410300,0.00,250.50,-250.50",
		"410000,419900,120.25,60.00,60.25",
		"440000,440100,99.99,480.00,-380.01",
		"440000,440300,250.50,-35.10,285.60",
	)
	if got := string(settlementtest.AllocationCSV(res)); got != wantAlloc {
		t.Errorf("allocation\n%s want\n%s", got, wantAlloc)
	}

	wantIns := csvText(
		"tier,from_code,to_code,amount",
		"NATIONAL,000000,110000,424.91",
		"NATIONAL,000000,310000,359.75",
		"NATIONAL,410000,000000,690.25",
		"NATIONAL,440000,000000,94.41",
		"PROVINCE,110000,110100,724.91",
		"PROVINCE,119900,110000,300.00",
		"PROVINCE,310000,310100,359.75",
		"PROVINCE,410000,419900,60.25",
		"PROVINCE,410100,410000,500.00",
		"PROVINCE,410300,410000,250.50",
		"PROVINCE,440000,440300,285.60",
		"PROVINCE,440100,440000,380.01",
	)
	if got := string(settlementtest.InstructionsCSV(res)); got != wantIns {
		t.Errorf("instructions\n%s want\n%s", got, wantIns)
	}

	// Σ gross = 2075.64 (signed); Σ|gross| = 2145.84; Σ positive nets 784.66;
	// efficiency 1 − 784.66/2145.84 = 0.63433434 → 0.634334.
	if got := res.GrossTotal().String(); got != "2075.64" {
		t.Errorf("gross total %s", got)
	}
	if got := res.NettingEfficiency().String(); got != "0.634334" {
		t.Errorf("efficiency %s", got)
	}
}

func TestComputeEmptyAndCancelling(t *testing.T) {
	t.Parallel()
	empty := settlement.Compute(nil)
	if err := settlement.CheckResult(empty); err != nil {
		t.Fatal(err)
	}
	if len(empty.Gross) != 0 || len(empty.Allocation) != 0 || len(empty.Instructions) != 0 || len(empty.Positions) != 32 {
		t.Fatalf("empty period: %+v", empty)
	}
	if !empty.NettingEfficiency().IsZero() {
		t.Fatalf("efficiency of nothing is defined as 0, got %s", empty.NettingEfficiency())
	}

	// A usage and its full reversal in the same period: the pair's gross is
	// zero (not listed), but both regions moved and are listed with zeros,
	// and get no instruction.
	rows := []settlement.Row{
		{PayerProvince: ha, PayerRegion: "410100", PayeeProvince: bj, PayeeRegion: "110100", Amount: money.MustParse("42.00")},
		{PayerProvince: ha, PayerRegion: "410100", PayeeProvince: bj, PayeeRegion: "110100", Amount: money.MustParse("-42.00")},
	}
	res := settlement.Compute(rows)
	if err := settlement.CheckResult(res); err != nil {
		t.Fatal(err)
	}
	want := csvText(
		"province_code,region_code,receivable,payable,net",
		"110000,110100,0.00,0.00,0.00",
		"410000,410100,0.00,0.00,0.00",
	)
	if got := string(settlementtest.AllocationCSV(res)); got != want || len(res.Gross) != 0 || len(res.Instructions) != 0 {
		t.Fatalf("cancelling rows: gross %v instructions %v allocation\n%s", res.Gross, res.Instructions, got)
	}
	if !res.NettingEfficiency().IsZero() {
		t.Fatalf("efficiency %s", res.NettingEfficiency())
	}
}

func TestRecordValidate(t *testing.T) {
	t.Parallel()
	good := augustScenario()[0]
	mod := func(f func(*settlement.Record)) settlement.Record { r := good; f(&r); return r }
	cases := map[string]settlement.Record{
		"empty id":             mod(func(r *settlement.Record) { r.UsageID = "" }),
		"long id":              mod(func(r *settlement.Record) { r.UsageID = strings.Repeat("x", 65) }),
		"bad type":             mod(func(r *settlement.Record) { r.Type = "REFUND" }),
		"bad kind":             mod(func(r *settlement.Record) { r.Kind = "DENTAL" }),
		"same province":        mod(func(r *settlement.Record) { r.PayeeProvince, r.PayeeRegion = ha, "410300" }),
		"region not in prov":   mod(func(r *settlement.Record) { r.PayerRegion = "110100" }),
		"unknown region":       mod(func(r *settlement.Record) { r.PayerRegion = "410199" }),
		"zero amount":          mod(func(r *settlement.Record) { r.Amount = money.Zero }),
		"negative usage":       mod(func(r *settlement.Record) { r.Amount = money.MustParse("-1.00") }),
		"usage with reversal":  mod(func(r *settlement.Record) { r.ReversalOf = "U0" }),
		"positive reversal":    mod(func(r *settlement.Record) { r.Type, r.ReversalOf = settlement.EntryReversal, "U0" }),
		"reversal without ref": mod(func(r *settlement.Record) { r.Type, r.Amount = settlement.EntryReversal, money.MustParse("-1.00") }),
		"adjustment of itself": mod(func(r *settlement.Record) { r.Type, r.ReversalOf = settlement.EntryAdjustment, r.UsageID }),
		"no occurred_at":       mod(func(r *settlement.Record) { r.OccurredAt = time.Time{} }),
		"out of NUMERIC(18,2)": mod(func(r *settlement.Record) {
			r.Amount = money.MustParse("9999999999999999.99").Add(money.MustParse("0.01"))
		}),
	}
	for name, r := range cases {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	adj := mod(func(r *settlement.Record) {
		r.Type, r.Amount, r.ReversalOf = settlement.EntryAdjustment, money.MustParse("-3.00"), "U0"
	})
	if err := adj.Validate(); err != nil {
		t.Errorf("negative adjustment refused: %v", err)
	}
	if err := settlement.ValidateRows([]settlement.Row{good.Row, cases["same province"].Row}); err == nil || !strings.Contains(err.Error(), "row 1") {
		t.Errorf("ValidateRows must name row 1: %v", err)
	}
}

// TestNettingEfficiencyRoundsHalfEven: 110000→310000 1.27 and 410000→110000
// 0.01 give Σ|gross| 1.28 and positive nets 1.27 (310000), so the efficiency
// is exactly 0.01/1.28 = 0.0078125, a tie at the 7th place: half-even gives
// 0.007812 (half-up would give 0.007813).
func TestNettingEfficiencyRoundsHalfEven(t *testing.T) {
	t.Parallel()
	res := settlement.Compute([]settlement.Row{
		{PayerProvince: bj, PayerRegion: "110100", PayeeProvince: sh, PayeeRegion: "310100", Amount: money.MustParse("1.27")},
		{PayerProvince: ha, PayerRegion: "410100", PayeeProvince: bj, PayeeRegion: "110100", Amount: money.MustParse("0.01")},
	})
	if got := res.NettingEfficiency().String(); got != "0.007812" {
		t.Fatalf("efficiency %s, want 0.007812", got)
	}
}
