package clearingdb_test

import (
	"errors"
	"testing"
	"time"

	"gongji/clearingdb"
	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
)

func switchEntry(key string, at time.Time) *clearingdb.SwitchEntry {
	return &clearingdb.SwitchEntry{
		Op: clearingdb.OpAuthorize, CallerProvince: sh, TargetProvince: bj, Key: key,
		Outcome: clearingdb.OutcomeApproved, Amount: money.MustParse("12.30"), Kind: "PHARMACY",
		PayerRegion: "110100", PayeeProvince: sh, PayeeRegion: "310100", OccurredAt: at,
		RelationshipID: "R1", StartedAt: at, FinishedAt: at.Add(3 * time.Millisecond),
	}
}

func TestSwitchLog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// An authorisation that first timed out, then was retried and approved;
	// a refused one; a relationship snapshot relayed the other way; and one in
	// the next month (a new partition).
	first := switchEntry("U1", t0)
	first.Outcome, first.Code = clearingdb.OutcomeUnavailable, "DeadlineExceeded"
	retry := switchEntry("U1", t0.Add(time.Second))
	refused := switchEntry("U2", t0)
	refused.Outcome, refused.Code, refused.Amount = clearingdb.OutcomeRefused, "QUOTA_EXCEEDED", money.MustParse("9000.00")
	snap := &clearingdb.SwitchEntry{Op: clearingdb.OpRelationshipSnapshot, CallerProvince: bj, TargetProvince: sh,
		Key: "R1@3", RelationshipID: "R1", Outcome: clearingdb.OutcomeApproved, StartedAt: t0, FinishedAt: t0.Add(time.Millisecond)}
	nextMonth := switchEntry("U3", time.Date(2026, time.August, 1, 0, 0, 0, 0, region.Shanghai))
	for _, e := range []*clearingdb.SwitchEntry{first, retry, refused, snap, nextMonth} {
		if err := b.store.LogSwitch(b.ctx, e); err != nil {
			t.Fatal(err)
		}
		if e.ID == 0 {
			t.Fatal("LogSwitch did not set the id")
		}
	}
	got, err := b.store.SwitchLogForKey(b.ctx, bj, "U1", t0)
	if err != nil || len(got) != 2 || got[0].Outcome != clearingdb.OutcomeUnavailable || got[1].Outcome != clearingdb.OutcomeApproved ||
		got[1].Amount.String() != "12.30" || got[1].Latency() != 3*time.Millisecond || !got[1].OccurredAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("SwitchLogForKey = %+v, %v", got, err)
	}
	if got, err := b.store.SwitchLogForKey(b.ctx, bj, "R1@3", t0); err != nil || len(got) != 1 || got[0].PayerProvince() != bj {
		t.Fatalf("snapshot entry = %+v, %v", got, err)
	}
	if got, err := b.store.SwitchLogForKey(b.ctx, sh, "U1", t0); err != nil || len(got) != 0 {
		t.Fatalf("wrong payer = %+v, %v", got, err)
	}
	sum, err := b.store.SwitchSummary(b.ctx, mustPeriod(t, "202607"))
	if err != nil || len(sum) != 4 {
		t.Fatalf("summary = %+v, %v", sum, err)
	}
	var approved clearingdb.SwitchSummaryRow
	for _, r := range sum {
		if r.Op == clearingdb.OpAuthorize && r.Outcome == clearingdb.OutcomeApproved {
			approved = r
		}
	}
	if approved.Calls != 1 || approved.Amount.String() != "12.30" || approved.LatencyMax != 3*time.Millisecond || approved.PayerProvince != bj {
		t.Fatalf("approved row = %+v", approved)
	}

	bad := switchEntry("", t0)
	if err := b.store.LogSwitch(b.ctx, bad); !errors.Is(err, clearingdb.ErrBadRecord) {
		t.Fatalf("empty key: %v", err)
	}
	bad = switchEntry("U9", t0)
	bad.FinishedAt = t0.Add(-time.Second)
	if err := b.store.LogSwitch(b.ctx, bad); !errors.Is(err, clearingdb.ErrBadRecord) {
		t.Fatalf("finished before started: %v", err)
	}
}

// TestSwitchLogIDNumbers: a key (or reversal_of, or relationship id)
// containing an ID number is refused before anything is written; the free
// text of the target's answer (code, detail) is kept with every ID number
// masked.
func TestSwitchLogIDNumbers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c, err := pii.CheckDigit("11010519800101777")
	if err != nil {
		t.Fatal(err)
	}
	id := "11010519800101777" + string(c)
	for name, mut := range map[string]func(e *clearingdb.SwitchEntry){
		"key":             func(e *clearingdb.SwitchEntry) { e.Key = "u-" + id },
		"reversal_of":     func(e *clearingdb.SwitchEntry) { e.Op, e.ReversalOf = clearingdb.OpReversal, id },
		"relationship id": func(e *clearingdb.SwitchEntry) { e.RelationshipID = "R" + id },
	} {
		e := switchEntry("U9", t0)
		mut(e)
		if err := b.store.LogSwitch(b.ctx, e); !errors.Is(err, clearingdb.ErrBadRecord) {
			t.Errorf("%s with an ID number: %v", name, err)
		}
	}
	var n int
	if err := b.db.Pool.QueryRow(b.ctx, `SELECT count(*) FROM switch_log`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused entries wrote %d rows (%v)", n, err)
	}
	refused := switchEntry("U9", t0)
	refused.Outcome, refused.Code, refused.Detail = clearingdb.OutcomeError, "x"+id, "the node said: person "+id+" unknown"
	if err := b.store.LogSwitch(b.ctx, refused); err != nil {
		t.Fatal(err)
	}
	got, err := b.store.SwitchLogForKey(b.ctx, bj, "U9", t0)
	if err != nil || len(got) != 1 || got[0].Detail != "the node said: person "+pii.Mask(id)+" unknown" || got[0].Code != "x"+pii.Mask(id) {
		t.Fatalf("logged = %+v, %v", got, err)
	}
}
