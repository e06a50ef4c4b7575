package provinceapi_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/pii"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/provinceapi"
)

// spendReq is a valid usage request of node n at the node's current time.
func spendReq(n *node, key, relID, amount string) *provincev1.SpendRequest {
	return &provincev1.SpendRequest{
		UsageKey: key, RelationshipId: relID, Kind: provincev1.UsageKind_USAGE_KIND_MEDICAL, Amount: amount,
		PayeeRegionCode: n.region, OccurredAt: timestamppb.New(n.clock.now().Add(-time.Minute)),
	}
}

func reverseReq(n *node, key, usageKey, amount string) *provincev1.ReverseRequest {
	return &provincev1.ReverseRequest{
		ReversalKey: key, UsageKey: usageKey, Amount: amount, OccurredAt: timestamppb.New(n.clock.now().Add(-time.Second)),
	}
}

func wantAccount(t *testing.T, what string, a *provincev1.Account, available, earmarked string) {
	t.Helper()
	if a.GetAvailable() != available || a.GetEarmarked() != earmarked {
		t.Fatalf("%s: account available %s earmarked %s (balance %s), want %s / %s", what,
			a.GetAvailable(), a.GetEarmarked(), a.GetBalance(), available, earmarked)
	}
}

// TestProvinceServiceInOneProvince drives every ProvinceService RPC through
// a real node (mTLS on loopback, its own database) with the province's own
// certificate, for a sharer and a beneficiary of the same province.
func TestProvinceServiceInOneProvince(t *testing.T) {
	t.Parallel()
	n := startNode(t, newCerts(t), henan, nodeOptions{})
	ctx := hang(t)
	sharerID := idNumber(t, "410105", "19700101", "011")
	benID := idNumber(t, "410105", "19980202", "022")
	otherID := idNumber(t, "410105", "19720303", "033")

	s := n.register(t, sharerID)
	b := n.register(t, benID)
	if s.GetPersonRef() != refOf(t, sharerID) || s.GetIdMasked() != pii.Mask(sharerID) || s.GetIdMasked() == sharerID {
		t.Fatalf("registered person %+v: want ref of the ID number and a masked number", s)
	}
	again, err := n.client.RegisterPerson(ctx, &provincev1.RegisterPersonRequest{
		IdNumber: sharerID, Scheme: provincev1.Scheme_SCHEME_EMPLOYEE, Mode: provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT,
		Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: n.region, Insured: true,
	})
	if err != nil || again.GetCreated() || again.GetPerson().GetPersonRef() != s.GetPersonRef() {
		t.Fatalf("registering again: %+v, %v; want the same person, created=false", again, err)
	}
	if p, err := n.client.GetPerson(ctx, &provincev1.GetPersonRequest{Person: byID(sharerID)}); err != nil || p.GetPersonRef() != s.GetPersonRef() {
		t.Fatalf("get person by ID number: %+v, %v", p, err)
	}

	// Money in; a credit replayed moves nothing; the same key for another amount is refused.
	credit := &provincev1.CreditAccountRequest{Person: byID(sharerID), Amount: "1000.00", CreditKey: "credit-1"}
	for i := range 2 {
		a, err := n.client.CreditAccount(ctx, credit)
		if err != nil {
			t.Fatalf("credit #%d: %v", i, err)
		}
		wantAccount(t, "after credit", a, "1000.00", "0.00")
	}
	_, err = n.client.CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: byID(sharerID), Amount: "1.00", CreditKey: "credit-1"})
	wantCode(t, "credit key reused", err, codes.AlreadyExists)

	// R4: proposal by the sharer, consent by the beneficiary only.
	rel, err := n.client.ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
		Sharer: partyID(henan, sharerID), Beneficiary: partyID(henan, benID),
		Relation: provincev1.RelationType_RELATION_TYPE_CHILD, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: "prop-1",
	})
	if err != nil || rel.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING ||
		rel.GetSharerRef() != s.GetPersonRef() || rel.GetBeneficiaryRef() != b.GetPersonRef() {
		t.Fatalf("propose: %+v, %v", rel, err)
	}
	id := rel.GetRelationshipId()
	_, err = n.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_SHARER, CommandKey: "c-0"})
	wantCode(t, "the proposer consenting", err, codes.FailedPrecondition)
	rel, err = n.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "c-1"})
	if err != nil || rel.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE {
		t.Fatalf("consent: %+v, %v", rel, err)
	}

	// R8: earmarked quota is frozen for the sharer's own spending.
	rel, err = n.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "300.00", CommandKey: "q-1"})
	if err != nil || rel.GetQuota() != "300.00" {
		t.Fatalf("set quota: %+v, %v", rel, err)
	}
	wantAccount(t, "after earmark", n.account(t, s.GetPersonRef()), "700.00", "300.00")
	_, err = n.client.SpendOwn(ctx, &provincev1.SpendOwnRequest{Person: byRef(s.GetPersonRef()), Amount: "750.00", SpendKey: "own-1"})
	wantCode(t, "own spending of earmarked money", err, codes.FailedPrecondition)
	a, err := n.client.SpendOwn(ctx, &provincev1.SpendOwnRequest{Person: byRef(s.GetPersonRef()), Amount: "100.00", SpendKey: "own-2"})
	if err != nil {
		t.Fatal(err)
	}
	wantAccount(t, "after own spending", a, "600.00", "300.00")

	// R9-R11: spend, replay, key reuse, quota exceeded.
	first := spendReq(n, "use-1", id, "120.00")
	sp, err := n.client.Spend(ctx, first)
	if err != nil || sp.GetReplayed() || sp.GetQuotaRemaining() != "180.00" || sp.GetCrossProvince() || sp.GetPayerProvince() != henan {
		t.Fatalf("spend: %+v, %v", sp, err)
	}
	sp, err = n.client.Spend(ctx, first)
	if err != nil || !sp.GetReplayed() || sp.GetAmount() != "120.00" || sp.GetQuotaRemaining() != "180.00" {
		t.Fatalf("replayed spend: %+v, %v; want replayed=true with the first answer", sp, err)
	}
	other := spendReq(n, "use-1", id, "121.00")
	_, err = n.client.Spend(ctx, other)
	wantCode(t, "usage key reused for another amount", err, codes.AlreadyExists)
	_, err = n.client.Spend(ctx, spendReq(n, "use-2", id, "180.01"))
	wantCode(t, "over quota", err, codes.ResourceExhausted)

	// R12: partial and full reversal; never more than the usage.
	rv, err := n.client.Reverse(ctx, reverseReq(n, "rev-1", "use-1", "20.00"))
	if err != nil || rv.GetReversedTotal() != "20.00" || rv.GetQuotaRemaining() != "200.00" {
		t.Fatalf("partial reversal: %+v, %v", rv, err)
	}
	_, err = n.client.Reverse(ctx, reverseReq(n, "rev-2", "use-1", "100.01"))
	wantCode(t, "reversal beyond the usage", err, codes.FailedPrecondition)
	rv, err = n.client.Reverse(ctx, reverseReq(n, "rev-2", "use-1", "100.00"))
	if err != nil || rv.GetReversedTotal() != "120.00" || rv.GetQuotaRemaining() != "300.00" {
		t.Fatalf("full reversal: %+v, %v", rv, err)
	}
	if _, err := n.client.Spend(ctx, spendReq(n, "use-3", id, "50.00")); err != nil {
		t.Fatal(err)
	}

	// R5/R7: voluntary dissolution returns the unused quota exactly.
	rel, err = n.client.DissolveRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "d-1"})
	if err != nil || rel.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_DISSOLVED ||
		rel.GetDissolveReason() != provincev1.DissolveReason_DISSOLVE_REASON_VOLUNTARY_BENEFICIARY {
		t.Fatalf("dissolve: %+v, %v", rel, err)
	}
	wantAccount(t, "after dissolution", n.account(t, s.GetPersonRef()), "850.00", "0.00")

	// R6: an enrollment change dissolves automatically (proposed by the beneficiary this time).
	rel2, err := n.client.ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
		Sharer: party(henan, s.GetPersonRef()), Beneficiary: party(henan, b.GetPersonRef()),
		Relation: provincev1.RelationType_RELATION_TYPE_CHILD, ProposedBy: provincev1.Side_SIDE_BENEFICIARY, ProposalKey: "prop-2",
	})
	if err != nil {
		t.Fatal(err)
	}
	id2 := rel2.GetRelationshipId()
	if _, err := n.client.DeclineRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id2, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "x-1"}); err == nil {
		t.Fatal("the proposer declined their own proposal")
	}
	if _, err := n.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id2, By: provincev1.Side_SIDE_SHARER, CommandKey: "c-2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id2, Quota: "100.00", CommandKey: "q-2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.Spend(ctx, spendReq(n, "use-4", id2, "30.00")); err != nil {
		t.Fatal(err)
	}
	ch, err := n.client.ChangeEnrollment(ctx, &provincev1.ChangeEnrollmentRequest{
		Person: byID(sharerID), Change: provincev1.EnrollmentChange_ENROLLMENT_CHANGE_SUSPENSION, ChangeKey: "enr-1",
		EffectiveAt: timestamppb.New(n.clock.now()),
	})
	if err != nil || len(ch.GetDissolved()) != 1 || ch.GetDissolved()[0].GetRelationshipId() != id2 ||
		ch.GetDissolved()[0].GetDissolveReason() != provincev1.DissolveReason_DISSOLVE_REASON_SUSPENSION ||
		ch.GetPerson().GetStatus() != provincev1.PersonStatus_PERSON_STATUS_SUSPENDED {
		t.Fatalf("enrollment change: %+v, %v", ch, err)
	}
	wantAccount(t, "after the automatic dissolution", n.account(t, s.GetPersonRef()), "820.00", "0.00")
	_, err = n.client.Spend(ctx, spendReq(n, "use-5", id2, "1.00"))
	wantCode(t, "spending on a dissolved relationship", err, codes.FailedPrecondition)

	// R4: a proposal nobody answers expires; the sweeper records it.
	n.register(t, otherID)
	if _, err := n.client.CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: byID(otherID), Amount: "10.00", CreditKey: "credit-2"}); err != nil {
		t.Fatal(err)
	}
	rel3, err := n.client.ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
		Sharer: partyID(henan, otherID), Beneficiary: partyID(henan, benID),
		Relation: provincev1.RelationType_RELATION_TYPE_GRANDCHILD_PATERNAL, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: "prop-3",
	})
	if err != nil {
		t.Fatal(err)
	}
	n.clock.advance(8 * 24 * time.Hour)
	_, err = n.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: rel3.GetRelationshipId(), By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "c-3"})
	wantCode(t, "consent after expiry", err, codes.FailedPrecondition)
	n.runSweeperOnly(t)
	eventually(t, "proposal swept to EXPIRED", func() (bool, error) {
		r := n.relationship(t, rel3.GetRelationshipId())
		return r.GetStatus() == provincev1.RelationshipStatus_RELATIONSHIP_STATUS_EXPIRED, nil
	})

	list, err := n.client.ListRelationships(ctx, &provincev1.ListRelationshipsRequest{Person: byID(benID)})
	if err != nil || len(list.GetRelationships()) != 3 {
		t.Fatalf("list: %d relationships, %v; want 3", len(list.GetRelationships()), err)
	}
	n.conserved(t)
	n.noIDNumbersLogged(t, sharerID, benID, otherID)
}

// runSweeperOnly runs the proposal sweeper of a node without a clearing
// service (the Remote's connection is never used).
func (n *node) runSweeperOnly(t *testing.T) {
	t.Helper()
	conn := n.conn
	remote := n.remote
	if conn == nil {
		var err error
		conn, err = provinceapi.DialClearing("127.0.0.1:1", reloader(t, n.certs, provinceID(n.province)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if remote, err = provinceapi.NewRemote(provinceapi.RemoteOptions{Conn: conn, Province: n.province}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := provinceapi.NewWorkers(provinceapi.WorkerOptions{
		Service: n.svc, Outbox: n.store, Relay: n.store, Remote: remote, Conn: conn, Clock: n.clock.now,
		Log: n.log, SweepInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.RunSweeper(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}
