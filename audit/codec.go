package audit

import (
	"cmp"
	"errors"
	"fmt"
	"strings"

	"gongji/money"
)

// codec is the canonical text of one file's rows: its header, how a row
// becomes fields and back, its rules, and its key order.
type codec[R any] struct {
	file   string
	header []string
	encode func(dst []string, r *R) []string
	decode func(f []string) (R, error) // f has len(header) fields
	check  func(r *R, m *Meta) error
	cmp    func(a, b *R) int // key order; 0 means a duplicate key
	// rawFast, when set, may take a raw line instead of the general path
	// (fast.go): true when it wrote the line.
	rawFast func(e *emitter[R], line []byte) (bool, error)
}

var usageCodec = &codec[UsageRow]{
	file: FileUsages,
	header: []string{"usage_id", "setlym", "entry_type", "kind", "payer_province", "payer_region",
		"payee_province", "payee_region", "amount", "occurred_at", "late", "reversal_of", "sharer_ref", "beneficiary_ref"},
	encode: func(d []string, r *UsageRow) []string {
		return append(d, r.UsageID, r.Period.String(), string(r.EntryType), string(r.Kind),
			r.PayerProvince, r.PayerRegion, r.PayeeProvince, r.PayeeRegion,
			fmtAmount(r.Amount), fmtTime(r.OccurredAt), fmtBool(r.Late), r.ReversalOf, r.SharerRef, r.BeneficiaryRef)
	},
	decode: func(f []string) (UsageRow, error) {
		r := UsageRow{UsageID: f[0], EntryType: EntryType(f[2]), Kind: Kind(f[3]),
			PayerProvince: f[4], PayerRegion: f[5], PayeeProvince: f[6], PayeeRegion: f[7],
			ReversalOf: f[11], SharerRef: f[12], BeneficiaryRef: f[13]}
		var err error
		if r.Period, err = parsePeriod(f[1]); err != nil {
			return r, wrapBad("setlym", err)
		}
		if r.Amount, err = parseAmount(f[8]); err != nil {
			return r, wrapBad("amount", err)
		}
		if r.OccurredAt, err = parseTime(f[9]); err != nil {
			return r, wrapBad("occurred_at", err)
		}
		if r.Late, err = parseBool(f[10]); err != nil {
			return r, wrapBad("late", err)
		}
		return r, nil
	},
	check:   (*UsageRow).check,
	cmp:     func(a, b *UsageRow) int { return strings.Compare(a.UsageID, b.UsageID) },
	rawFast: usageRawFast,
}

var grossCodec = &codec[GrossRow]{
	file:   FileGross,
	header: []string{"payer_province", "payee_province", "amount"},
	encode: func(d []string, r *GrossRow) []string {
		return append(d, r.PayerProvince, r.PayeeProvince, fmtAmount(r.Amount))
	},
	decode: func(f []string) (GrossRow, error) {
		a, err := parseAmount(f[2])
		if err != nil {
			return GrossRow{}, wrapBad("amount", err)
		}
		return GrossRow{PayerProvince: f[0], PayeeProvince: f[1], Amount: a}, nil
	},
	check: (*GrossRow).check,
	cmp: func(a, b *GrossRow) int {
		return cmp.Or(strings.Compare(a.PayerProvince, b.PayerProvince), strings.Compare(a.PayeeProvince, b.PayeeProvince))
	},
}

var positionCodec = &codec[PositionRow]{
	file:   FilePositions,
	header: []string{"province_code", "receivable", "payable", "net"},
	encode: func(d []string, r *PositionRow) []string {
		return append(d, r.ProvinceCode, fmtAmount(r.Receivable), fmtAmount(r.Payable), fmtAmount(r.Net))
	},
	decode: func(f []string) (PositionRow, error) {
		a, err := parseAmounts(f[1:], "receivable", "payable", "net")
		if err != nil {
			return PositionRow{}, err
		}
		return PositionRow{ProvinceCode: f[0], Receivable: a[0], Payable: a[1], Net: a[2]}, nil
	},
	check: (*PositionRow).check,
	cmp:   func(a, b *PositionRow) int { return strings.Compare(a.ProvinceCode, b.ProvinceCode) },
}

var allocationCodec = &codec[AllocationRow]{
	file:   FileAllocation,
	header: []string{"province_code", "region_code", "receivable", "payable", "net"},
	encode: func(d []string, r *AllocationRow) []string {
		return append(d, r.ProvinceCode, r.RegionCode, fmtAmount(r.Receivable), fmtAmount(r.Payable), fmtAmount(r.Net))
	},
	decode: func(f []string) (AllocationRow, error) {
		a, err := parseAmounts(f[2:], "receivable", "payable", "net")
		if err != nil {
			return AllocationRow{}, err
		}
		return AllocationRow{ProvinceCode: f[0], RegionCode: f[1], Receivable: a[0], Payable: a[1], Net: a[2]}, nil
	},
	check: (*AllocationRow).check,
	cmp: func(a, b *AllocationRow) int {
		return cmp.Or(strings.Compare(a.ProvinceCode, b.ProvinceCode), strings.Compare(a.RegionCode, b.RegionCode))
	},
}

var instructionCodec = &codec[InstructionRow]{
	file:   FileInstructions,
	header: []string{"tier", "from_code", "to_code", "amount"},
	encode: func(d []string, r *InstructionRow) []string {
		return append(d, string(r.Tier), r.FromCode, r.ToCode, fmtAmount(r.Amount))
	},
	decode: func(f []string) (InstructionRow, error) {
		a, err := parseAmount(f[3])
		if err != nil {
			return InstructionRow{}, wrapBad("amount", err)
		}
		return InstructionRow{Tier: Tier(f[0]), FromCode: f[1], ToCode: f[2], Amount: a}, nil
	},
	check: (*InstructionRow).check,
	cmp: func(a, b *InstructionRow) int {
		return cmp.Or(strings.Compare(string(a.Tier), string(b.Tier)),
			strings.Compare(a.FromCode, b.FromCode), strings.Compare(a.ToCode, b.ToCode))
	},
}

var prepayCodec = &codec[PrepayRow]{
	file:   FilePrepay,
	header: []string{"province_code", "deposit_before", "drawn", "outstanding", "deposit_after", "required_next", "warning"},
	encode: func(d []string, r *PrepayRow) []string {
		return append(d, r.ProvinceCode, fmtAmount(r.DepositBefore), fmtAmount(r.Drawn), fmtAmount(r.Outstanding),
			fmtAmount(r.DepositAfter), fmtAmount(r.RequiredNext), fmtBool(r.Warning))
	},
	decode: func(f []string) (PrepayRow, error) {
		a, err := parseAmounts(f[1:6], "deposit_before", "drawn", "outstanding", "deposit_after", "required_next")
		if err != nil {
			return PrepayRow{}, err
		}
		w, err := parseBool(f[6])
		if err != nil {
			return PrepayRow{}, wrapBad("warning", err)
		}
		return PrepayRow{ProvinceCode: f[0], DepositBefore: a[0], Drawn: a[1], Outstanding: a[2],
			DepositAfter: a[3], RequiredNext: a[4], Warning: w}, nil
	},
	check: (*PrepayRow).check,
	cmp:   func(a, b *PrepayRow) int { return strings.Compare(a.ProvinceCode, b.ProvinceCode) },
}

func parseAmounts(f []string, names ...string) ([]money.Yuan, error) {
	out := make([]money.Yuan, len(names))
	for i, n := range names {
		a, err := parseAmount(f[i])
		if err != nil {
			return nil, wrapBad(n, err)
		}
		out[i] = a
	}
	return out, nil
}

// ---- RFC 4180 ----------------------------------------------------------------

// appendField appends one field with minimal RFC 4180 quoting: quoted only
// when it holds ',' or '"' (fields never hold line breaks, see checkID).
func appendField(dst []byte, f string) []byte {
	if !needsQuotes(f) {
		return append(dst, f...)
	}
	dst = append(dst, '"')
	for i := 0; i < len(f); i++ {
		if f[i] == '"' {
			dst = append(dst, '"')
		}
		dst = append(dst, f[i])
	}
	return append(dst, '"')
}

// needsQuotes is strings.ContainsAny(f, ",\"\r\n") without its per-call
// set building (this runs 14 times per usage row).
func needsQuotes(f string) bool {
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case ',', '"', '\r', '\n':
			return true
		}
	}
	return false
}

// appendLine appends fields as one canonical line ending in "\n".
func appendLine(dst []byte, fields []string) []byte {
	for i, f := range fields {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendField(dst, f)
	}
	return append(dst, '\n')
}

var errQuote = errors.New("bad RFC 4180 quoting")

// splitLine parses one line (without its "\n") into fields, strictly by
// RFC 4180: a quoted field ends at a '"' followed by ',' or the end of line;
// a '"' inside an unquoted field is an error.
func splitLine(line []byte, dst []string) ([]string, error) {
	i := 0
	for {
		if i < len(line) && line[i] == '"' {
			var b strings.Builder
			i++
			for {
				if i >= len(line) {
					return dst, fmt.Errorf("%w: unterminated quoted field", errQuote)
				}
				c := line[i]
				i++
				if c != '"' {
					b.WriteByte(c)
					continue
				}
				if i < len(line) && line[i] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			dst = append(dst, b.String())
			if i == len(line) {
				return dst, nil
			}
			if line[i] != ',' {
				return dst, fmt.Errorf("%w: text after a closing quote", errQuote)
			}
			i++
			continue
		}
		j := i
		for j < len(line) && line[j] != ',' {
			if line[j] == '"' {
				return dst, fmt.Errorf("%w: quote inside an unquoted field", errQuote)
			}
			j++
		}
		dst = append(dst, string(line[i:j]))
		if j == len(line) {
			return dst, nil
		}
		i = j + 1
	}
}
