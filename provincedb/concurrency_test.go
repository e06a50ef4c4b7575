package provincedb_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"gongji/money"
	"gongji/sharing"
)

// TestConcurrentSpends: 64 goroutines race spends on one quota (R9). The
// approved ones never exceed it, and the sum approved equals exactly what
// left the quota account and arrived at the payout account.
func TestConcurrentSpends(t *testing.T) {
	t.Parallel()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	racingSpends(t, n, clk)
}

func racingSpends(t *testing.T, n *node, clk *clock) {
	ctx := context.Background()
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "1000.00")
	r := n.activeRel(t, a, b, "100.00")

	const racers = 64
	amounts := []string{"7.00", "3.33", "11.50", "0.01"}
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	approved := money.Zero
	nApproved, nRefused := 0, 0
	for i := 0; i < racers; i++ {
		wg.Add(1)
		req := spendReq(r, sharing.KindMedical, amounts[i%len(amounts)], clk.Now())
		go func() {
			defer wg.Done()
			<-start
			u, err := n.svc.Spend(ctx, req)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				approved = approved.Add(u.Usage.Amount)
				nApproved++
			case errors.Is(err, sharing.ErrQuotaExceeded):
				nRefused++
			default:
				t.Errorf("spend: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	t.Logf("approved %d, refused %d, store %+v", nApproved, nRefused, n.store.Stats())
	if nApproved+nRefused != racers || nRefused == 0 {
		t.Fatalf("approved %d, refused %d: the race did not reach the quota", nApproved, nRefused)
	}
	if approved.GreaterThan(y("100.00")) {
		t.Fatalf("approved %s > quota 100.00", approved)
	}
	rel := n.rel(t, r.ID)
	if !rel.Used.Equal(approved) {
		t.Fatalf("used %s, approved %s", rel.Used, approved)
	}
	if got := y("100.00").Sub(n.balanceOf(t, sharing.AccountQuota(r.ID))); !got.Equal(approved) {
		t.Fatalf("left the quota account %s, approved %s", got, approved)
	}
	if got := n.balanceOf(t, sharing.AccountPaid(sharing.KindMedical)); !got.Equal(approved) {
		t.Fatalf("ext:paid:MEDICAL %s, approved %s", got, approved)
	}
	// Every refusal was recorded (so a retry replays it), every approval reported.
	if got := n.count(t, `SELECT count(*) FROM usages WHERE NOT approved`); got != nRefused {
		t.Fatalf("refused rows %d, refusals %d", got, nRefused)
	}
	if got := n.count(t, `SELECT count(*) FROM outbox WHERE kind = 'USAGE'`); got != nApproved {
		t.Fatalf("usage outbox rows %d, approvals %d", got, nApproved)
	}
	n.conserved(t)
}

// TestConcurrentSameKey: racing retries of one request produce one usage
// and one answer.
func TestConcurrentSameKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "100.00")
	r := n.activeRel(t, a, b, "50.00")
	req := spendReq(r, sharing.KindPharmacy, "9.99", clk.Now())
	const racers = 16
	start := make(chan struct{})
	answers := make([]sharing.UsageResult, racers)
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := 0; i < racers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			answers[i], errs[i] = n.svc.Spend(ctx, req)
		}()
	}
	close(start)
	wg.Wait()
	first := 0
	for i := range answers {
		wantErr(t, "racing retry", errs[i])
		if !answers[i].Replayed {
			first++
		}
		answers[i].Replayed = false
		sameJSON(t, "racing retry answer", answers[i], answers[0])
	}
	if first != 1 {
		t.Fatalf("%d first answers among %d racing retries", first, racers)
	}
	if used := n.rel(t, r.ID).Used; !used.Equal(y("9.99")) {
		t.Fatalf("used %s after %d racing retries of one 9.99 usage", used, racers)
	}
	n.conserved(t)
}

// TestConcurrentDissolve: spends race a dissolution; every cent of the quota
// ends up either used or returned, never both, never neither.
func TestConcurrentDissolve(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "100.00")
	r := n.activeRel(t, a, b, "60.00")
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		req := spendReq(r, sharing.KindMedical, "2.50", clk.Now())
		go func() {
			defer wg.Done()
			<-start
			if _, err := n.svc.Spend(ctx, req); err != nil && !errors.Is(err, sharing.ErrNotActive) && !errors.Is(err, sharing.ErrQuotaExceeded) {
				t.Errorf("spend: %v", err)
			}
		}()
		if i == 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if _, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), RelationshipID: r.ID, By: sharing.SideBeneficiary}); err != nil {
					t.Errorf("dissolve: %v", err)
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	d := n.rel(t, r.ID)
	if d.Status != sharing.StatusDissolved || !d.Used.Add(d.Returned).Equal(y("60.00")) {
		t.Fatalf("used %s + returned %s != quota 60.00", d.Used, d.Returned)
	}
	if acct := n.account(t, a); !acct.Available.Equal(y("40.00").Add(d.Returned)) {
		t.Fatalf("sharer %+v, returned %s", acct, d.Returned)
	}
	n.conserved(t)
}
