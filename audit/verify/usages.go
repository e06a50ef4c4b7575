package verify

import (
	"github.com/shopspring/decimal"
)

var usagesHeader = []string{"usage_id", "setlym", "entry_type", "kind", "payer_province", "payer_region",
	"payee_province", "payee_region", "amount", "occurred_at", "late", "reversal_of", "sharer_ref", "beneficiary_ref"}

// Column indexes of usages.csv.
const (
	uID = iota
	uSetlym
	uEntry
	uKind
	uPayerProv
	uPayerReg
	uPayeeProv
	uPayeeReg
	uAmount
	uOccurred
	uLate
	uReversalOf
	uSharer
	uBeneficiary
)

// tally is everything the derived files follow from: sums by province pair
// and by region. Bounded by the code lists, not by the number of rows.
type tally struct {
	rows  int64
	total decimal.Decimal
	pair  map[[2]string]decimal.Decimal // (payer, payee) province
	recv  map[string]decimal.Decimal    // by payee_region
	pay   map[string]decimal.Decimal    // by payer_region
	seen  map[string]bool               // every region named in a row

	provRecv, provPay map[string]decimal.Decimal // by province, derived from pair
}

func (v *verifier) checkUsages() error {
	v.t = tally{pair: map[[2]string]decimal.Decimal{}, recv: map[string]decimal.Decimal{},
		pay: map[string]decimal.Decimal{}, seen: map[string]bool{}}
	c, err := openCSV(v.fsys, usagesName)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.header(usagesHeader); err != nil {
		return err
	}
	prevID := ""
	for {
		f, ok, err := c.record(usagesHeader)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if c.line%4096 == 0 {
			if err := v.ctx.Err(); err != nil {
				return err
			}
		}
		if d := v.checkUsageRow(c, f, prevID); d != nil {
			return d
		}
		prevID = f[uID]
	}
	sha, rows := c.finish()
	if err := v.checkFileSum(usagesName, sha, rows, false); err != nil {
		return err
	}
	if v.man.Totals.Usages != rows {
		return v.manDiff("totals.usages", "differs from the rows of usages.csv", itoa(rows), itoa(v.man.Totals.Usages))
	}
	if g := fmtAmount(v.t.total); v.man.Totals.Gross != g {
		return v.manDiff("totals.gross", "differs from the sum of usages.csv amount", g, v.man.Totals.Gross)
	}
	return nil
}

// checkUsageRow checks one row of usages.csv and adds it to the tally.
func (v *verifier) checkUsageRow(c *csvFile, f []string, prevID string) *Difference {
	bad := func(col int, reason, want string) *Difference {
		return c.diff(usagesHeader[col], reason, want, f[col])
	}
	if r := checkID(f[uID]); r != "" {
		return bad(uID, r, "")
	}
	if c.line > 2 && f[uID] <= prevID {
		return bad(uID, "rows must be sorted by usage_id, strictly ascending (byte order); previous is "+prevID, "after "+prevID)
	}
	if f[uSetlym] != v.man.Setlym {
		return bad(uSetlym, "row is not in the bundle's period (manifest.json line "+itoa(v.manLine["setlym"])+")", v.man.Setlym)
	}
	entry := f[uEntry]
	switch entry {
	case "USAGE", "REVERSAL", "ADJUSTMENT":
	default:
		return bad(uEntry, "unknown entry_type", "USAGE, REVERSAL or ADJUSTMENT")
	}
	switch f[uKind] {
	case "MEDICAL", "PHARMACY", "RESIDENT_PREMIUM", "LTC_PREMIUM":
	default:
		return bad(uKind, "unknown kind", "MEDICAL, PHARMACY, RESIDENT_PREMIUM or LTC_PREMIUM")
	}
	if r := checkProvince(f[uPayerProv]); r != "" {
		return bad(uPayerProv, r, "")
	}
	if r := checkRegion(f[uPayerReg], f[uPayerProv]); r != "" {
		return bad(uPayerReg, r, "")
	}
	if r := checkProvince(f[uPayeeProv]); r != "" {
		return bad(uPayeeProv, r, "")
	}
	if r := checkRegion(f[uPayeeReg], f[uPayeeProv]); r != "" {
		return bad(uPayeeReg, r, "")
	}
	if f[uPayerProv] == f[uPayeeProv] {
		return bad(uPayeeProv, "payer and payee are the same province: only cross-province usage is cleared nationally", "not "+f[uPayerProv])
	}
	amt, r := parseAmount(f[uAmount])
	if r != "" {
		return bad(uAmount, r, "")
	}
	switch {
	case entry == "USAGE" && !amt.IsPositive():
		return bad(uAmount, "a USAGE amount must be positive", "> 0.00")
	case entry == "REVERSAL" && !amt.IsNegative():
		return bad(uAmount, "a REVERSAL amount must be negative", "< 0.00")
	case entry == "ADJUSTMENT" && amt.IsZero():
		return bad(uAmount, "an ADJUSTMENT amount must not be zero", "≠ 0.00")
	}
	at, r := parseTime(f[uOccurred])
	if r != "" {
		return bad(uOccurred, r, "")
	}
	late := f[uLate]
	if late != "true" && late != "false" {
		return bad(uLate, "late must be true or false", "true or false")
	}
	month := monthOf(at)
	if late == "false" && month != v.man.Setlym {
		return bad(uOccurred, "a row that is not late must have occurred in the period "+v.man.Setlym, "a time in "+v.man.Setlym)
	}
	if late == "true" && month >= v.man.Setlym {
		return bad(uOccurred, "a late row must have occurred in a month before the period "+v.man.Setlym, "a time before "+v.man.Setlym)
	}
	if at.After(v.generated) {
		return bad(uOccurred, "occurred after the period closed at "+v.man.GeneratedAt, "not after "+v.man.GeneratedAt)
	}
	rev := f[uReversalOf]
	if entry == "USAGE" {
		if rev != "" {
			return bad(uReversalOf, "a USAGE names no other usage", "")
		}
	} else {
		if r := checkID(rev); r != "" {
			return bad(uReversalOf, "a "+entry+" must name the usage it concerns: "+r, "")
		}
		if rev == f[uID] {
			return bad(uReversalOf, "names the row itself", "")
		}
	}
	for _, col := range []int{uSharer, uBeneficiary} {
		if s := f[col]; (len(s) != 32 && len(s) != 64) || !isLowerHex(s) {
			return bad(col, "must be a keyed pseudonym: 32 or 64 lowercase hex characters", "")
		}
	}

	t := &v.t
	t.rows++
	t.total = t.total.Add(amt)
	k := [2]string{f[uPayerProv], f[uPayeeProv]}
	t.pair[k] = t.pair[k].Add(amt)
	t.recv[f[uPayeeReg]] = t.recv[f[uPayeeReg]].Add(amt)
	t.pay[f[uPayerReg]] = t.pay[f[uPayerReg]].Add(amt)
	t.seen[f[uPayeeReg]] = true
	t.seen[f[uPayerReg]] = true
	return nil
}
