package clearingdb_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"gongji/clearingdb"
	"gongji/internal/auditlog"
	"gongji/money"
	"gongji/settlement"
)

// auditCall starts an audited call on b's database, as the server's
// interceptor (or the operator command) does.
func auditCall(t *testing.T, b bundle, method, reqID, ref string) (context.Context, *auditlog.Call) {
	t.Helper()
	rec, err := auditlog.New(auditlog.Options{DB: b.db.Pool})
	if err != nil {
		t.Fatal(err)
	}
	ctx, c := rec.Start(b.ctx, "gongji:operator", method, reqID)
	c.SetRef(ref)
	return ctx, c
}

func auditRows(t *testing.T, b bundle, reqID string) []string {
	t.Helper()
	rs, err := auditlog.List(b.ctx, b.db.Pool, auditlog.Filter{RequestID: reqID})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.Outcome+"|"+r.Ref)
	}
	return out
}

func count(t *testing.T, b bundle, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.db.Pool.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// sameTx counts the audit rows of reqID written by the transaction that
// wrote a row of table matching where: the same PostgreSQL transaction id.
func sameTx(t *testing.T, b bundle, reqID, table, where string, args ...any) int {
	t.Helper()
	return count(t, b, `SELECT count(*) FROM audit_records r JOIN `+table+` x ON x.xmin::text = r.xmin::text
		WHERE r.request_id = '`+reqID+`' AND `+where, args...)
}

// TestAuditInStoreTransactions: each kind of clearing write carries its
// call's audit row in its own transaction (or statement) — a prepayment
// movement, a routed call's switch log row, an ingested batch, a close — and
// says "replayed" or "refused: …" where the store knows it.
func TestAuditInStoreTransactions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := clearingdb.PrepayMovement{Province: bj, Amount: money.MustParse("500.00"), Key: "fund-1"}

	// A movement, then its replay.
	ctx, c := auditCall(t, b, "/AdminService/FundPrepay", "r-fund", m.Key)
	_, err := b.store.FundPrepay(ctx, m, t0)
	c.Finish(ctx, err)
	if err != nil || sameTx(t, b, "r-fund", "prepay_movements", "x.movement_key = 'fund-1'") != 1 {
		t.Fatalf("fund: %v, rows %v", err, auditRows(t, b, "r-fund"))
	}
	ctx, c = auditCall(t, b, "/AdminService/FundPrepay", "r-fund-again", m.Key)
	_, err = b.store.FundPrepay(ctx, m, t0)
	c.Finish(ctx, err)
	if got := fmt.Sprint(auditRows(t, b, "r-fund-again")); err != nil || got != "[replayed|fund-1]" {
		t.Fatalf("replayed fund: %v, rows %s", err, got)
	}

	// A routed call: the audit row is in the switch log row's statement.
	for _, tc := range []struct {
		reqID, key string
		outcome    clearingdb.SwitchOutcome
		code, want string
	}{
		{"r-sw-ok", "U1", clearingdb.OutcomeApproved, "", "[ok|U1]"},
		{"r-sw-refused", "U2", clearingdb.OutcomeRefused, "ResourceExhausted", "[refused: ResourceExhausted|U2]"},
		{"r-sw-down", "U3", clearingdb.OutcomeUnavailable, "NO_NODE", "[unavailable: NO_NODE|U3]"},
	} {
		ctx, c = auditCall(t, b, "/SwitchService/Authorize", tc.reqID, tc.key)
		e := switchEntry(tc.key, t0)
		e.Outcome, e.Code = tc.outcome, tc.code
		err := b.store.LogSwitch(ctx, e)
		c.Finish(ctx, err)
		if got := fmt.Sprint(auditRows(t, b, tc.reqID)); err != nil || got != tc.want ||
			sameTx(t, b, tc.reqID, "switch_log", "x.id = $1", e.ID) != 1 {
			t.Errorf("%s: %v, rows %s", tc.reqID, err, got)
		}
	}

	// A report batch (a child call of the stream), then the same batch again.
	pr, pe := pair(t, "U1", bj, sh, "12.30", t0)
	for i, reqID := range []string{"r-batch", "r-batch-again"} {
		ctx, _ := auditCall(t, b, "/ReportingService/ReportUsage", reqID, "")
		bctx, batch := auditlog.Child(ctx, "batch 1 seq 1-1")
		_, err := b.store.IngestBatch(bctx, bj, []clearingdb.Record{withSeq(pr, 1)}, t0)
		batch.Finish(bctx, err)
		want := []string{"[ok|batch 1 seq 1-1]", "[replayed|batch 1 seq 1-1]"}[i]
		if got := fmt.Sprint(auditRows(t, b, reqID)); err != nil || got != want {
			t.Fatalf("%s: %v, rows %s", reqID, err, got)
		}
	}
	if sameTx(t, b, "r-batch", "report_receipts", "x.province = $1 AND x.seq = 1", bj) != 1 {
		t.Fatal("the batch's audit row is not in the ingest transaction")
	}
	ingest(t, b, sh, t0, withSeq(pe, 1))

	// A close: one row, with the close's figures, not with the CLOSING
	// marker; a close before the cut-off commits nothing of the call.
	july := mustPeriod(t, "202607")
	cutOff := b.store.Config().Settlement.CutOff(july)
	ctx, c = auditCall(t, b, "/AdminService/ClosePeriod", "r-early", "202607")
	_, err = b.store.ClosePeriod(ctx, july, t0)
	if !errors.Is(err, settlement.ErrBeforeCutOff) || len(auditRows(t, b, "r-early")) != 0 {
		t.Fatalf("early close: %v, rows %v", err, auditRows(t, b, "r-early"))
	}
	ctx, c = auditCall(t, b, "/AdminService/ClosePeriod", "r-close", "202607")
	_, err = b.store.ClosePeriod(ctx, july, cutOff.Add(time.Hour))
	c.Finish(ctx, err)
	if got := fmt.Sprint(auditRows(t, b, "r-close")); err != nil || got != "[ok|202607]" ||
		sameTx(t, b, "r-close", "journal_entries", "x.kind = 'CLEARING_CLOSE'") != 1 {
		t.Fatalf("close: %v, rows %s", err, got)
	}
	ctx, c = auditCall(t, b, "/AdminService/ClosePeriod", "r-close-again", "202607")
	_, err = b.store.ClosePeriod(ctx, july, cutOff.Add(2*time.Hour))
	c.Finish(ctx, err)
	if got := fmt.Sprint(auditRows(t, b, "r-close-again")); err != nil || got != "[replayed|202607]" {
		t.Fatalf("second close: %v, rows %s", err, got)
	}
}

// TestAuditRolledBackWithChange: a prepayment movement whose transaction
// fails at COMMIT, after its audit row was inserted, leaves neither the
// movement, nor its journal entry, nor the row.
func TestAuditRolledBackWithChange(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if _, err := b.db.Pool.Exec(b.ctx, `
		CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'GJ999'; END $$;
		CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON audit_records
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
			WHEN (NEW.request_id = 'r-fail' AND NEW.outcome = 'ok') EXECUTE FUNCTION fail_at_commit()`); err != nil {
		t.Fatal(err)
	}
	m := clearingdb.PrepayMovement{Province: bj, Amount: money.MustParse("500.00"), Key: "fund-1"}
	ctx, c := auditCall(t, b, "/AdminService/FundPrepay", "r-fail", m.Key)
	_, err := b.store.FundPrepay(ctx, m, t0)
	if err == nil {
		t.Fatal("the commit should have failed")
	}
	for _, table := range []string{"prepay_movements", "journal_entries", "journal_postings", "audit_records"} {
		if n := count(t, b, `SELECT count(*) FROM `+table); n != 0 {
			t.Errorf("%s: %d rows after the failed commit", table, n)
		}
	}
	c.Finish(ctx, err)
	if rs := auditRows(t, b, "r-fail"); len(rs) != 1 || rs[0] == "ok|fund-1" {
		t.Fatalf("want only the failure's own row, got %v", rs)
	}
	// The same call again, without the fault: both commit.
	ctx, c = auditCall(t, b, "/AdminService/FundPrepay", "r-ok", m.Key)
	_, err = b.store.FundPrepay(ctx, m, t0)
	c.Finish(ctx, err)
	if got := fmt.Sprint(auditRows(t, b, "r-ok")); err != nil || got != "[ok|fund-1]" {
		t.Fatalf("fund: %v, rows %s", err, got)
	}
	chk, err := b.store.VerifyJournal(b.ctx)
	if err != nil || !chk.OK || chk.Entries != 1 {
		t.Fatalf("journal: %+v, %v", chk, err)
	}
}
