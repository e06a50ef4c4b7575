package sim

import (
	"reflect"
	"testing"

	"gongji/region"
)

func TestGenerateDeterministicAndCovering(t *testing.T) {
	a := Generate(Config{People: 3000, Seed: 7})
	b := Generate(Config{People: 3000, Seed: 7})
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed gave different populations")
	}
	regions := map[string]bool{}
	ids := map[string]bool{}
	for _, p := range a.People {
		regions[p.Region] = true
		if ids[p.IDNumber] {
			t.Fatalf("duplicate ID number for person %d", p.Index)
		}
		ids[p.IDNumber] = true
		if r, err := region.ParseRegionIn(p.Region, p.Province); err != nil || r.Code == "" {
			t.Fatalf("person %d: %v", p.Index, err)
		}
		if len(p.IDNumber) != 18 || p.IDNumber[17] != checkChar(p.IDNumber[:17]) {
			t.Fatalf("bad ID check character for person %d", p.Index)
		}
	}
	if len(regions) != 387 {
		t.Fatalf("people in %d regions, want all 387", len(regions))
	}
	_, links, cross := a.Counts()
	if links == 0 || cross == 0 || cross == links {
		t.Fatalf("links=%d cross=%d: want both cross-province and local links", links, cross)
	}
	fates := map[Fate]int{}
	for _, l := range a.Links {
		fates[l.Fate]++
		if !a.People[l.Sharer].HasAccount {
			t.Fatalf("link %d: sharer has no personal account", l.Index)
		}
		if l.Sharer == l.Beneficiary || !l.Quota.IsPositive() {
			t.Fatalf("link %d: self-sharing or non-positive quota", l.Index)
		}
	}
	for f := FateActive; f <= FateDissolveAuto; f++ {
		if fates[f] == 0 {
			t.Fatalf("no link with fate %s", f)
		}
	}
}

func TestMakeIDKnownCheckDigit(t *testing.T) {
	// The standard's worked example: 11010519491231002X.
	if got := checkChar("11010519491231002"); got != 'X' {
		t.Fatalf("check char = %c, want X", got)
	}
}
