package provinceapi_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/provinceapi"
	"gongji/region"
)

// reasonOf returns the ErrorInfo reason of a province node's status.
func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == provinceapi.ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// balance reads one journal account of a node.
func (n *node) balance(t testing.TB, account string) string {
	t.Helper()
	var b string
	if err := n.db.Pool.QueryRow(context.Background(), `SELECT balance::text FROM accounts WHERE name = $1`, account).Scan(&b); err != nil {
		t.Fatalf("%s balance of %s: %v", n.province, account, err)
	}
	return b
}

func (n *node) count(t testing.TB, sql string, args ...any) int {
	t.Helper()
	var c int
	if err := n.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCrossProvince runs a relationship between a sharer in Henan and a
// beneficiary in Beijing through a real clearing service (switch and
// reporting on its own database) and two real province nodes: proposal by
// the beneficiary's side, consent and quota at the sharer's, usage paid in
// Beijing and debited in Henan, reversals, and the beneficiary's enrollment
// change dissolving it at the authority through the relay queue. Both nodes
// must end agreeing, money must be conserved on both, and the clearing
// database must hold exactly the nodes' outbox records.
func TestCrossProvince(t *testing.T) {
	t.Parallel()
	f := startFederation(t, nil)
	f.a.runWorkers(t)
	f.b.runWorkers(t)
	a, b := f.a, f.b
	ctx := hang(t)
	sharerID := idNumber(t, "410105", "19650505", "101") // a parent in Henan
	benID := idNumber(t, "110105", "19950606", "202")    // their child in Beijing

	s := a.register(t, sharerID)
	ben := b.register(t, benID)
	if _, err := a.client.CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: byID(sharerID), Amount: "1000.00", CreditKey: "cr-1"}); err != nil {
		t.Fatal(err)
	}

	// Proposed at the beneficiary's node, naming the sharer by ID number:
	// only the ref crosses, and the authority (Henan) creates it.
	propose := &provincev1.ProposeRelationshipRequest{
		Sharer: partyID(henan, sharerID), Beneficiary: partyID(beijing, benID),
		Relation: provincev1.RelationType_RELATION_TYPE_PARENT, ProposedBy: provincev1.Side_SIDE_BENEFICIARY, ProposalKey: "bj-prop-1",
	}
	rel, err := b.client.ProposeRelationship(ctx, propose)
	if err != nil || rel.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING ||
		rel.GetSharerProvince() != henan || rel.GetSharerRef() != s.GetPersonRef() || rel.GetBeneficiaryRef() != ben.GetPersonRef() {
		t.Fatalf("propose at the beneficiary's node: %+v, %v", rel, err)
	}
	id := rel.GetRelationshipId()
	if again, err := b.client.ProposeRelationship(ctx, propose); err != nil || again.GetRelationshipId() != id {
		t.Fatalf("proposal retried: %+v, %v; want the same relationship", again, err)
	}
	if r := a.relationship(t, id); r.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING {
		t.Fatalf("authority holds %+v", r)
	}
	// The beneficiary cannot set the quota: it is the sharer's money, at the sharer's node.
	_, err = b.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "1.00", CommandKey: "bj-q"})
	wantCode(t, "quota set at the beneficiary's node", err, codes.PermissionDenied)

	if _, err := a.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_SHARER, CommandKey: "ha-c-1"}); err != nil {
		t.Fatal(err)
	}
	ra, err := a.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "300.00", CommandKey: "ha-q-1"})
	if err != nil {
		t.Fatal(err)
	}
	wantAccount(t, "sharer after earmark", a.account(t, s.GetPersonRef()), "700.00", "300.00")
	eventually(t, "replica in Beijing ACTIVE with the quota", func() (bool, error) {
		r := b.relationship(t, id)
		return r.GetStatus() == provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE && r.GetQuota() == "300.00" &&
			r.GetVersion() == ra.GetVersion(), nil
	})

	// Usage paid in Beijing, debited in Henan, recorded in Beijing.
	use := spendReq(b, "bj-use-1", id, "100.00")
	sp, err := b.client.Spend(ctx, use)
	if err != nil || !sp.GetCrossProvince() || sp.GetPayerProvince() != henan || sp.GetPayerRegion() != a.region ||
		sp.GetQuotaRemaining() != "200.00" || sp.GetReplayed() {
		t.Fatalf("cross-province spend: %+v, %v", sp, err)
	}
	if sp, err := b.client.Spend(ctx, use); err != nil || !sp.GetReplayed() || sp.GetQuotaRemaining() != "200.00" {
		t.Fatalf("replayed: %+v, %v", sp, err)
	}
	_, err = b.client.Spend(ctx, spendReq(b, "bj-use-1", id, "99.00"))
	wantCode(t, "usage key reused", err, codes.AlreadyExists)
	_, err = b.client.Spend(ctx, spendReq(b, "bj-use-2", id, "200.01"))
	wantCode(t, "over quota at the payer", err, codes.ResourceExhausted)
	if reasonOf(err) != "QUOTA_EXCEEDED" || !strings.Contains(status.Convert(err).Message(), "quota") {
		t.Fatalf("refusal from the payer: reason %q, %q", reasonOf(err), status.Convert(err).Message())
	}
	wantAccount(t, "sharer after usage", a.account(t, s.GetPersonRef()), "700.00", "200.00")
	if r := a.relationship(t, id); r.GetUsed() != "100.00" {
		t.Fatalf("authority used %s, want 100.00", r.GetUsed())
	}

	// A partial refund in Beijing restores the quota in Henan.
	rv, err := b.client.Reverse(ctx, reverseReq(b, "bj-rev-1", "bj-use-1", "40.00"))
	if err != nil || rv.GetReversedTotal() != "40.00" || rv.GetQuotaRemaining() != "240.00" {
		t.Fatalf("reversal: %+v, %v", rv, err)
	}
	// A reversal cannot be started at the payer's node: it is done where it was paid.
	_, err = a.client.Reverse(ctx, reverseReq(a, "ha-rev-1", "bj-use-1", "1.00"))
	wantCode(t, "reversal at the payer", err, codes.PermissionDenied)

	// Mutual sharing (R3), the other way round: the Beijing child shares
	// with the Henan parent. Beijing is the authority; Henan's replica
	// arrives through the relay queue, and the parent's consent and
	// dissolution in Henan travel to Beijing.
	prop2 := &provincev1.ProposeRelationshipRequest{
		Sharer: party(beijing, ben.GetPersonRef()), Beneficiary: party(henan, s.GetPersonRef()),
		Relation: provincev1.RelationType_RELATION_TYPE_PARENT, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: "bj-prop-2",
	}
	rel2, err := b.client.ProposeRelationship(ctx, prop2)
	if err != nil {
		t.Fatal(err)
	}
	prop2.ProposalKey = "bj-prop-3"
	_, err = b.client.ProposeRelationship(ctx, prop2)
	wantCode(t, "a second live relationship for the same pair", err, codes.AlreadyExists)
	id2 := rel2.GetRelationshipId()
	eventually(t, "replica of Beijing's proposal in Henan", func() (bool, error) {
		r, err := a.client.GetRelationship(ctx, &provincev1.GetRelationshipRequest{RelationshipId: id2})
		return err == nil && r.GetStatus() == provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING, err
	})
	_, err = a.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id2, By: provincev1.Side_SIDE_SHARER, CommandKey: "ha-c-3"})
	wantCode(t, "Henan acting for the sharer in Beijing", err, codes.PermissionDenied)
	if r, err := a.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id2, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "ha-c-2"}); err != nil ||
		r.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE {
		t.Fatalf("consent from Henan: %+v, %v", r, err)
	}
	if r := b.relationship(t, id2); r.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE {
		t.Fatalf("authority after a consent from Henan: %s", r.GetStatus())
	}
	if r, err := a.client.DissolveRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id2, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "ha-d-2"}); err != nil ||
		r.GetDissolveReason() != provincev1.DissolveReason_DISSOLVE_REASON_VOLUNTARY_BENEFICIARY {
		t.Fatalf("dissolution from Henan: %+v, %v", r, err)
	}

	// R6: the beneficiary transfers to another pooling region of Beijing
	// while the clearing service is down. Beijing cannot dissolve what Henan
	// holds: the command waits in the durable relay queue, is retried, and
	// once delivered Henan returns the unused quota (R7).
	f.clearing.stop()
	ch, err := b.client.ChangeEnrollment(ctx, &provincev1.ChangeEnrollmentRequest{
		Person: byID(benID), Change: provincev1.EnrollmentChange_ENROLLMENT_CHANGE_TRANSFER,
		NewRegionCode: secondRegionOf(t, beijing), ChangeKey: "bj-enr-1",
	})
	if err != nil || ch.GetPerson().GetRegionCode() != secondRegionOf(t, beijing) || len(ch.GetDissolved()) != 0 {
		t.Fatalf("enrollment change: %+v, %v", ch, err)
	}
	eventually(t, "a failed delivery of the dissolution", func() (bool, error) {
		n := b.count(t, `SELECT count(*) FROM relay_queue WHERE kind = 'DISSOLVE' AND attempts >= 1 AND delivered_at IS NULL`)
		return n == 1, nil
	})
	if r := a.relationship(t, id); r.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE {
		t.Fatalf("Henan dissolved %s without hearing from Beijing", r.GetStatus())
	}
	f.clearing.restart(t)
	eventually(t, "authority dissolved it", func() (bool, error) {
		r := a.relationship(t, id)
		return r.GetStatus() == provincev1.RelationshipStatus_RELATIONSHIP_STATUS_DISSOLVED, nil
	})
	final := a.relationship(t, id)
	if final.GetDissolveReason() != provincev1.DissolveReason_DISSOLVE_REASON_TRANSFER {
		t.Fatalf("dissolved for %s, want TRANSFER", final.GetDissolveReason())
	}
	wantAccount(t, "sharer after the automatic dissolution", a.account(t, s.GetPersonRef()), "940.00", "0.00")
	_, err = b.client.Spend(ctx, spendReq(b, "bj-use-3", id, "1.00"))
	wantCode(t, "spending on a dissolved relationship", err, codes.FailedPrecondition)

	// The rest of the usage refunded after the end goes straight back to the sharer.
	if _, err := b.client.Reverse(ctx, reverseReq(b, "bj-rev-2", "bj-use-1", "60.00")); err != nil {
		t.Fatal(err)
	}
	wantAccount(t, "sharer after the last refund", a.account(t, s.GetPersonRef()), "1000.00", "0.00")

	// Both sides agree on the relationship and on what is owed.
	eventually(t, "replica in Beijing DISSOLVED at the authority's version", func() (bool, error) {
		r := b.relationship(t, id)
		return r.GetStatus() == final.GetStatus() && r.GetVersion() == final.GetVersion(), nil
	})
	rb := b.relationship(t, id)
	if rb.GetQuota() != final.GetQuota() || rb.GetDissolveReason() != final.GetDissolveReason() || rb.GetSharerRegion() != final.GetSharerRegion() {
		t.Fatalf("replica %+v, authority %+v", rb, final)
	}
	// The snapshot carries the authority's returned quota and its times.
	if final.GetReturned() == "" || final.GetActivatedAt() == nil || final.GetEndedAt() == nil ||
		rb.GetReturned() != final.GetReturned() || !rb.GetActivatedAt().AsTime().Equal(final.GetActivatedAt().AsTime()) ||
		!rb.GetEndedAt().AsTime().Equal(final.GetEndedAt().AsTime()) {
		t.Fatalf("replica returned %q activated %v ended %v; authority %q %v %v", rb.GetReturned(), rb.GetActivatedAt(),
			rb.GetEndedAt(), final.GetReturned(), final.GetActivatedAt(), final.GetEndedAt())
	}
	if got := a.balance(t, "due:clearing"); got != "0.00" {
		t.Fatalf("Henan owes the clearing centre %s after full refund", got)
	}
	if got := b.balance(t, "due:from_clearing"); got != "0.00" {
		t.Fatalf("the clearing centre owes Beijing %s after full refund", got)
	}
	a.conserved(t)
	b.conserved(t)

	// The outbox streamers deliver both sides' records, each once.
	f.allReported(t, a)
	f.allReported(t, b)
	for _, key := range []string{"bj-use-1", "bj-rev-1", "bj-rev-2"} {
		cu, err := f.clearing.store.GetUsage(ctx, key)
		if err != nil {
			t.Fatalf("clearing row %s: %v", key, err)
		}
		if !cu.PayerReported || !cu.PayeeReported {
			t.Fatalf("%s reported by payer %t, payee %t", key, cu.PayerReported, cu.PayeeReported)
		}
		var wantAmount, payerRegion, payeeRegion, sharerRef, benRef, relID, kind, reversalOf string
		var occurred = cu.OccurredAt
		if strings.Contains(key, "rev") {
			v, err := a.svc.GetReversal(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			vb, err := b.svc.GetReversal(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			vb.Role, vb.RecordedAt, v.Role, v.RecordedAt = "", time.Time{}, "", time.Time{}
			if ja, jb := jsonOf(t, v), jsonOf(t, vb); ja != jb {
				t.Fatalf("reversal %s: payer recorded %s, payee %s", key, ja, jb)
			}
			wantAmount, payerRegion, payeeRegion = "-"+v.Amount.String(), v.PayerRegion, v.PayeeRegion
			sharerRef, benRef, relID, kind, reversalOf, occurred = v.SharerRef, v.BeneficiaryRef, v.RelationshipID, string(v.Kind), v.UsageKey, v.OccurredAt
		} else {
			u, err := a.svc.GetUsage(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			ub, err := b.svc.GetUsage(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			ub.Role, ub.RecordedAt, u.Role, u.RecordedAt = "", time.Time{}, "", time.Time{}
			if ja, jb := jsonOf(t, u), jsonOf(t, ub); ja != jb {
				t.Fatalf("usage %s: payer recorded %s, payee %s", key, ja, jb)
			}
			wantAmount, payerRegion, payeeRegion = u.Amount.String(), u.PayerRegion, u.PayeeRegion
			sharerRef, benRef, relID, kind, occurred = u.SharerRef, u.BeneficiaryRef, u.RelationshipID, string(u.Kind), u.OccurredAt
		}
		if cu.Amount.String() != wantAmount || cu.PayerProvince != henan || cu.PayeeProvince != beijing ||
			cu.PayerRegion != payerRegion || cu.PayeeRegion != payeeRegion || cu.SharerRef != sharerRef ||
			cu.BeneficiaryRef != benRef || cu.RelationshipID != relID || string(cu.Kind) != kind ||
			cu.ReversalOf != reversalOf || !cu.OccurredAt.Equal(occurred) {
			t.Fatalf("clearing row %s = %+v; the nodes recorded amount %s, regions %s/%s, refs %s/%s, relationship %s, kind %s, of %q at %s",
				key, cu, wantAmount, payerRegion, payeeRegion, sharerRef, benRef, relID, kind, reversalOf, occurred)
		}
	}
	exc, err := f.clearing.store.Exceptions(ctx, region.PeriodOf(use.GetOccurredAt().AsTime()), henan)
	if err != nil || len(exc) != 0 {
		t.Fatalf("reconciliation exceptions %+v, %v; the two sides' reports must agree", exc, err)
	}
	rels := a.count(t, `SELECT count(*) FROM outbox WHERE kind = 'RELATIONSHIP'`)
	var events int
	if err := f.clearing.db.Pool.QueryRow(ctx, `SELECT count(*) FROM relationship_events WHERE relationship_id = $1`, id).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != rels {
		t.Fatalf("clearing has %d relationship events, Henan reported %d changes", events, rels)
	}
	a.noIDNumbersLogged(t, sharerID, benID)
	b.noIDNumbersLogged(t, sharerID, benID)
}
