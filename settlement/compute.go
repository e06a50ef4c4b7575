package settlement

import (
	"cmp"
	"math/big"
	"slices"

	"github.com/shopspring/decimal"

	"gongji/money"
	"gongji/region"
)

// GrossCell is one gross.csv row: the sum of the period's amounts that payer
// province owes payee province. Only non-zero sums are listed.
type GrossCell struct {
	PayerProvince string
	PayeeProvince string
	Amount        money.Yuan
}

// Position is one positions.csv row: a provincial unit's figures.
// Net = Receivable − Payable; positive nets are paid by the centre.
type Position struct {
	Province   string
	Receivable money.Yuan
	Payable    money.Yuan
	Net        money.Yuan
}

// RegionPosition is one allocation.csv row: the same figures for one pooling
// region (receivable by payee_region, payable by payer_region).
type RegionPosition struct {
	Province   string
	Region     string
	Receivable money.Yuan
	Payable    money.Yuan
	Net        money.Yuan
}

// Tier is the level of a settlement instruction (R16).
type Tier string

const (
	// TierNational: between a province and the national centre (000000).
	TierNational Tier = "NATIONAL"
	// TierProvince: between a pooling region and its province (XX0000).
	TierProvince Tier = "PROVINCE"
)

// Instruction is one instructions.csv row: From pays To Amount (> 0).
type Instruction struct {
	Tier   Tier
	From   string
	To     string
	Amount money.Yuan
}

// Result is everything computed when a period closes, each slice in the
// export's sort order (see the package doc).
type Result struct {
	Gross        []GrossCell
	Positions    []Position
	Allocation   []RegionPosition
	Instructions []Instruction
}

// Compute is the reference computation of a period's figures from its rows
// (DESIGN §11 "Meaning"). It is a pure function of the multiset of rows: the
// order of rows does not matter. Rows are expected to have passed
// Row.Validate; Compute does not reject anything, so that CheckResult can show
// what an invalid row breaks (an unknown province, for example, makes the nets
// of the 32 provinces stop summing to zero).
func Compute(rows []Row) Result {
	type pair struct{ payer, payee string }
	type regionKey struct{ province, region string }
	type regionSums struct{ receivable, payable money.Yuan }

	gross := map[pair]money.Yuan{}
	regions := map[regionKey]*regionSums{}
	touch := func(k regionKey) *regionSums {
		s, ok := regions[k]
		if !ok {
			s = &regionSums{}
			regions[k] = s
		}
		return s
	}
	for _, r := range rows {
		k := pair{r.PayerProvince, r.PayeeProvince}
		gross[k] = gross[k].Add(r.Amount)
		payer := touch(regionKey{r.PayerProvince, r.PayerRegion})
		payer.payable = payer.payable.Add(r.Amount)
		payee := touch(regionKey{r.PayeeProvince, r.PayeeRegion})
		payee.receivable = payee.receivable.Add(r.Amount)
	}

	var res Result
	receivable := map[string]money.Yuan{}
	payable := map[string]money.Yuan{}
	for k, amt := range gross {
		if amt.IsZero() {
			continue
		}
		res.Gross = append(res.Gross, GrossCell{PayerProvince: k.payer, PayeeProvince: k.payee, Amount: amt})
		receivable[k.payee] = receivable[k.payee].Add(amt)
		payable[k.payer] = payable[k.payer].Add(amt)
	}
	slices.SortFunc(res.Gross, func(a, b GrossCell) int {
		return cmp.Or(cmp.Compare(a.PayerProvince, b.PayerProvince), cmp.Compare(a.PayeeProvince, b.PayeeProvince))
	})

	for _, code := range region.ProvinceCodes() {
		rec, pay := receivable[code], payable[code]
		res.Positions = append(res.Positions, Position{Province: code, Receivable: rec, Payable: pay, Net: rec.Sub(pay)})
	}

	for k, s := range regions {
		res.Allocation = append(res.Allocation, RegionPosition{
			Province: k.province, Region: k.region,
			Receivable: s.receivable, Payable: s.payable, Net: s.receivable.Sub(s.payable),
		})
	}
	slices.SortFunc(res.Allocation, compareRegionPosition)

	res.Instructions = Instructions(res.Positions, res.Allocation)
	return res
}

// Instructions derives both tiers of settlement instructions from positions
// and region allocation, sorted by (tier, from, to). NATIONAL: net < 0 pays the
// centre −net, net > 0 is paid net by the centre. PROVINCE: a region with
// net < 0 pays its province −net, the province pays a region with net > 0 its
// net. Zero nets get no instruction.
func Instructions(positions []Position, allocation []RegionPosition) []Instruction {
	var out []Instruction
	for _, p := range positions {
		if in, ok := instructionFor(TierNational, p.Province, region.NationalCentre, p.Net); ok {
			out = append(out, in)
		}
	}
	for _, r := range allocation {
		if in, ok := instructionFor(TierProvince, r.Region, r.Province, r.Net); ok {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, compareInstruction)
	return out
}

// instructionFor: party with net pays upper −net when net < 0; upper pays
// party net when net > 0.
func instructionFor(t Tier, party, upper string, net money.Yuan) (Instruction, bool) {
	switch {
	case net.IsNegative():
		return Instruction{Tier: t, From: party, To: upper, Amount: net.Neg()}, true
	case net.IsPositive():
		return Instruction{Tier: t, From: upper, To: party, Amount: net}, true
	}
	return Instruction{}, false
}

func compareRegionPosition(a, b RegionPosition) int {
	return cmp.Or(cmp.Compare(a.Province, b.Province), cmp.Compare(a.Region, b.Region))
}

func compareInstruction(a, b Instruction) int {
	return cmp.Or(cmp.Compare(a.Tier, b.Tier), cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To))
}

// GrossTotal is Σ of the gross matrix (manifest.json totals.gross).
func (r Result) GrossTotal() money.Yuan {
	t := money.Zero
	for _, g := range r.Gross {
		t = t.Add(g.Amount)
	}
	return t
}

// PositiveNetTotal is Σ of the positive nets: what actually moves through the
// centre after netting (equal to Σ of −net over the payers).
func (r Result) PositiveNetTotal() money.Yuan {
	t := money.Zero
	for _, p := range r.Positions {
		if p.Net.IsPositive() {
			t = t.Add(p.Net)
		}
	}
	return t
}

// EfficiencyPlaces is the number of decimal places of NettingEfficiency.
const EfficiencyPlaces = 6

// NettingEfficiency is the share of gross obligations that multilateral
// netting removed: 1 − Σ positive nets ÷ Σ |gross|, rounded half-even to
// EfficiencyPlaces places in one exact step, in [0, 1].
//
// The denominator is Σ |gross| rather than Σ gross: they are equal in the
// normal case where every pair sums to a positive amount, but a pair whose
// reversals of earlier usages outweigh this period's usages has a negative
// gross sum, and a signed denominator could then make the ratio meaningless
// (negative, or a division by zero while money still moves). Since
// Σ positive nets = ½ Σ|net| ≤ Σ|gross|, the ratio stays in [0, 1].
// With no gross movement at all the efficiency is defined as 0: nothing was
// netted away.
func (r Result) NettingEfficiency() decimal.Decimal {
	abs := new(big.Int)
	for _, g := range r.Gross {
		abs.Add(abs, big.NewInt(g.Amount.Abs().Fen()))
	}
	if abs.Sign() == 0 {
		return decimal.Zero
	}
	// (abs − moved) × 10^places ÷ abs, half-even, exactly.
	num := new(big.Int).Sub(abs, big.NewInt(r.PositiveNetTotal().Fen()))
	num.Mul(num, new(big.Int).Exp(big.NewInt(10), big.NewInt(EfficiencyPlaces), nil))
	q, rem := new(big.Int).QuoRem(num, abs, new(big.Int))
	twice := new(big.Int).Lsh(new(big.Int).Abs(rem), 1)
	if c := twice.Cmp(abs); c > 0 || c == 0 && q.Bit(0) == 1 {
		if rem.Sign() < 0 {
			q.Sub(q, big.NewInt(1))
		} else {
			q.Add(q, big.NewInt(1))
		}
	}
	return decimal.NewFromBigInt(q, -EfficiencyPlaces)
}
