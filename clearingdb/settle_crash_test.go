package clearingdb_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"gongji/clearingdb"
	"gongji/prepay"
	"gongji/settlement"
)

// opSnapshot is everything a close and a settlement produce that must not
// depend on whether the operation was interrupted and rerun.
type opSnapshot struct {
	state     settlement.PeriodState
	figures   string
	head      string
	statement string
	prepay    string
	balances  string
}

func opTake(t *testing.T, b opBundle) opSnapshot {
	t.Helper()
	jul := opPeriod(t, "202607")
	st, err := b.store.PeriodStatus(b.ctx, jul)
	if err != nil {
		t.Fatal(err)
	}
	s := opSnapshot{state: st.State}
	if st.Frozen() {
		s.figures = opRender(opResult(t, b, jul)) + st.Gross.String() + st.NettingEfficiency.String() + st.JournalHead.String()
		sv, err := b.store.GetStatement(b.ctx, jul, opBJ, closeJul)
		if err != nil {
			t.Fatal(err)
		}
		s.statement = fmt.Sprintf("%v %v %v %v %s %s", sv.Position, sv.Regions, sv.Instructions, sv.Usage, sv.Status, sv.ConfirmBy)
	}
	if st.State == settlement.PeriodSettled {
		rows, err := b.store.PrepayRows(b.ctx, jul)
		if err != nil {
			t.Fatal(err)
		}
		s.prepay = opPrepayCSV(rows)
	}
	h, err := b.store.JournalHead(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.head = fmt.Sprint(h.LastID, h)
	bal, err := b.store.JournalBalances(b.ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	s.balances = fmt.Sprint(bal)
	return s
}

// opCrashAt returns a context whose step hook cancels it at step.
func opCrashAt(step string) (context.Context, *bool) {
	ctx, cancel := context.WithCancel(context.Background())
	hit := new(bool)
	return clearingdb.WithStepHook(ctx, func(s string) error {
		if s == step {
			*hit = true
			cancel()
			return ctx.Err()
		}
		return nil
	}), hit
}

func TestCloseCrashAndRerunSameFigures(t *testing.T) {
	t.Parallel()
	ref := opJuly(t)
	jul := opPeriod(t, "202607")
	if _, err := ref.store.ClosePeriod(ref.ctx, jul, closeJul); err != nil {
		t.Fatal(err)
	}
	want := opTake(t, ref)

	for _, step := range []string{"close:closing", "close:exceptions", "close:computed", "close:journal", "close:commit"} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			b := opJuly(t)
			ctx, hit := opCrashAt(step)
			if _, err := b.store.ClosePeriod(ctx, jul, closeJul); !errors.Is(err, context.Canceled) || !*hit {
				t.Fatalf("interrupted close: %v (hook hit %v)", err, *hit)
			}
			got := opTake(t, b)
			wantState := settlement.PeriodClosing
			if step == "close:closing" {
				wantState = settlement.PeriodOpen
			}
			if got.state != wantState {
				t.Fatalf("after the crash the period is %s, want %s", got.state, wantState)
			}
			for _, table := range []string{"period_gross", "period_positions", "period_allocation",
				"period_instructions", "period_close", "statements"} {
				if n := opCount(t, b, `SELECT count(*) FROM `+table); n != 0 {
					t.Fatalf("%s has %d rows after the crash", table, n)
				}
			}
			if n := opCount(t, b, `SELECT count(*) FROM recon_exceptions WHERE kind = 'ONE_SIDED'`); n != 0 {
				t.Fatalf("%d ONE_SIDED exceptions survived the crash", n)
			}
			if _, err := b.store.ClosePeriod(b.ctx, jul, closeJul); err != nil {
				t.Fatalf("rerun: %v", err)
			}
			if got := opTake(t, b); got != want {
				t.Fatalf("rerun after crash at %s:\n%+v\nwant\n%+v", step, got, want)
			}
			if n := opCount(t, b, `SELECT count(*) FROM journal_entries WHERE kind = 'CLEARING_CLOSE'`); n != 1 {
				t.Fatalf("%d close entries", n)
			}
		})
	}
}

func TestSettleCrashAndRerunOneDrawPerProvince(t *testing.T) {
	t.Parallel()
	jul := opPeriod(t, "202607")
	closed := func(t *testing.T) opBundle {
		b := opJuly(t)
		if _, err := b.store.ClosePeriod(b.ctx, jul, closeJul); err != nil {
			t.Fatal(err)
		}
		return b
	}
	ref := closed(t)
	if _, err := ref.store.SettlePeriod(ref.ctx, jul, prepay.Config{}, settleAt); err != nil {
		t.Fatal(err)
	}
	want := opTake(t, ref)

	check := func(t *testing.T, b opBundle) {
		t.Helper()
		if got := opTake(t, b); got != want {
			t.Fatalf("settlement:\n%+v\nwant\n%+v", got, want)
		}
		if n := opCount(t, b, `SELECT count(*) FROM prepay_rows WHERE setlym = 202607`); n != 32 {
			t.Fatalf("%d prepay rows, want 32", n)
		}
		if n := opCount(t, b, `SELECT count(*) FROM journal_entries WHERE kind = $1`, prepay.KindDraw); n != 2 {
			t.Fatalf("%d draws, want exactly 2 (北京, 广东)", n)
		}
		if n := opCount(t, b, `SELECT count(*) FROM journal_entries WHERE kind = $1`, prepay.KindPayReceiver); n != 2 {
			t.Fatalf("%d payouts, want 2", n)
		}
		if n := opCount(t, b, `SELECT count(*) FROM journal_entries WHERE kind = $1`, clearingdb.KindClearingDischarge); n != 4 {
			t.Fatalf("%d discharges, want 4", n)
		}
		opVerify(t, b)
	}

	for _, step := range []string{"settle:journal", "settle:rows", "settle:commit"} {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			b := closed(t)
			ctx, hit := opCrashAt(step)
			if _, err := b.store.SettlePeriod(ctx, jul, prepay.Config{}, settleAt); !errors.Is(err, context.Canceled) || !*hit {
				t.Fatalf("interrupted settle: %v (hook hit %v)", err, *hit)
			}
			if got := opTake(t, b); got.state != settlement.PeriodClosed || got.prepay != "" {
				t.Fatalf("after the crash: %+v", got)
			}
			if n := opCount(t, b, `SELECT count(*) FROM prepay_rows`); n != 0 {
				t.Fatalf("%d prepay rows survived the crash", n)
			}
			if _, err := b.store.SettlePeriod(b.ctx, jul, prepay.Config{}, settleAt); err != nil {
				t.Fatalf("rerun: %v", err)
			}
			// And once more: nothing changes.
			if _, err := b.store.SettlePeriod(b.ctx, jul, prepay.Config{}, settleAt.Add(1)); err != nil {
				t.Fatalf("second rerun: %v", err)
			}
			check(t, b)
		})
	}

	t.Run("concurrent", func(t *testing.T) {
		t.Parallel()
		b := closed(t)
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() { _, errs[i] = b.store.SettlePeriod(b.ctx, jul, prepay.Config{}, settleAt) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("settle %d: %v", i, err)
			}
		}
		check(t, b)
	})
}

func TestCloseConcurrent(t *testing.T) {
	t.Parallel()
	b := opJuly(t)
	jul := opPeriod(t, "202607")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	heads := make([]string, 4)
	for i := range errs {
		wg.Go(func() {
			st, err := b.store.ClosePeriod(b.ctx, jul, closeJul)
			errs[i], heads[i] = err, st.JournalHead.String()
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
		if heads[i] != heads[0] {
			t.Fatalf("close %d saw head %s, close 0 %s", i, heads[i], heads[0])
		}
	}
	if n := opCount(t, b, `SELECT count(*) FROM journal_entries WHERE kind = 'CLEARING_CLOSE'`); n != 1 {
		t.Fatalf("%d close entries", n)
	}
	if n := opCount(t, b, `SELECT count(*) FROM statements`); n != 32 {
		t.Fatalf("%d statements", n)
	}
	opVerify(t, b)
}

// TestJournalTamperDetected edits journal rows behind the adapter's back
// (triggers disabled, as the table owner) and checks that VerifyJournal
// names the first bad entry.
func TestJournalTamperDetected(t *testing.T) {
	t.Parallel()
	jul := opPeriod(t, "202607")
	settled := func(t *testing.T) opBundle {
		b := opJuly(t)
		if _, err := b.store.ClosePeriod(b.ctx, jul, closeJul); err != nil {
			t.Fatal(err)
		}
		if _, err := b.store.SettlePeriod(b.ctx, jul, prepay.Config{}, settleAt); err != nil {
			t.Fatal(err)
		}
		opVerify(t, b)
		return b
	}
	// Entries: 1 fund 北京, 2 fund 广东, 3 CLEARING_CLOSE, 4..7 discharges, 8..9 draws, 10..11 payouts.
	cases := []struct {
		name    string
		sql     []string
		badID   int64
		problem string
	}{
		{"amount", []string{
			`ALTER TABLE journal_postings DISABLE TRIGGER journal_postings_append_only`,
			`UPDATE journal_postings SET amount = amount + 1 WHERE entry_id = 3 AND idx = 0`,
		}, 3, "do not sum to zero"},
		{"balanced-edit", []string{
			`ALTER TABLE journal_postings DISABLE TRIGGER journal_postings_append_only`,
			`UPDATE journal_postings SET amount = -amount WHERE entry_id = 2`,
		}, 2, "hash chain broken"},
		{"ref", []string{
			`ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_append_only`,
			`UPDATE journal_entries SET ref = 'other' WHERE id = 5`,
		}, 5, "hash chain broken"},
		{"account", []string{
			`ALTER TABLE journal_postings DISABLE TRIGGER journal_postings_append_only`,
			`UPDATE journal_postings SET account = 'deposit:310000' WHERE entry_id = 8 AND account = 'deposit:110000'`,
		}, 8, "hash chain broken"},
		{"deleted-posting", []string{
			`ALTER TABLE journal_postings DISABLE TRIGGER journal_postings_append_only`,
			`DELETE FROM journal_postings WHERE entry_id = 8 AND idx = 1`,
		}, 8, "posting 1 missing"},
		{"deleted-entry", []string{
			`ALTER TABLE journal_postings DISABLE TRIGGER journal_postings_append_only`,
			`ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_append_only`,
			`DELETE FROM journal_postings WHERE entry_id = 6`,
			`DELETE FROM journal_entries WHERE id = 6`,
		}, 6, "entry 6 is missing"},
		{"cached-balance", []string{
			`UPDATE journal_balances SET balance = balance + 0.01 WHERE account = 'deposit:440000'`,
		}, 0, "cached balance of deposit:440000"},
		{"head", []string{
			`UPDATE journal_head SET last_id = last_id - 1`,
		}, 0, "head row"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := settled(t)
			for _, q := range c.sql {
				if _, err := b.db.Pool.Exec(b.ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			chk, err := b.store.VerifyJournal(b.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if chk.OK || chk.BadEntryID != c.badID || !strings.Contains(chk.Problem, c.problem) {
				t.Fatalf("VerifyJournal = %+v; want entry %d, %q", chk, c.badID, c.problem)
			}
		})
	}

	t.Run("append-only", func(t *testing.T) {
		t.Parallel()
		b := settled(t)
		for _, q := range []string{
			`UPDATE journal_postings SET amount = amount WHERE entry_id = 1`,
			`DELETE FROM journal_postings WHERE entry_id = 1`,
			`UPDATE journal_entries SET ref = ref WHERE id = 1`,
			`DELETE FROM journal_entries WHERE id = 11`,
			`TRUNCATE journal_postings, journal_entries CASCADE`,
		} {
			_, err := b.db.Pool.Exec(b.ctx, q)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "GJ010" {
				t.Fatalf("%s: %v, want GJ010", q, err)
			}
		}
		opVerify(t, b)
	})
}

// TestCloseFiguresImmutable: once CLOSED, neither the period's usages nor its
// figures, statements' issue data or journal can change through SQL.
func TestCloseFiguresImmutable(t *testing.T) {
	t.Parallel()
	b := opJuly(t)
	jul := opPeriod(t, "202607")
	if _, err := b.store.ClosePeriod(b.ctx, jul, closeJul); err != nil {
		t.Fatal(err)
	}
	before := opTake(t, b)
	for _, c := range []struct{ sql, code string }{
		{`UPDATE usages SET amount = amount + 1 WHERE setlym = 202607`, "GJ002"},
		{`DELETE FROM usages WHERE setlym = 202607`, "GJ002"},
		{`UPDATE period_positions SET net = net WHERE setlym = 202607`, "GJ002"},
		{`DELETE FROM period_gross WHERE setlym = 202607`, "GJ002"},
		{`INSERT INTO period_gross VALUES (202607, '120000', '130000', 1.00)`, "GJ002"},
		{`UPDATE period_instructions SET amount = amount + 1`, "GJ002"},
		{`UPDATE period_close SET gross_total = 0`, "GJ002"},
		{`TRUNCATE period_allocation`, "GJ002"},
		{`UPDATE statements SET issued_at = issued_at - interval '1 day'`, "GJ003"},
		{`DELETE FROM statements`, "GJ003"},
		{`UPDATE periods SET state = 'OPEN' WHERE setlym = 202607`, "GJ003"},
		{`UPDATE journal_entries SET at = at WHERE id = 3`, "GJ010"},
	} {
		_, err := b.db.Pool.Exec(b.ctx, c.sql)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != c.code {
			t.Fatalf("%s: %v, want %s", c.sql, err, c.code)
		}
	}
	if after := opTake(t, b); after != before {
		t.Fatalf("closed period changed:\n%+v\n%+v", after, before)
	}
}

// TestCloseAbortsOnInconsistentFigures: a row that no valid ingest could
// store (an unknown province, written behind the adapter's back) makes the
// SQL figures fail settlement.CheckResult; the close is aborted back to OPEN
// with nothing written, and the error is an invariant violation (Internal).
func TestCloseAbortsOnInconsistentFigures(t *testing.T) {
	t.Parallel()
	b := opJuly(t)
	jul := opPeriod(t, "202607")
	if _, err := b.db.Pool.Exec(b.ctx, `INSERT INTO usages VALUES (202607, '990000', 'BAD', 'USAGE', 'MEDICAL', '990100',
		'110000', '110100', 1.00, '2026-07-15 10:00+08', false, NULL, 's', 'b', 'R', true, true, now(), now())`); err != nil {
		t.Fatal(err)
	}
	_, err := b.store.ClosePeriod(b.ctx, jul, closeJul)
	if !clearingdb.IsInvariantViolation(err) || !errors.Is(err, settlement.ErrInconsistent) {
		t.Fatalf("close with an unknown province: %v", err)
	}
	if st := opTake(t, b); st.state != settlement.PeriodOpen {
		t.Fatalf("after the aborted close the period is %s, want OPEN", st.state)
	}
	for _, table := range []string{"period_gross", "period_positions", "period_close", "statements", "journal_entries WHERE kind = 'CLEARING_CLOSE'"} {
		if n := opCount(t, b, `SELECT count(*) FROM `+table); n != 0 {
			t.Fatalf("%s: %d rows after the aborted close", table, n)
		}
	}
}
