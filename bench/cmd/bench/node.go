package main

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/clock"
	"gongji/migrations"
	"gongji/money"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/sharing"
)

// nodeProvince is the province of row 6 (and the payer of row 2).
const nodeProvince = "410000"

// benchAmount is request i's amount: 1.00 to 99.99 yuan.
func benchAmount(i int) money.Yuan { return money.FromFen(100 + int64(i*7919)%9900) }

// node runs row 6: local spends (sharer and beneficiary in the province)
// through a province node's ProvinceService over mTLS, with concurrent
// clients in a closed loop, against the bare transaction of the same writes.
func (r *run) node(ctx context.Context) error {
	c := r.cfg
	db, err := r.pg.newDB(ctx, migrations.Province, 0)
	if err != nil {
		return err
	}
	defer db.drop()
	n, err := r.newNode(ctx, db, nodeProvince, "", clock.Real)
	if err != nil {
		return err
	}
	defer n.close()
	if err := r.serveNode(n, clock.Real); err != nil {
		return err
	}
	t0 := time.Now()
	rels, err := makeRelationships(ctx, n, n, c.nodeQuotas, 0, money.MustParse("1000000.00"))
	if err != nil {
		return err
	}
	logf("node: %d local relationships set up in %s", len(rels), time.Since(t0).Round(time.Millisecond))
	cc, err := r.dialAs(n.srv.addr, provinceID(nodeProvince), provinceID(nodeProvince))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := provincev1.NewProvinceServiceClient(cc)

	bare := func(tag string) loadResult {
		return closedLoop(ctx, c.nodeClients, c.nodeDuration, func(ctx context.Context, _, i int) error {
			rel := rels[i%len(rels)]
			now := time.Now()
			u := usageFor(fmt.Sprintf("%s-%d", tag, i), rel, sharing.RoleLocal, nodeProvince, nodeProvince, benchAmount(i), now)
			return bareSide{role: sharing.RoleLocal, entryKind: sharing.EntryUsage, from: sharing.AccountQuota(rel.id),
				to: sharing.AccountPaid(u.Kind), relID: rel.id, usage: u}.run(ctx, db.Pool)
		})
	}
	meter := startCPU(ctx, db.Pool)
	before := bare("bare1")
	bs, bp := meter.stop(ctx)
	logf("node: bare transaction, %d clients: %s; %s", c.nodeClients, before.summary(), cpuNote(bs, bp, before.done, "spend"))

	meter = startCPU(ctx, db.Pool)
	ours := closedLoop(ctx, c.nodeClients, c.nodeDuration, func(ctx context.Context, _, i int) error {
		rel := rels[i%len(rels)]
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := client.Spend(ctx, &provincev1.SpendRequest{UsageKey: fmt.Sprintf("spend-%d", i), RelationshipId: rel.id,
			Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY, Amount: benchAmount(i).String(), PayeeRegionCode: rel.benRegion,
			OccurredAt: timestamppb.New(time.Now().Add(-time.Minute))})
		return err
	})
	oSelf, oPG := meter.stop(ctx)
	logf("node: Spend over gRPC, %d clients: %s; %s", c.nodeClients, ours.summary(), cpuNote(oSelf, oPG, ours.done, "spend"))
	if err := n.svc.CheckConservation(ctx); err != nil {
		return fmt.Errorf("conservation check after the spends: %w", err)
	}

	meter = startCPU(ctx, db.Pool)
	after := bare("bare2")
	as, ap := meter.stop(ctx)
	logf("node: bare transaction again: %s; %s", after.summary(), cpuNote(as, ap, after.done, "spend"))
	if ours.errors > 0 || before.errors > 0 || after.errors > 0 {
		return fmt.Errorf("errors: ours %d (%v), bare %d/%d (%v)", ours.errors, ours.firstErr, before.errors, after.errors,
			firstNonNil(before.firstErr, after.firstErr))
	}
	base := (before.rate() + after.rate()) / 2
	rt := ratio(ours.rate(), base)
	r.add(Row{Name: "province node local spend", Ours: ours.rate(), Baseline: base, Unit: "spends/s", Ratio: rt, Goal: "≥ 0.70",
		Met: boolp(rt >= 0.7),
		Note: fmt.Sprintf("%d clients, closed loop, ProvinceService.Spend over mTLS (p50 %.1f ms, p99 %.1f ms) vs bare tx: rel FOR UPDATE, entry + 2 postings, 2 balances, rel, usage, outbox (%.0f and %.0f/s); %s",
			c.nodeClients, ours.pct(0.5), ours.pct(0.99), before.rate(), after.rate(), cpuNote(oSelf, oPG, ours.done, "spend"))})
	return nil
}

func firstNonNil(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
