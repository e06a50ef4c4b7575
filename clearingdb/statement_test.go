package clearingdb_test

import (
	"errors"
	"testing"
	"time"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

func TestStatementDisputeResolutions(t *testing.T) {
	t.Parallel()
	b := opJuly(t)
	jul, aug := opPeriod(t, "202607"), opPeriod(t, "202608")
	if _, err := b.store.ClosePeriod(b.ctx, jul, closeJul); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, time.August, 9, 10, 0, 0, 0, region.Shanghai)

	// Statements exist only for closed periods; unknown provinces are refused.
	if _, err := b.store.GetStatement(b.ctx, aug, opSH, at); !errors.Is(err, clearingdb.ErrPeriodNotFrozen) {
		t.Fatalf("statement of an open period: %v", err)
	}
	if _, err := b.store.GetStatement(b.ctx, jul, "110100", at); !errors.Is(err, clearingdb.ErrBadProvince) {
		t.Fatalf("statement of a region: %v", err)
	}
	// An answer exactly at the deadline is in time (天津: a statement of zeros).
	tj, err := b.store.GetStatement(b.ctx, jul, "120000", at)
	if err != nil || !tj.Position.Net.IsZero() || len(tj.Regions) != 0 || len(tj.Instructions) != 0 {
		t.Fatalf("statement of 天津: %+v, %v", tj, err)
	}
	if sv, err := b.store.ConfirmStatement(b.ctx, jul, "120000", "tj-1", tj.ConfirmBy); err != nil || sv.Status != settlement.StatusConfirmed {
		t.Fatalf("confirm at the deadline: %+v, %v", sv.Status, err)
	}

	// Both sides of U5 (河南 → 广东, one-sided) dispute it.
	for _, d := range []struct{ prov, claim, key string }{{opHN, "0", "hn-1"}, {opGD, "15.00", "gd-1"}} {
		items := []settlement.DisputedItem{{UsageID: "U5", ClaimedAmount: opYuan(d.claim), Reason: "never received"}}
		if _, err := b.store.DisputeStatement(b.ctx, jul, d.prov, items, d.key, at); err != nil {
			t.Fatalf("dispute by %s: %v", d.prov, err)
		}
	}
	// Malformed disputes.
	for _, items := range [][]settlement.DisputedItem{
		{{UsageID: "U2", ClaimedAmount: money.Zero, Reason: ""}},                                                           // no reason
		{{UsageID: "U2", ClaimedAmount: money.Zero, Reason: "x"}, {UsageID: "U2", ClaimedAmount: money.Zero, Reason: "y"}}, // twice
		{{UsageID: "NOPE", ClaimedAmount: money.Zero, Reason: "x"}},                                                        // unknown
		{{UsageID: "L1", ClaimedAmount: money.Zero, Reason: "x"}},                                                          // in August, not July
	} {
		if _, err := b.store.DisputeStatement(b.ctx, jul, opBJ, items, "bj-x", at); !errors.Is(err, settlement.ErrBadDispute) {
			t.Fatalf("dispute %+v: %v", items, err)
		}
	}
	if _, err := b.store.DisputeStatement(b.ctx, jul, opBJ, nil, "bj-x", at); !errors.Is(err, settlement.ErrBadDispute) {
		t.Fatalf("empty dispute: %v", err)
	}

	resolveAt := at.Add(24 * time.Hour)
	// 河南's claim (should not have been cleared at all) is accepted: −20.00.
	r, err := b.store.ResolveDispute(b.ctx, clearingdb.DisputeResolution{Period: jul, Province: opHN, UsageID: "U5", Accept: true, Key: "r-hn"}, resolveAt)
	if err != nil || r.AdjustmentAmount.String() != "-20.00" || r.AdjustmentPeriod != aug {
		t.Fatalf("resolve 河南: %+v, %v", r, err)
	}
	// 广东's dispute of the same record cannot adjust it a second time.
	_, err = b.store.ResolveDispute(b.ctx, clearingdb.DisputeResolution{Period: jul, Province: opGD, UsageID: "U5", Accept: true, Key: "r-gd"}, resolveAt)
	if !errors.Is(err, clearingdb.ErrAlreadyAdjusted) {
		t.Fatalf("second adjustment of U5: %v", err)
	}
	// ... but it can be rejected.
	if r, err := b.store.ResolveDispute(b.ctx, clearingdb.DisputeResolution{Period: jul, Province: opGD, UsageID: "U5", Key: "r-gd"}, resolveAt); err != nil || r.Accepted {
		t.Fatalf("reject 广东: %+v, %v", r, err)
	}
	sv, err := b.store.GetStatement(b.ctx, jul, opGD, resolveAt)
	if err != nil || len(sv.Disputes) != 1 || !sv.Disputes[0].Resolved() || sv.Disputes[0].Accepted || sv.Disputes[0].AdjustmentID != "" {
		t.Fatalf("广东's dispute after rejection: %+v, %v", sv.Disputes, err)
	}
	sv, err = b.store.GetStatement(b.ctx, jul, opHN, resolveAt)
	if err != nil || !sv.Disputes[0].Accepted || sv.Disputes[0].AdjustmentID != r.AdjustmentID ||
		sv.Disputes[0].AdjustmentPeriod != aug || sv.Disputes[0].AdjustmentAmount.String() != "-20.00" {
		t.Fatalf("河南's dispute after acceptance: %+v, %v", sv.Disputes, err)
	}
	// Nothing to adjust: a resolution that changes nothing is refused.
	if _, err := b.store.DisputeStatement(b.ctx, jul, opBJ, []settlement.DisputedItem{{UsageID: "U2", ClaimedAmount: opYuan("50.00"), Reason: "same"}}, "bj-1", at); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.ResolveDispute(b.ctx, clearingdb.DisputeResolution{Period: jul, Province: opBJ, UsageID: "U2", Accept: true, Key: "r-bj"}, resolveAt); !errors.Is(err, settlement.ErrNothingToAdjust) {
		t.Fatalf("resolution equal to the cleared amount: %v", err)
	}

	// August: the late record and the adjustment. The adjustment can itself be
	// disputed on August's statement (found through clearing_adjustments).
	if _, err := b.store.SettlePeriod(b.ctx, jul, prepay.Config{}, settleAt); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.ClosePeriod(b.ctx, aug, opAfterCutOff(aug)); err != nil {
		t.Fatal(err)
	}
	res := opResult(t, b, aug)
	if want := opRender(opComputeStored(t, b, aug)); opRender(res) != want {
		t.Fatalf("August SQL ≠ Compute")
	}
	items := []settlement.DisputedItem{{UsageID: r.AdjustmentID, ClaimedAmount: opYuan("-10.00"), Reason: "half was delivered"}}
	if sv, err := b.store.DisputeStatement(b.ctx, aug, opGD, items, "gd-aug", opAfterCutOff(aug).Add(time.Hour)); err != nil ||
		sv.Disputes[0].ClearedAmount.String() != "-20.00" {
		t.Fatalf("dispute of the adjustment: %+v, %v", sv.Disputes, err)
	}
	// July's 28 unanswered statements are overdue by now; August's are not.
	if n, err := b.store.ExpireStatements(b.ctx, opAfterCutOff(aug).Add(time.Hour)); err != nil || n != 28 {
		t.Fatalf("sweep expired %d, %v; want 28", n, err)
	}
	if n, err := b.store.ExpireStatements(b.ctx, opAfterCutOff(aug).Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("second sweep expired %d, %v; want 0", n, err)
	}
	opVerify(t, b)
}
