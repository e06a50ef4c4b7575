// Package sim builds the synthetic population and the month the demo and the
// e2e tests drive through the federation's public gRPC APIs. Everything is a
// pure function of a seed, so two runs with the same seed send the same
// requests and produce byte-identical exports.
//
// No real person is in here: ID numbers are generated (valid GB 11643 check
// digits, plausible birth dates) from the seed.
package sim

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"gongji/money"
	"gongji/region"
)

// Receiving provinces attract working-age migrants; sending provinces are
// where their parents and children often stay (DESIGN issue #8 brief).
var (
	Receiving = []string{"440000", "330000", "320000", "310000", "110000", "350000"}
	Sending   = []string{"410000", "510000", "340000", "430000", "520000", "360000", "450000", "420000"}
)

// Scheme and account mode, as the enrollment system states them.
const (
	SchemeEmployee = "EMPLOYEE"
	SchemeResident = "RESIDENT"
)

// Person is one synthetic insured (or not yet insured) person.
type Person struct {
	Index      int
	IDNumber   string
	Province   string
	Region     string
	Scheme     string // EMPLOYEE or RESIDENT
	HasAccount bool   // 统账结合 (false: 单建统筹 or resident)
	Insured    bool
	BirthYear  int
	Credit     money.Yuan // paid into the personal account at the start of the month
	Retired    bool
	Household  int // people of one household share an index
}

// Relation types of the Civil Code list (R2), as the proto names them.
const (
	RelSpouse      = "SPOUSE"
	RelParent      = "PARENT" // beneficiary is the sharer's parent
	RelChild       = "CHILD"
	RelSibling     = "SIBLING"
	RelGrandparent = "GRANDPARENT_PATERNAL"
	RelGrandchild  = "GRANDCHILD_PATERNAL"
)

// Fate is what the month does to a proposed relationship.
type Fate int

const (
	FateActive            Fate = iota // consented and used
	FateDeclined                      // the other side declines
	FateExpired                       // nobody answers: the sweeper expires it
	FateDissolveVoluntary             // consented, used, then dissolved by one side
	FateDissolveAuto                  // consented, used, then an enrollment change dissolves it
)

func (f Fate) String() string {
	return [...]string{"active", "declined", "expired", "dissolved_voluntary", "dissolved_auto"}[f]
}

// Link is one proposed sharing relationship.
type Link struct {
	Index       int
	Sharer      int // index into People
	Beneficiary int
	Relation    string
	ProposedBy  string // SHARER or BENEFICIARY
	Fate        Fate
	Quota       money.Yuan
}

// CrossProvince reports whether sharer and beneficiary live in different provinces.
func (p *Population) CrossProvince(l Link) bool {
	return p.People[l.Sharer].Province != p.People[l.Beneficiary].Province
}

// Population is the whole synthetic country.
type Population struct {
	Seed   uint64
	People []Person
	Links  []Link
}

// Config sizes the population.
type Config struct {
	People int    // total people; at least 4 per pooling region are made regardless
	Seed   uint64 // same seed, same population
	// Year is the reference year for ages (the demo month's year).
	Year int
}

// weight gives provinces a rough population weight so big provinces get more people.
func weight(code string) int {
	switch code {
	case "440000", "410000", "370000", "510000", "320000", "130000", "430000", "340000", "420000", "330000":
		return 6
	case "450000", "530000", "360000", "210000", "350000", "610000", "230000", "140000", "520000", "500000", "220000":
		return 4
	case "110000", "310000", "120000", "620000", "150000", "650000":
		return 3
	}
	return 1
}

// Generate builds a population deterministically from cfg.Seed.
func Generate(cfg Config) *Population {
	if cfg.Year == 0 {
		cfg.Year = 2026
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
	provs := region.Provinces()
	regionsTotal := 0
	wsum := 0
	for _, p := range provs {
		regionsTotal += len(p.Regions)
		wsum += weight(p.Code)
	}
	minPeople := regionsTotal * 4
	if cfg.People < minPeople {
		cfg.People = minPeople
	}
	pop := &Population{Seed: cfg.Seed}
	serial := map[string]int{}
	extra := cfg.People - minPeople
	household := 0
	for _, p := range provs {
		n := len(p.Regions)*4 + extra*weight(p.Code)/wsum
		for i := 0; i < n; i++ {
			reg := p.Regions[i%len(p.Regions)]
			person := newPerson(rng, cfg.Year, p.Code, reg.Code, serial)
			person.Index = len(pop.People)
			person.Household = household
			if i%3 == 2 {
				household++
			}
			pop.People = append(pop.People, person)
		}
		household++
	}
	pop.Links = makeLinks(rng, pop)
	return pop
}

func newPerson(rng *rand.Rand, year int, prov, reg string, serial map[string]int) Person {
	age := 18 + rng.IntN(70)
	p := Person{Province: prov, Region: reg, BirthYear: year - age, Insured: true}
	switch r := rng.IntN(100); {
	case r < 68:
		p.Scheme, p.HasAccount = SchemeEmployee, true
	case r < 73:
		p.Scheme, p.HasAccount = SchemeEmployee, false // 单建统筹: no personal account
	case r < 97:
		p.Scheme = SchemeResident
	default:
		p.Scheme, p.Insured = SchemeResident, false // not yet insured: premiums may be paid for them
	}
	p.Retired = age >= 60 && p.Scheme == SchemeEmployee
	if p.HasAccount {
		// Between 800 and 12,000 yuan in the account, in whole fen.
		p.Credit = money.FromFen(int64(80_000 + rng.IntN(1_120_000)))
	}
	serial[reg]++
	p.IDNumber = MakeID(reg, p.BirthYear, 1+rng.IntN(12), 1+rng.IntN(28), serial[reg])
	return p
}

// MakeID builds an 18-character GB 11643 ID number: the region's first four
// digits plus "01" as address code, birth date, a 3-digit sequence, and the
// ISO 7064 MOD 11-2 check character.
//
// 新疆生产建设兵团 (660000) has pooling-region codes of its own in regions.csv,
// but its people's ID numbers carry Xinjiang address codes (6590xx), so those
// are used for its members.
func MakeID(regionCode string, y, m, d, seq int) string {
	prefix := regionCode[:4]
	if regionCode[:2] == "66" {
		prefix = "6590"
	}
	base := fmt.Sprintf("%s01%04d%02d%02d%03d", prefix, y, m, d, seq%1000)
	return base + string(checkChar(base))
}

func checkChar(first17 string) byte {
	weights := [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
	sum := 0
	for i := 0; i < 17; i++ {
		sum += int(first17[i]-'0') * weights[i]
	}
	return "10X98765432"[sum%11]
}

// makeLinks creates family sharing relationships: migrants in receiving
// provinces sharing with parents and children back home, retired employees in
// sending provinces sharing with children who moved, and same-province families.
func makeLinks(rng *rand.Rand, pop *Population) []Link {
	byProv := map[string][]int{}
	for _, p := range pop.People {
		byProv[p.Province] = append(byProv[p.Province], p.Index)
	}
	isRecv := map[string]bool{}
	for _, c := range Receiving {
		isRecv[c] = true
	}
	isSend := map[string]bool{}
	for _, c := range Sending {
		isSend[c] = true
	}
	pick := func(codes []string) int {
		list := byProv[codes[rng.IntN(len(codes))]]
		return list[rng.IntN(len(list))]
	}
	type pair struct{ a, b int }
	seen := map[pair]bool{}
	var links []Link
	add := func(sharer, ben int, rel string) {
		if sharer == ben || seen[pair{sharer, ben}] {
			return
		}
		s := pop.People[sharer]
		if !s.HasAccount { // only account holders can share (R1)
			return
		}
		seen[pair{sharer, ben}] = true
		l := Link{Index: len(links), Sharer: sharer, Beneficiary: ben, Relation: rel}
		if rng.IntN(3) == 0 {
			l.ProposedBy = "BENEFICIARY"
		} else {
			l.ProposedBy = "SHARER"
		}
		switch r := rng.IntN(100); {
		case r < 74:
			l.Fate = FateActive
		case r < 80:
			l.Fate = FateDeclined
		case r < 85:
			l.Fate = FateExpired
		case r < 93:
			l.Fate = FateDissolveVoluntary
		default:
			l.Fate = FateDissolveAuto
		}
		// Quota: 200 to 3,000 yuan, never more than the sharer's credit.
		q := money.FromFen(int64(20_000 + rng.IntN(280_000)))
		l.Quota = q.Min(s.Credit.MulRatio(1, 2))
		links = append(links, l)
	}
	for _, p := range pop.People {
		switch {
		case isRecv[p.Province] && p.HasAccount && !p.Retired:
			// A migrant worker: parents and a child back in a sending province.
			add(p.Index, pick(Sending), RelParent)
			if rng.IntN(2) == 0 {
				add(p.Index, pick(Sending), RelChild)
			}
		case isSend[p.Province] && p.Retired:
			// A retired employee sharing with a child who moved away.
			add(p.Index, pick(Receiving), RelChild)
		case p.HasAccount && rng.IntN(4) == 0:
			// Same-province family sharing (settled inside the province).
			list := byProv[p.Province]
			add(p.Index, list[rng.IntN(len(list))], []string{RelSpouse, RelSibling, RelGrandparent, RelGrandchild}[rng.IntN(4)])
		case p.HasAccount && rng.IntN(10) == 0:
			// Other cross-province families.
			add(p.Index, pick(region.ProvinceCodes()[:]), RelSibling)
		}
	}
	// Some mutual pairs (互建, R3): the beneficiary shares back.
	n := len(links)
	for i := 0; i < n; i += 17 {
		l := links[i]
		if pop.People[l.Beneficiary].HasAccount {
			add(l.Beneficiary, l.Sharer, inverse(l.Relation))
		}
	}
	sort.SliceStable(links, func(i, j int) bool { return links[i].Index < links[j].Index })
	return links
}

func inverse(rel string) string {
	switch rel {
	case RelParent:
		return RelChild
	case RelChild:
		return RelParent
	case RelGrandparent:
		return RelGrandchild
	case RelGrandchild:
		return RelGrandparent
	}
	return rel
}

// Counts summarises a population for the demo's progress lines.
func (p *Population) Counts() (people, links, cross int) {
	for _, l := range p.Links {
		if p.CrossProvince(l) {
			cross++
		}
	}
	return len(p.People), len(p.Links), cross
}

// MonthInstant picks an instant in period m deterministically: day 1 to the
// last day, 08:00 to 20:00 Asia/Shanghai, whole seconds.
func MonthInstant(m region.Period, rng *rand.Rand) time.Time {
	days := int(m.End().Sub(m.Start()).Hours() / 24)
	d := rng.IntN(days)
	sec := 8*3600 + rng.IntN(12*3600)
	return m.Start().Add(time.Duration(d)*24*time.Hour + time.Duration(sec)*time.Second)
}
