package sharing_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
	"gongji/sharing"
)

func y(s string) money.Yuan { return money.MustParse(s) }

var t0 = time.Date(2026, 7, 1, 9, 0, 0, 0, time.UTC)

const (
	refA = "0123456789abcdef0123456789abcdef"
	refB = "fedcba9876543210fedcba9876543210"
)

func person(ref string, e sharing.Enrollment) sharing.Person {
	return sharing.Person{Ref: ref, Province: "410000", Enrollment: e, Version: 1}
}

func emp() sharing.Enrollment {
	return sharing.Enrollment{Region: "410100", Scheme: sharing.SchemeEmployee, Mode: sharing.ModePooledWithAccount, Status: sharing.PersonActive, Insured: true}
}

func TestCanShare(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		mut  func(*sharing.Enrollment)
		want error
	}{
		"employee with account": {func(*sharing.Enrollment) {}, nil},
		"pooling only":          {func(e *sharing.Enrollment) { e.Mode = sharing.ModePoolingOnly }, sharing.ErrNoPersonalAccount},
		"resident":              {func(e *sharing.Enrollment) { e.Scheme, e.Mode = sharing.SchemeResident, sharing.ModePoolingOnly }, sharing.ErrNoPersonalAccount},
		"suspended":             {func(e *sharing.Enrollment) { e.Status = sharing.PersonSuspended }, sharing.ErrSharerInactive},
		"terminated":            {func(e *sharing.Enrollment) { e.Status = sharing.PersonTerminated }, sharing.ErrSharerInactive},
		"deceased":              {func(e *sharing.Enrollment) { e.Status = sharing.PersonDeceased }, sharing.ErrSharerInactive},
		"not insured":           {func(e *sharing.Enrollment) { e.Insured = false }, sharing.ErrSharerInactive},
	}
	for name, c := range cases {
		e := emp()
		c.mut(&e)
		err := person(refA, e).CanShare()
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: CanShare = %v, want %v", name, err, c.want)
		}
	}
}

func TestCanBenefit(t *testing.T) {
	t.Parallel()
	uninsured := emp()
	uninsured.Insured = false
	dead := emp()
	dead.Status = sharing.PersonDeceased
	for _, k := range sharing.Kinds {
		if err := person(refB, emp()).CanBenefit(k); err != nil {
			t.Errorf("insured %s: %v", k, err)
		}
		err := person(refB, uninsured).CanBenefit(k)
		if k.NeedsInsured() != errors.Is(err, sharing.ErrBeneficiaryUninsured) {
			t.Errorf("uninsured %s: %v", k, err)
		}
		if err := person(refB, dead).CanBenefit(k); !errors.Is(err, sharing.ErrBeneficiaryUninsured) {
			t.Errorf("deceased %s: %v", k, err)
		}
	}
	if !sharing.KindMedical.NeedsInsured() || !sharing.KindPharmacy.NeedsInsured() ||
		sharing.KindResidentPremium.NeedsInsured() || sharing.KindLTCPremium.NeedsInsured() {
		t.Fatal("R10 kinds")
	}
}

func TestAutoDissolveReason(t *testing.T) {
	t.Parallel()
	base := person(refA, emp())
	cases := map[string]struct {
		mut  func(*sharing.Enrollment)
		want sharing.DissolveReason
		ends bool
	}{
		"nothing":           {func(*sharing.Enrollment) {}, "", false},
		"transfer":          {func(e *sharing.Enrollment) { e.Region = "410300" }, sharing.ReasonTransfer, true},
		"suspension":        {func(e *sharing.Enrollment) { e.Status = sharing.PersonSuspended }, sharing.ReasonSuspension, true},
		"uninsured":         {func(e *sharing.Enrollment) { e.Insured = false }, sharing.ReasonSuspension, true},
		"termination":       {func(e *sharing.Enrollment) { e.Status = sharing.PersonTerminated }, sharing.ReasonTermination, true},
		"death":             {func(e *sharing.Enrollment) { e.Status = sharing.PersonDeceased; e.Region = "410300" }, sharing.ReasonDeath, true},
		"pooling only":      {func(e *sharing.Enrollment) { e.Mode = sharing.ModePoolingOnly }, sharing.ReasonAccountLost, true},
		"to resident":       {func(e *sharing.Enrollment) { e.Scheme, e.Mode = sharing.SchemeResident, sharing.ModePoolingOnly }, sharing.ReasonAccountLost, true},
		"gains nothing new": {func(e *sharing.Enrollment) { e.Insured = true }, "", false},
	}
	for name, c := range cases {
		after := base
		c.mut(&after.Enrollment)
		got, ends := sharing.AutoDissolveReason(base, after, "")
		if got != c.want || ends != c.ends {
			t.Errorf("%s: %q %t, want %q %t", name, got, ends, c.want, c.ends)
		}
	}
	// Reactivation is not a change R6 names.
	susp := base
	susp.Status = sharing.PersonSuspended
	if _, ends := sharing.AutoDissolveReason(susp, base, ""); ends {
		t.Error("reactivation dissolves")
	}
	// Event overrides the reason of a real change, but not a non-change.
	term := base
	term.Status = sharing.PersonTerminated
	if got, _ := sharing.AutoDissolveReason(base, term, sharing.ReasonTransfer); got != sharing.ReasonTransfer {
		t.Errorf("event: %s", got)
	}
	if _, ends := sharing.AutoDissolveReason(base, base, sharing.ReasonTransfer); ends {
		t.Error("event without change dissolves")
	}
}

func TestCanTransition(t *testing.T) {
	t.Parallel()
	all := []sharing.Status{sharing.StatusPending, sharing.StatusActive, sharing.StatusDeclined, sharing.StatusExpired, sharing.StatusDissolved}
	allowed := map[[2]sharing.Status]bool{
		{sharing.StatusPending, sharing.StatusActive}:    true,
		{sharing.StatusPending, sharing.StatusDeclined}:  true,
		{sharing.StatusPending, sharing.StatusExpired}:   true,
		{sharing.StatusPending, sharing.StatusDissolved}: true,
		{sharing.StatusActive, sharing.StatusDissolved}:  true,
	}
	for _, from := range all {
		for _, to := range all {
			if got := sharing.CanTransition(from, to); got != allowed[[2]sharing.Status{from, to}] {
				t.Errorf("%s → %s = %t", from, to, got)
			}
		}
	}
}

func pending(t *testing.T, by sharing.Side) sharing.Relationship {
	t.Helper()
	p := sharing.Proposal{Key: "k1", Origin: "410000", By: by, SharerRef: refA, SharerProvince: "410000",
		BeneficiaryRef: refB, BeneficiaryProvince: "110000", Relation: sharing.RelationSpouse}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	sh := person(refA, emp())
	r, err := sharing.NewRelationship(p, sh, t0, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != sharing.StatusPending || r.Version != 1 || r.ID != sharing.RelationshipID("410000", "k1") || r.SharerRegion != "410100" {
		t.Fatalf("new relationship %+v", r)
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("new relationship invalid: %v", err)
	}
	return r
}

func cmd(kind sharing.CommandKind, by sharing.Side) sharing.Command {
	return sharing.Command{Key: "c", Kind: kind, RelationshipID: sharing.RelationshipID("410000", "k1"), By: by}
}

func TestApplyTransitions(t *testing.T) {
	t.Parallel()
	r := pending(t, sharing.SideSharer)
	// The proposer cannot consent or decline their own proposal.
	for _, k := range []sharing.CommandKind{sharing.CommandConsent, sharing.CommandDecline} {
		if _, _, err := r.Apply(cmd(k, sharing.SideSharer), money.Zero, t0); !errors.Is(err, sharing.ErrBadTransition) {
			t.Errorf("proposer %s: %v", k, err)
		}
	}
	// At expiry: consent, decline and withdrawal say ErrExpired; Expire works.
	at := r.ExpiresAt
	for _, c := range []sharing.Command{cmd(sharing.CommandConsent, sharing.SideBeneficiary), cmd(sharing.CommandDecline, sharing.SideBeneficiary), cmd(sharing.CommandDissolve, sharing.SideSharer)} {
		if _, _, err := r.Apply(c, money.Zero, at); !errors.Is(err, sharing.ErrExpired) {
			t.Errorf("%s at expiry: %v", c.Kind, err)
		}
	}
	if _, err := r.Expire(at.Add(-time.Microsecond)); !errors.Is(err, sharing.ErrBadTransition) {
		t.Errorf("expire early: %v", err)
	}
	exp, err := r.Expire(at)
	if err != nil || exp.Status != sharing.StatusExpired || exp.Version != 2 || exp.EndedAt != at {
		t.Fatalf("expire: %+v %v", exp, err)
	}
	// An automatic dissolution of an expired-but-unswept proposal still ends it.
	auto := cmd(sharing.CommandDissolve, sharing.SideSharer)
	auto.Reason = sharing.ReasonDeath
	if d, _, err := r.Apply(auto, money.Zero, at); err != nil || d.Status != sharing.StatusDissolved || d.DissolveReason != sharing.ReasonDeath {
		t.Fatalf("automatic dissolve of pending: %+v %v", d, err)
	}
	// Consent.
	act, ps, err := r.Apply(cmd(sharing.CommandConsent, sharing.SideBeneficiary), money.Zero, t0.Add(time.Hour))
	if err != nil || act.Status != sharing.StatusActive || act.Version != 2 || len(ps) != 0 || act.ActivatedAt.IsZero() {
		t.Fatalf("consent: %+v %v", act, err)
	}
	// Quota: raise needs the balance, lower never below used.
	if _, _, err := act.Apply(sharing.Command{Kind: sharing.CommandSetQuota, Quota: y("50")}, y("49.99"), t0); !errors.Is(err, sharing.ErrInsufficientBalance) {
		t.Errorf("raise beyond balance: %v", err)
	}
	q, ps, err := act.Apply(sharing.Command{Kind: sharing.CommandSetQuota, Quota: y("50")}, y("50"), t0)
	if err != nil || !q.Quota.Equal(y("50")) || q.Version != 3 || len(ps) != 2 || ps[0].Account != sharing.AccountPerson(refA) || !ps[1].Amount.Equal(y("50")) {
		t.Fatalf("raise: %+v %v %v", q, ps, err)
	}
	if same, ps, err := q.SetQuota(y("50"), money.Zero, t0); err != nil || same.Version != q.Version || ps != nil {
		t.Fatalf("same quota: %+v %v %v", same, ps, err)
	}
	if refusal := q.Authorize(y("50.01")); refusal != sharing.RefusalQuotaExceeded {
		t.Errorf("authorize over quota: %s", refusal)
	}
	if refusal := q.Authorize(y("50")); refusal != sharing.RefusalNone {
		t.Errorf("authorize exactly the quota: %s", refusal)
	}
	used := q.WithUsage(y("20"))
	if _, _, err := used.SetQuota(y("19.99"), money.Zero, t0); !errors.Is(err, sharing.ErrBelowUsed) {
		t.Errorf("lower below used: %v", err)
	}
	low, ps, err := used.SetQuota(y("20"), money.Zero, t0)
	if err != nil || len(ps) != 2 || ps[1].Account != sharing.AccountPerson(refA) || !ps[1].Amount.Equal(y("30")) {
		t.Fatalf("lower to used: %+v %v %v", low, ps, err)
	}
	// Dissolve returns exactly the unused quota (R7).
	d, ps, err := used.Apply(cmd(sharing.CommandDissolve, sharing.SideBeneficiary), money.Zero, t0)
	if err != nil || d.Status != sharing.StatusDissolved || d.DissolveReason != sharing.ReasonVoluntaryBeneficiary || !d.Returned.Equal(y("30")) || !d.Unused().IsZero() {
		t.Fatalf("dissolve: %+v %v", d, err)
	}
	if len(ps) != 2 || !ps[1].Amount.Equal(y("30")) || ps[1].Account != sharing.AccountPerson(refA) {
		t.Fatalf("dissolve postings %v", ps)
	}
	// A reversal after dissolution goes to the sharer, not the quota.
	back, toQuota := d.WithReversal(y("5"))
	if toQuota || !back.Returned.Equal(y("35")) || !back.Used.Equal(y("15")) {
		t.Fatalf("reversal after dissolution: %+v %t", back, toQuota)
	}
	// Terminal states refuse every command.
	for _, term := range []sharing.Relationship{exp, d, mustDecline(t, r)} {
		for _, k := range []sharing.CommandKind{sharing.CommandConsent, sharing.CommandDecline, sharing.CommandDissolve} {
			if _, _, err := term.Apply(cmd(k, sharing.SideBeneficiary), money.Zero, t0); !errors.Is(err, sharing.ErrBadTransition) {
				t.Errorf("%s on %s: %v", k, term.Status, err)
			}
		}
		if _, _, err := term.Apply(sharing.Command{Kind: sharing.CommandSetQuota, Quota: y("1")}, y("10"), t0); !errors.Is(err, sharing.ErrNotActive) {
			t.Errorf("quota on %s: %v", term.Status, err)
		}
		if term.Authorize(y("1")) != sharing.RefusalNotActive {
			t.Errorf("authorize on %s", term.Status)
		}
	}
}

func mustDecline(t *testing.T, r sharing.Relationship) sharing.Relationship {
	t.Helper()
	d, _, err := r.Apply(cmd(sharing.CommandDecline, sharing.SideBeneficiary), money.Zero, t0)
	if err != nil || d.Status != sharing.StatusDeclined {
		t.Fatalf("decline: %+v %v", d, err)
	}
	return d
}

func TestValidation(t *testing.T) {
	t.Parallel()
	good := sharing.Proposal{Key: "k", By: sharing.SideSharer, SharerRef: refA, SharerProvince: "410000", BeneficiaryRef: refB, BeneficiaryProvince: "410000", Relation: sharing.RelationChild}
	cases := map[string]struct {
		mut  func(*sharing.Proposal)
		want error
	}{
		"self":           {func(p *sharing.Proposal) { p.BeneficiaryRef = refA }, sharing.ErrSelfSharing},
		"friend":         {func(p *sharing.Proposal) { p.Relation = "FRIEND" }, sharing.ErrNotRelative},
		"bad ref":        {func(p *sharing.Proposal) { p.SharerRef = "X" }, sharing.ErrInvalidInput},
		"bad province":   {func(p *sharing.Proposal) { p.BeneficiaryProvince = "999999" }, region.ErrUnknownProvince},
		"empty key":      {func(p *sharing.Proposal) { p.Key = "" }, sharing.ErrInvalidInput},
		"key with space": {func(p *sharing.Proposal) { p.Key = "a b" }, sharing.ErrInvalidInput},
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range cases {
		p := good
		c.mut(&p)
		err := p.Validate()
		var fe *sharing.FieldError
		if !errors.Is(err, c.want) || !errors.Is(err, sharing.ErrInvalidInput) || !errors.As(err, &fe) {
			t.Errorf("%s: %v, want %v as a *FieldError", name, err, c.want)
		}
	}

	req := sharing.UsageRequest{Key: "u", RelationshipID: sharing.RelationshipID("410000", "k"), Kind: sharing.KindPharmacy, Amount: y("1.00"), PayeeProvince: "410000", PayeeRegion: "410300", OccurredAt: t0}
	over := y("9999999999999999.99").Add(y("0.01"))
	ucases := map[string]struct {
		mut  func(*sharing.UsageRequest)
		want error
	}{
		"zero":             {func(r *sharing.UsageRequest) { r.Amount = money.Zero }, money.ErrNotPositive},
		"negative":         {func(r *sharing.UsageRequest) { r.Amount = y("-1") }, money.ErrNotPositive},
		"over range":       {func(r *sharing.UsageRequest) { r.Amount = over }, money.ErrOutOfRange},
		"unknown kind":     {func(r *sharing.UsageRequest) { r.Kind = "SPA" }, sharing.ErrInvalidInput},
		"unknown region":   {func(r *sharing.UsageRequest) { r.PayeeRegion = "410199" }, region.ErrUnknownRegion},
		"foreign region":   {func(r *sharing.UsageRequest) { r.PayeeRegion = "110100" }, region.ErrWrongProvince},
		"no time":          {func(r *sharing.UsageRequest) { r.OccurredAt = time.Time{} }, sharing.ErrInvalidInput},
		"bad relationship": {func(r *sharing.UsageRequest) { r.RelationshipID = "R1" }, sharing.ErrInvalidInput},
	}
	if err := req.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range ucases {
		r := req
		c.mut(&r)
		if err := r.Validate(); !errors.Is(err, c.want) || !errors.Is(err, sharing.ErrInvalidInput) {
			t.Errorf("usage %s: %v, want %v", name, err, c.want)
		}
	}
	if _, err := sharing.ParseAmount("amount", "1.234"); !errors.Is(err, money.ErrTooPrecise) || !errors.Is(err, sharing.ErrInvalidInput) {
		t.Errorf("ParseAmount 1.234: %v", err)
	}
	if _, err := sharing.ParseAmount("amount", "0"); !errors.Is(err, money.ErrNotPositive) {
		t.Errorf("ParseAmount 0: %v", err)
	}
	if _, err := sharing.ParseQuota("quota", "-1"); !errors.Is(err, sharing.ErrInvalidInput) {
		t.Errorf("ParseQuota -1: %v", err)
	}
}

// TestRequestHash: every field is covered; the encoding is not ambiguous;
// time zone and sub-microsecond noise do not matter.
func TestRequestHash(t *testing.T) {
	t.Parallel()
	req := sharing.UsageRequest{Key: "u", RelationshipID: sharing.RelationshipID("410000", "k"), Kind: sharing.KindPharmacy, Amount: y("1.00"), PayeeProvince: "410000", PayeeRegion: "410300", OccurredAt: t0}
	h := req.Hash()
	same := req
	same.OccurredAt = t0.In(region.Shanghai).Add(100 * time.Nanosecond)
	same.Amount = y("1")
	if !bytes.Equal(h, same.Hash()) {
		t.Fatal("hash depends on zone, nanoseconds or amount spelling")
	}
	muts := []func(*sharing.UsageRequest){
		func(r *sharing.UsageRequest) { r.Key = "v" },
		func(r *sharing.UsageRequest) { r.RelationshipID = sharing.RelationshipID("410000", "j") },
		func(r *sharing.UsageRequest) { r.Kind = sharing.KindMedical },
		func(r *sharing.UsageRequest) { r.Amount = y("1.01") },
		func(r *sharing.UsageRequest) { r.PayeeProvince = "110000" },
		func(r *sharing.UsageRequest) { r.PayeeRegion = "410100" },
		func(r *sharing.UsageRequest) { r.OccurredAt = t0.Add(time.Microsecond) },
	}
	for i, m := range muts {
		r := req
		m(&r)
		if bytes.Equal(h, r.Hash()) {
			t.Errorf("field %d not covered by the hash", i)
		}
	}
}

func TestPostingsBalance(t *testing.T) {
	t.Parallel()
	u := sharing.Usage{Key: "u", RelationshipID: sharing.RelationshipID("410000", "k"), Kind: sharing.KindMedical, Amount: y("3.30"), SharerRef: refA}
	for _, role := range []sharing.Role{sharing.RoleLocal, sharing.RolePayer, sharing.RolePayee} {
		u.Role = role
		_, ps := sharing.UsagePostings(u)
		if _, err := ps.Validate(); err != nil {
			t.Errorf("%s usage: %v", role, err)
		}
		for _, toQuota := range []bool{true, false} {
			_, rs := sharing.ReversalPostings(u, y("1.10"), toQuota)
			if _, err := rs.Validate(); err != nil {
				t.Errorf("%s reversal: %v", role, err)
			}
		}
	}
	u.Role = sharing.RolePayer
	_, ps := sharing.UsagePostings(u)
	if ps[0].Account != sharing.AccountQuota(u.RelationshipID) || ps[1].Account != sharing.AccountDueClearing {
		t.Errorf("payer usage postings %v", ps)
	}
	u.Role = sharing.RolePayee
	_, ps = sharing.UsagePostings(u)
	if ps[1].Account != sharing.AccountDueFromClearing || !ps[1].Amount.IsPositive() {
		t.Errorf("payee usage postings %v", ps)
	}
}

func TestRefusalErr(t *testing.T) {
	t.Parallel()
	m := map[sharing.Refusal]error{
		sharing.RefusalQuotaExceeded: sharing.ErrQuotaExceeded, sharing.RefusalNotActive: sharing.ErrNotActive,
		sharing.RefusalSharerInactive: sharing.ErrSharerInactive, sharing.RefusalNoPersonalAccount: sharing.ErrNoPersonalAccount,
	}
	for r, want := range m {
		if !r.Valid() || !errors.Is(r.Err(), want) {
			t.Errorf("%s → %v", r, r.Err())
		}
		res := sharing.UsageResult{Refusal: r}
		if !errors.Is(res.Err(), want) {
			t.Errorf("UsageResult %s → %v", r, res.Err())
		}
	}
	if sharing.RefusalNone.Err() != nil || (sharing.UsageResult{Approved: true}).Err() != nil {
		t.Error("approval has an error")
	}
}

// TestJSONRoundTrip: outbox and relay payloads decode to what was encoded.
func TestJSONRoundTrip(t *testing.T) {
	t.Parallel()
	r := pending(t, sharing.SideBeneficiary)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sharing.OutboxRecord{Kind: sharing.OutboxRelationship, Payload: b}.Relationship()
	if err != nil || !sameJSON(got, r) {
		t.Fatalf("relationship round trip: %+v %v", got, err)
	}
	if _, err := (sharing.OutboxRecord{Kind: sharing.OutboxUsage, Payload: b}).Relationship(); err == nil {
		t.Fatal("decoded a USAGE row as a relationship")
	}
	snap, err := sharing.RelayMessage{Kind: sharing.RelaySnapshot, Payload: b}.Snapshot()
	if err != nil || !sameJSON(snap, r) {
		t.Fatalf("snapshot round trip: %v", err)
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	c := sharing.Config{Province: "410000", PersonKey: []byte("0123456789abcdef")}.WithDefaults()
	if err := c.Validate(); err != nil || c.ProposalTTL != sharing.DefaultProposalTTL {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	for name, bad := range map[string]sharing.Config{
		"province": {Province: "410100", PersonKey: c.PersonKey},
		"key":      {Province: "410000", PersonKey: []byte("short")},
	} {
		if _, err := sharing.NewService(nopStore{}, bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// sameJSON compares values by their wire form: money.Yuan holds a big.Int
// pointer, so == on structs holding amounts compares pointers, not amounts.
func sameJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	z, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, z)
}

// nopStore satisfies sharing.Store for configuration tests only; it is never called.
type nopStore struct{ sharing.Store }

func TestEnrollmentChange(t *testing.T) {
	t.Parallel()
	cur := emp()
	cases := map[string]struct {
		ch    sharing.EnrollmentChange
		valid bool
		want  func(*sharing.Enrollment)
	}{
		"full": {sharing.EnrollmentChange{PersonRef: refA, Enrollment: sharing.Enrollment{Region: "410300", Scheme: sharing.SchemeResident, Mode: sharing.ModePoolingOnly, Status: sharing.PersonActive}}, true, func(e *sharing.Enrollment) {
			*e = sharing.Enrollment{Region: "410300", Scheme: sharing.SchemeResident, Mode: sharing.ModePoolingOnly, Status: sharing.PersonActive}
		}},
		"transfer":        {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonTransfer, NewRegion: "410300"}, true, func(e *sharing.Enrollment) { e.Region = "410300" }},
		"suspension":      {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonSuspension}, true, func(e *sharing.Enrollment) { e.Status = sharing.PersonSuspended }},
		"termination":     {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonTermination}, true, func(e *sharing.Enrollment) { e.Status = sharing.PersonTerminated }},
		"death":           {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonDeath}, true, func(e *sharing.Enrollment) { e.Status = sharing.PersonDeceased }},
		"account lost":    {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonAccountLost}, true, func(e *sharing.Enrollment) { e.Mode = sharing.ModePoolingOnly }},
		"empty":           {sharing.EnrollmentChange{PersonRef: refA}, false, nil},
		"bad ref":         {sharing.EnrollmentChange{PersonRef: "x", Event: sharing.ReasonDeath}, false, nil},
		"voluntary":       {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonVoluntaryBeneficiary}, false, nil},
		"far transfer":    {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonTransfer, NewRegion: "110100"}, false, nil},
		"region on death": {sharing.EnrollmentChange{PersonRef: refA, Event: sharing.ReasonDeath, NewRegion: "410300"}, false, nil},
	}
	for name, c := range cases {
		err := c.ch.Validate("410000")
		if (err == nil) != c.valid || (err != nil && !errors.Is(err, sharing.ErrInvalidInput)) {
			t.Errorf("%s: Validate = %v", name, err)
			continue
		}
		if c.valid {
			want := cur
			c.want(&want)
			if got := c.ch.Target(cur); got != want {
				t.Errorf("%s: Target = %+v, want %+v", name, got, want)
			}
		}
	}
}

// collidingProposalKey is a proposal key whose naive relationship id from
// 410000 ("R" + the first 24 hex of sha256), R752284332352013102788470,
// contains a valid ID number (found by search); its birth date is in the
// past, so it stays valid.
const collidingProposalKey = "p-26652556"

// TestKeysWithIDNumbers: every idempotency key is refused when it contains a
// GB 11643 number, with ErrInvalidInput and pii.ErrContainsID on a
// *FieldError; a derived relationship id never contains one, and one that
// does is not a relationship id.
func TestKeysWithIDNumbers(t *testing.T) {
	t.Parallel()
	c, err := pii.CheckDigit("41010519800101777")
	if err != nil {
		t.Fatal(err)
	}
	id := "41010519800101777" + string(c)
	relID := sharing.RelationshipID("410000", "k")
	checks := map[string]func(key string) error{
		"usage_key": func(k string) error {
			return sharing.UsageRequest{Key: k, RelationshipID: relID, Kind: sharing.KindPharmacy, Amount: y("1.00"),
				PayeeProvince: "410000", PayeeRegion: "410300", OccurredAt: t0}.Validate()
		},
		"reversal_key": func(k string) error {
			return sharing.ReversalRequest{Key: k, UsageKey: "u", Amount: y("1.00"), OccurredAt: t0}.Validate()
		},
		"reversed usage_key": func(k string) error {
			return sharing.ReversalRequest{Key: "rv", UsageKey: k, Amount: y("1.00"), OccurredAt: t0}.Validate()
		},
		"movement key": func(k string) error {
			return sharing.MovementRequest{Key: k, PersonRef: refA, Amount: y("1.00")}.Validate()
		},
		"proposal key": func(k string) error {
			return sharing.Proposal{Key: k, Origin: "410000", By: sharing.SideSharer, SharerRef: refA, SharerProvince: "410000",
				BeneficiaryRef: refB, BeneficiaryProvince: "410000", Relation: sharing.RelationChild}.Validate()
		},
		"command key": func(k string) error {
			return sharing.Command{Key: k, Kind: sharing.CommandConsent, RelationshipID: relID, By: sharing.SideBeneficiary}.Validate()
		},
		"change key": func(k string) error {
			return sharing.EnrollmentChange{PersonRef: refA, Enrollment: emp(), Key: k}.Validate("410000")
		},
	}
	for name, check := range checks {
		if err := check("ok-key-1"); err != nil {
			t.Fatalf("%s: a plain key refused: %v", name, err)
		}
		for _, k := range []string{id, "u-" + id, id + "-1", id[:17] + "x" /* a wrong check character: no number */} {
			err := check(k)
			if !pii.ContainsID(k) {
				if err != nil {
					t.Errorf("%s %q: %v", name, k, err)
				}
				continue
			}
			var fe *sharing.FieldError
			if !errors.Is(err, sharing.ErrInvalidInput) || !errors.Is(err, pii.ErrContainsID) || !errors.As(err, &fe) {
				t.Errorf("%s %q: %v, want ErrInvalidInput and pii.ErrContainsID", name, k, err)
			}
		}
	}

	naive := "R752284332352013102788470"
	if !pii.ContainsID(naive) || sharing.ValidRelationshipID(naive) {
		t.Fatalf("%s: holds a number %v, valid %v", naive, pii.ContainsID(naive), sharing.ValidRelationshipID(naive))
	}
	got := sharing.RelationshipID("410000", collidingProposalKey)
	if got == naive || !sharing.ValidRelationshipID(got) || sharing.RelationshipID("410000", collidingProposalKey) != got {
		t.Errorf("RelationshipID of the colliding key = %s", got)
	}
	p := sharing.Proposal{Key: collidingProposalKey, Origin: "410000", By: sharing.SideSharer, SharerRef: refA, SharerProvince: "410000",
		BeneficiaryRef: refB, BeneficiaryProvince: "410000", Relation: sharing.RelationChild}
	if err := p.Validate(); err != nil {
		t.Errorf("the colliding proposal key itself is a good key: %v", err)
	}
	for name, err := range map[string]error{
		"usage":   sharing.UsageRequest{Key: "u", RelationshipID: naive, Kind: sharing.KindPharmacy, Amount: y("1.00"), PayeeProvince: "410000", PayeeRegion: "410300", OccurredAt: t0}.Validate(),
		"command": sharing.Command{Key: "c", Kind: sharing.CommandConsent, RelationshipID: naive, By: sharing.SideBeneficiary}.Validate(),
	} {
		if !errors.Is(err, sharing.ErrInvalidInput) {
			t.Errorf("%s naming a relationship id with an ID number: %v", name, err)
		}
	}
}
