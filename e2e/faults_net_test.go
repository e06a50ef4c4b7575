package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"gongji/internal/federation"
	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/region"
)

// TestNetworkFaults puts toxiproxy (as a library, on loopback) on the three
// links of a two-province federation whose usages are spent at node B
// (Henan) and debited at node A (Guangdong), the sharers' node:
//
//	B → clearing   (Authorize, B's reports)     proxy "b-clearing"
//	A → clearing   (A's reports)                proxy "a-clearing"
//	clearing → A   (the switch's Debit)         proxy "clearing-a"
//
// and injects, in turn: latency; connection resets; an answer lost after the
// debit committed, on each hop of the debit; a partition of A from the
// clearing service (A's reports pile up while debits go on) and of B (its
// clients' spends fail) that heal later. Clients retry with the same key.
// At the end every approval the clients got was committed exactly once at
// A, payer, payee and clearing records agree row by row, and money is
// conserved.
func TestNetworkFaults(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	f, dir := faultFederation(t, period, 25, []string{a, b}, nil)
	rels := faultPair(t, f, a, b, 8, "2000.00", "net", transientCodes)
	load, lostB, lostA := rels[:6], rels[6], rels[7]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	pB := startProxy(t, api, "b-clearing", f.Addr("clearing"))
	pA := startProxy(t, api, "a-clearing", f.Addr("clearing"))
	pC := startProxy(t, api, "clearing-a", f.Addr(a))
	repointNode(ctx, t, f, b, pB.Listen)
	repointNode(ctx, t, f, a, pA.Listen)
	routeClearing(t, f, dir, map[string]string{a: pC.Listen, b: f.Addr(b)})

	s := newSpender(f, b, period, transientCodes)
	rounds, lostRounds, partitions := 4, 1, 1
	if *long {
		rounds, lostRounds, partitions = 20, 5, 3
	}
	injected := map[string]int{}
	started := time.Now()

	t.Run("latency", func(t *testing.T) {
		// 150 ± 50 ms each way on B's link: every spend crosses it twice.
		addToxic(t, pB, "lat-up", "latency", "upstream", map[string]any{"latency": 150, "jitter": 50})
		addToxic(t, pB, "lat-down", "latency", "downstream", map[string]any{"latency": 150, "jitter": 50})
		_, failedBefore := s.counts()
		approvedBefore, _ := s.counts()
		finish := s.background(t, "LAT", load, 4, 300, 1)
		waitFor(t, 2*time.Minute, "40 spends under latency", func() bool { n, _ := s.counts(); return n >= approvedBefore+40 })
		finish()
		removeToxic(t, pB, "lat-up")
		removeToxic(t, pB, "lat-down")
		injected["latency (150±50 ms each way)"]++
		if _, failed := s.counts(); failed != failedBefore {
			t.Errorf("%d attempts failed under latency well inside the deadlines (%s)", failed-failedBefore, s.failureSummary())
		}
		// The toxic was on the path: no spend came back faster than the
		// smallest delay it adds to a request and its answer.
		if fastest := s.fastestSince(started); fastest < 200*time.Millisecond {
			t.Errorf("a spend took %s with ≥ 2 × 100 ms of latency on its path: the proxy is not on B's link", fastest)
		}
	})

	t.Run("reset_peer", func(t *testing.T) {
		// Connections reset (RST) while spends flow, rounds times: each
		// time until a client has seen a failure, then healed.
		finish := s.background(t, "RST", load, 4, 300, 2)
		for r := 0; r < rounds; r++ {
			approved, failed := s.counts()
			waitFor(t, 2*time.Minute, "spends between resets", func() bool { n, _ := s.counts(); return n >= approved+10 })
			_, failed = s.counts()
			addToxic(t, pB, "reset", "reset_peer", "upstream", map[string]any{"timeout": 0})
			waitFor(t, time.Minute, "a client to see the reset", func() bool { _, n := s.counts(); return n > failed })
			removeToxic(t, pB, "reset")
			injected["reset_peer on B's link"]++
		}
		approved, _ := s.counts()
		waitFor(t, 2*time.Minute, "spends after the last reset", func() bool { n, _ := s.counts(); return n >= approved+10 })
		finish()
	})

	t.Run("lost answer to the payee", func(t *testing.T) {
		// The clearing service's answer to B's Authorize is dropped after A
		// committed the debit and the switch logged it; the connection is
		// then cut. B's client retries with the same key.
		cp := pool(t, f.DatabaseURL("clearing"))
		for r := 0; r < lostRounds; r++ {
			_, failedBase := s.counts()
			prefix := fmt.Sprintf("LOSTB%d", r)
			lostAnswer(ctx, t, s, f, a, pB, lostB, prefix, func(key string) bool {
				var n int
				_ = cp.QueryRow(ctx, `SELECT count(*) FROM switch_log WHERE key = $1 AND outcome = 'APPROVED'`, key).Scan(&n)
				return n > 0
			}, func(key string) bool {
				_, failed := s.counts()
				return failed > failedBase
			})
			var approvedLogs int
			if err := cp.QueryRow(ctx, `SELECT count(*) FROM switch_log WHERE key = $1 AND outcome = 'APPROVED'`, prefix+"-1").Scan(&approvedLogs); err != nil {
				t.Fatal(err)
			}
			if approvedLogs < 2 {
				t.Errorf("switch log shows %d approvals of %s-1, want the lost one and the retry's replay", approvedLogs, prefix)
			}
			injected["lost answer (clearing → B) after the debit committed"]++
		}
	})

	t.Run("lost answer from the payer", func(t *testing.T) {
		// A's answer to the switch's Debit is dropped after A committed it;
		// the connection is cut and stays down until the switch has answered
		// B Unavailable; then the retry reaches A, which replays.
		ap, cp := pool(t, f.DatabaseURL(a)), pool(t, f.DatabaseURL("clearing"))
		for r := 0; r < lostRounds; r++ {
			lostAnswer(ctx, t, s, f, a, pC, lostA, fmt.Sprintf("LOSTA%d", r), func(key string) bool {
				var n int
				_ = ap.QueryRow(ctx, `SELECT count(*) FROM usages WHERE usage_key = $1 AND role = 'PAYER' AND approved`, key).Scan(&n)
				return n > 0
			}, func(key string) bool {
				var n int
				_ = cp.QueryRow(ctx, `SELECT count(*) FROM switch_log WHERE key = $1 AND outcome IN ('UNAVAILABLE', 'ERROR')`, key).Scan(&n)
				return n > 0
			})
			injected["lost answer (A → clearing) after the debit committed"]++
		}
	})

	for r := 0; r < partitions; r++ {
		t.Run(fmt.Sprintf("partition payer %d", r), func(t *testing.T) {
			// A cannot reach the clearing service: its reports pile up in its
			// outbox while debits (clearing → A) go on, so the clearing service
			// sees B's side of each usage only. Healed, A's streamer catches up.
			addToxic(t, pA, "cut-up", "timeout", "upstream", map[string]any{"timeout": 1000})
			addToxic(t, pA, "cut-down", "timeout", "downstream", map[string]any{"timeout": 1000})
			finish := s.background(t, fmt.Sprintf("PARTA%d", r), load, 4, 300, uint64(30+r))
			// Acknowledgements already on their way when the link was cut
			// land within these 20 spends; after them, none may.
			approved, _ := s.counts()
			waitFor(t, 2*time.Minute, "spends while A is cut off", func() bool { n, _ := s.counts(); return n >= approved+20 })
			acked := ackedAt(ctx, t, f, a)
			waitFor(t, 2*time.Minute, "more spends while A is cut off", func() bool { n, _ := s.counts(); return n >= approved+60 })
			finish()
			if got := ackedAt(ctx, t, f, a); got != acked {
				t.Fatalf("%d of A's reports were acknowledged while A was cut off from the clearing service", got-acked)
			}
			backlog := unackedAt(ctx, t, f, a)
			oneSided := exceptionCount(ctx, t, f, period)
			if backlog < 40 || oneSided < 40 {
				t.Fatalf("during the partition: A's outbox holds %d unacknowledged rows, the clearing service %d one-sided records; want ≥ 40 each",
					backlog, oneSided)
			}
			removeToxic(t, pA, "cut-up")
			removeToxic(t, pA, "cut-down")
			waitDrained(t, f, period)
			t.Logf("A's outbox held %d unacknowledged rows, the clearing service %d one-sided records, during the partition; drained after healing",
				backlog, oneSided)
			injected["partition A ↛ clearing, healed"]++
		})

		t.Run(fmt.Sprintf("partition payee %d", r), func(t *testing.T) {
			// B cannot reach the clearing service: spends at B fail Unavailable
			// and are retried with their keys until the partition heals.
			finish := s.background(t, fmt.Sprintf("PARTB%d", r), load, 4, 300, uint64(40+r))
			approved, _ := s.counts()
			waitFor(t, 2*time.Minute, "spends before the partition", func() bool { n, _ := s.counts(); return n >= approved+10 })
			_, failed := s.counts()
			addToxic(t, pB, "cut-up", "timeout", "upstream", map[string]any{"timeout": 1000})
			addToxic(t, pB, "cut-down", "timeout", "downstream", map[string]any{"timeout": 1000})
			waitFor(t, time.Minute, "clients to see the partition", func() bool { _, n := s.counts(); return n >= failed+4 })
			removeToxic(t, pB, "cut-up")
			removeToxic(t, pB, "cut-down")
			approved, _ = s.counts()
			waitFor(t, 2*time.Minute, "spends after healing", func() bool { n, _ := s.counts(); return n >= approved+20 })
			finish()
			injected["partition B ↛ clearing, healed"]++
		})
	}

	if t.Failed() {
		return
	}
	nodesRunning(t, f, "after the network faults")
	waitDrained(t, f, period)
	n := compareRecords(t, f)
	checkConservation(t, f)
	m := checkExactlyOnce(t, f, a, s, rels)
	approved, failed := s.counts()
	t.Logf("figures: faults injected %v; %d spends approved, %d failed attempts retried with the same key (%s); "+
		"%d records equal at payer, payee and clearing; %d approvals committed exactly once at the payer; %s",
		injected, approved, failed, s.failureSummary(), n, m, time.Since(started).Round(time.Second))
}

// lostAnswer drives one usage on rel whose answer is lost after the debit
// committed: with the proxy p dropping everything towards its client, it
// spends prefix-1, waits until committed(key), cuts p's connections, waits
// until failed(key) (the loss was seen), heals p, spends prefix-2 on the same
// relationship, and checks that the retried prefix-1 got its first answer
// (the quota left right after its own debit, not after prefix-2's) and
// that the relationship's quota moved once for each.
func lostAnswer(ctx context.Context, t *testing.T, s *spender, f *federation.Federation, payer string, p *toxiproxy.Proxy, rel, prefix string,
	committed, failed func(key string) bool) {
	t.Helper()
	const firstFen, secondFen = 1234, 567
	occurred := s.period.Start().Add(48 * time.Hour)
	// A spend before the fault makes sure p carries an established
	// connection (a handshake would not get through the toxic).
	warm, err := s.spend(ctx, prefix+"-0", rel, 100, occurred)
	if err != nil {
		t.Fatal(err)
	}
	base := money.MustParse(warm.remaining).Fen()
	var left string
	if err := pool(t, f.DatabaseURL(payer)).QueryRow(ctx, `SELECT (quota - used)::text FROM relationships WHERE id = $1 AND authority`, rel).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if money.MustParse(left).Fen() != base {
		t.Fatalf("%s-0 answered quota left %s, the authority holds %s", prefix, warm.remaining, left)
	}
	addToxic(t, p, "drop", "timeout", "downstream", map[string]any{"timeout": 0})
	key := prefix + "-1"
	type result struct {
		ap  approval
		err error
	}
	res := make(chan result, 1)
	go func() {
		ap, err := s.spend(ctx, key, rel, firstFen, occurred)
		res <- result{ap, err}
	}()
	waitFor(t, time.Minute, key+" committed with its answer on the way", func() bool { return committed(key) })
	p.Stop() // cuts every connection through p; the dropped answer is lost
	removeToxic(t, p, "drop")
	waitFor(t, time.Minute, "the loss of "+key+"'s answer to be seen", func() bool { return failed(key) })
	if err := p.Start(); err != nil {
		t.Fatalf("restart proxy %s on %s: %v", p.Name, p.Listen, err)
	}
	second, err := s.spend(ctx, prefix+"-2", rel, secondFen, occurred)
	if err != nil {
		t.Fatal(err)
	}
	var first result
	select {
	case first = <-res:
	case <-time.After(3 * time.Minute):
		t.Fatalf("%s not answered within 3 minutes", key)
	}
	if first.err != nil {
		t.Fatal(first.err)
	}
	wantFirst := money.FromFen(base - firstFen).String()
	wantSecond := money.FromFen(base - firstFen - secondFen).String()
	if first.ap.remaining != wantFirst || second.remaining != wantSecond {
		t.Errorf("%s answered quota left %s (want %s, its first answer); %s-2 answered %s (want %s)",
			key, first.ap.remaining, wantFirst, prefix, second.remaining, wantSecond)
	}
	t.Logf("%s: debit committed, answer lost, answered after %d failed client attempts with quota left %s (the first answer)",
		key, first.ap.retries, first.ap.remaining)
}

// startProxy starts a toxiproxy proxy on a free loopback port to upstream.
func startProxy(t *testing.T, api *toxiproxy.ApiServer, name, upstream string) *toxiproxy.Proxy {
	t.Helper()
	p := toxiproxy.NewProxy(api, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}

// addToxic adds a toxic of type typ to p's stream ("upstream": client to
// server, "downstream": server to client), on its open connections and on new
// ones.
func addToxic(t *testing.T, p *toxiproxy.Proxy, name, typ, stream string, attrs map[string]any) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		t.Fatalf("toxic %s on %s: %v", name, p.Name, err)
	}
}

func removeToxic(t *testing.T, p *toxiproxy.Proxy, name string) {
	t.Helper()
	if err := p.Toxics.RemoveToxic(context.Background(), name); err != nil {
		t.Fatalf("remove toxic %s from %s: %v", name, p.Name, err)
	}
}

// repointNode restarts node code (gracefully) with --clearing-addr addr.
func repointNode(ctx context.Context, t *testing.T, f *federation.Federation, code, addr string) {
	t.Helper()
	p := f.Node(code)
	p.Stop(10 * time.Second)
	found := false
	for i := 0; i+1 < len(p.Spec.Args); i++ {
		if p.Spec.Args[i] == "--clearing-addr" {
			p.Spec.Args[i+1], found = addr, true
		}
	}
	if !found {
		t.Fatalf("node %s has no --clearing-addr argument", code)
	}
	if err := f.RestartNode(ctx, code); err != nil {
		t.Fatal(err)
	}
}

// routeClearing rewrites the clearing service's nodes file and signals it
// (SIGHUP re-reads the file), then waits (bounded) for its log to say so.
func routeClearing(t *testing.T, f *federation.Federation, dir string, nodes map[string]string) {
	t.Helper()
	b, err := json.Marshal(nodes)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "nodes.json")
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(f.LogsDir(), "clearing.log")
	before := strings.Count(readFile(t, logPath), "nodes file reloaded")
	if err := syscall.Kill(f.Clearing().Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the clearing service to reload its nodes file", func() bool {
		return strings.Count(readFile(t, logPath), "nodes file reloaded") > before
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// exceptionCount is the clearing service's count of one-sided or differing
// records of the period.
func exceptionCount(ctx context.Context, t *testing.T, f *federation.Federation, period region.Period) int64 {
	t.Helper()
	st, _, err := callRetry(ctx, transientCodes, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
		return f.Admin().GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: period.String()})
	})
	if err != nil {
		t.Fatal(err)
	}
	return int64(st.GetExceptionCount())
}

// unackedAt counts node code's outbox rows not yet acknowledged.
func unackedAt(ctx context.Context, t *testing.T, f *federation.Federation, code string) int {
	t.Helper()
	var n int
	if err := pool(t, f.DatabaseURL(code)).QueryRow(ctx, `SELECT count(*) FROM outbox WHERE acked_at IS NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// ackedAt counts node code's outbox rows the clearing service acknowledged.
func ackedAt(ctx context.Context, t *testing.T, f *federation.Federation, code string) int {
	t.Helper()
	var n int
	if err := pool(t, f.DatabaseURL(code)).QueryRow(ctx, `SELECT count(*) FROM outbox WHERE acked_at IS NOT NULL`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
