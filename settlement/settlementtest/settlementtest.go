// Package settlementtest loads the example export bundle kept in
// settlement/testdata/example-bundle (a copy of shared/data/example-bundle)
// and renders settlement figures in the bundle's CSV form, so that the
// settlement, prepay and clearing-database tests can compare their figures
// with the bundle byte for byte. Test code only.
package settlementtest

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// UsagesHeader is the usages.csv header (DESIGN §11).
var UsagesHeader = []string{
	"usage_id", "setlym", "entry_type", "kind", "payer_province", "payer_region",
	"payee_province", "payee_region", "amount", "occurred_at", "late", "reversal_of",
	"sharer_ref", "beneficiary_ref",
}

// BundleDir is the absolute path of settlement/testdata/example-bundle.
func BundleDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("settlementtest: cannot locate source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "testdata", "example-bundle")
}

// ReadCSV reads a bundle CSV file and returns its header and rows.
func ReadCSV(path string) (header []string, rows [][]string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	all, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(all) == 0 {
		return nil, nil, fmt.Errorf("%s: no header", path)
	}
	return all[0], all[1:], nil
}

// LoadUsages parses a usages.csv into records and validates each one.
func LoadUsages(path string) ([]settlement.Record, error) {
	header, rows, err := ReadCSV(path)
	if err != nil {
		return nil, err
	}
	if fmt.Sprint(header) != fmt.Sprint(UsagesHeader) {
		return nil, fmt.Errorf("%s: header %v, want %v", path, header, UsagesHeader)
	}
	out := make([]settlement.Record, 0, len(rows))
	for i, c := range rows {
		r, err := parseUsage(c)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+2, err)
		}
		if err := r.Validate(); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+2, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func parseUsage(c []string) (settlement.Record, error) {
	var r settlement.Record
	var err error
	r.UsageID = c[0]
	if r.Period, err = region.ParsePeriod(c[1]); err != nil {
		return r, err
	}
	if r.Type, err = settlement.ParseEntryType(c[2]); err != nil {
		return r, err
	}
	if r.Kind, err = settlement.ParseKind(c[3]); err != nil {
		return r, err
	}
	r.PayerProvince, r.PayerRegion, r.PayeeProvince, r.PayeeRegion = c[4], c[5], c[6], c[7]
	if r.Amount, err = money.Parse(c[8]); err != nil {
		return r, err
	}
	if r.OccurredAt, err = time.Parse(time.RFC3339, c[9]); err != nil {
		return r, err
	}
	if r.Late, err = strconv.ParseBool(c[10]); err != nil {
		return r, err
	}
	r.ReversalOf, r.SharerRef, r.BeneficiaryRef = c[11], c[12], c[13]
	return r, nil
}

// WriteCSV renders a header and rows the way the bundle is written: RFC 4180,
// comma-separated, "\n" line ends.
func WriteCSV(header []string, rows [][]string) []byte {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	_ = w.Write(header)
	_ = w.WriteAll(rows) // WriteAll flushes; bytes.Buffer does not fail
	return buf.Bytes()
}

// GrossCSV renders gross.csv.
func GrossCSV(res settlement.Result) []byte {
	var rows [][]string
	for _, g := range res.Gross {
		rows = append(rows, []string{g.PayerProvince, g.PayeeProvince, g.Amount.String()})
	}
	return WriteCSV([]string{"payer_province", "payee_province", "amount"}, rows)
}

// PositionsCSV renders positions.csv.
func PositionsCSV(res settlement.Result) []byte {
	var rows [][]string
	for _, p := range res.Positions {
		rows = append(rows, []string{p.Province, p.Receivable.String(), p.Payable.String(), p.Net.String()})
	}
	return WriteCSV([]string{"province_code", "receivable", "payable", "net"}, rows)
}

// AllocationCSV renders allocation.csv.
func AllocationCSV(res settlement.Result) []byte {
	var rows [][]string
	for _, r := range res.Allocation {
		rows = append(rows, []string{r.Province, r.Region, r.Receivable.String(), r.Payable.String(), r.Net.String()})
	}
	return WriteCSV([]string{"province_code", "region_code", "receivable", "payable", "net"}, rows)
}

// InstructionsCSV renders instructions.csv.
func InstructionsCSV(res settlement.Result) []byte {
	var rows [][]string
	for _, in := range res.Instructions {
		rows = append(rows, []string{string(in.Tier), in.From, in.To, in.Amount.String()})
	}
	return WriteCSV([]string{"tier", "from_code", "to_code", "amount"}, rows)
}
