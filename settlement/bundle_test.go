package settlement_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"gongji/region"
	"gongji/settlement"
	"gongji/settlement/settlementtest"
)

// TestExampleBundleIntact guards the testdata copy: every file must still hash
// to what the bundle's manifest says, so the reproduction tests below compare
// against the real shared/data/example-bundle figures.
func TestExampleBundleIntact(t *testing.T) {
	t.Parallel()
	dir := settlementtest.BundleDir()
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Setlym string `json:"setlym"`
		Files  map[string]struct {
			Rows   int    `json:"rows"`
			SHA256 string `json:"sha256"`
		} `json:"files"`
		Totals struct {
			Gross  string `json:"gross"`
			Usages int    `json:"usages"`
		} `json:"totals"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != 6 {
		t.Fatalf("manifest lists %d files, want 6", len(m.Files))
	}
	for name, f := range m.Files {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != f.SHA256 {
			t.Errorf("%s: sha256 %s, manifest says %s", name, got, f.SHA256)
		}
		if rows := bytes.Count(data, []byte("\n")) - 1; rows != f.Rows {
			t.Errorf("%s: %d rows, manifest says %d", name, rows, f.Rows)
		}
	}
}

// TestComputeReproducesExampleBundle recomputes gross.csv, positions.csv,
// allocation.csv and instructions.csv from usages.csv alone and compares them
// byte for byte with the bundle.
func TestComputeReproducesExampleBundle(t *testing.T) {
	t.Parallel()
	dir := settlementtest.BundleDir()
	records, err := settlementtest.LoadUsages(filepath.Join(dir, "usages.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 12 {
		t.Fatalf("loaded %d records, want 12", len(records))
	}
	for _, r := range records {
		if r.Period != (region.Period{Year: 2026, Month: 7}) {
			t.Fatalf("%s in %s, want 202607", r.UsageID, r.Period)
		}
	}
	res := settlement.Compute(settlement.Rows(records))
	if err := settlement.CheckResult(res); err != nil {
		t.Fatalf("CheckResult: %v", err)
	}
	for name, got := range map[string][]byte{
		"gross.csv":        settlementtest.GrossCSV(res),
		"positions.csv":    settlementtest.PositionsCSV(res),
		"allocation.csv":   settlementtest.AllocationCSV(res),
		"instructions.csv": settlementtest.InstructionsCSV(res),
	} {
		want, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the bundle\n--- got\n%s--- want\n%s", name, got, want)
		}
	}
	if got := res.GrossTotal().String(); got != "14019.27" {
		t.Errorf("gross total %s, manifest totals.gross is 14019.27", got)
	}
	// Σ positive nets = 2239.36 + 1736.15 + 1107.90 + 2727.68 + 151.26 +
	// 2287.74 + 31.98 + 2121.02 = 12403.09 (= Σ −net of the payers);
	// 1 − 12403.09 / 14019.27 = 0.11528275…: these mostly one-way pairs net
	// little away.
	if got := res.PositiveNetTotal().String(); got != "12403.09" {
		t.Errorf("positive nets %s, want 12403.09", got)
	}
	if got := res.NettingEfficiency().String(); got != "0.115283" {
		t.Errorf("netting efficiency %s, want 0.115283", got)
	}
}

// TestExampleBundleLateRecords checks the two late rows of the bundle against
// Assign: June usages that arrived after June's cut-off go to July, late.
func TestExampleBundleLateRecords(t *testing.T) {
	t.Parallel()
	records, err := settlementtest.LoadUsages(filepath.Join(settlementtest.BundleDir(), "usages.csv"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := settlement.Config{}.WithDefaults()
	june := region.Period{Year: 2026, Month: 6}
	closed := settlement.StateMap{june: settlement.PeriodClosed}
	for _, r := range records {
		if r.Type != settlement.EntryUsage {
			continue
		}
		// Arrival: on time for its own month unless the bundle marks it late,
		// in which case it arrived after the June close.
		arrived := r.OccurredAt.Add(1)
		if r.Late {
			arrived = cfg.CutOff(june).AddDate(0, 0, 1)
		}
		a, err := cfg.Assign(r.OccurredAt, arrived, closed)
		if err != nil {
			t.Fatal(err)
		}
		if a.Period != r.Period || a.Late != r.Late {
			t.Errorf("%s: assigned %s late=%v, bundle has %s late=%v", r.UsageID, a.Period, a.Late, r.Period, r.Late)
		}
	}
}
