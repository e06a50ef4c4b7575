package provincedb_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"gongji/provincedb"
	"gongji/sharing"
)

type holdKey struct{}

// TestOutboxOutOfOrderCommit: a transaction takes a lower seq and stays open
// while a later one commits and is read and acknowledged; when the first
// finally commits, its row is still delivered by PendingOutbox. Barriers,
// not sleeps.
func TestOutboxOutOfOrderCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	c := n.register(t, employee(luoyang))
	n.credit(t, a, "100")
	r1 := n.activeRel(t, a, b, "10")
	r2 := n.activeRel(t, a, c, "10")
	// Drain what the set-up wrote.
	drainOutbox(t, n)

	reached := make(chan struct{})
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseHeld := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseHeld() // never leave the held transaction blocked if the test fails early
	provincedb.SetBeforeCommit(n.store, func(ctx context.Context, op string) {
		if ctx.Value(holdKey{}) != nil && op == "authorize" {
			close(reached)
			<-release
		}
	})
	held := spendReq(r1, sharing.KindMedical, "1.00", clk.Now())
	done := make(chan error, 1)
	go func() {
		_, err := n.svc.Spend(context.WithValue(ctx, holdKey{}, true), held)
		done <- err
	}()
	<-reached // the held transaction has written its outbox row (lower seq) and not committed

	// Another kind, so that the two transactions share no account row (the
	// held one keeps ext:paid:MEDICAL locked); a deadline turns a mistake into
	// a failure instead of a hang.
	later := spendReq(r2, sharing.KindPharmacy, "2.00", clk.Now())
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := n.svc.Spend(lctx, later); err != nil {
		t.Fatal(err)
	}
	recs, err := n.store.PendingOutbox(ctx, 100)
	if err != nil || len(recs) != 1 || recs[0].Key != later.Key {
		t.Fatalf("pending while one is held: %+v %v", recs, err)
	}
	laterSeq := recs[0].Seq
	if err := n.store.AckOutbox(ctx, []int64{laterSeq}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := n.store.PendingOutbox(ctx, 100); len(recs) != 0 {
		t.Fatalf("acknowledged row still pending: %+v", recs)
	}

	releaseHeld()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recs, err = n.store.PendingOutbox(ctx, 100)
	if err != nil || len(recs) != 1 || recs[0].Key != held.Key {
		t.Fatalf("held row after commit: %+v %v", recs, err)
	}
	if recs[0].Seq >= laterSeq {
		t.Fatalf("held row seq %d is not lower than %d: the test did not commit out of order", recs[0].Seq, laterSeq)
	}
	u, err := recs[0].Usage()
	if err != nil || u.Key != held.Key || !u.Amount.Equal(y("1.00")) || u.PayerRegion != zhengzh || u.PayeeRegion != luoyang ||
		u.SharerRef != a || u.BeneficiaryRef != b || u.RelationshipID != r1.ID || u.Kind != sharing.KindMedical || !u.OccurredAt.Equal(clk.Now()) {
		t.Fatalf("payload %+v %v", u, err)
	}
	// Acknowledging is idempotent and exact.
	for i := 0; i < 2; i++ {
		if err := n.store.AckOutbox(ctx, []int64{recs[0].Seq, laterSeq}); err != nil {
			t.Fatal(err)
		}
	}
	if recs, _ := n.store.PendingOutbox(ctx, 100); len(recs) != 0 {
		t.Fatalf("pending after ack: %+v", recs)
	}
	if _, err := n.store.PendingOutbox(ctx, 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
}

func drainOutbox(t testing.TB, n *node) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		recs, err := n.store.PendingOutbox(ctx, 50)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return
		}
		seqs := make([]int64, len(recs))
		for i, r := range recs {
			seqs[i] = r.Seq
			if i > 0 && r.Seq <= recs[i-1].Seq {
				t.Fatalf("outbox not in seq order: %d after %d", r.Seq, recs[i-1].Seq)
			}
		}
		if err := n.store.AckOutbox(ctx, seqs); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("outbox did not drain")
}

// TestRelayQueue: leases, retries and acknowledgements of relay messages.
func TestRelayQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	n.credit(t, a, "10")
	ben := "0123456789abcdef0123456789abcdef"
	r, err := n.svc.Propose(ctx, sharing.Proposal{Key: key("p"), By: sharing.SideSharer, SharerRef: a, SharerProvince: henan, BeneficiaryRef: ben, BeneficiaryProvince: beijing, Relation: sharing.RelationSibling})
	if err != nil {
		t.Fatal(err)
	}
	now := clk.Now()
	msgs, err := n.store.DueRelay(ctx, now, 10)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("due: %+v %v", msgs, err)
	}
	m := msgs[0]
	snap, err := m.Snapshot()
	if err != nil || m.Kind != sharing.RelaySnapshot || m.TargetProvince != beijing || m.Attempts != 1 || snap.ID != r.ID || snap.Version != 1 {
		t.Fatalf("message %+v %v", m, err)
	}
	// Leased: not handed out again until the lease ends.
	if again, _ := n.store.DueRelay(ctx, now, 10); len(again) != 0 {
		t.Fatalf("leased message handed out twice: %+v", again)
	}
	// A worker that crashed: the message comes back after the lease.
	later := now.Add(31 * time.Second)
	again, err := n.store.DueRelay(ctx, later, 10)
	if err != nil || len(again) != 1 || again[0].ID != m.ID || again[0].Attempts != 2 {
		t.Fatalf("after lease: %+v %v", again, err)
	}
	if err := n.store.RelayRetry(ctx, m.ID, later.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if due, _ := n.store.DueRelay(ctx, later.Add(59*time.Minute), 10); len(due) != 0 {
		t.Fatalf("retried message due early: %+v", due)
	}
	due, _ := n.store.DueRelay(ctx, later.Add(time.Hour), 10)
	if len(due) != 1 || due[0].Attempts != 3 {
		t.Fatalf("retried message: %+v", due)
	}
	for i := 0; i < 2; i++ {
		if err := n.store.RelayDone(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	if due, _ := n.store.DueRelay(ctx, later.Add(100*time.Hour), 10); len(due) != 0 {
		t.Fatalf("delivered message due again: %+v", due)
	}
	wantErr(t, "retry delivered", n.store.RelayRetry(ctx, m.ID, later), sharing.ErrNotFound)
	wantErr(t, "done unknown", n.store.RelayDone(ctx, 999999), sharing.ErrNotFound)

	// Two workers leasing concurrently never get the same message.
	for i := 0; i < 20; i++ {
		if _, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), RelationshipID: r.ID, By: sharing.SideSharer}); err != nil && i == 0 {
			t.Fatal(err)
		}
	}
	for i := 0; i < 10; i++ {
		if _, err := n.svc.Propose(ctx, sharing.Proposal{Key: key("p"), By: sharing.SideSharer, SharerRef: a, SharerProvince: henan,
			BeneficiaryRef: refN(i), BeneficiaryProvince: beijing, Relation: sharing.RelationSibling}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got, err := n.store.DueRelay(ctx, later.Add(200*time.Hour), 3)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			for _, m := range got {
				seen[m.ID]++
			}
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("message %d leased %d times", id, c)
		}
	}
	if len(seen) != 11 {
		t.Fatalf("leased %d messages, want 11 (dissolution + 10 proposals)", len(seen))
	}
}

func refN(i int) string {
	const hex = "0123456789abcdef"
	b := []byte("fedcba9876543210fedcba987654321")
	return string(b) + string(hex[i%16])
}

// TestDeadlineHonoured: a request waiting for a quota another transaction
// holds gives up at its context's deadline instead of waiting for the lock.
func TestDeadlineHonoured(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "100")
	r := n.activeRel(t, a, b, "10")
	reached := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	releaseHeld := func() { once.Do(func() { close(release) }) }
	defer releaseHeld()
	provincedb.SetBeforeCommit(n.store, func(ctx context.Context, op string) {
		if ctx.Value(holdKey{}) != nil {
			close(reached)
			<-release
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := n.svc.Spend(context.WithValue(ctx, holdKey{}, true), spendReq(r, sharing.KindMedical, "1", clk.Now()))
		done <- err
	}()
	<-reached // the quota row is locked by the held transaction
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := n.svc.Spend(dctx, spendReq(r, sharing.KindMedical, "1", clk.Now()))
	wantErr(t, "spend behind a held lock", err, context.DeadlineExceeded)
	releaseHeld()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if used := n.rel(t, r.ID).Used; !used.Equal(y("1")) {
		t.Fatalf("used %s: the timed-out spend moved money", used)
	}
	n.conserved(t)
}
