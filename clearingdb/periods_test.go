package clearingdb_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/migrations"
	"gongji/region"
	"gongji/settlement"
)

// setState moves a period through the lifecycle the way the close will,
// with the timestamps its CHECK constraints require.
func setState(t tb, b bundle, p region.Period, state string) {
	t.Helper()
	var sql string
	switch state {
	case "CLOSING":
		sql = `UPDATE periods SET state = 'CLOSING', closing_at = now() WHERE setlym = $1`
	case "CLOSED":
		sql = `UPDATE periods SET state = 'CLOSED', closed_at = now() WHERE setlym = $1`
	case "SETTLED":
		sql = `UPDATE periods SET state = 'SETTLED', settled_at = now() WHERE setlym = $1`
	case "OPEN":
		sql = `UPDATE periods SET state = 'OPEN' WHERE setlym = $1`
	}
	tag, err := b.db.Pool.Exec(b.ctx, sql, p.Int())
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("set %s %s: %v (%d rows)", p, state, err, tag.RowsAffected())
	}
}

func closePeriod(t tb, b bundle, p region.Period) {
	t.Helper()
	setState(t, b, p, "CLOSING")
	setState(t, b, p, "CLOSED")
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func TestLateRecordGoesToNextOpenPeriod(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jul, aug, sep := mustPeriod(t, "202607"), mustPeriod(t, "202608"), mustPeriod(t, "202609")
	occurred := time.Date(2026, time.July, 31, 23, 30, 0, 0, region.Shanghai)
	cutOff := jul.CutOff(settlement.DefaultCutOffGrace) // 2026-08-06 00:00 +08:00

	inTime, _ := pair(t, "IN-TIME", bj, sh, "1.00", occurred)
	ingest(t, b, bj, cutOff, withSeq(inTime, 1)) // exactly at the cut-off: still July
	late, _ := pair(t, "LATE", bj, sh, "2.00", occurred)
	ingest(t, b, bj, cutOff.Add(time.Microsecond), withSeq(late, 2))

	if got := usageSet(t, b, jul); got["IN-TIME"] == "" || got["LATE"] != "" {
		t.Fatalf("July = %v", got)
	}
	got := usageSet(t, b, aug)
	if want := "202608 USAGE 110000>310000 2.00 late=true payer=true payee=false rev="; got["LATE"] != want {
		t.Fatalf("August LATE = %q, want %q", got["LATE"], want)
	}
	// A UTC instant that is already August in Shanghai belongs to August.
	utc := time.Date(2026, time.July, 31, 16, 30, 0, 0, time.UTC)
	shAug, _ := pair(t, "UTC", bj, sh, "3.00", utc)
	ingest(t, b, bj, utc.Add(time.Hour), withSeq(shAug, 3))
	if got := usageSet(t, b, aug); !strings.HasPrefix(got["UTC"], "202608 USAGE") || strings.Contains(got["UTC"], "late=true") {
		t.Fatalf("August UTC = %q", got["UTC"])
	}

	// July closes (after its cut-off), then the other side of IN-TIME and a
	// new July record arrive: the new record is late in August; the second
	// side of IN-TIME is compared but its closed row is left alone.
	closePeriod(t, b, jul)
	_, inTimePayee := pair(t, "IN-TIME", bj, sh, "1.00", occurred)
	inTimePayee.PayeeRegion = "319900"
	ack := ingest(t, b, sh, cutOff.Add(time.Hour), withSeq(inTimePayee, 1))
	if ack.Stored != 1 {
		t.Fatalf("late second side ack = %+v", ack)
	}
	if got := usageSet(t, b, jul); got["IN-TIME"] != "202607 USAGE 110000>310000 1.00 late=false payer=true payee=false rev=" {
		t.Fatalf("closed July row changed: %q", got["IN-TIME"])
	}
	exc, err := b.store.Exceptions(b.ctx, aug, "")
	if err != nil || len(exc) != 1 || exc[0].UsageID != "IN-TIME" || exc[0].Field != "payee_region" ||
		!strings.Contains(exc[0].Detail, "no longer open") {
		t.Fatalf("August exceptions = %+v, %v", exc, err)
	}
	if k, err := b.store.GetKey(b.ctx, "IN-TIME"); err != nil || k.PayeeSeq != 1 || k.Setlym != jul {
		t.Fatalf("key = %+v, %v", k, err)
	}

	// After August's cut-off too, a July record skips August (not closed yet
	// but past its cut-off) and lands in September.
	veryLate, _ := pair(t, "VERY-LATE", bj, sh, "4.00", occurred)
	ingest(t, b, bj, aug.CutOff(settlement.DefaultCutOffGrace).Add(time.Second), withSeq(veryLate, 4))
	if got := usageSet(t, b, sep); !strings.Contains(got["VERY-LATE"], "late=true") {
		t.Fatalf("September = %v", got)
	}
	// A reversal is cleared in the period in which it happens, even though
	// its usage's period is closed.
	_, rev := reversal(t, "IN-TIME-R", "IN-TIME", bj, sh, "0.40", time.Date(2026, time.August, 20, 9, 0, 0, 0, region.Shanghai))
	ingest(t, b, sh, time.Date(2026, time.August, 20, 9, 1, 0, 0, region.Shanghai), withSeq(rev, 2))
	if got := usageSet(t, b, aug); got["IN-TIME-R"] != "202608 REVERSAL 110000>310000 -0.40 late=false payer=false payee=true rev=IN-TIME" {
		t.Fatalf("August reversal = %q", got["IN-TIME-R"])
	}
}

func TestClosedPeriodIsImmutable(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jul := mustPeriod(t, "202607")
	pr, _ := pair(t, "FROZEN", bj, sh, "10.00", t0)
	ingest(t, b, bj, t0, withSeq(pr, 1))
	closePeriod(t, b, jul)

	for name, sql := range map[string]string{
		"update":             `UPDATE usages SET amount = 1 WHERE usage_id = 'FROZEN'`,
		"delete":             `DELETE FROM usages WHERE usage_id = 'FROZEN'`,
		"update partition":   `UPDATE usages_p202607 SET amount = 1`,
		"delete partition":   `DELETE FROM usages_p202607`,
		"truncate parent":    `TRUNCATE usages`,
		"truncate partition": `TRUNCATE usages_p202607`,
		"insert": `INSERT INTO usages (setlym, payer_province, usage_id, entry_type, kind, payer_region, payee_province,
			payee_region, amount, occurred_at, late, sharer_ref, beneficiary_ref, relationship_id, payer_reported,
			payee_reported, first_at) VALUES (202607, '110000', 'NEW', 'USAGE', 'MEDICAL', '110100', '310000',
			'310100', 1, now(), false, 's', 'b', '', true, false, now())`,
		"insert partition": `INSERT INTO usages_p202607 SELECT * FROM usages_p202607`,
		"reopen":           `UPDATE periods SET state = 'OPEN', closed_at = NULL WHERE setlym = 202607`,
		"back to closing":  `UPDATE periods SET state = 'CLOSING', closed_at = NULL WHERE setlym = 202607`,
		"move cut-off":     `UPDATE periods SET cut_off = cut_off + interval '1 day' WHERE setlym = 202607`,
		"delete period":    `DELETE FROM periods WHERE setlym = 202607`,
	} {
		_, err := b.db.Pool.Exec(b.ctx, sql)
		if code := sqlstate(err); code != "GJ002" && code != "GJ003" {
			t.Errorf("%s: err = %v, want the trigger to refuse (GJ002/GJ003)", name, err)
		}
	}
	if u, err := b.store.GetUsage(b.ctx, "FROZEN"); err != nil || u.Amount.String() != "10.00" {
		t.Fatalf("row = %+v, %v", u, err)
	}
	// Settling is the one move left; then nothing at all.
	setState(t, b, jul, "SETTLED")
	if _, err := b.db.Pool.Exec(b.ctx, `UPDATE periods SET settled_at = now() + interval '1 day' WHERE setlym = 202607`); sqlstate(err) != "GJ002" {
		t.Fatalf("re-settle: %v", err)
	}
	p, err := b.store.GetPeriod(b.ctx, jul)
	if err != nil || p.State != settlement.PeriodSettled || p.ClosedAt.IsZero() || p.SettledAt.IsZero() {
		t.Fatalf("period = %+v, %v", p, err)
	}
	// The error reaches Go callers as ErrPeriodClosed.
	_, err = b.store.EnsurePeriod(b.ctx, jul, t0)
	if err != nil {
		t.Fatalf("EnsurePeriod on a settled period: %v", err)
	}
}

func TestPeriodTransitions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := mustPeriod(t, "202607")
	got, err := b.store.EnsurePeriod(b.ctx, p, t0)
	if err != nil || got.State != settlement.PeriodOpen || !got.CutOff.Equal(p.CutOff(settlement.DefaultCutOffGrace)) || !got.CreatedAt.Equal(t0) {
		t.Fatalf("EnsurePeriod = %+v, %v", got, err)
	}
	if _, err := b.db.Pool.Exec(b.ctx, `UPDATE periods SET state = 'CLOSED', closed_at = now() WHERE setlym = 202607`); sqlstate(err) != "GJ003" {
		t.Fatalf("OPEN -> CLOSED: %v, want GJ003", err)
	}
	setState(t, b, p, "CLOSING")
	setState(t, b, p, "OPEN") // a close aborted before anything froze
	setState(t, b, p, "CLOSING")
	setState(t, b, p, "CLOSED")
	if _, err := b.db.Pool.Exec(b.ctx, `INSERT INTO periods (setlym, state, cut_off, created_at, closed_at)
		VALUES (202608, 'CLOSED', now(), now(), now())`); sqlstate(err) != "GJ003" {
		t.Fatalf("insert CLOSED: %v, want GJ003", err)
	}
	ps, err := b.store.ListPeriods(b.ctx)
	if err != nil || len(ps) != 1 || ps[0].State != settlement.PeriodClosed {
		t.Fatalf("ListPeriods = %+v, %v", ps, err)
	}
	if _, err := b.store.GetPeriod(b.ctx, mustPeriod(t, "202609")); !errors.Is(err, clearingdb.ErrNotFound) {
		t.Fatalf("GetPeriod missing: %v", err)
	}
}

func TestOpenPeriodFor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jul, aug := mustPeriod(t, "202607"), mustPeriod(t, "202608")
	a, err := b.store.OpenPeriodFor(b.ctx, t0, t0)
	if err != nil || a.Period != jul || a.Late {
		t.Fatalf("OpenPeriodFor = %+v, %v", a, err)
	}
	setState(t, b, jul, "CLOSING")
	a, err = b.store.OpenPeriodFor(b.ctx, t0, t0)
	if err != nil || a.Period != aug || !a.Late {
		t.Fatalf("OpenPeriodFor with July closing = %+v, %v", a, err)
	}
	if p, err := b.store.GetPeriod(b.ctx, aug); err != nil || p.State != settlement.PeriodOpen {
		t.Fatalf("August = %+v, %v (OpenPeriodFor creates it)", p, err)
	}
}

func TestEnsurePeriodConcurrent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := mustPeriod(t, "202611")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A Store of its own per goroutine: no shared partition cache.
			st, err := clearingdb.New(b.db.Pool, clearingdb.Config{})
			if err == nil {
				_, err = st.EnsurePeriod(b.ctx, p, t0)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var parts int
	if err := b.db.Pool.QueryRow(b.ctx, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'usages'::regclass`).Scan(&parts); err != nil || parts != 1 {
		t.Fatalf("partitions = %d, %v", parts, err)
	}
}

// TestMigrationsDownUp: the clearing migrations go up, down to 0 (with data
// and partitions present) and up again.
func TestMigrationsDownUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewEmpty(t, "")
	if err := migrations.Up(ctx, db.URL, migrations.Clearing); err != nil {
		t.Fatal(err)
	}
	st, err := clearingdb.New(db.Pool, clearingdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b := bundle{ctx: ctx, db: db, store: st}
	pr, pe := pair(t, "D", bj, sh, "1.00", t0)
	ingest(t, b, bj, t0, withSeq(pr, 1))
	ingest(t, b, sh, t0, withSeq(pe, 1))
	if err := st.LogSwitch(ctx, switchEntry("D", t0)); err != nil {
		t.Fatal(err)
	}
	db.Pool.Reset() // the pool's sessions hold the staging temp table and cached plans
	if err := migrations.DownTo(ctx, db.URL, migrations.Clearing, 0); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relname <> 'goose_db_version' AND c.relname NOT LIKE 'goose_db_version%'`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("relations left after down: %d, %v", left, err)
	}
	var fns int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'public'`).Scan(&fns); err != nil || fns != 0 {
		t.Fatalf("functions left after down: %d, %v", fns, err)
	}
	if err := migrations.Up(ctx, db.URL, migrations.Clearing); err != nil {
		t.Fatal(err)
	}
}
