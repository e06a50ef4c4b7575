package provincedb_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"pgregory.net/rapid"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/sharing"
)

// TestPropertyModel drives random operation sequences against the store and
// against a small in-memory model of R1–R12 written independently of the
// sharing package's rule functions. After every step the database and the
// model agree on balances, quotas, statuses, usages and the journal's
// external accounts, and the conservation check passes.
//
// Each iteration gets its own database (a template clone), so that a failure
// shrinks to a sequence that fails on its own.
func TestPropertyModel(t *testing.T) {
	t.Parallel()
	outcomes = map[string]int{}
	rapid.Check(t, func(rt *rapid.T) {
		n := newNode(t, henan, newClock(), nil)
		defer n.db.Pool.Close() // the database itself is dropped when the test ends
		m := newModel(rt, n)
		outcomes["iterations"]++
		rt.Repeat(counted(map[string]func(*rapid.T){
			// Duplicated keys weight the actions that reach deep states.
			"establish":  m.establish,
			"establish2": m.establish,
			"spend2":     m.spend,
			"spend3":     m.spend,
			"reverse2":   m.reverse,
			"credit":     m.credit,
			"spendOwn":   m.spendOwn,
			"propose":    m.propose,
			"consent":    func(t *rapid.T) { m.answer(t, sharing.CommandConsent) },
			"decline":    func(t *rapid.T) { m.answer(t, sharing.CommandDecline) },
			"dissolve":   m.dissolve,
			"setQuota":   m.setQuota,
			"spend":      m.spend,
			"replay":     m.replay,
			"reverse":    m.reverse,
			"enroll":     m.enroll,
			"advance":    m.advance,
			"":           m.check,
		}))
	})
	// The sequences must reach the interesting states, or the property is vacuous.
	t.Logf("outcomes: %v", outcomes)
	for _, k := range []string{"spend ok", "spend refused", "debit ok", "reverse ok", "reverse refused", "replay ok", "dissolve ok", "enrollment dissolved", "set quota ok", "expired"} {
		if outcomes[k] == 0 {
			t.Errorf("no %q in any sequence", k)
		}
	}
}

// counted wraps each action to count how often it runs.
func counted(actions map[string]func(*rapid.T)) map[string]func(*rapid.T) {
	out := map[string]func(*rapid.T){}
	for name, f := range actions {
		if name == "" {
			out[name] = f
			continue
		}
		out[name] = func(t *rapid.T) { outcomes["run "+name]++; f(t) }
	}
	return out
}

// outcomes counts what the sequences did (rapid runs iterations one at a time).
var outcomes map[string]int

func count(what string, err error) {
	if err != nil {
		outcomes[what+" refused"]++
	} else {
		outcomes[what+" ok"]++
	}
}

type mPerson struct {
	ref   string
	e     sharing.Enrollment
	avail money.Yuan
}

func (p *mPerson) hasAccount() bool {
	return p.e.Scheme == sharing.SchemeEmployee && p.e.Mode == sharing.ModePooledWithAccount
}
func (p *mPerson) insured() bool { return p.e.Insured && p.e.Status == sharing.PersonActive }

type mRel struct {
	id                    string
	sharer, ben           int // indexes into persons; ben == remote for the Beijing beneficiary
	status                sharing.Status
	reason                sharing.DissolveReason
	by                    sharing.Side
	quota, used, returned money.Yuan
	expires               time.Time
}

func (r *mRel) live() bool {
	return r.status == sharing.StatusPending || r.status == sharing.StatusActive
}

type mUsage struct {
	req      sharing.UsageRequest
	rel      *mRel
	payer    bool // a Debit for a Beijing payee
	approved bool
	refusal  error
	first    sharing.UsageResult // the first answer
	reversed money.Yuan
}

const remote = -1

type model struct {
	n        *node
	svc      *sharing.Service
	clk      *clock
	persons  []*mPerson
	remote   string
	rels     []*mRel
	usages   []*mUsage
	credits  money.Yuan
	own      money.Yuan
	paid     map[sharing.Kind]money.Yuan
	due      money.Yuan
	baseline map[string]money.Yuan
}

func newModel(t *rapid.T, n *node) *model {
	clk := newClock()
	svc, err := sharing.NewService(n.store, sharing.Config{Province: henan, PersonKey: personKey, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	m := &model{n: n, svc: svc, clk: clk, paid: map[sharing.Kind]money.Yuan{}, baseline: map[string]money.Yuan{}}
	m.remote = fmt.Sprintf("%032x", keySeq.Add(1)<<20|0xbeef)
	enrollments := []sharing.Enrollment{employee(zhengzh), employee(luoyang), employee(zhengzh), resident(luoyang, false)}
	for _, e := range enrollments {
		seq := idSeq.Add(1)
		first17 := fmt.Sprintf("410102%s%03d", time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, int(seq/1000)).Format("20060102"), seq%1000)
		c, err := pii.CheckDigit(first17)
		if err != nil {
			t.Fatal(err)
		}
		p, err := svc.RegisterPerson(context.Background(), sharing.RegisterPersonRequest{IDNumber: first17 + string(c), Enrollment: e})
		if err != nil {
			t.Fatal(err)
		}
		m.persons = append(m.persons, &mPerson{ref: p.Person.Ref, e: e})
	}
	for _, a := range m.staticAccounts() {
		m.baseline[a] = m.balance(t, a)
	}
	return m
}

func (m *model) staticAccounts() []string { return sharing.StaticAccounts() }

func (m *model) balance(t *rapid.T, account string) money.Yuan {
	var b money.Yuan
	if err := m.n.db.Pool.QueryRow(context.Background(), `SELECT balance FROM accounts WHERE name = $1`, account).Scan(&b); err != nil {
		t.Fatalf("balance %s: %v", account, err)
	}
	return b
}

func amount(t *rapid.T, label string, maxFen int64) money.Yuan {
	return money.FromFen(rapid.Int64Range(1, maxFen).Draw(t, label))
}

// expect checks an operation's error against the model's prediction.
func expect(t *rapid.T, what string, err, want error) {
	if want == nil {
		if err != nil {
			t.Fatalf("%s: unexpected error %v", what, err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

func (m *model) credit(t *rapid.T) {
	m.doCredit(t, rapid.IntRange(0, len(m.persons)-1).Draw(t, "person"), amount(t, "amount", 50000))
}

func (m *model) doCredit(t *rapid.T, pi int, amt money.Yuan) {
	p := m.persons[pi]
	_, err := m.svc.Credit(context.Background(), sharing.MovementRequest{Key: key("credit"), PersonRef: p.ref, Amount: amt})
	var want error
	switch {
	case p.e.Status != sharing.PersonActive:
		want = sharing.ErrPersonInactive
	case !p.hasAccount():
		want = sharing.ErrNoPersonalAccount
	}
	expect(t, "credit", err, want)
	count("credit", want)
	if want == nil {
		p.avail = p.avail.Add(amt)
		m.credits = m.credits.Add(amt)
	}
}

func (m *model) spendOwn(t *rapid.T) {
	p := m.persons[rapid.IntRange(0, len(m.persons)-1).Draw(t, "person")]
	amt := amount(t, "amount", 30000)
	_, err := m.svc.SpendOwn(context.Background(), sharing.MovementRequest{Key: key("own"), PersonRef: p.ref, Amount: amt})
	var want error
	switch {
	case p.e.Status != sharing.PersonActive:
		want = sharing.ErrPersonInactive
	case amt.GreaterThan(p.avail):
		want = sharing.ErrInsufficientBalance
	}
	expect(t, "spend own", err, want)
	if want == nil {
		p.avail = p.avail.Sub(amt)
		m.own = m.own.Add(amt)
	}
}

func (m *model) benProvince(r *mRel) string {
	if r.ben == remote {
		return beijing
	}
	return henan
}

func (m *model) benRef(i int) string {
	if i == remote {
		return m.remote
	}
	return m.persons[i].ref
}

func (m *model) propose(t *rapid.T) {
	si := rapid.IntRange(0, len(m.persons)-1).Draw(t, "sharer")
	bi := rapid.IntRange(remote, len(m.persons)-1).Draw(t, "beneficiary")
	by := rapid.SampledFrom([]sharing.Side{sharing.SideSharer, sharing.SideBeneficiary}).Draw(t, "by")
	rel := rapid.SampledFrom(sharing.Relations).Draw(t, "relation")
	m.doPropose(t, si, bi, by, rel)
}

func (m *model) doPropose(t *rapid.T, si, bi int, by sharing.Side, rel sharing.Relation) *mRel {
	sharer := m.persons[si]
	p := sharing.Proposal{Key: key("prop"), By: by, SharerRef: sharer.ref, SharerProvince: henan,
		BeneficiaryRef: m.benRef(bi), BeneficiaryProvince: henan, Relation: rel}
	if bi == remote {
		p.BeneficiaryProvince = beijing
		if by == sharing.SideBeneficiary {
			p.Origin = beijing // forwarded from the beneficiary's node
		}
	}
	got, err := m.svc.Propose(context.Background(), p)
	var want error
	switch {
	case bi == si:
		want = sharing.ErrSelfSharing
	case bi != remote && m.persons[bi].e.Status == sharing.PersonDeceased:
		want = sharing.ErrBeneficiaryUninsured
	case !sharer.hasAccount():
		want = sharing.ErrNoPersonalAccount
	case !sharer.insured():
		want = sharing.ErrSharerInactive
	default:
		for _, r := range m.rels {
			if r.sharer == si && r.ben == bi && r.live() {
				want = sharing.ErrDuplicateRelationship
			}
		}
	}
	expect(t, "propose", err, want)
	count("propose", want)
	if want != nil {
		return nil
	}
	origin := henan
	if p.Origin != "" {
		origin = p.Origin
	}
	if got.ID != sharing.RelationshipID(origin, p.Key) || got.Status != sharing.StatusPending {
		t.Fatalf("proposal answered %+v", got)
	}
	r := &mRel{id: got.ID, sharer: si, ben: bi, status: sharing.StatusPending, by: by,
		expires: m.clk.Now().Add(sharing.DefaultProposalTTL)}
	m.rels = append(m.rels, r)
	return r
}

// establish is the usual life of a relationship in one go: propose, consent
// by the other party, fund the sharer and earmark a quota. Every step is still
// predicted by the model.
func (m *model) establish(t *rapid.T) {
	// Sharers among the employees (0..2), the beneficiary anyone else
	// (rapid favours small draws, which would otherwise mostly pick 0 twice).
	si := rapid.IntRange(0, 2).Draw(t, "sharer")
	bi := (si+rapid.IntRange(1, len(m.persons)).Draw(t, "beneficiary offset"))%(len(m.persons)+1) - 1
	if bi == si {
		bi = remote
	}
	by := rapid.SampledFrom([]sharing.Side{sharing.SideSharer, sharing.SideBeneficiary}).Draw(t, "by")
	r := m.doPropose(t, si, bi, by, rapid.SampledFrom(sharing.Relations).Draw(t, "relation"))
	if r == nil {
		return
	}
	m.doAnswer(t, r, by.Other(), sharing.CommandConsent)
	m.doCredit(t, si, amount(t, "fund", 50000))
	m.doSetQuota(t, r, money.FromFen(rapid.Int64Range(0, m.persons[si].avail.Fen()).Draw(t, "quota")))
}

// pickRel draws a relationship, three times in four among those that
// satisfy prefer (when there are any), so that sequences reach deep states
// while still exercising the refusals.
func (m *model) pickRel(t *rapid.T, prefer func(*mRel) bool) *mRel {
	if len(m.rels) == 0 {
		t.Skip("no relationship yet")
	}
	var good []*mRel
	for _, r := range m.rels {
		if prefer(r) {
			good = append(good, r)
		}
	}
	if len(good) > 0 && rapid.IntRange(0, 3).Draw(t, "prefer") > 0 {
		return good[rapid.IntRange(0, len(good)-1).Draw(t, "preferred relationship")]
	}
	return m.rels[rapid.IntRange(0, len(m.rels)-1).Draw(t, "relationship")]
}

func isPending(r *mRel) bool { return r.status == sharing.StatusPending }
func isActive(r *mRel) bool  { return r.status == sharing.StatusActive }
func anyRel(*mRel) bool      { return true }

// origin is the province a party of r acts from.
func (m *model) origin(r *mRel, by sharing.Side) string {
	if by == sharing.SideBeneficiary {
		return m.benProvince(r)
	}
	return henan
}

func (m *model) answer(t *rapid.T, kind sharing.CommandKind) {
	r := m.pickRel(t, isPending)
	by := r.by.Other()
	if rapid.IntRange(0, 4).Draw(t, "wrong side") == 0 {
		by = r.by
	}
	m.doAnswer(t, r, by, kind)
}

func (m *model) doAnswer(t *rapid.T, r *mRel, by sharing.Side, kind sharing.CommandKind) {
	c := sharing.Command{Key: key("cmd"), Origin: m.origin(r, by), Kind: kind, RelationshipID: r.id, By: by}
	_, err := m.svc.Apply(context.Background(), c)
	var want error
	switch {
	case r.status != sharing.StatusPending, by == r.by:
		want = sharing.ErrBadTransition
	case !m.clk.Now().Before(r.expires):
		want = sharing.ErrExpired
	}
	expect(t, string(kind), err, want)
	count(string(kind), want)
	if want == nil {
		if kind == sharing.CommandConsent {
			r.status = sharing.StatusActive
		} else {
			r.status = sharing.StatusDeclined
		}
	}
}

// end dissolves r in the model, returning the unused quota to the sharer.
func (m *model) end(r *mRel, reason sharing.DissolveReason) {
	unused := r.quota.Sub(r.used)
	r.status, r.reason = sharing.StatusDissolved, reason
	r.returned = r.returned.Add(unused)
	m.persons[r.sharer].avail = m.persons[r.sharer].avail.Add(unused)
}

func (m *model) dissolve(t *rapid.T) {
	r := m.pickRel(t, anyRel)
	by := rapid.SampledFrom([]sharing.Side{sharing.SideSharer, sharing.SideBeneficiary}).Draw(t, "by")
	_, err := m.svc.Dissolve(context.Background(), sharing.DissolveRequest{Key: key("d"), Origin: m.origin(r, by), RelationshipID: r.id, By: by})
	var want error
	switch {
	case !r.live():
		want = sharing.ErrBadTransition
	case r.status == sharing.StatusPending && !m.clk.Now().Before(r.expires):
		want = sharing.ErrExpired
	}
	expect(t, "dissolve", err, want)
	count("dissolve", want)
	if want == nil {
		reason := sharing.ReasonVoluntarySharer
		if by == sharing.SideBeneficiary {
			reason = sharing.ReasonVoluntaryBeneficiary
		}
		m.end(r, reason)
	}
}

func (m *model) setQuota(t *rapid.T) {
	r := m.pickRel(t, isActive)
	sharer := m.persons[r.sharer]
	// Around the interesting bounds: below used, up to available and beyond.
	q := money.FromFen(rapid.Int64Range(max(0, r.used.Fen()-500), r.quota.Fen()+sharer.avail.Fen()+500).Draw(t, "quota"))
	m.doSetQuota(t, r, q)
}

func (m *model) doSetQuota(t *rapid.T, r *mRel, q money.Yuan) {
	sharer := m.persons[r.sharer]
	_, err := m.svc.SetQuota(context.Background(), sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.id, Quota: q})
	var want error
	switch {
	case r.status != sharing.StatusActive:
		want = sharing.ErrNotActive
	case q.LessThan(r.used):
		want = sharing.ErrBelowUsed
	case q.Sub(r.quota).GreaterThan(sharer.avail):
		want = sharing.ErrInsufficientBalance
	}
	expect(t, "set quota", err, want)
	count("set quota", want)
	if want == nil {
		sharer.avail = sharer.avail.Sub(q.Sub(r.quota))
		r.quota = q
	}
}

func (m *model) spend(t *rapid.T) {
	r := m.pickRel(t, func(r *mRel) bool { return isActive(r) && r.quota.GreaterThan(r.used) })
	kind := rapid.SampledFrom(sharing.Kinds).Draw(t, "kind")
	amt := amount(t, "amount", r.quota.Sub(r.used).Fen()+300)
	req := sharing.UsageRequest{Key: key("use"), RelationshipID: r.id, Kind: kind, Amount: amt,
		PayeeProvince: m.benProvince(r), PayeeRegion: regionOf(m.benProvince(r)), OccurredAt: m.clk.Now()}
	u := &mUsage{req: req, rel: r, payer: r.ben == remote}
	var refusal error
	switch {
	case r.status != sharing.StatusActive:
		refusal = sharing.ErrNotActive
	case amt.GreaterThan(r.quota.Sub(r.used)):
		refusal = sharing.ErrQuotaExceeded
	}
	if u.payer {
		res, err := m.svc.Debit(context.Background(), req)
		expect(t, "debit", err, nil)
		expect(t, "debit answer", res.Err(), refusal)
		count("debit", refusal)
		u.approved, u.refusal, u.first = res.Approved, refusal, res
		m.usages = append(m.usages, u)
	} else {
		ben := m.persons[r.ben]
		var want error
		switch {
		case ben.e.Status == sharing.PersonDeceased, kind.NeedsInsured() && !ben.insured():
			want = sharing.ErrBeneficiaryUninsured // checked before the authority: not recorded
		default:
			want = refusal
		}
		got, err := m.svc.Spend(context.Background(), req)
		expect(t, "spend", err, want)
		count("spend", want)
		if errors.Is(want, sharing.ErrBeneficiaryUninsured) {
			return
		}
		u.approved, u.refusal, u.first = want == nil, refusal, got
		m.usages = append(m.usages, u)
	}
	if u.approved {
		r.used = r.used.Add(amt)
		if u.payer {
			m.due = m.due.Add(amt)
		} else {
			m.paid[kind] = m.paid[kind].Add(amt)
		}
	}
	remaining := money.Zero
	if r.status == sharing.StatusActive {
		remaining = r.quota.Sub(r.used)
	}
	if u.first.Replayed || u.first.Approved != u.approved || !u.first.Remaining.Equal(remaining) {
		t.Fatalf("answer %+v; model approved %t, remaining %s", u.first, u.approved, remaining)
	}
}

func (m *model) pickUsage(t *rapid.T, approvedOnly bool) *mUsage {
	var us []*mUsage
	for _, u := range m.usages {
		if u.approved || !approvedOnly {
			us = append(us, u)
		}
	}
	if len(us) == 0 {
		t.Skip("no usage yet")
	}
	return us[rapid.IntRange(0, len(us)-1).Draw(t, "usage")]
}

// replay retries a recorded request: the first answer comes back and nothing
// moves; the same key with a changed amount is refused.
func (m *model) replay(t *rapid.T) {
	u := m.pickUsage(t, false)
	req := u.req
	changed := rapid.Bool().Draw(t, "changed")
	if changed {
		req.Amount = req.Amount.Add(y("0.01"))
	}
	var got sharing.UsageResult
	var err error
	if u.payer {
		got, err = m.svc.Debit(context.Background(), req)
		if err == nil {
			err = got.Err()
		}
	} else {
		got, err = m.svc.Spend(context.Background(), req)
	}
	count("replay", nil)
	switch {
	case changed:
		expect(t, "key reused", err, sharing.ErrKeyReused)
	default:
		expect(t, "replay", err, u.refusal) // an approval, or the refusal again
		if !got.Replayed {
			t.Fatalf("replay not marked: %+v", got)
		}
		got.Replayed = false
		if !sameWire(got, u.first) {
			t.Fatalf("replay answered %+v, first answer %+v", got, u.first)
		}
	}
}

func (m *model) reverse(t *rapid.T) {
	u := m.pickUsage(t, true)
	left := u.req.Amount.Sub(u.reversed)
	amt := money.FromFen(rapid.Int64Range(1, left.Fen()+500).Draw(t, "amount"))
	rreq := sharing.ReversalRequest{Key: key("rv"), UsageKey: u.req.Key, Amount: amt, OccurredAt: m.clk.Now()}
	var err error
	if u.payer {
		_, err = m.svc.ReverseDebit(context.Background(), rreq)
	} else {
		_, err = m.svc.Reverse(context.Background(), rreq)
	}
	var want error
	if amt.GreaterThan(left) {
		want = sharing.ErrReversalExceedsUsage
	}
	expect(t, "reverse", err, want)
	count("reverse", want)
	if want != nil {
		return
	}
	u.reversed = u.reversed.Add(amt)
	r := u.rel
	r.used = r.used.Sub(amt)
	if !r.live() {
		r.returned = r.returned.Add(amt)
		m.persons[r.sharer].avail = m.persons[r.sharer].avail.Add(amt)
	}
	if u.payer {
		m.due = m.due.Sub(amt)
	} else {
		m.paid[u.req.Kind] = m.paid[u.req.Kind].Sub(amt)
	}
}

var enrollmentChanges = map[string]func(*sharing.Enrollment){
	"suspend":    func(e *sharing.Enrollment) { e.Status = sharing.PersonSuspended },
	"reactivate": func(e *sharing.Enrollment) { e.Status, e.Insured = sharing.PersonActive, true },
	"terminate":  func(e *sharing.Enrollment) { e.Status = sharing.PersonTerminated },
	"die":        func(e *sharing.Enrollment) { e.Status = sharing.PersonDeceased },
	"uninsured":  func(e *sharing.Enrollment) { e.Insured = false },
	"insured":    func(e *sharing.Enrollment) { e.Insured = true },
	"pooling":    func(e *sharing.Enrollment) { e.Scheme, e.Mode = sharing.SchemeEmployee, sharing.ModePoolingOnly },
	"pooled":     func(e *sharing.Enrollment) { e.Scheme, e.Mode = sharing.SchemeEmployee, sharing.ModePooledWithAccount },
	"resident":   func(e *sharing.Enrollment) { e.Scheme, e.Mode = sharing.SchemeResident, sharing.ModePoolingOnly },
	"move": func(e *sharing.Enrollment) {
		if e.Region == zhengzh {
			e.Region = luoyang
		} else {
			e.Region = zhengzh
		}
	},
}

var enrollmentChangeNames = func() []string {
	var out []string
	for k := range enrollmentChanges {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}()

func (m *model) enroll(t *rapid.T) {
	pi := rapid.IntRange(0, len(m.persons)-1).Draw(t, "person")
	change := rapid.SampledFrom(enrollmentChangeNames).Draw(t, "change")
	p := m.persons[pi]
	old := p.e
	e := old
	enrollmentChanges[change](&e)
	res, err := m.svc.UpdateEnrollment(context.Background(), sharing.EnrollmentChange{PersonRef: p.ref, Enrollment: e})
	expect(t, "enrollment", err, nil)
	p.e = e
	had := (&mPerson{e: old}).hasAccount()
	var reason sharing.DissolveReason
	switch {
	case e == old:
	case e.Status == sharing.PersonDeceased && old.Status != sharing.PersonDeceased:
		reason = sharing.ReasonDeath
	case e.Status == sharing.PersonTerminated && old.Status != sharing.PersonTerminated:
		reason = sharing.ReasonTermination
	case e.Status == sharing.PersonSuspended && old.Status != sharing.PersonSuspended, old.Insured && !e.Insured:
		reason = sharing.ReasonSuspension
	case e.Region != old.Region:
		reason = sharing.ReasonTransfer
	case had && !p.hasAccount():
		reason = sharing.ReasonAccountLost
	}
	if res.Reason != reason {
		t.Fatalf("enrollment %s: reason %q, model %q", change, res.Reason, reason)
	}
	if reason == "" {
		return
	}
	ended := 0
	for _, r := range m.rels {
		if r.live() && (r.sharer == pi || r.ben == pi) {
			m.end(r, reason)
			ended++
		}
	}
	outcomes["enrollment dissolved"] += ended
	if len(res.Dissolved) != ended || len(res.Forwarded) != 0 {
		t.Fatalf("enrollment %s dissolved %d, model %d", change, len(res.Dissolved), ended)
	}
}

func (m *model) advance(t *rapid.T) {
	d := time.Duration(rapid.IntRange(1, 24*8).Draw(t, "hours")) * time.Hour
	if rapid.IntRange(0, 3).Draw(t, "past expiry") == 0 {
		d = sharing.DefaultProposalTTL // every pending proposal expires
	}
	m.clk.Advance(d)
	if _, err := m.svc.ExpireProposals(context.Background(), m.clk.Now()); err != nil {
		t.Fatal(err)
	}
	for _, r := range m.rels {
		if r.status == sharing.StatusPending && !m.clk.Now().Before(r.expires) {
			r.status = sharing.StatusExpired
			outcomes["expired"]++
		}
	}
}

// check compares everything the model knows with the database.
func (m *model) check(t *rapid.T) {
	ctx := context.Background()
	for i, p := range m.persons {
		a, err := m.svc.GetAccount(ctx, p.ref)
		if err != nil {
			t.Fatal(err)
		}
		earmarked := money.Zero
		for _, r := range m.rels {
			if r.sharer == i && r.live() {
				earmarked = earmarked.Add(r.quota.Sub(r.used))
			}
		}
		if !a.Available.Equal(p.avail) || !a.Earmarked.Equal(earmarked) {
			t.Fatalf("person %d: available %s earmarked %s, model %s %s", i, a.Available, a.Earmarked, p.avail, earmarked)
		}
		got, err := m.svc.GetPerson(ctx, p.ref)
		if err != nil || got.Enrollment != p.e {
			t.Fatalf("person %d enrollment %+v, model %+v (%v)", i, got.Enrollment, p.e, err)
		}
	}
	for _, r := range m.rels {
		got, err := m.svc.GetRelationship(ctx, r.id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != r.status || got.DissolveReason != r.reason || !got.Quota.Equal(r.quota) ||
			!got.Used.Equal(r.used) || !got.Returned.Equal(r.returned) || got.ProposedBy != r.by {
			t.Fatalf("relationship %s: %s/%s quota %s used %s returned %s; model %s/%s %s %s %s",
				r.id, got.Status, got.DissolveReason, got.Quota, got.Used, got.Returned, r.status, r.reason, r.quota, r.used, r.returned)
		}
	}
	for _, u := range m.usages {
		got, err := m.svc.GetUsage(ctx, u.req.Key)
		if !u.approved {
			if !errors.Is(err, sharing.ErrNotFound) {
				t.Fatalf("refused usage %s visible: %v", u.req.Key, err)
			}
			continue
		}
		if err != nil || !got.Reversed.Equal(u.reversed) {
			t.Fatalf("usage %s: reversed %s, model %s (%v)", u.req.Key, got.Reversed, u.reversed, err)
		}
	}
	// The journal's external accounts moved exactly as the model says.
	want := map[string]money.Yuan{
		sharing.AccountFunding:         m.credits.Neg(),
		sharing.AccountPaidOwn():       m.own,
		sharing.AccountDueClearing:     m.due,
		sharing.AccountDueFromClearing: money.Zero,
	}
	for _, k := range sharing.Kinds {
		want[sharing.AccountPaid(k)] = m.paid[k]
	}
	for acct, w := range want {
		if got := m.balance(t, acct).Sub(m.baseline[acct]); !got.Equal(w) {
			t.Fatalf("%s moved %s, model %s", acct, got, w)
		}
	}
	if err := m.svc.CheckConservation(ctx); err != nil {
		t.Fatal(err)
	}
}

func sameWire(a, b any) bool {
	x, err1 := json.Marshal(a)
	z, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(z)
}
