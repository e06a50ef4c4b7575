package verify

import (
	"strconv"
	"time"

	"github.com/shopspring/decimal"

	"gongji/region"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// amountIntDigitsMax: NUMERIC(18,2) has 16 digits before the point.
const amountIntDigitsMax = 16

// parseAmount reads an amount in the bundle's only accepted form: optional
// '-', no leading zeros, '.', exactly two digits; never "-0.00". It returns a
// reason when s is not in that form.
func parseAmount(s string) (decimal.Decimal, string) {
	const want = "a plain decimal with exactly two decimals, e.g. -12.30"
	i := 0
	if len(s) > 0 && s[0] == '-' {
		i = 1
	}
	dot := -1
	for j := i; j < len(s); j++ {
		if s[j] == '.' {
			dot = j
			break
		}
	}
	if dot < 0 || len(s)-dot-1 != 2 {
		return decimal.Decimal{}, "amount must have exactly two decimals: want " + want
	}
	intPart, frac := s[i:dot], s[dot+1:]
	if len(intPart) == 0 || len(intPart) > amountIntDigitsMax {
		return decimal.Decimal{}, "amount must have 1 to 16 digits before the point: want " + want
	}
	if len(intPart) > 1 && intPart[0] == '0' {
		return decimal.Decimal{}, "amount has a leading zero: want " + want
	}
	if !allDigits(intPart) || !allDigits(frac) {
		return decimal.Decimal{}, "amount is not a plain decimal: want " + want
	}
	if i == 1 && intPart == "0" && frac == "00" {
		return decimal.Decimal{}, "amount is negative zero: want 0.00"
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, "amount is not a decimal: " + err.Error()
	}
	return d, ""
}

func fmtAmount(d decimal.Decimal) string { return d.StringFixed(2) }

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isCode(s string) bool { return len(s) == 6 && allDigits(s) }

// checkProvince returns a reason when s is not the code of a provincial unit.
func checkProvince(s string) string {
	if !isCode(s) {
		return "code must be 6 digits"
	}
	if region.ProvinceName(s) == "" {
		return "not a provincial unit of regions.csv"
	}
	return ""
}

// checkRegion returns a reason when s is not a pooling region of province.
func checkRegion(s, province string) string {
	if !isCode(s) {
		return "code must be 6 digits"
	}
	r, err := region.ParseRegion(s)
	if err != nil {
		return "not a pooling region of regions.csv"
	}
	if r.ProvinceCode != province {
		return "pooling region belongs to " + r.ProvinceCode + ", not " + province
	}
	return ""
}

// provinceOfRegion returns the province code of a known region.
func provinceOfRegion(s string) string {
	r, err := region.ParseRegion(s)
	if err != nil {
		return ""
	}
	return r.ProvinceCode
}

const timeLayoutShape = "dddd-dd-ddTdd:dd:dd+08:00"

// parseTime reads RFC 3339 whole seconds with the offset +08:00.
func parseTime(s string) (time.Time, string) {
	const reason = "time must be RFC 3339 with +08:00 and whole seconds, e.g. 2026-07-31T17:51:40+08:00"
	if len(s) != len(timeLayoutShape) {
		return time.Time{}, reason
	}
	for i := 0; i < len(s); i++ {
		w := timeLayoutShape[i]
		if w == 'd' {
			if s[i] < '0' || s[i] > '9' {
				return time.Time{}, reason
			}
		} else if s[i] != w {
			return time.Time{}, reason
		}
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, reason + " (" + err.Error() + ")"
	}
	return t, ""
}

// monthOf is the setlym (YYYYMM) of an instant in Asia/Shanghai (UTC+8, no
// daylight saving since 1991).
func monthOf(t time.Time) string {
	return t.In(time.FixedZone("UTC+8", 8*3600)).Format("200601")
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// checkID returns a reason when s is not an acceptable usage id.
func checkID(s string) string {
	if len(s) == 0 || len(s) > 128 {
		return "id must be 1 to 128 bytes"
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) {
			return "id contains a control character"
		}
	}
	if hasIDNumber(s) {
		return "id contains what looks like a resident ID number; exports carry pseudonyms only"
	}
	return ""
}

// hasIDNumber reports an 18-character GB 11643 ID number (valid birth date
// and check character) not embedded in a longer run of letters and digits.
func hasIDNumber(s string) bool {
	alnum := func(c byte) bool { return c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' }
	w := [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
	for i := 0; i+18 <= len(s); i++ {
		if (i > 0 && alnum(s[i-1])) || (i+18 < len(s) && alnum(s[i+18])) {
			continue
		}
		c := s[i : i+18]
		if !allDigits(c[:17]) {
			continue
		}
		sum := 0
		for k := 0; k < 17; k++ {
			sum += int(c[k]-'0') * w[k]
		}
		if _, err := time.Parse("20060102", c[6:14]); err != nil || c[6:8] < "19" || c[6:8] > "20" {
			continue
		}
		last := c[17]
		if last == 'x' {
			last = 'X'
		}
		if last == "10X98765432"[sum%11] {
			return true
		}
	}
	return false
}
