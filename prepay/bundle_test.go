package prepay_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
	"gongji/settlement/settlementtest"
)

func prepayCSV(s prepay.Settlement) []byte {
	var rows [][]string
	for _, r := range s.Rows {
		rows = append(rows, []string{r.Province, r.DepositBefore.String(), r.Drawn.String(), r.Outstanding.String(),
			r.DepositAfter.String(), r.RequiredNext.String(), strconv.FormatBool(r.Warning)})
	}
	return settlementtest.WriteCSV([]string{"province_code", "deposit_before", "drawn", "outstanding", "deposit_after", "required_next", "warning"}, rows)
}

// TestSettleReproducesExampleBundle settles the example period from its
// usages and the bundle's deposit_before column, with the default policy and
// no earlier months, and compares prepay.csv byte for byte.
func TestSettleReproducesExampleBundle(t *testing.T) {
	t.Parallel()
	dir := settlementtest.BundleDir()
	records, err := settlementtest.LoadUsages(filepath.Join(dir, "usages.csv"))
	if err != nil {
		t.Fatal(err)
	}
	res := settlement.Compute(settlement.Rows(records))
	_, rows, err := settlementtest.ReadCSV(filepath.Join(dir, "prepay.csv"))
	if err != nil {
		t.Fatal(err)
	}
	deposits := map[string]money.Yuan{}
	for _, r := range rows {
		deposits[r[0]] = money.MustParse(r[1])
	}
	cfg := prepay.Config{}.WithDefaults()
	s, err := cfg.Settle(prepay.SettleInput{
		Period: region.Period{Year: 2026, Month: 7}, Positions: res.Positions,
		DepositsBefore: deposits, At: time.Date(2026, 8, 10, 9, 0, 0, 0, region.Shanghai),
	})
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(dir, "prepay.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if got := prepayCSV(s); !bytes.Equal(got, want) {
		t.Fatalf("prepay.csv differs\n--- got\n%s--- want\n%s", got, want)
	}
	// 530000 owes 151.26 with 75.63 deposited: half is outstanding, so the
	// receivers get Σ drawn = 12403.09 − 75.63 − 2233.42 (310000, no deposit).
	if got := s.Shortfall().String(); got != "2309.05" {
		t.Errorf("shortfall %s, want 2309.05", got)
	}
	if got := s.Covered().String(); got != "10094.04" {
		t.Errorf("covered %s, want 10094.04", got)
	}
	// Emergency top-ups: the four warnings (130000, 330000, 530000, 610000)
	// and 310000's shortfall without a deposit.
	var codes []string
	for _, tu := range s.TopUps {
		codes = append(codes, tu.Province)
	}
	if got := strings.Join(codes, ","); got != "130000,310000,330000,530000,610000" {
		t.Errorf("top-ups %s", got)
	}
}
