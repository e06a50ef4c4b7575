package audit_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"gongji/audit"
	"gongji/audit/verify"
	"gongji/money"
	"gongji/region"
)

// genSource streams n synthetic usages (440100 → 510100, 1.00 each) without
// holding them, and the derived rows they give.
type genSource struct {
	*audit.MemSource
	n int
}

func (g genSource) Usages(ctx context.Context, fn func(audit.UsageRow) error) error {
	p, _ := region.ParsePeriod(fxPeriod)
	r := audit.UsageRow{Period: p, EntryType: audit.EntryUsage, Kind: audit.KindMedical,
		PayerProvince: "440000", PayerRegion: "440100", PayeeProvince: "510000", PayeeRegion: "510100",
		Amount: y("1.00"), OccurredAt: at("2026-08-03T09:15:00+08:00"), SharerRef: ref(0), BeneficiaryRef: ref(1)}
	for i := 0; i < g.n; i++ {
		r.UsageID = fmt.Sprintf("U202608-%010d", i)
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func newGen(n int) genSource {
	total := money.FromFen(int64(n) * 100)
	m := fxMeta()
	m.Totals = audit.Totals{Gross: total, Usages: int64(n)}
	src := &audit.MemSource{Info: m}
	src.GrossRows = []audit.GrossRow{{PayerProvince: "440000", PayeeProvince: "510000", Amount: total}}
	for _, p := range region.ProvinceCodes() {
		pos := audit.PositionRow{ProvinceCode: p}
		pre := audit.PrepayRow{ProvinceCode: p}
		switch p {
		case "440000":
			pos.Payable, pos.Net = total, total.Neg()
			pre.Outstanding = total
		case "510000":
			pos.Receivable, pos.Net = total, total
		}
		src.PositionRows = append(src.PositionRows, pos)
		src.PrepayRows = append(src.PrepayRows, pre)
	}
	src.AllocationRows = []audit.AllocationRow{
		{ProvinceCode: "440000", RegionCode: "440100", Payable: total, Net: total.Neg()},
		{ProvinceCode: "510000", RegionCode: "510100", Receivable: total, Net: total},
	}
	src.InstructionRows = []audit.InstructionRow{
		{Tier: audit.TierNational, FromCode: "000000", ToCode: "510000", Amount: total},
		{Tier: audit.TierNational, FromCode: "440000", ToCode: "000000", Amount: total},
		{Tier: audit.TierProvince, FromCode: "440100", ToCode: "440000", Amount: total},
		{Tier: audit.TierProvince, FromCode: "510000", ToCode: "510100", Amount: total},
	}
	return genSource{src, n}
}

const benchRows = 100_000

// BenchmarkWriteBundle: WriteBundle per usage row
// (go test -run '^$' -bench . ./audit).
func BenchmarkWriteBundle(b *testing.B) {
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(b.TempDir(), "bundle")
		if _, err := audit.WriteBundle(context.Background(), dir, newGen(benchRows)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(benchRows*b.N), "ns/row")
}

// BenchmarkVerify: verify.Verify per usage row.
func BenchmarkVerify(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "bundle")
	if _, err := audit.WriteBundle(context.Background(), dir, newGen(benchRows)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := verify.Verify(dir); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(benchRows*b.N), "ns/row")
}
