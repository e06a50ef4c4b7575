package provincedb_test

import (
	"context"
	"testing"

	"gongji/sharing"
)

// TestPrepareUsage checks the one-round-trip read that Spend and Debit make
// before they authorise: the relationship and its beneficiary for a new key,
// the recorded answer for a key used before (approved or refused), the
// beneficiary left out when not asked for, ErrKeyReused for a key used with
// another request, ErrNotFound for an unknown relationship, and no
// beneficiary when the relationship names someone who is not a person here.
func TestPrepareUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	sharer := n.register(t, employee(luoyang))
	ben := n.register(t, resident(luoyang, true))
	n.credit(t, sharer, "500.00")
	rel := n.activeRel(t, sharer, ben, "100.00")

	req := spendReq(rel, sharing.KindMedical, "40.00", clk.Now())
	prep, err := n.store.PrepareUsage(ctx, req.Key, req.Hash(), rel.ID, true)
	if err != nil || prep.Found {
		t.Fatalf("new key: %+v, %v", prep, err)
	}
	if prep.Relationship.ID != rel.ID || prep.Relationship.Quota.String() != "100.00" {
		t.Errorf("relationship %+v, want %s with quota 100.00", prep.Relationship, rel.ID)
	}
	if prep.Beneficiary == nil || prep.Beneficiary.Ref != ben {
		t.Errorf("beneficiary %+v, want %s", prep.Beneficiary, ben)
	}
	if prep, err := n.store.PrepareUsage(ctx, req.Key, req.Hash(), rel.ID, false); err != nil || prep.Beneficiary != nil {
		t.Errorf("without beneficiary: %+v, %v", prep.Beneficiary, err)
	}

	first, err := n.svc.Spend(ctx, req)
	if err != nil || !first.Approved {
		t.Fatalf("spend: %+v, %v", first, err)
	}
	prep, err = n.store.PrepareUsage(ctx, req.Key, req.Hash(), rel.ID, true)
	if err != nil || !prep.Found || !prep.Answer.Approved || !prep.Answer.Replayed || prep.Answer.Usage.Key != req.Key {
		t.Errorf("used key: %+v, %v", prep, err)
	}
	over := spendReq(rel, sharing.KindMedical, "90.00", clk.Now())      // 60.00 left
	if res, err := n.svc.Spend(ctx, over); err == nil || res.Approved { // a refusal comes with its error
		t.Fatalf("spend over quota: %+v, %v", res, err)
	}
	if prep, err := n.store.PrepareUsage(ctx, over.Key, over.Hash(), rel.ID, true); err != nil || !prep.Found || prep.Answer.Approved ||
		prep.Answer.Refusal != sharing.RefusalQuotaExceeded {
		t.Errorf("refused key: %+v, %v", prep, err)
	}

	other := req
	other.Amount = y("41.00")
	_, err = n.store.PrepareUsage(ctx, req.Key, other.Hash(), rel.ID, true)
	wantErr(t, "key reused", err, sharing.ErrKeyReused)
	_, err = n.store.PrepareUsage(ctx, "fresh-key", req.Hash(), "410000-missing", true)
	wantErr(t, "unknown relationship", err, sharing.ErrNotFound)

	// A relationship whose beneficiary is not a person of this node.
	if _, err := n.db.Pool.Exec(ctx, `UPDATE relationships SET beneficiary_ref = repeat('0', 32) WHERE id = $1`, rel.ID); err != nil {
		t.Fatal(err)
	}
	prep, err = n.store.PrepareUsage(ctx, "fresh-key-2", req.Hash(), rel.ID, true)
	if err != nil || prep.Found || prep.Beneficiary != nil || prep.Relationship.ID != rel.ID {
		t.Errorf("beneficiary elsewhere: %+v, %v", prep, err)
	}
}
