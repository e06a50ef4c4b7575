package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"gongji/region"
)

// Soak limits. The RSS bound is generous on purpose: it catches a leak that
// runs away, not a few megabytes of warm-up; the growth rule catches a
// steady climb well before it.
const (
	soakRatePerSecond = 100
	soakWorkers       = 32
	soakRSSMaxKB      = 1 << 20 // 1 GiB per process
	// soakGrowthSlackKB and soakGrowthFactor: the largest RSS of a process
	// in the last quarter of the run may exceed its largest in the second
	// quarter (after warm-up) by this factor plus this slack, no more.
	soakGrowthSlackKB = 48 << 10
	soakGrowthFactor  = 1.5
)

// rssSample is one reading of a process's resident set.
type rssSample struct {
	at    time.Duration // since the run started
	pid   int
	rssKB int64
}

// TestSoak spends at a steady 100 usages a second at node B (Henan) on
// Guangdong sharers' quotas for 60 s (10 minutes with -long), SIGKILLs and
// restarts node A (Guangdong, the payer, where the debits commit) a third of
// the way in and node B (the payee, which the clients call) two thirds of the
// way in, and samples the resident memory of the clearing service and both
// nodes from /proc. It asserts that no call failed outside the restart
// windows (each from the kill until the first spend that started after the
// restart had succeeded), that no process's memory passes 1 GiB or climbs
// steadily, and that every approval was committed exactly once with payer,
// payee and clearing records equal and money conserved. The figures are
// logged for docs/reliability.md.
func TestSoak(t *testing.T) {
	duration := 60 * time.Second
	if *long {
		duration = 10 * time.Minute
	}
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	f, _ := faultFederation(t, period, 29, []string{a, b}, nil)
	rels := faultPair(t, f, a, b, 16, "2000.00", "soak", transientCodes)
	s := newSpender(f, b, period, transientCodes)
	ctx, cancel := context.WithTimeout(context.Background(), duration+10*time.Minute)
	defer cancel()

	type job struct {
		key       string
		rel       string
		amountFen int64
		occurred  time.Time
	}
	jobs := make(chan job, soakRatePerSecond*5) // five seconds of backlog ride out the restart
	var fatalOnce sync.Once
	var fatal error
	var wg sync.WaitGroup
	for w := 0; w < soakWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if _, err := s.spend(ctx, j.key, j.rel, j.amountFen, j.occurred); err != nil {
					fatalOnce.Do(func() { fatal = err })
				}
			}
		}()
	}

	procs := map[string]func() int{
		"clearing":  func() int { return f.Clearing().Pid() },
		"node " + a: func() int { return f.Node(a).Pid() },
		"node " + b: func() int { return f.Node(b).Pid() },
	}
	var smu sync.Mutex
	samples := map[string][]rssSample{}
	start := time.Now()
	sample := func() {
		smu.Lock()
		defer smu.Unlock()
		for name, pid := range procs {
			p := pid()
			if kb, err := rssKB(p); err == nil {
				samples[name] = append(samples[name], rssSample{at: time.Since(start), pid: p, rssKB: kb})
			}
		}
	}
	sample()
	stopSampling := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tick := time.NewTicker(duration / 24) // readings, not synchronisation
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				sample()
			}
		}
	}()

	// The restarts: payer at a third, payee at two thirds of the run.
	restarts := []*restartWindow{{node: a, at: duration / 3}, {node: b, at: 2 * duration / 3}}
	restartErr := make(chan error, len(restarts))
	launched := 0
	rng := rand.New(rand.NewPCG(29, 1))
	pace := time.NewTicker(time.Second / soakRatePerSecond) // the offered load's clock
	skipped, offered := 0, 0
	for now := range pace.C {
		if now.Sub(start) >= duration {
			break
		}
		if launched < len(restarts) && now.Sub(start) >= restarts[launched].at {
			r := restarts[launched]
			launched++
			go func() {
				r.killAt = time.Now()
				if err := f.KillNode(ctx, r.node); err != nil {
					restartErr <- err
					return
				}
				err := f.RestartNode(ctx, r.node)
				r.restartedAt = time.Now()
				restartErr <- err
			}()
		}
		j := job{key: fmt.Sprintf("SOAK-%07d", offered), rel: rels[rng.IntN(len(rels))], amountFen: 1 + rng.Int64N(20),
			occurred: period.Start().Add(time.Duration(rng.IntN(28*24)) * time.Hour)}
		select {
		case jobs <- j:
			offered++
		default:
			skipped++ // workers and queue full: the offered rate is not reached
		}
	}
	pace.Stop()
	close(jobs)
	wg.Wait()
	close(stopSampling)
	<-samplerDone
	sample()
	ran := time.Since(start)
	if launched != len(restarts) {
		t.Fatalf("the run ended after %d of %d restarts", launched, len(restarts))
	}
	for range restarts {
		if err := <-restartErr; err != nil {
			t.Fatalf("restart: %v", err)
		}
	}
	if fatal != nil {
		t.Fatalf("a spend failed for good: %v", fatal)
	}

	// Each restart window: from the kill until the first spend that started
	// after the node was back had succeeded.
	s.mu.Lock()
	attempts := append([]attempt(nil), s.attempts...)
	s.mu.Unlock()
	for _, r := range restarts {
		for _, at := range attempts {
			if at.code == codes.OK && !at.start.Before(r.restartedAt) && (r.recoveredAt.IsZero() || at.end.Before(r.recoveredAt)) {
				r.recoveredAt = at.end
			}
		}
		if r.recoveredAt.IsZero() {
			t.Fatalf("no spend succeeded after node %s restarted", r.node)
		}
	}
	var outside int
	var outsideCodes []string
	var lat []time.Duration
	for _, at := range attempts {
		if at.code == codes.OK {
			lat = append(lat, at.end.Sub(at.start))
			continue
		}
		in := false
		for _, r := range restarts {
			if !at.end.Before(r.killAt) && !at.start.After(r.recoveredAt) {
				r.failed++
				in = true
				break
			}
		}
		if !in {
			outside++
			if len(outsideCodes) < 10 {
				outsideCodes = append(outsideCodes, fmt.Sprintf("%s at +%s", at.code, at.start.Sub(start).Round(time.Millisecond)))
			}
		}
	}
	if outside > 0 {
		t.Errorf("%d attempts failed outside the restart windows: %s", outside, strings.Join(outsideCodes, ", "))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(p*float64(len(lat)-1))].Round(time.Millisecond)
	}
	var windows []string
	for _, r := range restarts {
		windows = append(windows, fmt.Sprintf("node %s SIGKILLed at +%s, back at +%s, first success after it at +%s (window %s, %d failed attempts in it)",
			r.node, r.killAt.Sub(start).Round(time.Millisecond), r.restartedAt.Sub(start).Round(time.Millisecond),
			r.recoveredAt.Sub(start).Round(time.Millisecond), r.recoveredAt.Sub(r.killAt).Round(time.Millisecond), r.failed))
	}

	mem := checkMemory(t, samples)

	nodesRunning(t, f, "after the soak")
	waitDrained(t, f, period)
	n := compareRecords(t, f)
	checkConservation(t, f)
	m := checkExactlyOnce(t, f, a, s, rels)
	approved, _ := s.counts()
	t.Logf("figures: %s at %d/s offered (%d offered, %d ticks skipped with %d workers busy and the queue full), "+
		"%d approved = %.1f/s; %s; %d failed attempts outside the windows (all: %s); latency p50 %s p99 %s max %s; "+
		"%d records equal at payer, payee and clearing, %d approvals committed exactly once; RSS (MiB) %s",
		ran.Round(time.Second), soakRatePerSecond, offered, skipped, soakWorkers, approved, float64(approved)/ran.Seconds(),
		strings.Join(windows, "; "), outside, s.failureSummary(), pct(0.5), pct(0.99), pct(1), n, m, mem)
}

// restartWindow is one node restart of the soak and what the clients saw.
type restartWindow struct {
	node                             string
	at                               time.Duration // since the start of the run
	killAt, restartedAt, recoveredAt time.Time
	failed                           int // failed attempts inside the window
}

// rssKB reads VmRSS (kB) from /proc/<pid>/status.
func rssKB(pid int) (int64, error) {
	if pid == 0 {
		return 0, fmt.Errorf("no process")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// checkMemory asserts the RSS bound on every sample and, per process life
// (a restarted node's readings with one pid are one life), that memory does
// not climb steadily: the largest reading of the life's last quarter is at
// most soakGrowthFactor × the largest of its second quarter +
// soakGrowthSlackKB. It returns start/middle/end readings in MiB for the log.
func checkMemory(t *testing.T, samples map[string][]rssSample) string {
	t.Helper()
	var names []string
	for name := range samples {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []string
	for _, name := range names {
		ss := samples[name]
		lives := map[int][]rssSample{}
		for _, s := range ss {
			if s.rssKB > soakRSSMaxKB {
				t.Errorf("%s (pid %d) at +%s: RSS %d MiB over the %d MiB bound", name, s.pid, s.at.Round(time.Second), s.rssKB>>10, soakRSSMaxKB>>10)
			}
			lives[s.pid] = append(lives[s.pid], s)
		}
		for pid, life := range lives {
			if len(life) < 8 {
				continue // too short a life to judge a trend
			}
			q := len(life) / 4
			peak := func(xs []rssSample) int64 {
				var m int64
				for _, x := range xs {
					m = max(m, x.rssKB)
				}
				return m
			}
			second, last := peak(life[q:2*q]), peak(life[len(life)-q:])
			if float64(last) > soakGrowthFactor*float64(second)+soakGrowthSlackKB {
				t.Errorf("%s (pid %d): RSS climbs: peak %d MiB in the second quarter of its life, %d MiB in the last",
					name, pid, second>>10, last>>10)
			}
		}
		var peakKB int64
		for _, s := range ss {
			peakKB = max(peakKB, s.rssKB)
		}
		mid := ss[len(ss)/2]
		out = append(out, fmt.Sprintf("%s %d/%d/%d peak %d (%d lives)", name, ss[0].rssKB>>10, mid.rssKB>>10, ss[len(ss)-1].rssKB>>10, peakKB>>10, len(lives)))
	}
	return strings.Join(out, ", ") + " (start/middle/end)"
}
