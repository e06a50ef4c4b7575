package settlement

import (
	"errors"
	"fmt"
	"strings"

	"gongji/money"
	"gongji/region"
)

// ErrInconsistent is matched by every CheckResult failure. A failure is a bug
// in whoever computed the Result: the clearing service must not close the
// period (return an internal error, roll back, log it).
var ErrInconsistent = errors.New("settlement: inconsistent result")

// CheckError names the first violated invariant: the rule, the key of the
// offending row, and what was expected.
type CheckError struct {
	Rule   string // e.g. "nets-sum", "allocation-sum", "national-instruction"
	Key    string // e.g. "130000", "130000/130400", "NATIONAL 000000→120000"
	Detail string
}

func (e *CheckError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("settlement: check %s: %s", e.Rule, e.Detail)
	}
	return fmt.Sprintf("settlement: check %s [%s]: %s", e.Rule, e.Key, e.Detail)
}

// Unwrap makes errors.Is(err, ErrInconsistent) true.
func (e *CheckError) Unwrap() error { return ErrInconsistent }

func violation(rule, key, format string, args ...any) error {
	return &CheckError{Rule: rule, Key: key, Detail: fmt.Sprintf(format, args...)}
}

// CheckResult verifies the invariants of a Result, whether Compute or the SQL
// adapter produced it, and returns a *CheckError for the first violation
// (checked in this order):
//
//  1. positions: exactly the 32 provincial units in code order; net =
//     receivable − payable; the nets sum to 0.00.
//  2. gross: strictly sorted by (payer, payee), known and distinct provinces,
//     no zero cell; column and row sums equal each position's receivable and
//     payable.
//  3. allocation: strictly sorted by (province, region), each region inside
//     its province; net = receivable − payable; each province's region rows
//     sum exactly to its position (receivable, payable and net).
//  4. instructions: strictly sorted by (tier, from, to); tier NATIONAL has
//     exactly one instruction per non-zero net, amount |net| in the right
//     direction, none for a zero net, and sums to zero per side (Σ paid to
//     the centre = Σ paid by it); tier PROVINCE has exactly one instruction
//     per non-zero region net, and within each province
//     Σ(province → regions) − Σ(regions → province) equals the province's net.
func CheckResult(res Result) error {
	if err := checkPositions(res.Positions); err != nil {
		return err
	}
	pos := make(map[string]Position, len(res.Positions))
	for _, p := range res.Positions {
		pos[p.Province] = p
	}
	if err := checkGross(res.Gross, pos); err != nil {
		return err
	}
	regionNet, err := checkAllocation(res.Allocation, pos)
	if err != nil {
		return err
	}
	return checkInstructions(res.Instructions, pos, res.Allocation, regionNet)
}

func checkPositions(ps []Position) error {
	codes := region.ProvinceCodes()
	if len(ps) != len(codes) {
		return violation("positions", "", "%d rows, want one per provincial unit (%d)", len(ps), len(codes))
	}
	sum := money.Zero
	for i, p := range ps {
		if p.Province != codes[i] {
			return violation("positions", p.Province, "row %d is %q, want %s (all units in code order)", i, p.Province, codes[i])
		}
		if want := p.Receivable.Sub(p.Payable); !p.Net.Equal(want) {
			return violation("position-net", p.Province, "net %s ≠ receivable %s − payable %s = %s", p.Net, p.Receivable, p.Payable, want)
		}
		sum = sum.Add(p.Net)
	}
	if !sum.IsZero() {
		return violation("nets-sum", "", "nets sum to %s, want 0.00", sum)
	}
	return nil
}

func checkGross(gross []GrossCell, pos map[string]Position) error {
	rec := map[string]money.Yuan{}
	pay := map[string]money.Yuan{}
	for i, g := range gross {
		key := g.PayerProvince + "→" + g.PayeeProvince
		if i > 0 {
			prev := gross[i-1]
			if !(prev.PayerProvince < g.PayerProvince || prev.PayerProvince == g.PayerProvince && prev.PayeeProvince < g.PayeeProvince) {
				return violation("gross-order", key, "not strictly after %s→%s", prev.PayerProvince, prev.PayeeProvince)
			}
		}
		if _, ok := pos[g.PayerProvince]; !ok {
			return violation("gross-pair", key, "unknown payer province")
		}
		if _, ok := pos[g.PayeeProvince]; !ok {
			return violation("gross-pair", key, "unknown payee province")
		}
		if g.PayerProvince == g.PayeeProvince {
			return violation("gross-pair", key, "same-province pair is not cleared nationally")
		}
		if g.Amount.IsZero() {
			return violation("gross-zero", key, "zero cells are not listed")
		}
		rec[g.PayeeProvince] = rec[g.PayeeProvince].Add(g.Amount)
		pay[g.PayerProvince] = pay[g.PayerProvince].Add(g.Amount)
	}
	for _, code := range region.ProvinceCodes() {
		p := pos[code]
		if !rec[code].Equal(p.Receivable) {
			return violation("gross-positions", code, "Σ gross[·][%s] = %s ≠ receivable %s", code, rec[code], p.Receivable)
		}
		if !pay[code].Equal(p.Payable) {
			return violation("gross-positions", code, "Σ gross[%s][·] = %s ≠ payable %s", code, pay[code], p.Payable)
		}
	}
	return nil
}

// checkAllocation returns each region's net for the instruction check.
func checkAllocation(alloc []RegionPosition, pos map[string]Position) (map[string]RegionPosition, error) {
	type sums struct{ rec, pay, net money.Yuan }
	perProvince := map[string]*sums{}
	byRegion := make(map[string]RegionPosition, len(alloc))
	for i, r := range alloc {
		key := r.Province + "/" + r.Region
		if i > 0 {
			prev := alloc[i-1]
			if compareRegionPosition(prev, r) >= 0 {
				return nil, violation("allocation-order", key, "not strictly after %s/%s", prev.Province, prev.Region)
			}
		}
		if _, ok := pos[r.Province]; !ok {
			return nil, violation("allocation-region", key, "unknown province")
		}
		if _, err := region.ParseRegionIn(r.Region, r.Province); err != nil {
			return nil, violation("allocation-region", key, "%v", err)
		}
		if want := r.Receivable.Sub(r.Payable); !r.Net.Equal(want) {
			return nil, violation("allocation-net", key, "net %s ≠ receivable %s − payable %s = %s", r.Net, r.Receivable, r.Payable, want)
		}
		s := perProvince[r.Province]
		if s == nil {
			s = &sums{}
			perProvince[r.Province] = s
		}
		s.rec, s.pay, s.net = s.rec.Add(r.Receivable), s.pay.Add(r.Payable), s.net.Add(r.Net)
		byRegion[r.Region] = r
	}
	for _, code := range region.ProvinceCodes() {
		p, s := pos[code], perProvince[code]
		if s == nil {
			s = &sums{}
		}
		if !s.rec.Equal(p.Receivable) || !s.pay.Equal(p.Payable) || !s.net.Equal(p.Net) {
			return nil, violation("allocation-sum", code, "regions sum to receivable %s, payable %s, net %s; province has %s, %s, %s",
				s.rec, s.pay, s.net, p.Receivable, p.Payable, p.Net)
		}
	}
	return byRegion, nil
}

func checkInstructions(ins []Instruction, pos map[string]Position, alloc []RegionPosition, regions map[string]RegionPosition) error {
	seenProvince := map[string]bool{}
	seenRegion := map[string]bool{}
	toCentre, fromCentre := money.Zero, money.Zero
	provinceOut := map[string]money.Yuan{} // Σ(province → regions) − Σ(regions → province)
	for i, in := range ins {
		key := fmt.Sprintf("%s %s→%s", in.Tier, in.From, in.To)
		if i > 0 && compareInstruction(ins[i-1], in) >= 0 {
			prev := ins[i-1]
			return violation("instruction-order", key, "not strictly after %s %s→%s", prev.Tier, prev.From, prev.To)
		}
		if !in.Amount.IsPositive() {
			return violation("instruction-amount", key, "amount %s must be > 0", in.Amount)
		}
		switch in.Tier {
		case TierNational:
			var party string
			var net money.Yuan
			switch {
			case in.From == region.NationalCentre && in.To != region.NationalCentre:
				party, net = in.To, in.Amount
				fromCentre = fromCentre.Add(in.Amount)
			case in.To == region.NationalCentre && in.From != region.NationalCentre:
				party, net = in.From, in.Amount.Neg()
				toCentre = toCentre.Add(in.Amount)
			default:
				return violation("national-instruction", key, "exactly one side must be the centre %s", region.NationalCentre)
			}
			p, ok := pos[party]
			if !ok {
				return violation("national-instruction", key, "unknown province %q", party)
			}
			if seenProvince[party] {
				return violation("national-instruction", key, "second instruction for %s", party)
			}
			seenProvince[party] = true
			if !p.Net.Equal(net) {
				return violation("national-instruction", key, "implies net %s, position has %s", net, p.Net)
			}
		case TierProvince:
			var reg, prov string
			var net money.Yuan
			switch {
			case isProvinceCode(in.From) && !isProvinceCode(in.To):
				prov, reg, net = in.From, in.To, in.Amount
				provinceOut[prov] = provinceOut[prov].Add(in.Amount)
			case isProvinceCode(in.To) && !isProvinceCode(in.From):
				prov, reg, net = in.To, in.From, in.Amount.Neg()
				provinceOut[prov] = provinceOut[prov].Sub(in.Amount)
			default:
				return violation("province-instruction", key, "exactly one side must be a province code XX0000")
			}
			r, ok := regions[reg]
			if !ok || r.Province != prov {
				return violation("province-instruction", key, "region %s has no allocation row in province %s", reg, prov)
			}
			if seenRegion[reg] {
				return violation("province-instruction", key, "second instruction for region %s", reg)
			}
			seenRegion[reg] = true
			if !r.Net.Equal(net) {
				return violation("province-instruction", key, "implies net %s, allocation has %s", net, r.Net)
			}
		default:
			return violation("instruction-tier", key, "unknown tier %q", in.Tier)
		}
	}
	for _, code := range region.ProvinceCodes() {
		if p := pos[code]; !p.Net.IsZero() && !seenProvince[code] {
			return violation("national-instruction", code, "net %s has no instruction", p.Net)
		}
	}
	for _, r := range alloc {
		if !r.Net.IsZero() && !seenRegion[r.Region] {
			return violation("province-instruction", r.Province+"/"+r.Region, "region net %s has no instruction", r.Net)
		}
	}
	if !toCentre.Equal(fromCentre) {
		return violation("national-tier-sum", "", "provinces pay the centre %s, the centre pays %s", toCentre, fromCentre)
	}
	for _, code := range region.ProvinceCodes() {
		if out := provinceOut[code]; !out.Equal(pos[code].Net) {
			return violation("province-tier-sum", code, "province pays its regions %s net, its national net is %s", out, pos[code].Net)
		}
	}
	return nil
}

// isProvinceCode: XX0000, but not the centre's 000000.
func isProvinceCode(code string) bool {
	return len(code) == 6 && strings.HasSuffix(code, "0000") && code != region.NationalCentre
}
