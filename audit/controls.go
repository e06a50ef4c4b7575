package audit

import (
	"fmt"
	"slices"
	"strings"

	"gongji/money"
	"gongji/region"
)

// controls recomputes, from the usages streamed so far, what every derived
// file must say, and compares the source's rows with it as they are written.
// Memory is bounded by the code lists: at most 32×31 province pairs and 387
// regions.
type controls struct {
	m       *Meta
	usages  int64
	total   money.Yuan
	pair    map[[2]string]money.Yuan // (payer, payee) province
	regRecv map[string]money.Yuan    // by payee_region; every region seen has a key
	regPay  map[string]money.Yuan    // by payer_region; every region seen has a key

	net   map[string]money.Yuan
	gross []GrossRow
	pos   []PositionRow
	alloc []AllocationRow
	instr []InstructionRow
	next  int // index of the next expected row of the file being written
}

func newControls(m *Meta) *controls {
	return &controls{m: m, pair: map[[2]string]money.Yuan{},
		regRecv: map[string]money.Yuan{}, regPay: map[string]money.Yuan{}}
}

func (c *controls) usage(r *UsageRow) error {
	c.usages++
	c.total = c.total.Add(r.Amount)
	k := [2]string{r.PayerProvince, r.PayeeProvince}
	c.pair[k] = c.pair[k].Add(r.Amount)
	c.regRecv[r.PayeeRegion] = c.regRecv[r.PayeeRegion].Add(r.Amount)
	c.regPay[r.PayeeRegion] = c.regPay[r.PayeeRegion]
	c.regPay[r.PayerRegion] = c.regPay[r.PayerRegion].Add(r.Amount)
	c.regRecv[r.PayerRegion] = c.regRecv[r.PayerRegion]
	return nil
}

// endUsages compares the usages with the source's control totals and derives
// the expected rows of the other files.
func (c *controls) endUsages() error {
	if c.usages != c.m.Totals.Usages || !c.total.Equal(c.m.Totals.Gross) {
		return fmt.Errorf("%w: %s has %d rows summing to %s, the source's totals say %d rows and %s",
			ErrControl, FileUsages, c.usages, c.total, c.m.Totals.Usages, c.m.Totals.Gross)
	}
	recv, pay := map[string]money.Yuan{}, map[string]money.Yuan{}
	for k, a := range c.pair {
		pay[k[0]] = pay[k[0]].Add(a)
		recv[k[1]] = recv[k[1]].Add(a)
		if !a.IsZero() {
			c.gross = append(c.gross, GrossRow{PayerProvince: k[0], PayeeProvince: k[1], Amount: a})
		}
	}
	slices.SortFunc(c.gross, func(a, b GrossRow) int { return grossCodec.cmp(&a, &b) })

	c.net = map[string]money.Yuan{}
	netSum := money.Zero
	for _, p := range region.ProvinceCodes() {
		n := recv[p].Sub(pay[p])
		c.net[p] = n
		netSum = netSum.Add(n)
		c.pos = append(c.pos, PositionRow{ProvinceCode: p, Receivable: recv[p], Payable: pay[p], Net: n})
		switch {
		case n.IsNegative():
			c.instr = append(c.instr, InstructionRow{TierNational, p, region.NationalCentre, n.Neg()})
		case n.IsPositive():
			c.instr = append(c.instr, InstructionRow{TierNational, region.NationalCentre, p, n})
		}
	}
	if !netSum.IsZero() { // cannot happen: every pair adds to one receivable and one payable
		return fmt.Errorf("%w: nets sum to %s", ErrControl, netSum)
	}
	for code, rec := range c.regRecv {
		reg, err := region.ParseRegion(code)
		if err != nil { // rows were checked before they got here
			return fmt.Errorf("%w: %v", ErrControl, err)
		}
		p := c.regPay[code]
		n := rec.Sub(p)
		c.alloc = append(c.alloc, AllocationRow{ProvinceCode: reg.ProvinceCode, RegionCode: code, Receivable: rec, Payable: p, Net: n})
		switch {
		case n.IsNegative():
			c.instr = append(c.instr, InstructionRow{TierProvince, code, reg.ProvinceCode, n.Neg()})
		case n.IsPositive():
			c.instr = append(c.instr, InstructionRow{TierProvince, reg.ProvinceCode, code, n})
		}
	}
	slices.SortFunc(c.alloc, func(a, b AllocationRow) int { return allocationCodec.cmp(&a, &b) })
	slices.SortFunc(c.instr, func(a, b InstructionRow) int { return instructionCodec.cmp(&a, &b) })
	return nil
}

// expect compares the source's row with the next expected row.
func expect[R any](c *codec[R], want []R, next *int, got *R) error {
	if *next >= len(want) {
		return fmt.Errorf("%w: row %q does not follow from the usages (they give %d rows)",
			ErrControl, strings.Join(c.encode(nil, got), ","), len(want))
	}
	w, g := c.encode(nil, &want[*next]), c.encode(nil, got)
	*next++
	for i := range w {
		if w[i] != g[i] {
			return &fieldErr{c.header[i], fmt.Errorf("%w: source has %q, its usages give %q (row %s)",
				ErrControl, g[i], w[i], strings.Join(w, ","))}
		}
	}
	return nil
}

// end checks that no expected row is missing and resets the cursor.
func end[R any](c *codec[R], want []R, next *int) error {
	n := *next
	*next = 0
	if n < len(want) {
		return fmt.Errorf("%w: %s lacks row %q that the usages give (source has %d rows, usages give %d)",
			ErrControl, c.file, strings.Join(c.encode(nil, &want[n]), ","), n, len(want))
	}
	return nil
}

func (c *controls) grossRow(r *GrossRow) error { return expect(grossCodec, c.gross, &c.next, r) }
func (c *controls) positionRow(r *PositionRow) error {
	return expect(positionCodec, c.pos, &c.next, r)
}
func (c *controls) allocationRow(r *AllocationRow) error {
	return expect(allocationCodec, c.alloc, &c.next, r)
}
func (c *controls) instructionRow(r *InstructionRow) error {
	return expect(instructionCodec, c.instr, &c.next, r)
}

// prepayRow checks the derived columns of a prepay row against the province's
// net: drawn = min(deposit_before, −net) for a net payer, else 0;
// outstanding = −net − drawn; deposit_after = deposit_before − drawn;
// warning = deposit_before > 0 and drawn ≥ threshold × deposit_before.
func (c *controls) prepayRow(r *PrepayRow) error {
	codes := region.ProvinceCodes()
	if c.next >= len(codes) {
		return fmt.Errorf("%w: more than %d provincial units", ErrControl, len(codes))
	}
	want := prepayFor(codes[c.next], r.DepositBefore, r.RequiredNext, c.net[codes[c.next]], c.m)
	c.next++
	return expect(prepayCodec, []PrepayRow{want}, new(int), r)
}

func (c *controls) endPrepay() error {
	n := c.next
	c.next = 0
	if codes := region.ProvinceCodes(); n != len(codes) {
		return fmt.Errorf("%w: %s has %d rows, want all %d provincial units", ErrControl, FilePrepay, n, len(codes))
	}
	return nil
}

func prepayFor(province string, before, requiredNext, net money.Yuan, m *Meta) PrepayRow {
	owed := money.Zero
	if net.IsNegative() {
		owed = net.Neg()
	}
	drawn := before.Min(owed)
	warning := before.IsPositive() &&
		!drawn.Decimal().LessThan(before.Decimal().Mul(m.WarningThreshold))
	return PrepayRow{ProvinceCode: province, DepositBefore: before, Drawn: drawn, Outstanding: owed.Sub(drawn),
		DepositAfter: before.Sub(drawn), RequiredNext: requiredNext, Warning: warning}
}
