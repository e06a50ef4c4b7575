package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/internal/federation"
	"gongji/internal/pgboot"
	"gongji/internal/pgtest"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/region"
)

// Both tests here run the federation on a PostgreSQL cluster of their own
// (privateServer: pgboot.Options.Private, so even under `make test`, where
// DATABASE_URL names the run's shared server, the server killed here is
// private to the test) and crash it with SIGKILL to the postmaster and every
// backend (pgboot.Server.Kill), which is what a machine or OOM-killer crash
// of the database looks like to its clients: connections reset, open
// transactions gone, committed ones kept. The kill is placed, not timed: the
// test holds a lock the operation needs, waits until the operation's
// transaction waits for it, and kills then, so the kill always lands with the
// operation's transaction open half way.

// TestPostgresKilledDuringIngest crashes the one PostgreSQL server of a
// two-province federation while usages flow and the clearing service is
// storing a batch of reports (3 times; 10 with -long), restarts it, and checks
// that every usage a client was told is approved was committed exactly once
// at the payer, that payer, payee and clearing records agree row by row, and
// that money is conserved in both nodes and the clearing journal.
func TestPostgresKilledDuringIngest(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	srv := privateServer(t)
	f, _ := faultFederation(t, period, 21, []string{a, b}, srv)
	rels := faultPair(t, f, a, b, 8, "2000.00", "pgi", transientCodes)
	kills, perKill := 3, 40
	if *long {
		kills = 10
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := newSpender(f, b, period, dbOutageCodes)
	finish := s.background(t, "PGI", rels, 4, 300, 31)
	clearingDB := dbName(t, f.DatabaseURL("clearing"))
	var pendingAtKill []int
	started := time.Now()
	for k := 0; k < kills; k++ {
		target := (k + 1) * perKill
		waitFor(t, 3*time.Minute, fmt.Sprintf("%d approvals", target), func() bool { n, _ := s.counts(); return n >= target })
		// Stop an ingest half way: hold report_receipts, which the clearing
		// service writes in the transaction that stores a batch, and wait
		// until such a transaction waits for it.
		lock := holdLock(ctx, t, f.DatabaseURL("clearing"), `LOCK TABLE report_receipts IN SHARE ROW EXCLUSIVE MODE`)
		waitFor(t, time.Minute, "an ingest transaction waiting for report_receipts", func() bool {
			w, err := pgBackendWaiting(ctx, srv.AdminURL(), clearingDB)
			return err == nil && w
		})
		pendingAtKill = append(pendingAtKill, unacked(ctx, t, f))
		_, failedBefore := s.counts()
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
		lock.Close(context.Background())
		waitFor(t, time.Minute, "a client to see the outage", func() bool { _, n := s.counts(); return n > failedBefore })
		nodesRunning(t, f, "PostgreSQL down")
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	}
	final := (kills + 1) * perKill
	waitFor(t, 3*time.Minute, fmt.Sprintf("%d approvals after the last restart", final), func() bool { n, _ := s.counts(); return n >= final })
	finish()
	elapsed := time.Since(started)
	nodesRunning(t, f, "after the kills")
	waitDrained(t, f, period)
	n := compareRecords(t, f)
	checkConservation(t, f)
	m := checkExactlyOnce(t, f, a, s, rels)
	approved, failed := s.counts()
	t.Logf("figures: %d PostgreSQL kills, each with an ingest transaction open (unacknowledged outbox rows at the kills: %v); "+
		"%d spends approved, %d failed attempts retried with the same key (%s); %d records equal at payer, payee and clearing; "+
		"%d approvals committed exactly once; %s", kills, pendingAtKill, approved, failed, s.failureSummary(), n, m, elapsed.Round(time.Second))
}

// TestPostgresKilledDuringSettlement crashes PostgreSQL while the clearing
// service closes a period (the period is CLOSING, the close transaction
// waits for the journal head) and again while it settles it (the settle
// transaction holds the period and waits for the journal head), restarts it
// each time, and asks again: the period ends CLOSED then SETTLED, the journal
// holds one close entry, one discharge per province with a net position and
// at most one prepayment draw per province, its hash chain verifies, and the
// export verifies.
func TestPostgresKilledDuringSettlement(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	srv := privateServer(t)
	f, _ := faultFederation(t, period, 23, []string{a, b}, srv)
	rels := faultPair(t, f, a, b, 4, "2000.00", "pgs", transientCodes)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := newSpender(f, b, period, transientCodes)
	for i := 0; i < 30; i++ {
		occurred := period.Start().Add(time.Duration(i) * 9 * time.Hour)
		if _, err := s.spend(ctx, fmt.Sprintf("PGS-%04d", i), rels[i%len(rels)], 1000+int64(i)*25, occurred); err != nil {
			t.Fatal(err)
		}
	}
	waitDrained(t, f, period)
	// Guangdong (the payer) gets a deposit, so that settlement draws on it.
	if _, _, err := callRetry(ctx, transientCodes, func(ctx context.Context) (*clearingv1.PrepayAccount, error) {
		return f.Admin().FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: a, Amount: "100.00", MovementKey: "fund-" + a})
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.RestartClearing(ctx, period.CutOff(120*time.Hour).Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	req := &clearingv1.PeriodRequest{Setlym: period.String()}
	head := `SELECT 1 FROM journal_head WHERE singleton FOR UPDATE`

	closeErr := killDuring(ctx, t, srv, f, head, func(ctx context.Context) error {
		_, err := f.Admin().ClosePeriod(ctx, req)
		return err
	})
	st, _, err := callRetry(ctx, dbOutageCodes, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
		return f.Admin().ClosePeriod(ctx, req)
	})
	if err != nil {
		t.Fatalf("close after the crash: %v", err)
	}
	if st.GetState() != clearingv1.PeriodState_PERIOD_STATE_CLOSED {
		t.Fatalf("state after close = %s", st.GetState())
	}

	settleErr := killDuring(ctx, t, srv, f, head, func(ctx context.Context) error {
		_, err := f.Admin().SettlePeriod(ctx, req)
		return err
	})
	st, _, err = callRetry(ctx, dbOutageCodes, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
		return f.Admin().SettlePeriod(ctx, req)
	})
	if err != nil {
		t.Fatalf("settle after the crash: %v", err)
	}
	if st.GetState() != clearingv1.PeriodState_PERIOD_STATE_SETTLED {
		t.Fatalf("state after settle = %s", st.GetState())
	}
	again, err := f.Admin().SettlePeriod(ctx, req)
	if err != nil || again.GetJournalHead() != st.GetJournalHead() {
		t.Fatalf("second settle: %v, head %s vs %s", err, again.GetJournalHead(), st.GetJournalHead())
	}
	nodesRunning(t, f, "after the kills")

	cp := pool(t, f.DatabaseURL("clearing"))
	var closes, discharges, draws, drawsMax, dups, prepayRows int
	q := func(sql string, dst ...any) {
		t.Helper()
		if err := cp.QueryRow(ctx, sql, period.String()).Scan(dst...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	q(`SELECT count(*) FROM journal_entries WHERE kind = 'CLEARING_CLOSE' AND ref = $1`, &closes)
	q(`SELECT count(*) FROM journal_entries WHERE kind = 'CLEARING_DISCHARGE' AND ref LIKE $1 || ':%'`, &discharges)
	q(`SELECT count(*), coalesce(max(n), 0) FROM (SELECT ref, count(*) AS n FROM journal_entries
		WHERE kind = 'PREPAY_DRAW' AND ref LIKE $1 || '%' GROUP BY ref) d`, &draws, &drawsMax)
	q(`SELECT count(*) FROM (SELECT kind, ref FROM journal_entries WHERE ref LIKE $1 || '%'
		GROUP BY kind, ref HAVING count(*) > 1) d`, &dups)
	q(`SELECT count(*) FROM prepay_rows WHERE setlym::text = $1`, &prepayRows)
	if closes != 1 || discharges != 2 || draws < 1 || drawsMax != 1 || dups != 0 || prepayRows != 32 {
		t.Errorf("journal after the crashes: %d close entries (want 1), %d discharges (want 2, one per province with a net), "+
			"%d draw refs with at most %d entries each (want ≥ 1, 1), %d (kind, ref) booked twice (want 0), %d prepay rows (want 32)",
			closes, discharges, draws, drawsMax, dups, prepayRows)
	}
	checkConservation(t, f)
	exportAndVerify(t, f, period, st.GetJournalHead())
	t.Logf("figures: 2 PostgreSQL kills (close half way: %v; settle half way: %v); %d usages; period SETTLED with head %s, "+
		"1 close entry, %d discharges, %d draw (at most one per province), journal and export verify",
		closeErr, settleErr, approvedCount(s), st.GetJournalHead()[:12], discharges, draws)
}

// holdLock opens a connection to url and runs lockSQL in a transaction that
// stays open (the lock held) until the connection is closed or the server
// dies.
func holdLock(ctx context.Context, t *testing.T, url, lockSQL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, lockSQL); err != nil {
		t.Fatal(err)
	}
	return conn
}

// killDuring runs call (an admin operation) while the test holds lockSQL's
// lock in the clearing database, waits until the operation's transaction
// waits for that lock, crashes PostgreSQL, and restarts it. The operation
// must fail: its transaction was open when the server died. It returns the
// error the operation ended with.
func killDuring(ctx context.Context, t *testing.T, srv *pgboot.Server, f *federation.Federation, lockSQL string, call func(ctx context.Context) error) error {
	t.Helper()
	lock := holdLock(ctx, t, f.DatabaseURL("clearing"), lockSQL)
	res := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		res <- call(cctx)
	}()
	clearingDB := dbName(t, f.DatabaseURL("clearing"))
	waitFor(t, time.Minute, "the operation's transaction to wait for the lock", func() bool {
		w, err := pgBackendWaiting(ctx, srv.AdminURL(), clearingDB)
		return err == nil && w
	})
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	lock.Close(context.Background())
	var err error
	select {
	case err = <-res:
	case <-time.After(time.Minute):
		t.Fatal("the operation did not end within a minute of the crash")
	}
	if err == nil {
		t.Fatal("the operation succeeded although PostgreSQL died with its transaction open")
	}
	if c := status.Code(err); c != codes.Internal && c != codes.Unavailable {
		t.Errorf("the operation cut by the crash ended with %v, want Internal or Unavailable (retry)", err)
	}
	nodesRunning(t, f, "PostgreSQL down")
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	return err
}

// unacked counts the outbox rows the clearing service has not acknowledged
// yet, over all nodes.
func unacked(ctx context.Context, t *testing.T, f *federation.Federation) int {
	t.Helper()
	total := 0
	for _, c := range f.Provinces() {
		var n int
		if err := pool(t, f.DatabaseURL(c)).QueryRow(ctx, `SELECT count(*) FROM outbox WHERE acked_at IS NULL`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		total += n
	}
	return total
}

func approvedCount(s *spender) int { n, _ := s.counts(); return n }

// TestPostgresConnectionsReset ends every database session of a two-province
// federation (pg_terminate_backend: the server stays up, the connections die,
// as when a proxy or firewall drops them) while usages flow, 5 times (20 with
// -long), and checks exactly-once, row-by-row agreement and conservation as
// above. Only this federation's sessions are ended, so it runs on the shared
// test server.
func TestPostgresConnectionsReset(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	f, _ := faultFederation(t, period, 27, []string{a, b}, nil)
	rels := faultPair(t, f, a, b, 6, "2000.00", "pgr", transientCodes)
	rounds := 5
	if *long {
		rounds = 20
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, pgtest.Server(t).AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	dbs := []string{dbName(t, f.DatabaseURL("clearing")), dbName(t, f.DatabaseURL(a)), dbName(t, f.DatabaseURL(b))}
	s := newSpender(f, b, period, dbOutageCodes)
	finish := s.background(t, "PGR", rels, 4, 300, 41)
	started := time.Now()
	ended := 0
	for r := 0; r < rounds; r++ {
		approved, _ := s.counts()
		waitFor(t, 2*time.Minute, "spends between resets", func() bool { n, _ := s.counts(); return n >= approved+30 })
		var n int
		if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = ANY($1) AND pid <> pg_backend_pid() AND backend_type = 'client backend'`, dbs).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("no session of the federation to end")
		}
		ended += n
	}
	approved, _ := s.counts()
	waitFor(t, 2*time.Minute, "spends after the last reset", func() bool { n, _ := s.counts(); return n >= approved+30 })
	finish()
	elapsed := time.Since(started)
	nodesRunning(t, f, "after the resets")
	waitDrained(t, f, period)
	n := compareRecords(t, f)
	checkConservation(t, f)
	m := checkExactlyOnce(t, f, a, s, rels)
	approved, failed := s.counts()
	t.Logf("figures: %d rounds ended %d database sessions; %d spends approved, %d failed attempts retried with the same key (%s); "+
		"%d records equal at payer, payee and clearing; %d approvals committed exactly once; %s",
		rounds, ended, approved, failed, s.failureSummary(), n, m, elapsed.Round(time.Second))
}
