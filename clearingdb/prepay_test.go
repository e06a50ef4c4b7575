package clearingdb_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/prepay"
)

func TestPrepayMovements(t *testing.T) {
	t.Parallel()
	b := opSetup(t)
	at := julyAt

	// Validation happens before anything is written.
	for _, c := range []struct {
		m    clearingdb.PrepayMovement
		want error
	}{
		{clearingdb.PrepayMovement{Province: "999999", Amount: opYuan("1.00"), Key: "k"}, prepay.ErrUnknownProvince},
		{clearingdb.PrepayMovement{Province: "110100", Amount: opYuan("1.00"), Key: "k"}, prepay.ErrUnknownProvince},
		{clearingdb.PrepayMovement{Province: opBJ, Amount: money.Zero, Key: "k"}, prepay.ErrBadAmount},
		{clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("-5.00"), Key: "k"}, prepay.ErrBadAmount},
		{clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("1.00"), Key: ""}, clearingdb.ErrBadKey},
		{clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("1.00"), Key: "has space"}, clearingdb.ErrBadKey},
	} {
		if _, err := b.store.FundPrepay(b.ctx, c.m, at); !errors.Is(err, c.want) {
			t.Errorf("fund %+v: %v, want %v", c.m, err, c.want)
		}
	}
	if n := opCount(t, b, `SELECT count(*) FROM journal_entries`); n != 0 {
		t.Fatalf("%d entries after refused movements", n)
	}

	m := clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("1000.50"), Key: "fund-1"}
	a, err := b.store.FundPrepay(b.ctx, m, at)
	if err != nil || a.Deposit.String() != "1000.50" {
		t.Fatalf("fund: %+v, %v", a, err)
	}
	// Replay: same answer, nothing booked twice.
	a, err = b.store.FundPrepay(b.ctx, m, at.Add(1))
	if err != nil || a.Deposit.String() != "1000.50" {
		t.Fatalf("replayed fund: %+v, %v", a, err)
	}
	// Same key, another amount or kind: refused.
	m2 := m
	m2.Amount = opYuan("1000.51")
	if _, err := b.store.FundPrepay(b.ctx, m2, at); !errors.Is(err, clearingdb.ErrKeyReused) {
		t.Fatalf("key reused with another amount: %v", err)
	}
	if _, err := b.store.ReplenishPrepay(b.ctx, m, at); !errors.Is(err, clearingdb.ErrKeyReused) {
		t.Fatalf("key reused for a replenishment: %v", err)
	}
	// Nothing was drawn, so nothing can be replenished, and there is no shortfall to pay.
	if _, err := b.store.ReplenishPrepay(b.ctx, clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("0.01"), Key: "r-1"}, at); !errors.Is(err, prepay.ErrExceedsDue) {
		t.Fatalf("replenish without a draw: %v", err)
	}
	if _, err := b.store.PayShortfall(b.ctx, clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("0.01"), Key: "s-1"}, at); !errors.Is(err, prepay.ErrExceedsOutstanding) {
		t.Fatalf("shortfall payment without a shortfall: %v", err)
	}
	if n := opCount(t, b, `SELECT count(*) FROM journal_entries`); n != 1 {
		t.Fatalf("%d entries, want 1", n)
	}
	ps, err := b.store.PrepayStatus(b.ctx, opBJ)
	if err != nil || len(ps.Accounts) != 1 || ps.PoolTotal.String() != "1000.50" || ps.Accounts[0].Warning {
		t.Fatalf("status: %+v, %v", ps, err)
	}
	if _, err := b.store.PrepayStatus(b.ctx, "123456"); !errors.Is(err, prepay.ErrUnknownProvince) {
		t.Fatalf("status of an unknown province: %v", err)
	}
	opVerify(t, b)
}

// TestJournalConcurrentAppends: concurrent movements serialise on the head
// row; the chain stays gapless and valid and every movement is booked once.
func TestJournalConcurrentAppends(t *testing.T) {
	t.Parallel()
	b := opSetup(t)
	const workers, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*2)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				m := clearingdb.PrepayMovement{Province: []string{opBJ, opSH, opHN, opGD}[w], Amount: opYuan("1.25"), Key: fmt.Sprintf("w%d-%d", w, i)}
				if _, err := b.store.FundPrepay(b.ctx, m, julyAt); err != nil {
					errs <- err
				}
				// Every key twice: the replay must not book again.
				if _, err := b.store.FundPrepay(b.ctx, m, julyAt); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	chk := opVerify(t, b)
	if chk.Entries != workers*each || chk.Head.LastID != workers*each {
		t.Fatalf("journal %+v, want %d entries", chk, workers*each)
	}
	ps, err := b.store.PrepayStatus(b.ctx, "")
	if err != nil || ps.PoolTotal.String() != "50.00" {
		t.Fatalf("pool %+v, %v", ps.PoolTotal, err)
	}
	head, err := b.store.JournalHead(b.ctx)
	if err != nil || head.String() != chk.Head.String() {
		t.Fatalf("head %s, verified %s, %v", head, chk.Head, err)
	}
}
