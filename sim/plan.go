package sim

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"gongji/money"
	"gongji/region"
)

// Usage kinds as the proto names them (without the USAGE_KIND_ prefix).
const (
	KindMedical         = "MEDICAL"
	KindPharmacy        = "PHARMACY"
	KindResidentPremium = "RESIDENT_PREMIUM"
	KindLTCPremium      = "LTC_PREMIUM"
)

// Spend is one planned usage. Spends of one link run in order, so quota
// exhaustion (and so every figure) is the same in every run with one seed.
type Spend struct {
	Key        string
	Link       int
	Kind       string
	Amount     money.Yuan
	OccurredAt time.Time
	// Retry: send the identical request a second time (a lost answer); the
	// node must replay the first answer.
	Retry bool
	// Reversal, when positive, refunds this much of the usage right after it.
	Reversal    money.Yuan
	ReversalKey string
	// Late: sent only after the period's cut-off (arrives late, R14).
	Late bool
}

// Plan is the month's usage, grouped by link.
type Plan struct {
	Period region.Period
	ByLink map[int][]Spend
	Links  []int // links with usage, ascending
	Total  int
}

// PlanUsages spreads n usages over the links that become active. Some spends
// are deliberately larger than what is left of the quota (refused), some are
// retried, some reversed in part or in full, and a few arrive after the cut-off.
func PlanUsages(pop *Population, period region.Period, n int, seed uint64) *Plan {
	rng := rand.New(rand.NewPCG(seed, 0x5bd1e995))
	var active []int
	for _, l := range pop.Links {
		if l.Fate == FateActive || l.Fate == FateDissolveVoluntary || l.Fate == FateDissolveAuto {
			active = append(active, l.Index)
		}
	}
	p := &Plan{Period: period, ByLink: map[int][]Spend{}}
	if len(active) == 0 {
		return p
	}
	late := 0
	for i := 0; i < n; i++ {
		li := active[rng.IntN(len(active))]
		l := pop.Links[li]
		ben := pop.People[l.Beneficiary]
		kind := KindMedical
		switch r := rng.IntN(100); {
		case r < 45:
			kind = KindMedical
		case r < 82:
			kind = KindPharmacy
		case r < 93:
			kind = KindResidentPremium
		default:
			kind = KindLTCPremium
		}
		if !ben.Insured && (kind == KindMedical || kind == KindPharmacy) {
			kind = KindResidentPremium // premiums may be paid for someone not yet insured (R2)
		}
		// Mostly 5-300 yuan; one in 40 is a large bill that may exhaust the quota.
		amount := money.FromFen(int64(500 + rng.IntN(29_500)))
		if rng.IntN(40) == 0 {
			amount = money.FromFen(int64(150_000 + rng.IntN(300_000)))
		}
		s := Spend{
			Key:        fmt.Sprintf("U%s-%s-%07d", ben.Province, period, i),
			Link:       li,
			Kind:       kind,
			Amount:     amount,
			OccurredAt: MonthInstant(period, rng),
			Retry:      rng.IntN(30) == 0,
		}
		if rng.IntN(20) == 0 {
			if rng.IntN(2) == 0 {
				s.Reversal = amount // full refund
			} else {
				s.Reversal = money.FromFen(amount.Fen() / 3).Max(money.FromFen(1))
			}
			s.ReversalKey = "R" + s.Key[1:]
		}
		// A handful of records arrive after the cut-off; only for links that stay
		// active to the end (a dissolved link cannot be used later).
		if l.Fate == FateActive && late < max(3, n/400) && rng.IntN(50) == 0 {
			s.Late = true
			late++
		}
		p.ByLink[li] = append(p.ByLink[li], s)
		p.Total++
	}
	for li, ss := range p.ByLink {
		sort.SliceStable(ss, func(i, j int) bool { return ss[i].OccurredAt.Before(ss[j].OccurredAt) })
		p.Links = append(p.Links, li)
	}
	sort.Ints(p.Links)
	return p
}
