package provincedb_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"gongji/sharing"
)

// switchboard stands in for the clearing switch: it routes cross-province
// calls between in-process nodes (the gRPC transport is another package's).
type switchboard struct {
	mu    sync.Mutex
	nodes map[string]*node
	// loseDebitAnswers > 0 makes Debit succeed at the payer and then report
	// ErrUnavailable to the payee, as if the answer were lost on the way back.
	loseDebitAnswers int
}

func (sb *switchboard) target(p string) (*node, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	n, ok := sb.nodes[p]
	if !ok {
		return nil, fmt.Errorf("%w: no node %s", sharing.ErrUnavailable, p)
	}
	return n, nil
}

func (sb *switchboard) Propose(ctx context.Context, prov string, p sharing.Proposal) (sharing.Relationship, error) {
	n, err := sb.target(prov)
	if err != nil {
		return sharing.Relationship{}, err
	}
	return n.svc.Propose(ctx, p)
}

func (sb *switchboard) Command(ctx context.Context, prov string, c sharing.Command) (sharing.Relationship, error) {
	n, err := sb.target(prov)
	if err != nil {
		return sharing.Relationship{}, err
	}
	return n.svc.Apply(ctx, c)
}

func (sb *switchboard) Debit(ctx context.Context, prov string, req sharing.UsageRequest) (sharing.UsageResult, error) {
	n, err := sb.target(prov)
	if err != nil {
		return sharing.UsageResult{}, err
	}
	res, err := n.svc.Debit(ctx, req)
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err == nil && sb.loseDebitAnswers > 0 {
		sb.loseDebitAnswers--
		return sharing.UsageResult{}, fmt.Errorf("%w: answer lost", sharing.ErrUnavailable)
	}
	return res, err
}

func (sb *switchboard) ReverseDebit(ctx context.Context, prov string, req sharing.ReversalRequest) (sharing.ReversalResult, error) {
	n, err := sb.target(prov)
	if err != nil {
		return sharing.ReversalResult{}, err
	}
	return n.svc.ReverseDebit(ctx, req)
}

// deliver runs one relay pass of from's queue and returns the messages delivered.
func (sb *switchboard) deliver(t testing.TB, from *node, now time.Time) int {
	t.Helper()
	ctx := context.Background()
	msgs, err := from.store.DueRelay(ctx, now, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		to, err := sb.target(m.TargetProvince)
		if err != nil {
			t.Fatal(err)
		}
		switch m.Kind {
		case sharing.RelaySnapshot:
			snap, err := m.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			_, err = to.svc.ApplyReplica(ctx, snap)
			wantErr(t, "apply replica", err)
		case sharing.RelayDissolve:
			c, err := m.DissolveCommand()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := to.svc.Apply(ctx, c); err != nil && !errors.Is(err, sharing.ErrBadTransition) {
				t.Fatalf("apply dissolve: %v", err)
			}
		}
		if err := from.store.RelayDone(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	return len(msgs)
}

func twoNodes(t *testing.T) (*switchboard, *clock, *node, *node) {
	clk := newClock()
	sb := &switchboard{nodes: map[string]*node{}}
	a := newNode(t, henan, clk, sb)
	b := newNode(t, beijing, clk, sb)
	sb.nodes[henan], sb.nodes[beijing] = a, b
	return sb, clk, a, b
}

// TestR13CrossProvince: a Henan sharer shares with a Beijing beneficiary. The
// relationship lives at the sharer's node with a replica in Beijing; a usage
// paid in Beijing debits the quota in Henan (PAYER) and is recorded in Beijing
// (PAYEE); both report it under one usage key.
func TestR13CrossProvince(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sb, clk, A, B := twoNodes(t)
	a := A.register(t, employee(zhengzh))
	A.credit(t, a, "200.00")
	bPerson, err := B.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: newID(t, "110105"), Enrollment: employee(bjRegion)})
	if err != nil {
		t.Fatal(err)
	}
	b := bPerson.Person.Ref

	// The sharer proposes at A; the replica reaches B through the relay queue.
	r, err := A.svc.Propose(ctx, sharing.Proposal{Key: key("p"), By: sharing.SideSharer, SharerRef: a, SharerProvince: henan,
		BeneficiaryRef: b, BeneficiaryProvince: beijing, Relation: sharing.RelationChild})
	wantErr(t, "propose", err)
	if got := sb.deliver(t, A, clk.Now()); got != 1 {
		t.Fatalf("delivered %d snapshots", got)
	}
	if rep := B.rel(t, r.ID); rep.Status != sharing.StatusPending || rep.Version != 1 {
		t.Fatalf("replica %+v", rep)
	}
	// The beneficiary consents at B; B forwards to A and keeps the answer.
	act, err := B.svc.Consent(ctx, sharing.CommandRequest{Key: key("c"), RelationshipID: r.ID, By: sharing.SideBeneficiary})
	wantErr(t, "consent through B", err)
	if act.Status != sharing.StatusActive || B.rel(t, r.ID).Version != 2 || A.rel(t, r.ID).Status != sharing.StatusActive {
		t.Fatalf("consent: %+v", act)
	}
	sb.deliver(t, A, clk.Now()) // v2 again: already there, not applied twice
	// B cannot act as the sharer, nor A as the beneficiary.
	_, err = B.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y("1")})
	wantErr(t, "quota set at the beneficiary's node", err, sharing.ErrWrongProvince)
	_, err = A.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), RelationshipID: r.ID, By: sharing.SideBeneficiary})
	wantErr(t, "beneficiary acting at the sharer's node", err, sharing.ErrWrongProvince)
	if _, err := A.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y("100.00")}); err != nil {
		t.Fatal(err)
	}

	// A usage paid in Beijing.
	req := sharing.UsageRequest{Key: key("bj-hosp"), RelationshipID: r.ID, Kind: sharing.KindMedical, Amount: y("30.00"), PayeeRegion: bjRegion, OccurredAt: clk.Now()}
	res, err := B.svc.Spend(ctx, req)
	wantErr(t, "cross-province spend", err)
	u := res.Usage
	if !res.Approved || res.Replayed || !res.Remaining.Equal(y("70.00")) {
		t.Fatalf("payee answer %+v", res)
	}
	if u.Role != sharing.RolePayee || !u.CrossProvince || u.PayerProvince != henan || u.PayerRegion != zhengzh ||
		u.PayeeProvince != beijing || u.SharerRef != a || u.BeneficiaryRef != b || u.RelationshipID != r.ID {
		t.Fatalf("payee usage %+v", u)
	}
	pu, err := A.svc.GetUsage(ctx, req.Key)
	if err != nil || pu.Role != sharing.RolePayer {
		t.Fatalf("payer usage %+v %v", pu, err)
	}
	if !A.balanceOf(t, sharing.AccountDueClearing).Equal(y("30.00")) || !B.balanceOf(t, sharing.AccountDueFromClearing).Equal(y("30.00")) {
		t.Fatal("due balances after the usage")
	}
	// Both outboxes report it under the same key, identical but for the role.
	pa := outboxUsage(t, A, req.Key)
	pb := outboxUsage(t, B, req.Key)
	if pa.Role != sharing.RolePayer || pb.Role != sharing.RolePayee {
		t.Fatalf("roles %s %s", pa.Role, pb.Role)
	}
	pa.Role, pa.RecordedAt = pb.Role, pb.RecordedAt
	sameJSON(t, "payer and payee reports", pa, pb)

	// A refusal from the payer reaches the payee as its error; B records nothing.
	_, err = B.svc.Spend(ctx, sharing.UsageRequest{Key: key("bj-big"), RelationshipID: r.ID, Kind: sharing.KindPharmacy, Amount: y("70.01"), PayeeRegion: bjRegion, OccurredAt: clk.Now()})
	wantErr(t, "over quota across provinces", err, sharing.ErrQuotaExceeded)

	// The payer's answer is lost; the payee retries with the same key and
	// gets the first answer: the quota is debited once.
	sb.mu.Lock()
	sb.loseDebitAnswers = 1
	sb.mu.Unlock()
	lost := sharing.UsageRequest{Key: key("bj-lost"), RelationshipID: r.ID, Kind: sharing.KindPharmacy, Amount: y("20.00"), PayeeRegion: bjRegion, OccurredAt: clk.Now()}
	_, err = B.svc.Spend(ctx, lost)
	wantErr(t, "answer lost", err, sharing.ErrUnavailable)
	retried, err := B.svc.Spend(ctx, lost)
	wantErr(t, "retry", err)
	if !A.rel(t, r.ID).Used.Equal(y("50.00")) || retried.Usage.Key != lost.Key || !retried.Remaining.Equal(y("50.00")) {
		t.Fatalf("after retry: used %s", A.rel(t, r.ID).Used)
	}
	replay, err := B.svc.Spend(ctx, lost)
	wantErr(t, "replay at payee", err)
	sameJSON(t, "payee replay", firstAnswer(t, "payee replay", replay, replay.Replayed, func(r *sharing.UsageResult) { r.Replayed = false }), retried)

	// A refund in Beijing reverses at the payer first.
	refundKey := key("bj-refund")
	rv, err := B.svc.Reverse(ctx, sharing.ReversalRequest{Key: refundKey, UsageKey: req.Key, Amount: y("10.00"), OccurredAt: clk.Now()})
	wantErr(t, "cross-province reversal", err)
	if rv.Reversal.Role != sharing.RolePayee || !A.rel(t, r.ID).Used.Equal(y("40.00")) || !rv.ReversedTotal.Equal(y("10.00")) || !rv.Remaining.Equal(y("60.00")) {
		t.Fatalf("reversal %+v", rv)
	}
	_, err = A.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("x"), UsageKey: req.Key, Amount: y("1"), OccurredAt: clk.Now()})
	wantErr(t, "reverse at the payer node directly", err, sharing.ErrWrongProvince)
	_, err = B.svc.Reverse(ctx, sharing.ReversalRequest{Key: refundKey, UsageKey: req.Key, Amount: y("20.01"), OccurredAt: clk.Now()})
	wantErr(t, "reversal key reused", err, sharing.ErrKeyReused)
	_, err = B.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("bj-refund"), UsageKey: req.Key, Amount: y("20.01"), OccurredAt: clk.Now()})
	wantErr(t, "reversal beyond usage", err, sharing.ErrReversalExceedsUsage)
	if got, want := A.balanceOf(t, sharing.AccountDueClearing), B.balanceOf(t, sharing.AccountDueFromClearing); !got.Equal(y("40.00")) || !want.Equal(got) {
		t.Fatalf("due:clearing %s vs due:from_clearing %s", got, want)
	}

	// The beneficiary dies in Beijing: B queues a dissolution for A (R6);
	// A dissolves and returns the unused quota (R7); B's replica follows.
	death, err := B.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: b, Event: sharing.ReasonDeath})
	if err != nil || len(death.Forwarded) != 1 || len(death.Dissolved) != 0 || death.Reason != sharing.ReasonDeath || death.Person.Status != sharing.PersonDeceased {
		t.Fatalf("death at B: %+v %v", death, err)
	}
	before := A.account(t, a)
	if got := sb.deliver(t, B, clk.Now()); got != 1 {
		t.Fatalf("delivered %d dissolutions", got)
	}
	d := A.rel(t, r.ID)
	if d.Status != sharing.StatusDissolved || d.DissolveReason != sharing.ReasonDeath || !d.Returned.Equal(y("60.00")) {
		t.Fatalf("dissolved at A: %+v", d)
	}
	if got := A.account(t, a); !got.Available.Equal(before.Available.Add(y("60.00"))) || !got.Earmarked.IsZero() {
		t.Fatalf("quota not returned: %+v", got)
	}
	sb.deliver(t, A, clk.Now())
	if rep := B.rel(t, r.ID); rep.Status != sharing.StatusDissolved || rep.Version != d.Version {
		t.Fatalf("replica after dissolution: %+v", rep)
	}
	// Re-delivering the same dissolution is harmless.
	sb.deliver(t, B, clk.Now().Add(time.Hour))

	// The beneficiary side may propose too (forwarded to the sharer's node).
	b2, err := B.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: newID(t, "110105"), Enrollment: resident(bjRegion, false)})
	if err != nil {
		t.Fatal(err)
	}
	p2 := sharing.Proposal{Key: key("p"), By: sharing.SideBeneficiary, SharerRef: a, SharerProvince: henan, BeneficiaryRef: b2.Person.Ref, BeneficiaryProvince: beijing, Relation: sharing.RelationGrandchildMaternal}
	r2, err := B.svc.Propose(ctx, p2)
	wantErr(t, "proposal from the beneficiary's side", err)
	if r2.ID != sharing.RelationshipID(beijing, p2.Key) || B.rel(t, r2.ID).Version != 1 || A.rel(t, r2.ID).ProposedBy != sharing.SideBeneficiary {
		t.Fatalf("forwarded proposal %+v", r2)
	}
	again, err := B.svc.Propose(ctx, p2)
	wantErr(t, "proposal replay", err)
	sameJSON(t, "forwarded proposal replay", again, r2)
	_, err = B.svc.Consent(ctx, sharing.CommandRequest{Key: key("c"), RelationshipID: r2.ID, By: sharing.SideBeneficiary})
	wantErr(t, "proposer consents", err, sharing.ErrBadTransition)
	if _, err := A.svc.Consent(ctx, sharing.CommandRequest{Key: key("c"), RelationshipID: r2.ID, By: sharing.SideSharer}); err != nil {
		t.Fatal(err)
	}
	sb.deliver(t, A, clk.Now())
	if B.rel(t, r2.ID).Status != sharing.StatusActive {
		t.Fatal("replica did not follow the consent")
	}
	A.conserved(t)
	B.conserved(t)
}

func outboxUsage(t testing.TB, n *node, usageKey string) sharing.Usage {
	t.Helper()
	recs, err := n.store.PendingOutbox(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Kind == sharing.OutboxUsage && r.Key == usageKey {
			u, err := r.Usage()
			if err != nil {
				t.Fatal(err)
			}
			if r.Role != u.Role || r.CrossProvince != u.CrossProvince {
				t.Fatalf("outbox row %d header disagrees with its payload", r.Seq)
			}
			return u
		}
	}
	t.Fatalf("no outbox row for usage %s", usageKey)
	return sharing.Usage{}
}

// TestReplicaVersions: snapshots apply only when newer, in any order.
func TestReplicaVersions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, clk, A, B := twoNodes(t)
	a := A.register(t, employee(zhengzh))
	A.credit(t, a, "10")
	bp, err := B.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: newID(t, "110105"), Enrollment: employee(bjRegion)})
	if err != nil {
		t.Fatal(err)
	}
	r, err := A.svc.Propose(ctx, sharing.Proposal{Key: key("p"), By: sharing.SideSharer, SharerRef: a, SharerProvince: henan, BeneficiaryRef: bp.Person.Ref, BeneficiaryProvince: beijing, Relation: sharing.RelationSpouse})
	if err != nil {
		t.Fatal(err)
	}
	v1 := r
	v2, err := A.svc.Apply(ctx, sharing.Command{Key: key("c"), Origin: beijing, Kind: sharing.CommandConsent, RelationshipID: r.ID, By: sharing.SideBeneficiary})
	if err != nil {
		t.Fatal(err)
	}
	v3, err := A.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y("5")})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		snap    sharing.Relationship
		applied bool
		version int64
	}{{v2, true, 2}, {v1, false, 2}, {v3, true, 3}, {v3, false, 3}, {v2, false, 3}} {
		ok, err := B.svc.ApplyReplica(ctx, step.snap)
		if err != nil || ok != step.applied || B.rel(t, r.ID).Version != step.version {
			t.Fatalf("apply v%d: applied %t, %v; replica v%d", step.snap.Version, ok, err, B.rel(t, r.ID).Version)
		}
	}
	if rep := B.rel(t, r.ID); !rep.Quota.Equal(y("5")) {
		t.Fatalf("replica quota %s", rep.Quota)
	}
	// A replica is never spent on directly; a debit needs the authority.
	_, err = B.svc.Debit(ctx, sharing.UsageRequest{Key: key("u"), RelationshipID: r.ID, Kind: sharing.KindMedical, Amount: y("1"), PayeeProvince: henan, PayeeRegion: zhengzh, OccurredAt: clk.Now()})
	wantErr(t, "debit at the replica", err, sharing.ErrWrongProvince)
	B.conserved(t)
}
