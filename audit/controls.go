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
// Memory is bounded by the code lists: 32×32 province pairs and 387 regions,
// summed as integer fen (fenSum) by code index.
type controls struct {
	m       *Meta
	usages  int64
	total   money.Yuan // set by endUsages
	sum     fenSum
	pair    []fenSum // payer province index × len(provinces) + payee province index
	regRecv []fenSum // by payee_region index
	regPay  []fenSum // by payer_region index
	regSeen []bool   // region appeared as payer_region or payee_region

	net   map[string]money.Yuan
	gross []GrossRow
	pos   []PositionRow
	alloc []AllocationRow
	instr []InstructionRow
	next  int // index of the next expected row of the file being written
}

func newControls(m *Meta) *controls {
	np, nr := len(region.Provinces()), len(regCodes)
	return &controls{m: m, pair: make([]fenSum, np*np),
		regRecv: make([]fenSum, nr), regPay: make([]fenSum, nr), regSeen: make([]bool, nr)}
}

// usage adds a row that passed the row rules (so its codes are known).
func (c *controls) usage(r *UsageRow) error {
	pp, ok1 := provIdx[r.PayerProvince]
	ep, ok2 := provIdx[r.PayeeProvince]
	pr, ok3 := regIdx[r.PayerRegion]
	er, ok4 := regIdx[r.PayeeRegion]
	if !ok1 || !ok2 || !ok3 || !ok4 { // cannot happen after check
		return fmt.Errorf("%w: unknown code in usage %s", ErrControl, r.UsageID)
	}
	if f, ok := fenOf(r.Amount); ok {
		c.usageFacts(&usageFacts{fen: f, payerProv: pp, payeeProv: ep, payerReg: pr, payeeReg: er})
		return nil
	}
	c.usages++
	c.sum.add(r.Amount)
	c.pair[pp*len(provIdx)+ep].add(r.Amount)
	c.regRecv[er].add(r.Amount)
	c.regPay[pr].add(r.Amount)
	c.regSeen[er], c.regSeen[pr] = true, true
	return nil
}

// usageFacts adds a row of the fast path.
func (c *controls) usageFacts(u *usageFacts) {
	c.usages++
	c.sum.addFen(u.fen)
	c.pair[u.payerProv*len(provIdx)+u.payeeProv].addFen(u.fen)
	c.regRecv[u.payeeReg].addFen(u.fen)
	c.regPay[u.payerReg].addFen(u.fen)
	c.regSeen[u.payeeReg], c.regSeen[u.payerReg] = true, true
}

// endUsages compares the usages with the source's control totals and derives
// the expected rows of the other files.
func (c *controls) endUsages() error {
	c.total = c.sum.yuan()
	if c.usages != c.m.Totals.Usages || !c.total.Equal(c.m.Totals.Gross) {
		return fmt.Errorf("%w: %s has %d rows summing to %s, the source's totals say %d rows and %s",
			ErrControl, FileUsages, c.usages, c.total, c.m.Totals.Usages, c.m.Totals.Gross)
	}
	provs := region.Provinces()
	np := len(provs)
	recv, pay := make([]money.Yuan, np), make([]money.Yuan, np)
	for k := range c.pair {
		a := c.pair[k].yuan()
		if a.IsZero() {
			continue
		}
		pp, ep := k/np, k%np
		pay[pp] = pay[pp].Add(a)
		recv[ep] = recv[ep].Add(a)
		c.gross = append(c.gross, GrossRow{PayerProvince: provs[pp].Code, PayeeProvince: provs[ep].Code, Amount: a})
	}
	slices.SortFunc(c.gross, func(a, b GrossRow) int { return grossCodec.cmp(&a, &b) })

	c.net = map[string]money.Yuan{}
	netSum := money.Zero
	for i, pr := range provs {
		p := pr.Code
		n := recv[i].Sub(pay[i])
		c.net[p] = n
		netSum = netSum.Add(n)
		c.pos = append(c.pos, PositionRow{ProvinceCode: p, Receivable: recv[i], Payable: pay[i], Net: n})
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
	for ri, code := range regCodes {
		if !c.regSeen[ri] {
			continue
		}
		prov := provs[regProv[ri]].Code
		rec, p := c.regRecv[ri].yuan(), c.regPay[ri].yuan()
		n := rec.Sub(p)
		c.alloc = append(c.alloc, AllocationRow{ProvinceCode: prov, RegionCode: code, Receivable: rec, Payable: p, Net: n})
		switch {
		case n.IsNegative():
			c.instr = append(c.instr, InstructionRow{TierProvince, code, prov, n.Neg()})
		case n.IsPositive():
			c.instr = append(c.instr, InstructionRow{TierProvince, prov, code, n})
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
