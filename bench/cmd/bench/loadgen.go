package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// loadResult is what a load run measured.
type loadResult struct {
	offered  float64 // requests per second scheduled (open loop), 0 for closed loop
	done     int     // requests that finished without error
	errors   int
	firstErr error
	secs     float64 // from the first scheduled start to the last completion
	lat      []time.Duration
}

func (l loadResult) rate() float64 { return float64(l.done) / l.secs }

// pct returns the q-quantile (0..1) of the latencies of successful requests,
// in milliseconds (nearest rank).
func (l loadResult) pct(q float64) float64 {
	if len(l.lat) == 0 {
		return 0
	}
	i := int(q*float64(len(l.lat))+0.999999) - 1
	return float64(l.lat[min(max(i, 0), len(l.lat)-1)].Microseconds()) / 1000
}

func (l loadResult) summary() string {
	s := fmt.Sprintf("%.0f/s done, p50 %.2f ms, p99 %.2f ms, p999 %.2f ms, max %.2f ms, %d errors",
		l.rate(), l.pct(0.5), l.pct(0.99), l.pct(0.999), l.pct(1), l.errors)
	if l.firstErr != nil {
		s += fmt.Sprintf(" (first: %v)", l.firstErr)
	}
	return s
}

type latRecorder struct {
	mu       sync.Mutex
	lat      []time.Duration
	errors   int
	firstErr error
}

func (r *latRecorder) record(d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errors++
		if r.firstErr == nil {
			r.firstErr = err
		}
		return
	}
	r.lat = append(r.lat, d)
}

func (r *latRecorder) result(secs, offered float64) loadResult {
	slices.Sort(r.lat)
	return loadResult{offered: offered, done: len(r.lat), errors: r.errors, firstErr: r.firstErr, secs: secs, lat: r.lat}
}

// openLoop issues requests at a fixed rate for dur, each in its own
// goroutine at its scheduled instant whether or not earlier ones have
// finished (an open system: the load does not back off when the server is
// slow). A request's latency is measured from its scheduled instant, so a
// late start counts against the server (no coordinated omission). More than
// inFlightMax requests in flight counts the new one as an error (overload).
func openLoop(ctx context.Context, rate int, dur time.Duration, inFlightMax int, fn func(ctx context.Context, i int) error) loadResult {
	n := int(float64(rate) * dur.Seconds())
	interval := time.Second / time.Duration(rate)
	var rec latRecorder
	var wg sync.WaitGroup
	var inFlight atomic.Int64
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			break
		}
		if inFlight.Load() >= int64(inFlightMax) {
			rec.record(0, fmt.Errorf("overload: %d requests in flight", inFlightMax))
			continue
		}
		inFlight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inFlight.Add(-1)
			err := fn(ctx, i)
			rec.record(time.Since(at), err)
		}()
	}
	wg.Wait()
	return rec.result(time.Since(start).Seconds(), float64(rate))
}

// closedLoop runs clients workers, each issuing its next request when the
// previous one finished, for dur; it measures throughput at saturation.
func closedLoop(ctx context.Context, clients int, dur time.Duration, fn func(ctx context.Context, client, i int) error) loadResult {
	var rec latRecorder
	var wg sync.WaitGroup
	var next atomic.Int64
	start := time.Now()
	deadline := start.Add(dur)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				t0 := time.Now()
				err := fn(ctx, c, i)
				rec.record(time.Since(t0), err)
			}
		}()
	}
	wg.Wait()
	return rec.result(time.Since(start).Seconds(), 0)
}

// parallel runs fn(i) for i in [0, n) on workers goroutines and returns the
// first error.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	var next atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && first.Load() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e, ok := first.Load().(error); ok {
		return e
	}
	return ctx.Err()
}
