package clearingdb_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/clearingdb"
	"gongji/internal/pii"
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

// TestDisputeReasonMaskedAndKeysRefused: a dispute reason is free text: an
// ID number in it is stored masked, the answer (its replay too) shows it
// masked, and a retry of the same dispute is still idempotent. Keys and
// usage ids containing an ID number are refused before anything is written.
func TestDisputeReasonMaskedAndKeysRefused(t *testing.T) {
	t.Parallel()
	b := opJuly(t)
	jul := opPeriod(t, "202607")
	if _, err := b.store.ClosePeriod(b.ctx, jul, closeJul); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, time.August, 9, 10, 0, 0, 0, region.Shanghai)
	id := idNumber(t, "110105", "19800101", "777")
	id2 := idNumber(t, "310101", "19991231", "042")
	reason := "退款给 " + id + "（代办人 " + id2 + "）"
	want := "退款给 " + pii.Mask(id) + "（代办人 " + pii.Mask(id2) + "）"
	disputes := func() []string {
		rows, err := b.db.Pool.Query(b.ctx, `SELECT t::text FROM statement_disputes t ORDER BY t::text`)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	before := disputes()

	// Keys and usage ids with an ID number: refused, nothing written.
	item := settlement.DisputedItem{UsageID: "U2", ClaimedAmount: opYuan("50.00"), Reason: reason}
	if _, err := b.store.DisputeStatement(b.ctx, jul, opBJ, []settlement.DisputedItem{item}, "bj-"+id, at); !errors.Is(err, clearingdb.ErrBadKey) {
		t.Fatalf("answer key with an ID number: %v", err)
	}
	if _, err := b.store.ConfirmStatement(b.ctx, jul, opBJ, id, at); !errors.Is(err, clearingdb.ErrBadKey) {
		t.Fatalf("confirm key that is an ID number: %v", err)
	}
	bad := item
	bad.UsageID = "U-" + id
	if _, err := b.store.DisputeStatement(b.ctx, jul, opBJ, []settlement.DisputedItem{bad}, "bj-1", at); !errors.Is(err, settlement.ErrBadDispute) ||
		strings.Contains(err.Error(), id) {
		t.Fatalf("disputed usage id with an ID number: %v", err)
	}
	if _, err := b.store.ResolveDispute(b.ctx, clearingdb.DisputeResolution{Period: jul, Province: opBJ, UsageID: id, Key: "r-1"}, at); !errors.Is(err, settlement.ErrBadDispute) {
		t.Fatalf("resolved usage id that is an ID number: %v", err)
	}
	if _, err := b.store.ResolveDispute(b.ctx, clearingdb.DisputeResolution{Period: jul, Province: opBJ, UsageID: "U2", Key: "r-" + id}, at); !errors.Is(err, clearingdb.ErrBadKey) {
		t.Fatalf("resolution key with an ID number: %v", err)
	}
	if _, err := b.store.FundPrepay(b.ctx, clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("1.00"), Key: "fund-" + id}, at); !errors.Is(err, clearingdb.ErrBadKey) {
		t.Fatalf("movement key with an ID number: %v", err)
	}
	if after := disputes(); !slices.Equal(before, after) {
		t.Fatalf("refused calls wrote disputes: %v", after)
	}
	if sv, err := b.store.GetStatement(b.ctx, jul, opBJ, at); err != nil || sv.Status != settlement.StatusIssued {
		t.Fatalf("statement after refusals: %v, %v", sv.Status, err)
	}

	// The dispute itself: stored, with the reason masked.
	first, err := b.store.DisputeStatement(b.ctx, jul, opBJ, []settlement.DisputedItem{item}, "bj-1", at)
	if err != nil || first.Status != settlement.StatusDisputed || len(first.Disputes) != 1 || first.Disputes[0].Reason != want {
		t.Fatalf("dispute: %+v, %v", first.Disputes, err)
	}
	stored := disputes()
	if len(stored) != len(before)+1 {
		t.Fatalf("%d disputes stored, want %d", len(stored), len(before)+1)
	}
	for _, row := range stored {
		if pii.ContainsID(row) {
			t.Fatalf("statement_disputes holds an ID number in clear: %s", row)
		}
	}
	// A retry (same key, same items, the clear reason again) replays the answer.
	again, err := b.store.DisputeStatement(b.ctx, jul, opBJ, []settlement.DisputedItem{item}, "bj-1", at.Add(time.Minute))
	if err != nil || again.Status != settlement.StatusDisputed || len(again.Disputes) != 1 || again.Disputes[0].Reason != want ||
		!again.Disputes[0].DisputedAt.Equal(first.Disputes[0].DisputedAt) {
		t.Fatalf("retried dispute: %+v, %v", again.Disputes, err)
	}
	if after := disputes(); !slices.Equal(stored, after) {
		t.Fatalf("the retry wrote: %v", after)
	}
	// The same key for another reason is another answer.
	other := item
	other.Reason = "another reason"
	if _, err := b.store.DisputeStatement(b.ctx, jul, opBJ, []settlement.DisputedItem{other}, "bj-1", at); !errors.Is(err, clearingdb.ErrKeyReused) {
		t.Fatalf("key reused for another reason: %v", err)
	}
}
