package region

import (
	"errors"
	"testing"
	"time"
)

func TestCodes(t *testing.T) {
	if len(Provinces()) != 32 {
		t.Fatalf("%d provinces", len(Provinces()))
	}
	if _, err := ParseProvince("410000"); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseProvince("410100"); !errors.Is(err, ErrUnknownProvince) {
		t.Fatalf("a region code as province: %v", err)
	}
	if _, err := ParseRegion("41010"); !errors.Is(err, ErrBadCode) {
		t.Fatalf("5 digits: %v", err)
	}
	if _, err := ParseRegionIn("410100", "110000"); !errors.Is(err, ErrWrongProvince) {
		t.Fatalf("region of another province: %v", err)
	}
	if r, err := ParseRegionIn("669900", "660000"); err != nil || r.Name == "" {
		t.Fatalf("兵团本级: %v", err)
	}
	if ProvinceName("440000") != "广东省" {
		t.Fatal("province name")
	}
}

func TestPeriod(t *testing.T) {
	p, err := ParsePeriod("202612")
	if err != nil || p.Next().String() != "202701" || p.Prev().String() != "202611" {
		t.Fatalf("%v %v", p, err)
	}
	// 2026-10-31T16:30Z is 2026-11-01 00:30 in Shanghai: November.
	if got := PeriodOf(time.Date(2026, 10, 31, 16, 30, 0, 0, time.UTC)).String(); got != "202611" {
		t.Fatalf("PeriodOf = %s, want 202611", got)
	}
	if got := p.CutOff(5 * 24 * time.Hour).In(Shanghai).Format(time.RFC3339); got != "2027-01-06T00:00:00+08:00" {
		t.Fatalf("cut-off = %s", got)
	}
	for _, bad := range []string{"", "2026", "202613", "202600", "199912", "20261a", "２０２６１０"} {
		if _, err := ParsePeriod(bad); !errors.Is(err, ErrBadPeriod) {
			t.Errorf("ParsePeriod(%q) = %v", bad, err)
		}
	}
}

// FuzzParseCodes: the code and period parsers never panic, and what they
// accept is well formed.
func FuzzParseCodes(f *testing.F) {
	for _, s := range []string{"410000", "410100", "669900", "202610", "000000", "99999", "4100000", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := ParseProvince(s); err == nil && (p.Code != s || len(p.Regions) == 0) {
			t.Fatalf("ParseProvince(%q) = %+v", s, p)
		}
		if r, err := ParseRegion(s); err == nil && (r.Code != s || ProvinceName(r.ProvinceCode) == "") {
			t.Fatalf("ParseRegion(%q) = %+v", s, r)
		}
		if p, err := ParsePeriod(s); err == nil && p.String() != s {
			t.Fatalf("ParsePeriod(%q) = %s", s, p)
		}
	})
}
