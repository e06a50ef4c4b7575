package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/clock"
	"gongji/migrations"
	"gongji/money"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/sharing"
)

// authPayee is the beneficiaries' province of row 2 (the payer is nodeProvince).
const authPayee = "110000"

// authInFlightMax bounds the open loop's requests in flight: beyond it the
// offered load is plainly not being served, and a new request is counted as
// an error at once (load shedding) instead of queueing for seconds, which
// would only measure the queue and leave the next run a backlog.
const authInFlightMax = 256

// auth runs row 2: cross-province spends at the payee's node B, which asks
// the payer's node A through the clearing switch (B → clearing → A, every hop
// gRPC over mTLS, three databases), at fixed offered rates (open loop), on
// many quotas (spread: concurrent requests never share one) and on a few
// hot ones; against the same writes as bare transactions (A's debit, the
// switch log row, B's payee record) at the same rates; and both at
// saturation (closed loop) for the throughput ratio.
func (r *run) auth(ctx context.Context) error {
	c := r.cfg
	dbC, err := r.pg.newDB(ctx, migrations.Clearing, 0)
	if err != nil {
		return err
	}
	defer dbC.drop()
	dbA, err := r.pg.newDB(ctx, migrations.Province, 0)
	if err != nil {
		return err
	}
	defer dbA.drop()
	dbB, err := r.pg.newDB(ctx, migrations.Province, 0)
	if err != nil {
		return err
	}
	defer dbB.drop()

	cs, err := r.startClearing(dbC.Pool, map[string]string{}, clock.Real)
	if err != nil {
		return err
	}
	defer cs.stop()
	a, err := r.newNode(ctx, dbA, nodeProvince, cs.addr, clock.Real)
	if err != nil {
		return err
	}
	defer a.close()
	b, err := r.newNode(ctx, dbB, authPayee, cs.addr, clock.Real)
	if err != nil {
		return err
	}
	defer b.close()
	for _, n := range []*provinceNode{a, b} {
		if err := r.serveNode(n, clock.Real); err != nil {
			return err
		}
	}
	if err := cs.setNodes(map[string]string{a.code: a.srv.addr, b.code: b.srv.addr}); err != nil {
		return err
	}
	t0 := time.Now()
	rels, err := makeRelationships(ctx, a, b, c.authQuotas+c.authHotQuotas, 0, money.MustParse("1000000.00"))
	if err != nil {
		return err
	}
	hot, spread := rels[:c.authHotQuotas], rels[c.authHotQuotas:]
	logf("auth: %d cross-province relationships %s→%s set up through the switch in %s", len(rels), a.code, b.code,
		time.Since(t0).Round(time.Millisecond))

	cc, err := r.dialAs(b.srv.addr, provinceID(b.code), provinceID(b.code))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := provincev1.NewProvinceServiceClient(cc)
	var seq atomic.Int64
	spend := func(set []benchRel) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			rel := set[i%len(set)]
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := client.Spend(ctx, &provincev1.SpendRequest{UsageKey: fmt.Sprintf("X%d", seq.Add(1)), RelationshipId: rel.id,
				Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY, Amount: benchAmount(i).String(), PayeeRegionCode: rel.benRegion,
				OccurredAt: timestamppb.New(time.Now().Add(-time.Minute))})
			return err
		}
	}
	bare := func(set []benchRel) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			rel := set[i%len(set)]
			now := time.Now()
			key := fmt.Sprintf("B%d", seq.Add(1))
			payer := usageFor(key, rel, sharing.RolePayer, a.code, b.code, benchAmount(i), now)
			if err := (bareSide{role: sharing.RolePayer, entryKind: sharing.EntryUsage, from: sharing.AccountQuota(rel.id),
				to: sharing.AccountDueClearing, relID: rel.id, usage: payer}).run(ctx, dbA.Pool); err != nil {
				return fmt.Errorf("payer: %w", err)
			}
			if err := bareSwitchLog(ctx, dbC.Pool, payer, now); err != nil {
				return fmt.Errorf("switch log: %w", err)
			}
			payee := payer
			payee.Role = sharing.RolePayee
			return bareSide{role: sharing.RolePayee, entryKind: sharing.EntryPayeeUsage, from: sharing.AccountPaid(payee.Kind),
				to: sharing.AccountDueFromClearing, usage: payee}.run(ctx, dbB.Pool)
		}
	}
	// Warm up both paths (connections, TLS sessions, prepared statements).
	_ = openLoop(ctx, 100, time.Second, authInFlightMax, spend(spread))
	_ = openLoop(ctx, 100, time.Second, authInFlightMax, bare(spread))
	// Every run starts from vacuumed hot tables: the few account rows every
	// usage updates (due:clearing, ext:paid:*, due:from_clearing) and the
	// quotas, as autovacuum keeps them between bursts. Without it a run
	// inherits the dead row versions an overloaded run before it left behind.
	vacuum := func() error {
		for _, db := range []*benchDB{dbA, dbB} {
			if _, err := db.Pool.Exec(ctx, `VACUUM accounts, relationships`); err != nil {
				return err
			}
		}
		return nil
	}

	// Throughput first, before any overloaded run: both at saturation with
	// the same number of clients.
	if err := vacuum(); err != nil {
		return err
	}
	sat := closedLoop(ctx, c.authSatClients, c.authSatTime, func(ctx context.Context, _, i int) error { return spend(spread)(ctx, i) })
	logf("auth saturation, %d clients: %s", c.authSatClients, sat.summary())
	if err := vacuum(); err != nil {
		return err
	}
	satBare := closedLoop(ctx, c.authSatClients, c.authSatTime, func(ctx context.Context, _, i int) error { return bare(spread)(ctx, i) })
	logf("auth saturation bare, %d clients: %s", c.authSatClients, satBare.summary())
	r.add(Row{Name: "authorisation throughput", Ours: sat.rate(), Baseline: satBare.rate(), Unit: "req/s",
		Note: fmt.Sprintf("%d clients, closed loop, spread quotas: B→clearing→A Spend (p50 %.1f ms, p99 %.1f ms, %d errors) vs the same writes as bare txs A + switch log + B (p50 %.1f ms, p99 %.1f ms, %d errors); informational",
			c.authSatClients, sat.pct(0.5), sat.pct(0.99), sat.errors, satBare.pct(0.5), satBare.pct(0.99), satBare.errors)})

	for _, rate := range c.authRates {
		for _, mode := range []struct {
			name string
			set  []benchRel
		}{{"spread", spread}, {"hot", hot}} {
			if err := vacuum(); err != nil {
				return err
			}
			meter := startCPU(ctx, dbA.Pool)
			ours := openLoop(ctx, rate, c.authDuration, authInFlightMax, spend(mode.set))
			oSelf, oPG := meter.stop(ctx)
			logf("auth %d/s %s (%d quotas): %s; %s", rate, mode.name, len(mode.set), ours.summary(), cpuNote(oSelf, oPG, max(ours.done, 1), "spend"))
			if err := vacuum(); err != nil {
				return err
			}
			base := openLoop(ctx, rate, c.authDuration/2, authInFlightMax, bare(mode.set))
			logf("auth %d/s %s bare: %s", rate, mode.name, base.summary())
			row := Row{Name: fmt.Sprintf("authorisation %d/s %s", rate, mode.name), Ours: ours.pct(0.99), Baseline: base.pct(0.99),
				Unit: "ms p99",
				Note: fmt.Sprintf("achieved %.0f/s of %d/s, p50 %.2f ms, p99 %.2f ms, p999 %.2f ms, %d errors, %d quotas; bare txs A+switch log+B at the same rate: %.0f/s, p50 %.2f ms, p999 %.2f ms, %d errors",
					ours.rate(), rate, ours.pct(0.5), ours.pct(0.99), ours.pct(0.999), ours.errors, len(mode.set),
					base.rate(), base.pct(0.5), base.pct(0.999), base.errors)}
			if ours.firstErr != nil {
				row.Note += fmt.Sprintf("; first error: %v", ours.firstErr)
			}
			if rate == 1000 {
				row.Goal = "p99 ≤ 10 ms, no errors"
				row.Met = boolp(ours.pct(0.99) <= 10 && ours.errors == 0 && ours.rate() >= 0.98*float64(rate))
			}
			r.add(row)
		}
	}

	// Money is conserved at both nodes after all of it (the bare
	// transactions book balanced entries and keep the cached balances).
	for _, n := range []*provinceNode{a, b} {
		if err := n.svc.CheckConservation(ctx); err != nil {
			return fmt.Errorf("conservation at %s: %w", n.code, err)
		}
	}
	return nil
}
