package clearingdb_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"pgregory.net/rapid"

	"gongji/clearingdb"
)

// scenario is a fixed set of reports from two or more nodes and what the
// clearing database must hold once all of them have been delivered, in any
// order, any number of times.
type scenario struct {
	outbox map[string][]clearingdb.Record // per node, in outbox order (seq set later)
	rows   map[string]string              // usage id → expected row (usageSet format)
	exc    []string                       // expected "usage kind field payer_value payee_value"
}

// twoNodeScenario: 北京 and 上海 each pay for some usages and are paid for
// others; one amount mismatch, one field mismatch, one payee naming the wrong
// payer province (the row must end up with the payer's), a reversal.
func twoNodeScenario(t tb, prefix string) scenario {
	sc := scenario{outbox: map[string][]clearingdb.Record{}, rows: map[string]string{}}
	add := func(payerRep, payeeRep clearingdb.Record) {
		sc.outbox[payerRep.PayerProvince] = append(sc.outbox[payerRep.PayerProvince], payerRep)
		sc.outbox[payeeRep.PayeeProvince] = append(sc.outbox[payeeRep.PayeeProvince], payeeRep)
	}
	k := func(s string) string { return prefix + s }

	u1r, u1e := pair(t, k("U1"), bj, sh, "10.00", t0)
	add(u1r, u1e)
	sc.rows[k("U1")] = "202607 USAGE 110000>310000 10.00 late=false payer=true payee=true rev="

	u2r, u2e := pair(t, k("U2"), bj, sh, "90.00", t0)
	u2e.Amount = "100.00"
	add(u2r, u2e)
	sc.rows[k("U2")] = "202607 USAGE 110000>310000 90.00 late=false payer=true payee=true rev="
	sc.exc = append(sc.exc, k("U2")+" AMOUNT_DIFFERS amount 90.00 100.00")

	u3r, u3e := pair(t, k("U3"), bj, sh, "7.00", t0)
	u3e.PayerProvince, u3e.PayerRegion = gd, "440100"
	add(u3r, u3e)
	sc.rows[k("U3")] = "202607 USAGE 110000>310000 7.00 late=false payer=true payee=true rev="
	sc.exc = append(sc.exc, k("U3")+" FIELD_DIFFERS payer_province 110000 440000",
		k("U3")+" FIELD_DIFFERS payer_region 110100 440100")

	u4r, u4e := pair(t, k("U4"), bj, sh, "3.00", t0)
	u4e.UsageKind = "MEDICAL"
	add(u4r, u4e)
	sc.rows[k("U4")] = "202607 USAGE 110000>310000 3.00 late=false payer=true payee=true rev="
	sc.exc = append(sc.exc, k("U4")+" FIELD_DIFFERS kind PHARMACY MEDICAL")

	rr, re := reversal(t, k("U1-R"), k("U1"), bj, sh, "4.00", t0)
	add(rr, re)
	sc.rows[k("U1-R")] = fmt.Sprintf("202607 REVERSAL 110000>310000 -4.00 late=false payer=true payee=true rev=%s", k("U1"))

	v1r, v1e := pair(t, k("V1"), sh, bj, "5.50", t0)
	add(v1r, v1e)
	sc.rows[k("V1")] = "202607 USAGE 310000>110000 5.50 late=false payer=true payee=true rev="
	sort.Strings(sc.exc)
	return sc
}

// reports counts the distinct (side, key) reports of a scenario: what Stored
// must add up to.
func (sc scenario) reports() int64 {
	var n int64
	for _, recs := range sc.outbox {
		n += int64(len(recs))
	}
	return n
}

// check compares what is stored under prefix with the scenario.
func (sc scenario) check(t tb, b bundle, prefix string) {
	t.Helper()
	got := map[string]string{}
	for id, row := range usageSet(t, b, mustPeriod(t, "202607")) {
		if strings.HasPrefix(id, prefix) {
			got[id] = row
		}
	}
	if !mapsEqual(got, sc.rows) {
		t.Fatalf("usages:\n got %v\nwant %v", got, sc.rows)
	}
	exc, err := b.store.Exceptions(b.ctx, mustPeriod(t, "202607"), "")
	if err != nil {
		t.Fatal(err)
	}
	var gotExc []string
	for _, e := range exc {
		if strings.HasPrefix(e.UsageID, prefix) {
			gotExc = append(gotExc, fmt.Sprintf("%s %s %s %s %s", e.UsageID, e.Kind, e.Field, e.PayerValue, e.PayeeValue))
		}
	}
	sort.Strings(gotExc)
	if !slices.Equal(gotExc, sc.exc) {
		t.Fatalf("exceptions:\n got %q\nwant %q", gotExc, sc.exc)
	}
}

// TestPropertyAnyDeliveryOrderSameResult: random interleavings, replays,
// reordered and re-outboxed (same payload, new seq) deliveries of a fixed
// set of reports from two nodes always end in the same stored set and the
// same exceptions, and every report is counted stored exactly once.
func TestPropertyAnyDeliveryOrderSameResult(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var iteration atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		it := iteration.Add(1)
		prefix := fmt.Sprintf("it%d-", it)
		sc := twoNodeScenario(rt, prefix)
		seqBase := it * 1000 // receipts are per (province, seq): keep iterations apart
		nodes := []string{bj, sh}
		outbox := map[string][]clearingdb.Record{}
		for _, n := range nodes {
			for i, r := range sc.outbox[n] {
				outbox[n] = append(outbox[n], withSeq(r, seqBase+int64(i)+1))
			}
		}
		var stored, dups, sent int64
		send := func(node string, recs []clearingdb.Record) {
			ack := ingest(rt, b, node, t0, recs...)
			if len(ack.Rejected) != 0 {
				rt.Fatalf("rejected: %+v", ack.Rejected)
			}
			stored += ack.Stored
			dups += ack.Duplicates
			sent += int64(len(recs))
		}
		steps := rapid.IntRange(0, 12).Draw(rt, "steps")
		for range steps {
			node := rapid.SampledFrom(nodes).Draw(rt, "node")
			ob := outbox[node]
			if rapid.IntRange(0, 4).Draw(rt, "reoutbox") == 0 {
				// The node writes the same report to its outbox again under a new seq.
				r := rapid.SampledFrom(ob).Draw(rt, "again")
				ob = append(ob, withSeq(r, seqBase+int64(len(ob))+1))
				outbox[node] = ob
			}
			from := rapid.IntRange(0, len(ob)-1).Draw(rt, "from")
			to := rapid.IntRange(from+1, len(ob)).Draw(rt, "to")
			batch := slices.Clone(ob[from:to])
			if rapid.Bool().Draw(rt, "shuffle") {
				perm := rapid.Permutation(batch).Draw(rt, "perm")
				batch = perm
			}
			if rapid.IntRange(0, 3).Draw(rt, "twice") == 0 {
				batch = append(batch, batch[0]) // the same seq twice in one batch
			}
			send(node, batch)
		}
		// The streamers eventually deliver everything, in either node order.
		if rapid.Bool().Draw(rt, "flushOrder") {
			nodes[0], nodes[1] = nodes[1], nodes[0]
		}
		for _, n := range nodes {
			send(n, outbox[n])
		}
		if stored != sc.reports() || stored+dups != sent {
			rt.Fatalf("stored %d (want %d), duplicates %d, sent %d", stored, sc.reports(), dups, sent)
		}
		sc.check(rt, b, prefix)
	})
}

// TestConcurrentIngest: four provinces report concurrently (each usage by both
// sides at once, so the two reports of a key race), each outbox is delivered
// by two overlapping streams (the same seqs raced), in random batch sizes
// with replays. The end state is exact.
func TestConcurrentIngest(t *testing.T) {
	t.Parallel()
	b := setup(t)
	provinces := []string{bj, sh, gd, "510000"}
	outbox := map[string][]clearingdb.Record{}
	want := map[string]string{}
	n := 0
	for i, payer := range provinces {
		for j, payee := range provinces {
			if i == j {
				continue
			}
			for range 25 {
				n++
				key := fmt.Sprintf("C%04d", n)
				pr, pe := pair(t, key, payer, payee, fmt.Sprintf("%d.%02d", n, n%100), t0)
				outbox[payer] = append(outbox[payer], withSeq(pr, int64(len(outbox[payer])+1)))
				outbox[payee] = append(outbox[payee], withSeq(pe, int64(len(outbox[payee])+1)))
				want[key] = fmt.Sprintf("202607 USAGE %s>%s %d.%02d late=false payer=true payee=true rev=", payer, payee, n, n%100)
			}
		}
	}
	var stored atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(provinces))
	for pi, p := range provinces {
		for stream := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(pi), uint64(stream)))
				ob := outbox[p]
				for at := 0; at < len(ob); {
					size := 1 + rng.IntN(40)
					end := min(at+size, len(ob))
					batch := slices.Clone(ob[at:end])
					if at > 0 && rng.IntN(3) == 0 {
						batch = append(batch, ob[rng.IntN(at)]) // replay an earlier record
					}
					rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
					ack, err := b.store.IngestBatch(b.ctx, p, batch, t0)
					if err != nil {
						errs <- fmt.Errorf("%s stream %d: %w", p, stream, err)
						return
					}
					if len(ack.Rejected) != 0 {
						errs <- fmt.Errorf("%s: rejected %+v", p, ack.Rejected)
						return
					}
					stored.Add(ack.Stored)
					at = end
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := usageSet(t, b, mustPeriod(t, "202607")); !mapsEqual(got, want) {
		t.Fatalf("usages differ: got %d rows, want %d", len(got), len(want))
	}
	if stored.Load() != int64(2*n) {
		t.Fatalf("stored %d reports, want %d", stored.Load(), 2*n)
	}
	var receipts int64
	if err := b.db.Pool.QueryRow(b.ctx, `SELECT count(*) FROM report_receipts`).Scan(&receipts); err != nil || receipts != int64(2*n) {
		t.Fatalf("receipts = %d, %v; want %d", receipts, err, 2*n)
	}
}
