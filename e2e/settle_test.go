package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/pgtest"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
)

// TestClearingKilledDuringSettlement SIGKILLs the clearing service while its
// settle transaction is open half way (placed with a lock, see below),
// restarts it, settles again, and checks that every province was drawn on
// exactly once, the journal chain verifies and the export verifies.
func TestClearingKilledDuringSettlement(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	f := startFederation(t, period, 5, []string{a, b})
	rels := pair(t, f, a, b, 4)
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		key := fmt.Sprintf("S-%04d", i)
		_, err := retry(ctx, func(ctx context.Context) (*provincev1.SpendResponse, error) {
			return f.Province(b).Spend(ctx, &provincev1.SpendRequest{UsageKey: key, RelationshipId: rels[i%len(rels)],
				Kind: provincev1.UsageKind_USAGE_KIND_MEDICAL, Amount: fmt.Sprintf("%d.25", 10+i), PayeeRegionCode: "410100",
				OccurredAt: timestamppb.New(period.Start().Add(time.Duration(i) * 7 * time.Hour))})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitDrained(t, f, period)
	// Guangdong (the payer) gets a deposit that covers only part of its obligation.
	if _, err := retry(ctx, func(ctx context.Context) (*clearingv1.PrepayAccount, error) {
		return f.Admin().FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: a, Amount: "500.00", MovementKey: "fund-" + a})
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.RestartClearing(ctx, period.CutOff(120*time.Hour).Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := retry(ctx, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
		return f.Admin().ClosePeriod(ctx, &clearingv1.PeriodRequest{Setlym: period.String()})
	}); err != nil {
		t.Fatal(err)
	}
	// Ask for settlement and kill the service with its settle transaction
	// open half way: the test holds the journal head, which settlement
	// updates, and kills the service once pg_stat_activity shows the settle
	// transaction waiting for it (placed like TestPostgresKilledDuringSettlement,
	// not a timed guess). The dead client never sends COMMIT, so PostgreSQL
	// rolls the transaction back when the lock is released.
	lock := holdLock(ctx, t, f.DatabaseURL("clearing"), `SELECT 1 FROM journal_head WHERE singleton FOR UPDATE`)
	done := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		_, err := f.Admin().SettlePeriod(cctx, &clearingv1.PeriodRequest{Setlym: period.String()})
		done <- err
	}()
	clearingDB := dbName(t, f.DatabaseURL("clearing"))
	adminURL := pgtest.Server(t).AdminURL()
	waitFor(t, time.Minute, "the settle transaction to wait for the journal head", func() bool {
		w, err := pgBackendWaiting(ctx, adminURL, clearingDB)
		return err == nil && w
	})
	f.KillClearing()
	lock.Close(context.Background())
	firstErr := <-done
	if firstErr == nil {
		t.Fatal("the settle call succeeded although the service was killed with its transaction open")
	}
	t.Logf("first settle call, killed half way, ended with: %v", firstErr)
	if err := f.RestartClearing(ctx, period.CutOff(120*time.Hour).Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	st, err := retry(ctx, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
		return f.Admin().SettlePeriod(ctx, &clearingv1.PeriodRequest{Setlym: period.String()})
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetState() != clearingv1.PeriodState_PERIOD_STATE_SETTLED {
		t.Fatalf("state after settle = %s", st.GetState())
	}
	// A second settle is a no-op with the same figures.
	again, err := f.Admin().SettlePeriod(ctx, &clearingv1.PeriodRequest{Setlym: period.String()})
	if err != nil || again.GetJournalHead() != st.GetJournalHead() {
		t.Fatalf("second settle: %v, head %s vs %s", err, again.GetJournalHead(), st.GetJournalHead())
	}
	cp := pool(t, f.DatabaseURL("clearing"))
	var rows, draws, maxPerProvince int
	if err := cp.QueryRow(ctx, `SELECT count(*) FROM prepay_rows WHERE setlym = $1`, period.Int()).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := cp.QueryRow(ctx, `SELECT count(*), coalesce(max(n), 0) FROM (
		SELECT ref, count(*) AS n FROM journal_entries WHERE kind = 'PREPAY_DRAW' GROUP BY ref) d`).Scan(&draws, &maxPerProvince); err != nil {
		t.Fatal(err)
	}
	if rows != 32 || maxPerProvince > 1 || draws == 0 {
		t.Fatalf("prepay rows %d (want 32), draw entries %d, most per province %d (want 1)", rows, draws, maxPerProvince)
	}
	var outstanding string
	if err := cp.QueryRow(ctx, `SELECT outstanding::text FROM prepay_rows WHERE setlym = $1 AND province = $2`, period.Int(), a).Scan(&outstanding); err != nil {
		t.Fatal(err)
	}
	if outstanding == "0.00" {
		t.Errorf("the payer's deposit was too small, but no shortfall is outstanding")
	}
	checkConservation(t, f)
	exportAndVerify(t, f, period, st.GetJournalHead())
}
