package provincedb_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"gongji/money"
	"gongji/sharing"
)

// Behaviour tests: one subtest per rule of DESIGN §2 (R1–R13), each on its
// own database, against the real store.

func TestR1Sharer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	ben := n.register(t, employee(luoyang))
	pooling := employee(zhengzh)
	pooling.Mode = sharing.ModePoolingOnly
	uninsured := employee(zhengzh)
	uninsured.Insured = false
	cases := map[string]struct {
		e    sharing.Enrollment
		want error
	}{
		"pooling only (单建统筹)": {pooling, sharing.ErrNoPersonalAccount},
		"resident scheme":     {resident(zhengzh, true), sharing.ErrNoPersonalAccount},
		"suspended":           {withStatus(employee(zhengzh), sharing.PersonSuspended), sharing.ErrSharerInactive},
		"terminated":          {withStatus(employee(zhengzh), sharing.PersonTerminated), sharing.ErrSharerInactive},
		"deceased":            {withStatus(employee(zhengzh), sharing.PersonDeceased), sharing.ErrSharerInactive},
		"not insured":         {uninsured, sharing.ErrSharerInactive},
	}
	for name, c := range cases {
		sharer := n.register(t, c.e)
		_, err := n.svc.Propose(ctx, proposal(henan, sharer, ben, sharing.SideSharer))
		wantErr(t, name, err, c.want)
		_, err = n.svc.Propose(ctx, proposal(henan, sharer, ben, sharing.SideBeneficiary))
		wantErr(t, name+" (proposed by the beneficiary)", err, c.want)
	}
	// Pooling-only people have no account to credit either.
	p := n.register(t, pooling)
	_, err := n.svc.Credit(ctx, sharing.MovementRequest{Key: key("c"), PersonRef: p, Amount: y("1")})
	wantErr(t, "credit pooling-only", err, sharing.ErrNoPersonalAccount)
	if got := n.count(t, `SELECT count(*) FROM relationships`); got != 0 {
		t.Fatalf("%d relationships created by refused proposals", got)
	}
	n.conserved(t)
}

func withStatus(e sharing.Enrollment, s sharing.PersonStatus) sharing.Enrollment {
	e.Status = s
	return e
}

func proposal(province, sharer, ben string, by sharing.Side) sharing.Proposal {
	return sharing.Proposal{Key: key("prop"), By: by, SharerRef: sharer, SharerProvince: province,
		BeneficiaryRef: ben, BeneficiaryProvince: province, Relation: sharing.RelationSibling}
}

func TestR2Beneficiary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	sharer := n.register(t, employee(zhengzh))
	n.credit(t, sharer, "1000")

	p := proposal(henan, sharer, sharer, sharing.SideSharer)
	_, err := n.svc.Propose(ctx, p)
	wantErr(t, "self", err, sharing.ErrSelfSharing, sharing.ErrInvalidInput)

	other := n.register(t, employee(luoyang))
	p = proposal(henan, sharer, other, sharing.SideSharer)
	p.Relation = "COUSIN"
	_, err = n.svc.Propose(ctx, p)
	wantErr(t, "cousin", err, sharing.ErrNotRelative, sharing.ErrInvalidInput)

	// Every near relative of Civil Code art. 1045, any scheme, insured or not.
	for i, rel := range sharing.Relations {
		e := employee(luoyang)
		if i%2 == 1 {
			e = resident(luoyang, i%4 == 1)
		}
		ben := n.register(t, e)
		p := proposal(henan, sharer, ben, sharing.SideSharer)
		p.Relation = rel
		r, err := n.svc.Propose(ctx, p)
		wantErr(t, string(rel), err)
		if r.Relation != rel || r.Status != sharing.StatusPending {
			t.Fatalf("%s: %+v", rel, r)
		}
	}
	dead := n.register(t, withStatus(employee(luoyang), sharing.PersonDeceased))
	_, err = n.svc.Propose(ctx, proposal(henan, sharer, dead, sharing.SideSharer))
	wantErr(t, "deceased beneficiary", err, sharing.ErrBeneficiaryUninsured)
	_, err = n.svc.Propose(ctx, proposal(henan, sharer, "00000000000000000000000000000000", sharing.SideSharer))
	wantErr(t, "unregistered local beneficiary", err, sharing.ErrNotFound)
	n.conserved(t)
}

func TestR3ManyToMany(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := newNode(t, henan, newClock(), nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	c := n.register(t, employee(luoyang))
	for _, p := range []string{a, b, c} {
		n.credit(t, p, "100")
	}
	ab := n.activeRel(t, a, b, "10")
	n.activeRel(t, a, c, "10") // one sharer, many beneficiaries
	n.activeRel(t, c, b, "10") // one beneficiary, many sharers
	n.activeRel(t, b, a, "10") // both directions (互建)

	_, err := n.svc.Propose(ctx, proposal(henan, a, b, sharing.SideSharer))
	wantErr(t, "second live a→b", err, sharing.ErrDuplicateRelationship)
	_, err = n.svc.Propose(ctx, proposal(henan, a, b, sharing.SideBeneficiary))
	wantErr(t, "second live a→b proposed by b", err, sharing.ErrDuplicateRelationship)
	// A pending one counts as live too.
	d := n.register(t, employee(luoyang))
	if _, err := n.svc.Propose(ctx, proposal(henan, a, d, sharing.SideSharer)); err != nil {
		t.Fatal(err)
	}
	_, err = n.svc.Propose(ctx, proposal(henan, a, d, sharing.SideBeneficiary))
	wantErr(t, "second pending a→d", err, sharing.ErrDuplicateRelationship)

	// After dissolution a new relationship for the pair is allowed.
	if _, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), RelationshipID: ab.ID, By: sharing.SideSharer}); err != nil {
		t.Fatal(err)
	}
	n.activeRel(t, a, b, "5")
	if got := n.count(t, `SELECT count(*) FROM relationships WHERE sharer_ref = $1 AND beneficiary_ref = $2`, a, b); got != 2 {
		t.Fatalf("a→b relationships = %d, want 2", got)
	}
	list, err := n.svc.ListRelationships(ctx, sharing.RelationshipFilter{PersonRef: a, Side: sharing.SideSharer, Statuses: []sharing.Status{sharing.StatusActive}})
	if err != nil || len(list) != 2 {
		t.Fatalf("active relationships where a shares: %d %v", len(list), err)
	}
	all, err := n.svc.ListRelationships(ctx, sharing.RelationshipFilter{PersonRef: a})
	if err != nil || len(all) != 5 {
		t.Fatalf("all relationships of a: %d %v", len(all), err)
	}
	page, err := n.svc.ListRelationships(ctx, sharing.RelationshipFilter{PersonRef: a, Limit: 2})
	if err != nil || len(page) != 2 {
		t.Fatal(err)
	}
	rest, err := n.svc.ListRelationships(ctx, sharing.RelationshipFilter{PersonRef: a, AfterID: page[1].ID})
	if err != nil || len(rest) != 3 || rest[0].ID <= page[1].ID {
		t.Fatalf("second page: %d %v", len(rest), err)
	}
	n.conserved(t)
}

// TestR4R5Transitions walks every transition of the relationship state
// machine, and every forbidden one, through the store.
func TestR4R5Transitions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	sharer := n.register(t, employee(zhengzh))
	n.credit(t, sharer, "500")
	newPending := func(by sharing.Side) sharing.Relationship {
		ben := n.register(t, employee(luoyang))
		r, err := n.svc.Propose(ctx, proposal(henan, sharer, ben, by))
		wantErr(t, "propose", err)
		return r
	}
	cmd := func(r sharing.Relationship, by sharing.Side) sharing.CommandRequest {
		return sharing.CommandRequest{Key: key("cmd"), RelationshipID: r.ID, By: by}
	}

	// PENDING → ACTIVE, by the side that did not propose, either way round.
	for _, by := range []sharing.Side{sharing.SideSharer, sharing.SideBeneficiary} {
		r := newPending(by)
		_, err := n.svc.Consent(ctx, cmd(r, by))
		wantErr(t, "proposer consents", err, sharing.ErrBadTransition)
		_, err = n.svc.Decline(ctx, cmd(r, by))
		wantErr(t, "proposer declines", err, sharing.ErrBadTransition)
		a, err := n.svc.Consent(ctx, cmd(r, by.Other()))
		wantErr(t, "consent", err)
		if a.Status != sharing.StatusActive || a.Version != 2 || a.ActivatedAt != clk.Now() {
			t.Fatalf("consent: %+v", a)
		}
		_, err = n.svc.Consent(ctx, cmd(r, by.Other()))
		wantErr(t, "consent twice (new key)", err, sharing.ErrBadTransition)
	}

	// PENDING → DECLINED.
	r := newPending(sharing.SideSharer)
	d, err := n.svc.Decline(ctx, cmd(r, sharing.SideBeneficiary))
	wantErr(t, "decline", err)
	if d.Status != sharing.StatusDeclined || d.EndedAt.IsZero() {
		t.Fatalf("decline: %+v", d)
	}
	declined := d

	// PENDING → DISSOLVED (withdrawal).
	r = newPending(sharing.SideSharer)
	w, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("w"), RelationshipID: r.ID, By: sharing.SideSharer})
	wantErr(t, "withdraw", err)
	if w.Status != sharing.StatusDissolved || w.DissolveReason != sharing.ReasonVoluntarySharer {
		t.Fatalf("withdraw: %+v", w)
	}

	// ACTIVE → DISSOLVED by either party (R5).
	for _, by := range []sharing.Side{sharing.SideSharer, sharing.SideBeneficiary} {
		ben := n.register(t, employee(luoyang))
		a := n.activeRel(t, sharer, ben, "20")
		d, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), RelationshipID: a.ID, By: by})
		wantErr(t, "dissolve", err)
		if d.Status != sharing.StatusDissolved || d.DissolveReason != sharing.VoluntaryReason(by) || !d.Returned.Equal(y("20")) || d.Version != a.Version+1 {
			t.Fatalf("dissolve by %s: %+v", by, d)
		}
	}

	// PENDING → EXPIRED: consent at the expiry instant is too late (R4).
	r = newPending(sharing.SideBeneficiary)
	r2 := newPending(sharing.SideSharer)
	clk.Advance(sharing.DefaultProposalTTL)
	_, err = n.svc.Consent(ctx, cmd(r, sharing.SideSharer))
	wantErr(t, "consent at expiry", err, sharing.ErrExpired)
	_, err = n.svc.Decline(ctx, cmd(r, sharing.SideSharer))
	wantErr(t, "decline at expiry", err, sharing.ErrExpired)
	if got := n.rel(t, r.ID); got.Status != sharing.StatusPending {
		t.Fatalf("a refused consent changed the relationship: %+v", got)
	}
	expired, err := n.svc.ExpireProposals(ctx, clk.Now())
	wantErr(t, "expire", err)
	if expired != 2 {
		t.Fatalf("expired %d proposals, want 2", expired)
	}
	if again, _ := n.svc.ExpireProposals(ctx, clk.Now()); again != 0 {
		t.Fatalf("second sweep expired %d", again)
	}
	exp := n.rel(t, r2.ID)
	if exp.Status != sharing.StatusExpired || exp.Version != 2 {
		t.Fatalf("expired: %+v", exp)
	}

	// Every command on every final state is refused; nothing changes.
	dissolved := n.rel(t, w.ID)
	for _, final := range []sharing.Relationship{declined, exp, dissolved} {
		before := n.rel(t, final.ID)
		for _, by := range []sharing.Side{sharing.SideSharer, sharing.SideBeneficiary} {
			_, err := n.svc.Consent(ctx, cmd(final, by))
			wantErr(t, "consent "+string(final.Status), err, sharing.ErrBadTransition)
			_, err = n.svc.Decline(ctx, cmd(final, by))
			wantErr(t, "decline "+string(final.Status), err, sharing.ErrBadTransition)
			_, err = n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), RelationshipID: final.ID, By: by})
			wantErr(t, "dissolve "+string(final.Status), err, sharing.ErrBadTransition)
		}
		_, err := n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: final.ID, Quota: y("1")})
		wantErr(t, "quota "+string(final.Status), err, sharing.ErrNotActive)
		sameJSON(t, "final state unchanged", n.rel(t, final.ID), before)
	}
	// Unknown relationship.
	_, err = n.svc.Consent(ctx, sharing.CommandRequest{Key: key("c"), RelationshipID: sharing.RelationshipID(henan, "nope"), By: sharing.SideBeneficiary})
	wantErr(t, "unknown", err, sharing.ErrNotFound)
	// Each change wrote one RELATIONSHIP outbox row per version.
	if got, want := n.count(t, `SELECT count(*) FROM outbox WHERE kind = 'RELATIONSHIP'`), n.count(t, `SELECT coalesce(sum(version), 0) FROM relationships`); got != want {
		t.Fatalf("relationship outbox rows %d, versions %d", got, want)
	}
	n.conserved(t)
}

// TestR6AutomaticDissolution: every kind of insurance-relationship change, of
// the sharer or of the beneficiary, ends every live relationship of that
// person in the same transaction, returning the unused quota (R7).
func TestR6AutomaticDissolution(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	changes := map[string]struct {
		mut  func(*sharing.Enrollment)
		want sharing.DissolveReason
	}{
		"transfer":     {func(e *sharing.Enrollment) { e.Region = "410200" }, sharing.ReasonTransfer},
		"suspension":   {func(e *sharing.Enrollment) { e.Status = sharing.PersonSuspended }, sharing.ReasonSuspension},
		"uninsured":    {func(e *sharing.Enrollment) { e.Insured = false }, sharing.ReasonSuspension},
		"termination":  {func(e *sharing.Enrollment) { e.Status = sharing.PersonTerminated }, sharing.ReasonTermination},
		"death":        {func(e *sharing.Enrollment) { e.Status = sharing.PersonDeceased }, sharing.ReasonDeath},
		"pooling only": {func(e *sharing.Enrollment) { e.Mode = sharing.ModePoolingOnly }, sharing.ReasonAccountLost},
		"to resident": {func(e *sharing.Enrollment) {
			e.Scheme, e.Mode = sharing.SchemeResident, sharing.ModePoolingOnly
		}, sharing.ReasonAccountLost},
	}
	for name, c := range changes {
		for _, side := range []sharing.Side{sharing.SideSharer, sharing.SideBeneficiary} {
			x := n.register(t, employee(zhengzh)) // the person whose enrollment changes
			o1 := n.register(t, employee(luoyang))
			o2 := n.register(t, employee(luoyang))
			for _, p := range []string{x, o1, o2} {
				n.credit(t, p, "100")
			}
			var active, pending sharing.Relationship
			if side == sharing.SideSharer {
				active = n.activeRel(t, x, o1, "40")
				p, err := n.svc.Propose(ctx, proposal(henan, x, o2, sharing.SideSharer))
				wantErr(t, "propose", err)
				pending = p
			} else {
				active = n.activeRel(t, o1, x, "40")
				p, err := n.svc.Propose(ctx, proposal(henan, o2, x, sharing.SideSharer))
				wantErr(t, "propose", err)
				pending = p
			}
			untouched := n.activeRel(t, o1, o2, "10")
			ures, err := n.svc.Spend(ctx, spendReq(active, sharing.KindResidentPremium, "15.55", clk.Now()))
			wantErr(t, "spend", err)
			u := ures.Usage
			sharerBefore := n.account(t, active.SharerRef)

			e := employee(zhengzh)
			c.mut(&e)
			res, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: x, Enrollment: e})
			wantErr(t, name, err)
			if res.Reason != c.want || len(res.Dissolved) != 2 || len(res.Forwarded) != 0 || res.Person.Version != 2 {
				t.Fatalf("%s of %s: reason %s, dissolved %d, forwarded %d", name, side, res.Reason, len(res.Dissolved), len(res.Forwarded))
			}
			a := n.rel(t, active.ID)
			if a.Status != sharing.StatusDissolved || a.DissolveReason != c.want || !a.Returned.Equal(y("24.45")) {
				t.Fatalf("%s of %s: active became %+v", name, side, a)
			}
			if p := n.rel(t, pending.ID); p.Status != sharing.StatusDissolved || p.DissolveReason != c.want {
				t.Fatalf("%s of %s: pending became %+v", name, side, p)
			}
			if o := n.rel(t, untouched.ID); o.Status != sharing.StatusActive {
				t.Fatalf("%s: another pair's relationship became %s", name, o.Status)
			}
			after := n.account(t, active.SharerRef)
			if !after.Available.Equal(sharerBefore.Available.Add(y("24.45"))) || !after.Earmarked.Equal(sharerBefore.Earmarked.Sub(y("24.45"))) {
				t.Fatalf("%s: sharer account %+v → %+v", name, sharerBefore, after)
			}
			// The usage stays reversible; the money then goes back to the sharer directly.
			if _, err := n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: u.Key, Amount: y("5.55"), OccurredAt: clk.Now()}); err != nil {
				t.Fatal(err)
			}
			if got := n.account(t, active.SharerRef); !got.Available.Equal(after.Available.Add(y("5.55"))) {
				t.Fatalf("reversal after dissolution: %+v", got)
			}
		}
	}
	// Changes that do not end an insurance relationship dissolve nothing.
	x := n.register(t, withStatus(employee(zhengzh), sharing.PersonSuspended))
	o := n.register(t, employee(luoyang))
	n.credit(t, o, "10")
	r := n.activeRel(t, o, x, "5")
	res, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: x, Enrollment: employee(zhengzh)})
	if err != nil || res.Reason != "" || len(res.Dissolved) != 0 || n.rel(t, r.ID).Status != sharing.StatusActive {
		t.Fatalf("reactivation: %+v %v", res, err)
	}
	same, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: x, Enrollment: employee(zhengzh)})
	if err != nil || same.Person.Version != res.Person.Version {
		t.Fatalf("no-op change bumped the version: %+v %v", same, err)
	}
	_, err = n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: "00000000000000000000000000000000", Enrollment: employee(zhengzh)})
	wantErr(t, "unknown person", err, sharing.ErrNotFound)
	n.conserved(t)
}

// TestR7R8Quota: earmarking freezes money; the quota rises only with money
// and falls only to what is used; dissolution returns exactly the rest.
func TestR7R8Quota(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "100.00")
	r := n.activeRel(t, a, b, "")
	setQ := func(q string) (sharing.Relationship, error) {
		return n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y(q)})
	}
	_, err := setQ("100.01")
	wantErr(t, "earmark beyond balance", err, sharing.ErrInsufficientBalance)
	if _, err := setQ("60.00"); err != nil {
		t.Fatal(err)
	}
	acct := n.account(t, a)
	if !acct.Available.Equal(y("40.00")) || !acct.Earmarked.Equal(y("60.00")) {
		t.Fatalf("after earmark: %+v", acct)
	}
	// Frozen: own spending sees only the available part (seed 002 §二).
	_, err = n.svc.SpendOwn(ctx, sharing.MovementRequest{Key: key("own"), PersonRef: a, Amount: y("40.01")})
	wantErr(t, "own spend of earmarked money", err, sharing.ErrInsufficientBalance)
	mv, err := n.svc.SpendOwn(ctx, sharing.MovementRequest{Key: key("own"), PersonRef: a, Amount: y("30.00")})
	if err != nil || !mv.Available.Equal(y("10.00")) {
		t.Fatalf("own spend: %+v %v", mv, err)
	}
	_, err = setQ("70.01")
	wantErr(t, "raise beyond available", err, sharing.ErrInsufficientBalance)
	if q, err := setQ("70.00"); err != nil || !q.Quota.Equal(y("70.00")) {
		t.Fatalf("raise: %+v %v", q, err)
	}
	if _, err := n.svc.Spend(ctx, spendReq(r, sharing.KindPharmacy, "25.50", clk.Now())); err != nil {
		t.Fatal(err)
	}
	_, err = setQ("25.49")
	wantErr(t, "lower below used", err, sharing.ErrBelowUsed)
	low, err := setQ("25.50")
	if err != nil || !low.Remaining().IsZero() {
		t.Fatalf("lower to used: %+v %v", low, err)
	}
	if acct := n.account(t, a); !acct.Available.Equal(y("44.50")) || !acct.Earmarked.IsZero() {
		t.Fatalf("after lowering: %+v", acct)
	}
	if _, err := setQ("50.00"); err != nil {
		t.Fatal(err)
	}
	// R7: dissolution returns exactly quota − used (50.00 − 25.50).
	d, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), RelationshipID: r.ID, By: sharing.SideBeneficiary})
	if err != nil || !d.Returned.Equal(y("24.50")) {
		t.Fatalf("dissolve: %+v %v", d, err)
	}
	if acct := n.account(t, a); !acct.Available.Equal(y("44.50")) || !acct.Earmarked.IsZero() {
		t.Fatalf("after dissolution: %+v", acct)
	}
	if !n.balanceOf(t, sharing.AccountQuota(r.ID)).IsZero() {
		t.Fatal("quota account not empty after dissolution")
	}
	// Only the sharer sets a quota; only an ACTIVE relationship has one.
	_, err = n.svc.Apply(ctx, sharing.Command{Key: key("q"), Kind: sharing.CommandSetQuota, RelationshipID: r.ID, By: sharing.SideBeneficiary, Quota: y("1")})
	wantErr(t, "beneficiary sets quota", err, sharing.ErrInvalidInput)
	p, err := n.svc.Propose(ctx, proposal(henan, a, n.register(t, employee(luoyang)), sharing.SideSharer))
	wantErr(t, "propose", err)
	_, err = n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: p.ID, Quota: y("1")})
	wantErr(t, "quota of pending", err, sharing.ErrNotActive)
	n.conserved(t)
}

// TestR9R10Usage: usage only within the remaining quota of an ACTIVE
// relationship; medical and pharmacy need an insured beneficiary, premiums
// do not.
func TestR9R10Usage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	n.credit(t, a, "1000")
	insured := n.register(t, employee(luoyang))
	notYet := n.register(t, resident(luoyang, false))
	r := n.activeRel(t, a, insured, "100.00")
	ru := n.activeRel(t, a, notYet, "100.00")

	if _, err := n.svc.Spend(ctx, spendReq(r, sharing.KindMedical, "60.00", clk.Now())); err != nil {
		t.Fatal(err)
	}
	_, err := n.svc.Spend(ctx, spendReq(r, sharing.KindPharmacy, "40.01", clk.Now()))
	wantErr(t, "over the remaining quota", err, sharing.ErrQuotaExceeded)
	if _, err := n.svc.Spend(ctx, spendReq(r, sharing.KindPharmacy, "40.00", clk.Now())); err != nil {
		t.Fatalf("exactly the remaining quota: %v", err)
	}
	_, err = n.svc.Spend(ctx, spendReq(r, sharing.KindLTCPremium, "0.01", clk.Now()))
	wantErr(t, "exhausted", err, sharing.ErrQuotaExceeded)

	for _, k := range []sharing.Kind{sharing.KindMedical, sharing.KindPharmacy} {
		_, err := n.svc.Spend(ctx, spendReq(ru, k, "1.00", clk.Now()))
		wantErr(t, string(k)+" for the uninsured", err, sharing.ErrBeneficiaryUninsured)
	}
	for _, k := range []sharing.Kind{sharing.KindResidentPremium, sharing.KindLTCPremium} {
		if _, err := n.svc.Spend(ctx, spendReq(ru, k, "10.00", clk.Now())); err != nil {
			t.Fatalf("%s for the not-yet-insured: %v", k, err)
		}
	}
	// Not ACTIVE: a pending relationship has nothing to spend.
	p, _ := n.svc.Propose(ctx, proposal(henan, a, n.register(t, employee(luoyang)), sharing.SideSharer))
	_, err = n.svc.Spend(ctx, spendReq(p, sharing.KindMedical, "1.00", clk.Now()))
	wantErr(t, "pending", err, sharing.ErrNotActive)
	_, err = n.svc.Spend(ctx, spendReq(sharing.Relationship{ID: sharing.RelationshipID(henan, "none"), BeneficiaryProvince: henan}, sharing.KindMedical, "1", clk.Now()))
	wantErr(t, "unknown relationship", err, sharing.ErrNotFound)
	if got := n.balanceOf(t, sharing.AccountPaid(sharing.KindMedical)); !got.Equal(y("60.00")) {
		t.Fatalf("ext:paid:MEDICAL = %s", got)
	}
	// Local usages are reported LOCAL, not cross-province.
	if got := n.count(t, `SELECT count(*) FROM outbox WHERE kind = 'USAGE' AND role = 'LOCAL' AND NOT cross_province`); got != 4 {
		t.Fatalf("local usage outbox rows = %d, want 4", got)
	}
	n.conserved(t)
}

// TestR11Idempotency: a retried request replays the first answer, approval or
// refusal, and moves no money twice; a reused key with another request is
// refused and moves nothing.
func TestR11Idempotency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "100")
	r := n.activeRel(t, a, b, "50.00")

	req := spendReq(r, sharing.KindMedical, "20.00", clk.Now())
	first, err := n.svc.Spend(ctx, req)
	if err != nil || first.Replayed || !first.Remaining.Equal(y("30.00")) {
		t.Fatalf("first answer %+v %v", first, err)
	}
	unreplay := func(r *sharing.UsageResult) { r.Replayed = false }
	clk.Advance(time.Hour) // a later retry must still get the first answer
	for i := 0; i < 3; i++ {
		again, err := n.svc.Spend(ctx, req)
		wantErr(t, "replay", err)
		sameJSON(t, "replayed answer", firstAnswer(t, "replay", again, again.Replayed, unreplay), first)
	}
	// Even after a partial reversal the replay is the first answer.
	if _, err := n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: req.Key, Amount: y("1"), OccurredAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	again, err := n.svc.Spend(ctx, req)
	wantErr(t, "replay after reversal", err)
	sameJSON(t, "replay after reversal", firstAnswer(t, "replay after reversal", again, again.Replayed, unreplay), first)

	before := snapshot(t, n)
	for name, mut := range map[string]func(*sharing.UsageRequest){
		"amount": func(r *sharing.UsageRequest) { r.Amount = y("20.01") },
		"kind":   func(r *sharing.UsageRequest) { r.Kind = sharing.KindPharmacy },
		"region": func(r *sharing.UsageRequest) { r.PayeeRegion = zhengzh },
		"time":   func(r *sharing.UsageRequest) { r.OccurredAt = r.OccurredAt.Add(time.Second) },
	} {
		other := req
		mut(&other)
		_, err := n.svc.Spend(ctx, other)
		wantErr(t, "key reused with another "+name, err, sharing.ErrKeyReused)
	}
	sameSnapshot(t, "after key reuse", before, snapshot(t, n))

	// A refusal is an answer too: raising the quota does not change it.
	big := spendReq(r, sharing.KindMedical, "40.00", clk.Now())
	_, err = n.svc.Spend(ctx, big)
	wantErr(t, "over quota", err, sharing.ErrQuotaExceeded)
	if _, err := n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y("90")}); err != nil {
		t.Fatal(err)
	}
	refusedAgain, err := n.svc.Spend(ctx, big)
	wantErr(t, "refusal replayed", err, sharing.ErrQuotaExceeded)
	if refusedAgain.Approved || !refusedAgain.Replayed || refusedAgain.Refusal != sharing.RefusalQuotaExceeded || !refusedAgain.Remaining.Equal(y("31.00")) {
		t.Fatalf("replayed refusal %+v", refusedAgain)
	}
	big.Key = key("use")
	if _, err := n.svc.Spend(ctx, big); err != nil {
		t.Fatalf("a new key is a new request: %v", err)
	}

	// Commands and movements replay too.
	mreq := sharing.MovementRequest{Key: key("credit"), PersonRef: a, Amount: y("5")}
	m1, err := n.svc.Credit(ctx, mreq)
	wantErr(t, "credit", err)
	m2, err := n.svc.Credit(ctx, mreq)
	wantErr(t, "credit replay", err)
	sameJSON(t, "credit replay", m2, m1)
	mreq.Amount = y("6")
	_, err = n.svc.Credit(ctx, mreq)
	wantErr(t, "credit key reuse", err, sharing.ErrKeyReused)
	_, err = n.svc.SpendOwn(ctx, sharing.MovementRequest{Key: mreq.Key, PersonRef: a, Amount: y("5")})
	wantErr(t, "credit key used for own spending", err, sharing.ErrKeyReused)

	p := proposal(henan, a, n.register(t, employee(luoyang)), sharing.SideSharer)
	r1, err := n.svc.Propose(ctx, p)
	wantErr(t, "propose", err)
	r2, err := n.svc.Propose(ctx, p)
	wantErr(t, "propose replay", err)
	sameJSON(t, "proposal replay", r2, r1)
	c := sharing.CommandRequest{Key: key("consent"), RelationshipID: r1.ID, By: sharing.SideBeneficiary}
	c1, err := n.svc.Consent(ctx, c)
	wantErr(t, "consent", err)
	c2, err := n.svc.Consent(ctx, c)
	wantErr(t, "consent replay", err)
	sameJSON(t, "consent replay", c2, c1)
	_, err = n.svc.Decline(ctx, c)
	wantErr(t, "consent key used to decline", err, sharing.ErrKeyReused)
	n.conserved(t)
}

// TestR12Reversal: partial and full reversals restore the quota, never exceed
// the usage, and are idempotent by reversal key.
func TestR12Reversal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "100")
	r := n.activeRel(t, a, b, "50.00")
	ures, err := n.svc.Spend(ctx, spendReq(r, sharing.KindPharmacy, "30.00", clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	u := ures.Usage
	clk.Advance(40 * 24 * time.Hour) // a refund in a later month
	rreq := sharing.ReversalRequest{Key: key("rv"), UsageKey: u.Key, Amount: y("10.10"), OccurredAt: clk.Now()}
	rvres, err := n.svc.Reverse(ctx, rreq)
	if err != nil || rvres.Replayed || !rvres.ReversedTotal.Equal(y("10.10")) || !rvres.Remaining.Equal(y("30.10")) {
		t.Fatalf("reversal answer %+v %v", rvres, err)
	}
	rv := rvres.Reversal
	if rv.UsageKey != u.Key || rv.Role != sharing.RoleLocal || rv.Kind != u.Kind || rv.PayerRegion != zhengzh || !rv.OccurredAt.Equal(clk.Now()) {
		t.Fatalf("reversal %+v", rv)
	}
	if got := n.rel(t, r.ID); !got.Used.Equal(y("19.90")) || !got.Remaining().Equal(y("30.10")) {
		t.Fatalf("after partial reversal: %+v", got)
	}
	again, err := n.svc.Reverse(ctx, rreq)
	wantErr(t, "reversal replay", err)
	sameJSON(t, "reversal replay", firstAnswer(t, "reversal replay", again, again.Replayed, func(r *sharing.ReversalResult) { r.Replayed = false }), rvres)
	other := rreq
	other.Amount = y("10.11")
	_, err = n.svc.Reverse(ctx, other)
	wantErr(t, "reversal key reused", err, sharing.ErrKeyReused)

	_, err = n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: u.Key, Amount: y("19.91"), OccurredAt: clk.Now()})
	wantErr(t, "reversals beyond the usage", err, sharing.ErrReversalExceedsUsage)
	if _, err := n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: u.Key, Amount: y("19.90"), OccurredAt: clk.Now()}); err != nil {
		t.Fatalf("reverse the rest: %v", err)
	}
	_, err = n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: u.Key, Amount: y("0.01"), OccurredAt: clk.Now()})
	wantErr(t, "fully reversed", err, sharing.ErrReversalExceedsUsage)
	got, err := n.svc.GetUsage(ctx, u.Key)
	if err != nil || !got.Reversed.Equal(y("30.00")) {
		t.Fatalf("usage after full reversal: %+v %v", got, err)
	}
	if rel := n.rel(t, r.ID); !rel.Used.IsZero() || !rel.Remaining().Equal(y("50.00")) {
		t.Fatalf("quota not restored: %+v", rel)
	}
	if !n.balanceOf(t, sharing.AccountPaid(sharing.KindPharmacy)).IsZero() {
		t.Fatal("ext:paid:PHARMACY not back to zero")
	}
	_, err = n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: "no-such-usage", Amount: y("1"), OccurredAt: clk.Now()})
	wantErr(t, "unknown usage", err, sharing.ErrNotFound)
	if got := n.count(t, `SELECT count(*) FROM outbox WHERE kind = 'REVERSAL'`); got != 2 {
		t.Fatalf("reversal outbox rows = %d", got)
	}
	n.conserved(t)
}

func TestCreditOverflow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := newNode(t, henan, newClock(), nil)
	a := n.register(t, employee(zhengzh))
	n.credit(t, a, "9999999999999999.99")
	before := snapshot(t, n)
	_, err := n.svc.Credit(ctx, sharing.MovementRequest{Key: key("c"), PersonRef: a, Amount: y("0.01")})
	wantErr(t, "balance over NUMERIC(18,2)", err, sharing.ErrInvalidInput, money.ErrOutOfRange)
	sameSnapshot(t, "overflow", before, snapshot(t, n))
}

// TestEnrollmentForms: registration is idempotent and brings an enrollment
// up to date; a change can be an event applied to the current state.
func TestEnrollmentForms(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	id := newID(t, "410102")
	first, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: id, Enrollment: employee(zhengzh)})
	if err != nil || !first.Created || first.Person.MaskedID != id[:4]+"**********"+id[14:] {
		t.Fatalf("register: %+v %v", first, err)
	}
	x := first.Person.Ref
	if n.count(t, `SELECT count(*) FROM persons WHERE masked_id = $1 OR person_ref = $1`, id) != 0 {
		t.Fatal("the clear ID number is stored")
	}
	again, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: strings.ToLower(id), Enrollment: employee(zhengzh)})
	if err != nil || again.Created || again.Person.Ref != x || again.Person.Version != 1 || again.Reason != "" {
		t.Fatalf("re-register: %+v %v", again, err)
	}
	o := n.register(t, employee(luoyang))
	n.credit(t, x, "100")
	r := n.activeRel(t, x, o, "30")
	// Re-registration with another enrollment is that enrollment change (R6).
	moved, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: id, Enrollment: employee(luoyang)})
	if err != nil || moved.Created || moved.Reason != sharing.ReasonTransfer || len(moved.Dissolved) != 1 || moved.Person.Region != luoyang {
		t.Fatalf("re-register elsewhere: %+v %v", moved, err)
	}
	if got := n.rel(t, r.ID); got.Status != sharing.StatusDissolved || !got.Returned.Equal(y("30")) {
		t.Fatalf("relationship after re-registration: %+v", got)
	}

	// Events.
	r = n.activeRel(t, x, o, "10")
	bad := map[string]sharing.EnrollmentChange{
		"nothing":                       {PersonRef: x},
		"voluntary event":               {PersonRef: x, Event: sharing.ReasonVoluntarySharer},
		"transfer without where":        {PersonRef: x, Event: sharing.ReasonTransfer},
		"transfer out of the province":  {PersonRef: x, Event: sharing.ReasonTransfer, NewRegion: bjRegion},
		"region with a full enrollment": {PersonRef: x, Enrollment: employee(zhengzh), NewRegion: zhengzh},
	}
	for name, ch := range bad {
		_, err := n.svc.UpdateEnrollment(ctx, ch)
		wantErr(t, name, err, sharing.ErrInvalidInput)
	}
	res, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: x, Event: sharing.ReasonTransfer, NewRegion: zhengzh})
	if err != nil || res.Reason != sharing.ReasonTransfer || len(res.Dissolved) != 1 || res.Person.Region != zhengzh {
		t.Fatalf("transfer event: %+v %v", res, err)
	}
	again2, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: x, Event: sharing.ReasonTransfer, NewRegion: zhengzh})
	if err != nil || again2.Reason != "" || again2.Person.Version != res.Person.Version {
		t.Fatalf("repeated transfer event: %+v %v", again2, err)
	}
	r = n.activeRel(t, x, o, "10")
	lost, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: x, Event: sharing.ReasonAccountLost})
	if err != nil || lost.Reason != sharing.ReasonAccountLost || lost.Person.Mode != sharing.ModePoolingOnly || len(lost.Dissolved) != 1 {
		t.Fatalf("account lost event: %+v %v", lost, err)
	}
	_, err = n.svc.Propose(ctx, proposal(henan, x, o, sharing.SideSharer))
	wantErr(t, "sharer without account", err, sharing.ErrNoPersonalAccount)
	for _, ev := range []sharing.DissolveReason{sharing.ReasonSuspension, sharing.ReasonTermination, sharing.ReasonDeath} {
		res, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: o, Event: ev})
		if err != nil || res.Reason != ev {
			t.Fatalf("%s event: %+v %v", ev, res, err)
		}
	}
	if p, _ := n.svc.GetPerson(ctx, o); p.Status != sharing.PersonDeceased {
		t.Fatalf("after events: %+v", p)
	}
	n.conserved(t)
}

// TestPayerChecks: the payer node checks what the switch tells it.
func TestPayerChecks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, clk, A, B := twoNodes(t)
	a := A.register(t, employee(zhengzh))
	A.credit(t, a, "100")
	bp, err := B.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: newID(t, "110105"), Enrollment: employee(bjRegion)})
	if err != nil {
		t.Fatal(err)
	}
	r, err := A.svc.Propose(ctx, sharing.Proposal{Key: key("p"), By: sharing.SideSharer, SharerRef: a, SharerProvince: henan, BeneficiaryRef: bp.Person.Ref, BeneficiaryProvince: beijing, Relation: sharing.RelationParent})
	wantErr(t, "propose", err)
	_, err = A.svc.Apply(ctx, sharing.Command{Key: key("c"), Origin: beijing, Kind: sharing.CommandConsent, RelationshipID: r.ID, By: sharing.SideBeneficiary})
	wantErr(t, "consent", err)
	_, err = A.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y("50")})
	wantErr(t, "quota", err)

	req := sharing.UsageRequest{Key: key("u"), RelationshipID: r.ID, Kind: sharing.KindMedical, Amount: y("5"), PayeeProvince: beijing, PayeeRegion: bjRegion, OccurredAt: clk.Now()}
	wrong := req
	wrong.BeneficiaryRef = a
	_, err = A.svc.Debit(ctx, wrong)
	wantErr(t, "debit for another beneficiary", err, sharing.ErrInvalidInput)
	elsewhere := req
	elsewhere.PayeeProvince, elsewhere.PayeeRegion = "440000", "440100"
	_, err = A.svc.Debit(ctx, elsewhere)
	wantErr(t, "debit paid in a third province", err, sharing.ErrWrongProvince)
	req.BeneficiaryRef = bp.Person.Ref
	res, err := A.svc.Debit(ctx, req)
	if err != nil || !res.Approved || !res.Remaining.Equal(y("45")) {
		t.Fatalf("debit: %+v %v", res, err)
	}
	rev := sharing.ReversalRequest{Key: key("rv"), UsageKey: req.Key, Amount: y("1"), OccurredAt: clk.Now(), PayeeProvince: "440000"}
	_, err = A.svc.ReverseDebit(ctx, rev)
	wantErr(t, "reversal from another payee province", err, sharing.ErrWrongProvince)
	rev.PayeeProvince = beijing
	rres, err := A.svc.ReverseDebit(ctx, rev)
	if err != nil || !rres.ReversedTotal.Equal(y("1")) || !rres.Remaining.Equal(y("46")) {
		t.Fatalf("reverse debit: %+v %v", rres, err)
	}
	// A usage of a relationship the payer is not the authority of.
	_, err = B.svc.ReverseDebit(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: req.Key, Amount: y("1"), OccurredAt: clk.Now()})
	wantErr(t, "reverse debit where the usage is unknown", err, sharing.ErrNotFound)
	A.conserved(t)
}
