// Package region holds the code lists every gongji package shares: the 32
// provincial units and their 387 pooling regions (GB/T 2260 codes, regions.csv
// embedded from shared/data), and the clearing Period (setlym, an
// Asia/Shanghai calendar month).
package region

import (
	_ "embed"
	"encoding/csv"
	"errors"
	"fmt"
	"sort"
	"strings"
)

//go:embed regions.csv
var regionsCSV string

// NationalCentre is the code the national clearing centre uses in settlement
// instructions (DESIGN §11).
const NationalCentre = "000000"

var (
	ErrBadCode         = errors.New("region: code must be 6 digits")
	ErrUnknownProvince = errors.New("region: unknown provincial unit")
	ErrUnknownRegion   = errors.New("region: unknown pooling region")
	ErrWrongProvince   = errors.New("region: pooling region is not in that province")
)

// Province is a provincial-level unit.
type Province struct {
	Code    string // XX0000
	Name    string // Chinese name, e.g. 河南省
	Regions []Region
}

// Region is a pooling region (统筹地区).
type Region struct {
	Code         string // XXYY00 or XX9900 (省本级)
	Name         string
	ProvinceCode string
}

var (
	provinces   []Province
	provinceIdx = map[string]int{}
	regionIdx   = map[string]Region{}
)

func init() {
	r := csv.NewReader(strings.NewReader(regionsCSV))
	rows, err := r.ReadAll()
	if err != nil {
		panic(fmt.Sprintf("region: embedded regions.csv: %v", err))
	}
	for i, row := range rows {
		if i == 0 {
			continue
		}
		pc, pn, rc, rn := row[0], row[1], row[2], row[3]
		idx, ok := provinceIdx[pc]
		if !ok {
			provinces = append(provinces, Province{Code: pc, Name: pn})
			idx = len(provinces) - 1
			provinceIdx[pc] = idx
		}
		reg := Region{Code: rc, Name: rn, ProvinceCode: pc}
		provinces[idx].Regions = append(provinces[idx].Regions, reg)
		regionIdx[rc] = reg
	}
	sort.Slice(provinces, func(i, j int) bool { return provinces[i].Code < provinces[j].Code })
	for i := range provinces {
		provinceIdx[provinces[i].Code] = i
		sort.Slice(provinces[i].Regions, func(a, b int) bool { return provinces[i].Regions[a].Code < provinces[i].Regions[b].Code })
	}
	if len(provinces) != 32 || len(regionIdx) != 387 {
		panic(fmt.Sprintf("region: embedded regions.csv has %d provinces and %d regions, want 32 and 387", len(provinces), len(regionIdx)))
	}
}

func sixDigits(code string) bool {
	if len(code) != 6 {
		return false
	}
	for i := 0; i < 6; i++ {
		if code[i] < '0' || code[i] > '9' {
			return false
		}
	}
	return true
}

// Provinces returns the 32 provincial units sorted by code. Do not modify.
func Provinces() []Province { return provinces }

// ProvinceCodes returns the 32 province codes in ascending order.
func ProvinceCodes() []string {
	out := make([]string, len(provinces))
	for i, p := range provinces {
		out[i] = p.Code
	}
	return out
}

// ParseProvince validates a provincial unit code.
func ParseProvince(code string) (Province, error) {
	if !sixDigits(code) {
		return Province{}, fmt.Errorf("%w: %q", ErrBadCode, code)
	}
	i, ok := provinceIdx[code]
	if !ok {
		return Province{}, fmt.Errorf("%w: %s", ErrUnknownProvince, code)
	}
	return provinces[i], nil
}

// ParseRegion validates a pooling region code.
func ParseRegion(code string) (Region, error) {
	if !sixDigits(code) {
		return Region{}, fmt.Errorf("%w: %q", ErrBadCode, code)
	}
	r, ok := regionIdx[code]
	if !ok {
		return Region{}, fmt.Errorf("%w: %s", ErrUnknownRegion, code)
	}
	return r, nil
}

// ParseRegionIn validates a pooling region code and that it belongs to province.
func ParseRegionIn(code, province string) (Region, error) {
	r, err := ParseRegion(code)
	if err != nil {
		return Region{}, err
	}
	if r.ProvinceCode != province {
		return Region{}, fmt.Errorf("%w: %s is in %s, not %s", ErrWrongProvince, code, r.ProvinceCode, province)
	}
	return r, nil
}

// ProvinceName returns the Chinese name of a province code, or "" if unknown.
func ProvinceName(code string) string {
	if i, ok := provinceIdx[code]; ok {
		return provinces[i].Name
	}
	return ""
}

// RegionName returns the Chinese name of a pooling region code, or "" if unknown.
func RegionName(code string) string { return regionIdx[code].Name }
