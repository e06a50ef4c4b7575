package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gongji/region"
	"gongji/sim"
)

// TestMonth runs the demo month at small scale through all 32 nodes as
// processes — relationships of every fate, usage of every kind, retries,
// reversals, a node SIGKILLed and restarted, the clearing service restarted,
// late records, close, settlement, statements (one disputed), export and
// verify — and then checks every invariant.
func TestMonth(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const seed = 11
	f := startFederation(t, period, seed, nil)
	usages := 1500
	if *long {
		usages = 20000
	}
	pop := sim.Generate(sim.Config{People: 1, Seed: seed, Year: period.Year})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	sum, err := sim.RunMonth(ctx, f, pop, sim.MonthConfig{
		Period: period, Usages: usages, Seed: seed, Workers: 16,
		ProposalExpiry: monthExpiry, KillNode: "410000", SmallDeposit: "440000", DisputeProvince: "510000",
		CutOffGrace: 120 * time.Hour,
	})
	if err != nil {
		t.Fatalf("month: %v", err)
	}
	t.Logf("summary: relationships %+v usages %+v gross %s efficiency %s", sum.Relationships, sum.Usages, sum.Gross, sum.NettingEfficiency)

	r, u := sum.Relationships, sum.Usages
	for name, n := range map[string]int64{
		"proposed": r.Proposed, "active": r.Active, "declined": r.Declined, "expired": r.Expired,
		"dissolved voluntarily": r.DissolvedVoluntary, "dissolved automatically": r.DissolvedAuto,
		"cross-province usages": u.CrossProvince, "local usages": u.Local, "reversals": u.Reversals,
		"duplicate retries": u.DuplicateRetries, "late": u.Late, "refused over quota": u.RefusedOverQuota,
	} {
		if n <= 0 {
			t.Errorf("the month produced no %s", name)
		}
	}
	if sum.Restarts.Node != 1 || sum.Restarts.Clearing != 1 {
		t.Errorf("restarts = %+v, want one node and one clearing restart", sum.Restarts)
	}
	if sum.Prepay.Warnings == 0 || sum.Prepay.Shortfall == "0.00" {
		t.Errorf("the small deposit produced no warning or shortfall: %+v", sum.Prepay)
	}
	if sum.Statements["disputed"] != 1 || sum.Statements["confirmed"] != 31 {
		t.Errorf("statements = %v, want 31 confirmed and 1 disputed", sum.Statements)
	}

	n := compareRecords(t, f)
	t.Logf("%d cross-province records agree between payer nodes, payee nodes and clearing", n)
	checkConservation(t, f)
	dir := exportAndVerify(t, f, period, sum.JournalHead)

	// A second export of the same period is byte-identical.
	again := exportAndVerify(t, f, period, sum.JournalHead)
	for _, name := range []string{"usages.csv", "gross.csv", "positions.csv", "allocation.csv", "instructions.csv", "prepay.csv", "manifest.json"} {
		a, err1 := os.ReadFile(filepath.Join(dir, name))
		b, err2 := os.ReadFile(filepath.Join(again, name))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two exports of the same period (%v, %v)", name, err1, err2)
		}
	}
}
