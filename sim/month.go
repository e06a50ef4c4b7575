package sim

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
)

// Federation is what the month driver needs from the running system: public
// gRPC clients (each province's own certificate, the operator's certificate)
// and process control for the fault drills. The demo and e2e implement it with
// real processes.
type Federation interface {
	Province(code string) provincev1.ProvinceServiceClient
	Statement(code string) clearingv1.StatementServiceClient
	Admin() clearingv1.AdminServiceClient
	KillNode(ctx context.Context, code string) error
	RestartNode(ctx context.Context, code string) error
	// RestartClearing stops the clearing service gracefully and starts it
	// again with its clock starting at clockStart.
	RestartClearing(ctx context.Context, clockStart time.Time) error
}

// ProposalExpiry is the nodes' proposal expiry a month of this many proposed
// relationships needs. RunMonth answers every proposal about one propose-round
// after it was made (the answers go in the same order as the proposals), so
// the expiry must outlast that round, with room to spare at the slowest rate
// seen on a loaded 2-core machine (~100 proposals/s), while the few proposals
// never answered still expire during the month.
func ProposalExpiry(links int) time.Duration {
	return 15*time.Second + time.Duration(links)*10*time.Millisecond
}

// MonthConfig drives one simulated month.
type MonthConfig struct {
	Period  region.Period
	Usages  int
	Seed    uint64
	Workers int // concurrent request streams; default 32
	// ProposalExpiry is the nodes' configured proposal expiry; the driver
	// waits (bounded) for the expired fate to be swept.
	ProposalExpiry time.Duration
	// KillNode is the province whose node is SIGKILLed mid-month.
	KillNode string
	// SmallDeposit is the province whose prepayment deposit is made too small.
	SmallDeposit string
	// DisputeProvince disputes one item of its statement.
	DisputeProvince string
	// CutOffGrace must equal the clearing service's --cutoff-grace.
	CutOffGrace time.Duration
	Progress    func(p Progress)
}

// Progress is one progress report of a phase.
type Progress struct {
	Phase   string
	Done    int64
	Total   int64
	Rate    float64 // per second
	ETA     time.Duration
	Elapsed time.Duration
	Final   bool
}

// Summary is what a settlement operator wants to know about the month; it is
// printed and written to summary.json.
type Summary struct {
	Period        string `json:"period"`
	Provinces     int    `json:"provinces"`
	People        int    `json:"people"`
	Relationships struct {
		Proposed           int64 `json:"proposed"`
		Active             int64 `json:"active"`
		Declined           int64 `json:"declined"`
		Expired            int64 `json:"expired"`
		DissolvedVoluntary int64 `json:"dissolved_voluntary"`
		DissolvedAuto      int64 `json:"dissolved_auto"`
		CrossProvince      int64 `json:"cross_province"`
	} `json:"relationships"`
	Usages struct {
		CrossProvince    int64  `json:"cross_province"`
		Local            int64  `json:"local"`
		Reversals        int64  `json:"reversals"`
		DuplicateRetries int64  `json:"duplicate_retries"`
		Late             int64  `json:"late"`
		RefusedOverQuota int64  `json:"refused_over_quota"`
		Approved         int64  `json:"approved"`
		AmountApproved   string `json:"amount_approved"`
	} `json:"usages"`
	Restarts struct {
		Node     int `json:"node"`
		Clearing int `json:"clearing"`
	} `json:"restarts"`
	Gross             string             `json:"gross"`
	NettingEfficiency string             `json:"netting_efficiency"`
	Positions         []PositionSummary  `json:"positions"`
	Prepay            PrepaySummary      `json:"prepay"`
	Statements        map[string]int     `json:"statements"`
	Exceptions        int64              `json:"reconciliation_exceptions"`
	Verify            string             `json:"verify"`
	ExportDir         string             `json:"export_dir,omitempty"`
	JournalHead       string             `json:"journal_head"`
	Seconds           map[string]float64 `json:"seconds"`
	PhaseOrder        []string           `json:"phase_order"`
}

// PositionSummary is one province's net position.
type PositionSummary struct {
	Province   string `json:"province"`
	Name       string `json:"name"`
	Receivable string `json:"receivable"`
	Payable    string `json:"payable"`
	Net        string `json:"net"`
}

// PrepaySummary sums the prepayment draws.
type PrepaySummary struct {
	Drawn      string   `json:"drawn"`
	Warnings   int      `json:"warnings"`
	Shortfall  string   `json:"shortfall"`
	WarningOf  []string `json:"warning_provinces"`
	Shortfalls []string `json:"shortfall_provinces"`
}

type month struct {
	fed  Federation
	pop  *Population
	cfg  MonthConfig
	plan *Plan
	sum  *Summary
	rels []string // relationship id per link index ("" if never proposed)

	approved       atomic.Int64
	approvedFen    atomic.Int64
	cross, local   atomic.Int64
	reversals      atomic.Int64
	retries        atomic.Int64
	refused        atomic.Int64
	late           atomic.Int64
	consented      atomic.Int64
	crossRev       atomic.Int64 // reversals of cross-province usages in the month
	disputeUsageID string
	mu             sync.Mutex
}

// RunMonth drives a whole month through the federation and returns the
// summary up to (not including) export and verification, which the caller
// runs with the clearing binary.
func RunMonth(ctx context.Context, fed Federation, pop *Population, cfg MonthConfig) (*Summary, error) {
	if cfg.Workers == 0 {
		cfg.Workers = 32
	}
	m := &month{fed: fed, pop: pop, cfg: cfg, sum: &Summary{Seconds: map[string]float64{}, Statements: map[string]int{}}}
	m.plan = PlanUsages(pop, cfg.Period, cfg.Usages, cfg.Seed)
	m.rels = make([]string, len(pop.Links))
	m.sum.Period = cfg.Period.String()
	m.sum.Provinces = len(region.ProvinceCodes())
	m.sum.People = len(pop.People)
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"register_people", m.registerPeople},
		{"credit_accounts", m.creditAccounts},
		{"relationships", m.relationships},
		{"quotas", m.quotas},
		{"usage_first_half", func(ctx context.Context) error { return m.usage(ctx, 0) }},
		{"node_kill_restart", m.killNode},
		{"usage_second_half", func(ctx context.Context) error { return m.usage(ctx, 1) }},
		// Expiry before dissolutions: an enrollment change dissolves a person's
		// pending proposals too (R6), which would take them from the sweeper.
		{"expiry", m.waitExpired},
		{"dissolutions", m.dissolutions},
		{"reporting_drain", m.drain},
		{"clearing_restart_past_cutoff", m.restartClearing},
		{"late_records", m.lateRecords},
		{"prepay_funding", m.fundPrepay},
		{"close", m.close},
		{"settle", m.settle},
		{"statements", m.statements},
	}
	for _, st := range steps {
		start := time.Now()
		if err := st.fn(ctx); err != nil {
			return m.sum, fmt.Errorf("%s: %w", st.name, err)
		}
		m.sum.Seconds[st.name] = time.Since(start).Seconds()
		m.sum.PhaseOrder = append(m.sum.PhaseOrder, st.name)
	}
	r := &m.sum.Relationships
	r.Active = m.consented.Load() - r.DissolvedVoluntary - r.DissolvedAuto
	m.sum.Usages.Approved = m.approved.Load()
	m.sum.Usages.AmountApproved = money.FromFen(m.approvedFen.Load()).String()
	m.sum.Usages.CrossProvince = m.cross.Load()
	m.sum.Usages.Local = m.local.Load()
	m.sum.Usages.Reversals = m.reversals.Load()
	m.sum.Usages.DuplicateRetries = m.retries.Load()
	m.sum.Usages.RefusedOverQuota = m.refused.Load()
	m.sum.Usages.Late = m.late.Load()
	return m.sum, nil
}

// retryable reports whether a call may be repeated with the same key: the
// server was unreachable or too slow; the request is idempotent.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return true
	}
	return false
}

// call runs f until it succeeds or fails with a non-retryable error, for at
// most two minutes (a node restart takes seconds). Backoff doubles to 1s.
func call[T any](ctx context.Context, f func(ctx context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(2 * time.Minute)
	backoff := 20 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		v, err := f(cctx)
		cancel()
		if err == nil || !retryable(err) || time.Now().After(deadline) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(backoff):
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}

// parallel runs fn(i) for i in [0,n) on the configured number of workers and
// reports progress; the first error stops the phase.
func (m *month) parallel(ctx context.Context, phase string, n int, fn func(ctx context.Context, i int) error) error {
	var done atomic.Int64
	return m.parallelCounted(ctx, phase, n, int64(n), &done, func(ctx context.Context, i int) error {
		if err := fn(ctx, i); err != nil {
			return err
		}
		done.Add(1)
		return nil
	})
}

// parallelCounted is parallel with progress in units of fn's own: fn adds
// to done as it goes, up to total.
func (m *month) parallelCounted(ctx context.Context, phase string, n int, total int64, done *atomic.Int64,
	fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				m.report(phase, done.Load(), total, start, false)
			}
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < m.cfg.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	m.report(phase, done.Load(), total, start, true)
	return firstErr
}

func (m *month) report(phase string, done, total int64, start time.Time, final bool) {
	if m.cfg.Progress == nil {
		return
	}
	el := time.Since(start)
	p := Progress{Phase: phase, Done: done, Total: total, Elapsed: el, Final: final}
	if el > 0 {
		p.Rate = float64(done) / el.Seconds()
	}
	if p.Rate > 0 && total > done {
		p.ETA = time.Duration(float64(total-done) / p.Rate * float64(time.Second))
	}
	m.cfg.Progress(p)
}

func scheme(p Person) provincev1.Scheme {
	if p.Scheme == SchemeEmployee {
		return provincev1.Scheme_SCHEME_EMPLOYEE
	}
	return provincev1.Scheme_SCHEME_RESIDENT
}

func mode(p Person) provincev1.AccountMode {
	if p.HasAccount {
		return provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT
	}
	return provincev1.AccountMode_ACCOUNT_MODE_POOLING_ONLY
}

func (m *month) registerPeople(ctx context.Context) error {
	return m.parallel(ctx, "register people", len(m.pop.People), func(ctx context.Context, i int) error {
		p := m.pop.People[i]
		_, err := call(ctx, func(ctx context.Context) (*provincev1.RegisterPersonResponse, error) {
			return m.fed.Province(p.Province).RegisterPerson(ctx, &provincev1.RegisterPersonRequest{
				IdNumber: p.IDNumber, Scheme: scheme(p), Mode: mode(p),
				Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: p.Region, Insured: p.Insured,
			})
		})
		if err != nil {
			return fmt.Errorf("register person %d in %s: %w", i, p.Province, err)
		}
		return nil
	})
}

func (m *month) creditAccounts(ctx context.Context) error {
	var holders []int
	for _, p := range m.pop.People {
		if p.HasAccount {
			holders = append(holders, p.Index)
		}
	}
	return m.parallel(ctx, "credit accounts", len(holders), func(ctx context.Context, i int) error {
		p := m.pop.People[holders[i]]
		_, err := call(ctx, func(ctx context.Context) (*provincev1.Account, error) {
			return m.fed.Province(p.Province).CreditAccount(ctx, &provincev1.CreditAccountRequest{
				Person:    &provincev1.PersonId{Id: &provincev1.PersonId_IdNumber{IdNumber: p.IDNumber}},
				Amount:    p.Credit.String(),
				CreditKey: fmt.Sprintf("C%s-%06d", m.cfg.Period, p.Index),
			})
		})
		if err != nil {
			return fmt.Errorf("credit person %d: %w", p.Index, err)
		}
		return nil
	})
}

var relTypes = map[string]provincev1.RelationType{
	RelSpouse: provincev1.RelationType_RELATION_TYPE_SPOUSE, RelParent: provincev1.RelationType_RELATION_TYPE_PARENT,
	RelChild: provincev1.RelationType_RELATION_TYPE_CHILD, RelSibling: provincev1.RelationType_RELATION_TYPE_SIBLING,
	RelGrandparent: provincev1.RelationType_RELATION_TYPE_GRANDPARENT_PATERNAL,
	RelGrandchild:  provincev1.RelationType_RELATION_TYPE_GRANDCHILD_PATERNAL,
}

func party(p Person) *provincev1.PartyRef {
	return &provincev1.PartyRef{ProvinceCode: p.Province, Id: &provincev1.PartyRef_IdNumber{IdNumber: p.IDNumber}}
}

// relationships proposes every link at the proposing side's node, then the
// other side consents or declines at its own node; expired ones are left alone.
// relationships proposes every link, then answers the proposals. The two
// rounds are separate, as people answer a proposal some time after it appears
// in their app: by the time a cross-province answer is sent, the authority's
// relay has long delivered the proposal to the other node, so the round runs
// at the nodes' throughput instead of waiting out each relay hop in turn.
func (m *month) relationships(ctx context.Context) error {
	err := m.parallel(ctx, "propose relationships", len(m.pop.Links), func(ctx context.Context, i int) error {
		l := m.pop.Links[i]
		s, b := m.pop.People[l.Sharer], m.pop.People[l.Beneficiary]
		proposer, by := s, provincev1.Side_SIDE_SHARER
		if l.ProposedBy == "BENEFICIARY" {
			proposer, by = b, provincev1.Side_SIDE_BENEFICIARY
		}
		rel, err := call(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
			return m.fed.Province(proposer.Province).ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
				Sharer: party(s), Beneficiary: party(b), Relation: relTypes[l.Relation], ProposedBy: by,
				ProposalKey: fmt.Sprintf("P%s-%06d", m.cfg.Period, i),
			})
		})
		if err != nil {
			return fmt.Errorf("propose link %d: %w", i, err)
		}
		m.rels[i] = rel.GetRelationshipId()
		atomic.AddInt64(&m.sum.Relationships.Proposed, 1)
		if m.pop.CrossProvince(l) {
			atomic.AddInt64(&m.sum.Relationships.CrossProvince, 1)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.parallel(ctx, "answer proposals", len(m.pop.Links), func(ctx context.Context, i int) error {
		l := m.pop.Links[i]
		if l.Fate == FateExpired {
			return nil // never answered: the sweeper expires it
		}
		s, b := m.pop.People[l.Sharer], m.pop.People[l.Beneficiary]
		proposer, other, otherSide := s, b, provincev1.Side_SIDE_BENEFICIARY
		if l.ProposedBy == "BENEFICIARY" {
			proposer, other, otherSide = b, s, provincev1.Side_SIDE_SHARER
		}
		id := m.rels[i]
		cmd := &provincev1.RelationshipCommand{RelationshipId: id, By: otherSide, CommandKey: fmt.Sprintf("A%s-%06d", m.cfg.Period, i)}
		if other.Province != proposer.Province {
			// The other side answers once the proposal has reached its node
			// (the authority pushes it through the relay queue), as a person
			// answers a proposal that has appeared in their app.
			if err := m.waitVisible(ctx, other.Province, id); err != nil {
				return fmt.Errorf("link %d: %w", i, err)
			}
		}
		var err error
		switch l.Fate {
		case FateDeclined:
			_, err = call(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
				return m.fed.Province(other.Province).DeclineRelationship(ctx, cmd)
			})
			if err == nil {
				atomic.AddInt64(&m.sum.Relationships.Declined, 1)
			}
		default:
			_, err = call(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
				return m.fed.Province(other.Province).ConsentRelationship(ctx, cmd)
			})
			if err == nil {
				m.consented.Add(1)
			}
		}
		if err != nil {
			return fmt.Errorf("answer link %d: %w", i, err)
		}
		return nil
	})
}

// waitVisible polls a node until it holds relationship id (bounded: one minute).
func (m *month) waitVisible(ctx context.Context, province, id string) error {
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := call(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
			return m.fed.Province(province).GetRelationship(ctx, &provincev1.GetRelationshipRequest{RelationshipId: id})
		})
		if err == nil {
			return nil
		}
		if status.Code(err) != codes.NotFound {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relationship %s did not reach province %s within a minute", id, province)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// quotas earmarks each active link's quota at the sharer's node, one sharer at
// a time so that the available balance is consumed in a fixed order.
func (m *month) quotas(ctx context.Context) error {
	bySharer := map[int][]int{}
	var sharers []int
	for _, l := range m.pop.Links {
		if l.Fate == FateExpired || l.Fate == FateDeclined {
			continue
		}
		if _, ok := bySharer[l.Sharer]; !ok {
			sharers = append(sharers, l.Sharer)
		}
		bySharer[l.Sharer] = append(bySharer[l.Sharer], l.Index)
	}
	sort.Ints(sharers)
	return m.parallel(ctx, "earmark quotas", len(sharers), func(ctx context.Context, i int) error {
		s := m.pop.People[sharers[i]]
		for _, li := range bySharer[sharers[i]] {
			l := m.pop.Links[li]
			_, err := call(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
				return m.fed.Province(s.Province).SetQuota(ctx, &provincev1.SetQuotaRequest{
					RelationshipId: m.rels[li], Quota: l.Quota.String(), CommandKey: fmt.Sprintf("Q%s-%06d", m.cfg.Period, li),
				})
			})
			if status.Code(err) == codes.FailedPrecondition || status.Code(err) == codes.ResourceExhausted {
				continue // not enough available balance: the link goes without quota
			}
			if err != nil {
				return fmt.Errorf("quota link %d: %w", li, err)
			}
		}
		return nil
	})
}

var kinds = map[string]provincev1.UsageKind{
	KindMedical: provincev1.UsageKind_USAGE_KIND_MEDICAL, KindPharmacy: provincev1.UsageKind_USAGE_KIND_PHARMACY,
	KindResidentPremium: provincev1.UsageKind_USAGE_KIND_RESIDENT_PREMIUM, KindLTCPremium: provincev1.UsageKind_USAGE_KIND_LTC_PREMIUM,
}

// usage runs one half of the planned links (half 0: even positions, 1: odd),
// every link's spends in order at the beneficiary's node. Progress counts
// spends (retries and reversals ride along with theirs).
func (m *month) usage(ctx context.Context, half int) error {
	var links []int
	var total int64
	for i, li := range m.plan.Links {
		if i%2 == half {
			links = append(links, li)
			for _, sp := range m.plan.ByLink[li] {
				if !sp.Late {
					total++
				}
			}
		}
	}
	var done atomic.Int64
	return m.parallelCounted(ctx, fmt.Sprintf("usage (part %d of 2)", half+1), len(links), total, &done,
		func(ctx context.Context, i int) error {
			for _, sp := range m.plan.ByLink[links[i]] {
				if sp.Late {
					continue
				}
				if err := m.spend(ctx, sp); err != nil {
					return err
				}
				done.Add(1)
			}
			return nil
		})
}

func (m *month) spend(ctx context.Context, sp Spend) error {
	l := m.pop.Links[sp.Link]
	b := m.pop.People[l.Beneficiary]
	node := m.fed.Province(b.Province)
	req := &provincev1.SpendRequest{
		UsageKey: sp.Key, RelationshipId: m.rels[sp.Link], Kind: kinds[sp.Kind], Amount: sp.Amount.String(),
		PayeeRegionCode: b.Region, OccurredAt: timestamppb.New(sp.OccurredAt),
	}
	resp, err := call(ctx, func(ctx context.Context) (*provincev1.SpendResponse, error) { return node.Spend(ctx, req) })
	switch status.Code(err) {
	case codes.OK:
	case codes.ResourceExhausted, codes.FailedPrecondition:
		m.refused.Add(1) // over quota (or no quota left to earmark): refused, nothing moved
		return nil
	default:
		return fmt.Errorf("spend %s: %w", sp.Key, err)
	}
	m.approved.Add(1)
	m.approvedFen.Add(sp.Amount.Fen())
	if resp.GetCrossProvince() {
		m.cross.Add(1)
		m.mu.Lock()
		if m.disputeUsageID == "" && b.Province == m.cfg.DisputeProvince {
			m.disputeUsageID = sp.Key
		}
		m.mu.Unlock()
	} else {
		m.local.Add(1)
	}
	if sp.Late {
		m.late.Add(1)
	}
	if sp.Retry {
		again, err := call(ctx, func(ctx context.Context) (*provincev1.SpendResponse, error) { return node.Spend(ctx, req) })
		if err != nil {
			return fmt.Errorf("retry spend %s: %w", sp.Key, err)
		}
		if !again.GetReplayed() || again.GetAmount() != resp.GetAmount() {
			return fmt.Errorf("retry of %s was not replayed with the first answer (replayed=%v)", sp.Key, again.GetReplayed())
		}
		m.retries.Add(1)
	}
	if sp.Reversal.IsPositive() {
		_, err := call(ctx, func(ctx context.Context) (*provincev1.ReverseResponse, error) {
			return node.Reverse(ctx, &provincev1.ReverseRequest{
				ReversalKey: sp.ReversalKey, UsageKey: sp.Key, Amount: sp.Reversal.String(),
				OccurredAt: timestamppb.New(sp.OccurredAt.Add(time.Hour)),
			})
		})
		if err != nil {
			return fmt.Errorf("reverse %s: %w", sp.Key, err)
		}
		m.reversals.Add(1)
		if resp.GetCrossProvince() && !sp.Late {
			m.crossRev.Add(1)
		}
	}
	return nil
}

func (m *month) killNode(ctx context.Context) error {
	if m.cfg.KillNode == "" {
		return nil
	}
	if err := m.fed.KillNode(ctx, m.cfg.KillNode); err != nil {
		return err
	}
	if err := m.fed.RestartNode(ctx, m.cfg.KillNode); err != nil {
		return err
	}
	m.sum.Restarts.Node++
	return nil
}

// dissolutions: voluntary ones by a party at its node; automatic ones by an
// enrollment change of the beneficiary or the sharer (R6).
func (m *month) dissolutions(ctx context.Context) error {
	var todo []int
	for _, l := range m.pop.Links {
		if l.Fate == FateDissolveVoluntary || l.Fate == FateDissolveAuto {
			todo = append(todo, l.Index)
		}
	}
	changed := sync.Map{}
	return m.parallel(ctx, "dissolutions", len(todo), func(ctx context.Context, i int) error {
		l := m.pop.Links[todo[i]]
		if l.Fate == FateDissolveVoluntary {
			side, who := provincev1.Side_SIDE_SHARER, m.pop.People[l.Sharer]
			if l.Index%2 == 1 {
				side, who = provincev1.Side_SIDE_BENEFICIARY, m.pop.People[l.Beneficiary]
			}
			rel, err := call(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
				return m.fed.Province(who.Province).DissolveRelationship(ctx, &provincev1.RelationshipCommand{
					RelationshipId: m.rels[l.Index], By: side, CommandKey: fmt.Sprintf("D%s-%06d", m.cfg.Period, l.Index),
				})
			})
			if status.Code(err) == codes.FailedPrecondition {
				return nil // already dissolved automatically by another link's enrollment change
			}
			if err != nil {
				return fmt.Errorf("dissolve link %d: %w", l.Index, err)
			}
			if rel.GetStatus() == provincev1.RelationshipStatus_RELATIONSHIP_STATUS_DISSOLVED {
				atomic.AddInt64(&m.sum.Relationships.DissolvedVoluntary, 1)
			}
			return nil
		}
		// The beneficiary is suspended (e.g. stops paying in); one change per person.
		b := m.pop.People[l.Beneficiary]
		if _, dup := changed.LoadOrStore(b.Index, true); dup {
			return nil
		}
		resp, err := call(ctx, func(ctx context.Context) (*provincev1.ChangeEnrollmentResponse, error) {
			return m.fed.Province(b.Province).ChangeEnrollment(ctx, &provincev1.ChangeEnrollmentRequest{
				Person:      &provincev1.PersonId{Id: &provincev1.PersonId_IdNumber{IdNumber: b.IDNumber}},
				Change:      provincev1.EnrollmentChange_ENROLLMENT_CHANGE_SUSPENSION,
				ChangeKey:   fmt.Sprintf("E%s-%06d", m.cfg.Period, b.Index),
				EffectiveAt: timestamppb.New(m.cfg.Period.End().Add(-time.Hour)),
			})
		})
		if err != nil {
			return fmt.Errorf("enrollment change person %d: %w", b.Index, err)
		}
		atomic.AddInt64(&m.sum.Relationships.DissolvedAuto, int64(len(resp.GetDissolved())))
		return nil
	})
}

// waitExpired polls the proposing node until every unanswered proposal has
// been expired by its sweeper (bounded by twice the configured expiry).
func (m *month) waitExpired(ctx context.Context) error {
	var todo []int
	for _, l := range m.pop.Links {
		if l.Fate == FateExpired {
			todo = append(todo, l.Index)
		}
	}
	deadline := time.Now().Add(2*m.cfg.ProposalExpiry + 30*time.Second)
	return m.parallel(ctx, "proposal expiry", len(todo), func(ctx context.Context, i int) error {
		l := m.pop.Links[todo[i]]
		s := m.pop.People[l.Sharer]
		for {
			rel, err := call(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
				return m.fed.Province(s.Province).GetRelationship(ctx, &provincev1.GetRelationshipRequest{RelationshipId: m.rels[l.Index]})
			})
			if err != nil {
				return fmt.Errorf("get link %d: %w", l.Index, err)
			}
			if rel.GetStatus() == provincev1.RelationshipStatus_RELATIONSHIP_STATUS_EXPIRED {
				atomic.AddInt64(&m.sum.Relationships.Expired, 1)
				return nil
			}
			if rel.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING {
				return fmt.Errorf("link %d: unanswered proposal became %s", l.Index, rel.GetStatus())
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("link %d: proposal not expired by the sweeper in time", l.Index)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
	})
}

// drain waits until the clearing service holds every cross-province usage and
// reversal the month produced (both sides reported), bounded.
func (m *month) drain(ctx context.Context) error {
	want := m.cross.Load() + m.crossRev.Load()
	deadline := time.Now().Add(3 * time.Minute)
	start := time.Now()
	for {
		st, err := call(ctx, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
			return m.fed.Admin().GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: m.cfg.Period.String()})
		})
		if err != nil {
			return err
		}
		m.report("reporting drain", st.GetUsageCount(), want, start, false)
		if st.GetUsageCount() >= want && st.GetExceptionCount() == 0 {
			m.report("reporting drain", st.GetUsageCount(), want, start, true)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("clearing holds %d of %d cross-province records (%d one-sided) after 3 minutes", st.GetUsageCount(), want, st.GetExceptionCount())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (m *month) restartClearing(ctx context.Context) error {
	at := m.cfg.Period.CutOff(m.cfg.CutOffGrace).Add(time.Hour)
	if err := m.fed.RestartClearing(ctx, at); err != nil {
		return err
	}
	m.sum.Restarts.Clearing++
	return nil
}

// lateRecords sends the spends planned to arrive after the cut-off.
func (m *month) lateRecords(ctx context.Context) error {
	var late []Spend
	for _, li := range m.plan.Links {
		for _, sp := range m.plan.ByLink[li] {
			if sp.Late {
				late = append(late, sp)
			}
		}
	}
	return m.parallel(ctx, "late records", len(late), func(ctx context.Context, i int) error {
		return m.spend(ctx, late[i])
	})
}

// fundPrepay gives every province a deposit of about two months of its
// planned payable, and one province a deposit far too small.
func (m *month) fundPrepay(ctx context.Context) error {
	payable := map[string]int64{}
	for _, li := range m.plan.Links {
		l := m.pop.Links[li]
		if !m.pop.CrossProvince(l) {
			continue
		}
		for _, sp := range m.plan.ByLink[li] {
			payable[m.pop.People[l.Sharer].Province] += sp.Amount.Fen()
		}
	}
	codes := region.ProvinceCodes()
	// One at a time, in code order: the funding entries are chained in the
	// clearing journal, whose head must be the same in every run with one seed.
	saved := m.cfg.Workers
	m.cfg.Workers = 1
	defer func() { m.cfg.Workers = saved }()
	return m.parallel(ctx, "prepay funding", len(codes), func(ctx context.Context, i int) error {
		code := codes[i]
		amount := money.FromFen(2*payable[code] + 1_000_000) // two months' volume + 10,000 yuan
		if code == m.cfg.SmallDeposit {
			amount = money.FromFen(payable[code]/10 + 100)
		}
		_, err := call(ctx, func(ctx context.Context) (*clearingv1.PrepayAccount, error) {
			return m.fed.Admin().FundPrepay(ctx, &clearingv1.PrepayMovementRequest{
				ProvinceCode: code, Amount: amount.String(), MovementKey: fmt.Sprintf("F%s-%s", m.cfg.Period, code),
			})
		})
		return err
	})
}

func (m *month) close(ctx context.Context) error {
	st, err := call(ctx, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
		return m.fed.Admin().ClosePeriod(ctx, &clearingv1.PeriodRequest{Setlym: m.cfg.Period.String()})
	})
	if err != nil {
		return err
	}
	m.sum.Gross = st.GetGross()
	m.sum.NettingEfficiency = st.GetNettingEfficiency()
	m.sum.Exceptions = st.GetExceptionCount()
	return nil
}

func (m *month) settle(ctx context.Context) error {
	st, err := call(ctx, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
		return m.fed.Admin().SettlePeriod(ctx, &clearingv1.PeriodRequest{Setlym: m.cfg.Period.String()})
	})
	if err != nil {
		return err
	}
	m.sum.JournalHead = st.GetJournalHead()
	ps, err := call(ctx, func(ctx context.Context) (*clearingv1.PrepayStatus, error) {
		return m.fed.Admin().GetPrepayStatus(ctx, &clearingv1.GetPrepayStatusRequest{})
	})
	if err != nil {
		return err
	}
	_ = ps
	return nil
}

// statements: every province fetches its statement with its own certificate,
// checks it against what it knows, and confirms it; one province disputes an item.
func (m *month) statements(ctx context.Context) error {
	codes := region.ProvinceCodes()
	positions := make([]PositionSummary, len(codes))
	drawn, short := money.Zero, money.Zero
	var warnings, shortfalls []string
	err := m.parallel(ctx, "statements", len(codes), func(ctx context.Context, i int) error {
		code := codes[i]
		cl := m.fed.Statement(code)
		st, err := call(ctx, func(ctx context.Context) (*clearingv1.Statement, error) {
			return cl.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: m.cfg.Period.String()})
		})
		if err != nil {
			return fmt.Errorf("statement %s: %w", code, err)
		}
		if st.GetProvinceCode() != code {
			return fmt.Errorf("statement for %s names %s", code, st.GetProvinceCode())
		}
		positions[i] = PositionSummary{Province: code, Name: region.ProvinceName(code), Receivable: st.GetReceivable(), Payable: st.GetPayable(), Net: st.GetNet()}
		if pl := st.GetPrepay(); pl != nil {
			d, err1 := money.Parse(pl.GetDrawn())
			o, err2 := money.Parse(pl.GetOutstanding())
			if err := errors.Join(err1, err2); err != nil {
				return fmt.Errorf("statement %s prepay: %w", code, err)
			}
			m.mu.Lock()
			drawn = drawn.Add(d)
			short = short.Add(o)
			if pl.GetWarning() {
				warnings = append(warnings, code)
			}
			if o.IsPositive() {
				shortfalls = append(shortfalls, code)
			}
			m.mu.Unlock()
		}
		if code == m.cfg.DisputeProvince && m.disputeUsageID != "" {
			_, err = call(ctx, func(ctx context.Context) (*clearingv1.Statement, error) {
				return cl.DisputeStatement(ctx, &clearingv1.DisputeStatementRequest{
					Setlym: m.cfg.Period.String(), DisputeKey: "X" + m.cfg.Period.String() + code,
					Items: []*clearingv1.DisputedItem{{UsageId: m.disputeUsageID, ClaimedAmount: "0.01", Reason: "patient refunded at the counter; amount disputed"}},
				})
			})
			if err != nil {
				return fmt.Errorf("dispute %s: %w", code, err)
			}
			m.mu.Lock()
			m.sum.Statements["disputed"]++
			m.mu.Unlock()
			return nil
		}
		_, err = call(ctx, func(ctx context.Context) (*clearingv1.Statement, error) {
			return cl.ConfirmStatement(ctx, &clearingv1.ConfirmStatementRequest{Setlym: m.cfg.Period.String(), ConfirmKey: "K" + m.cfg.Period.String() + code})
		})
		if err != nil {
			return fmt.Errorf("confirm %s: %w", code, err)
		}
		m.mu.Lock()
		m.sum.Statements["confirmed"]++
		m.mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(positions, func(i, j int) bool {
		a, _ := money.Parse(positions[i].Net)
		b, _ := money.Parse(positions[j].Net)
		if c := a.Cmp(b); c != 0 {
			return c > 0
		}
		return positions[i].Province < positions[j].Province
	})
	sort.Strings(warnings)
	sort.Strings(shortfalls)
	m.sum.Positions = positions
	m.sum.Prepay = PrepaySummary{Drawn: drawn.String(), Warnings: len(warnings), Shortfall: short.String(), WarningOf: warnings, Shortfalls: shortfalls}
	return nil
}
