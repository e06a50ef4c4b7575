// Package clock gives a server its notion of now. Production uses real time;
// simulations (the demo, e2e) start a process's clock at a chosen instant with
// --clock-start, after which it advances in real time (docs/architecture.md, "Time").
package clock

import (
	"fmt"
	"time"
)

// Clock returns the current time.
type Clock func() time.Time

// Real is the wall clock.
func Real() time.Time { return time.Now() }

// New returns the real clock for an empty start, else a clock that reads start
// at the moment New is called and advances in real time from there.
func New(start string) (Clock, error) {
	if start == "" {
		return Real, nil
	}
	t, err := time.Parse(time.RFC3339, start)
	if err != nil {
		return nil, fmt.Errorf("clock start %q: want RFC 3339, e.g. 2026-11-01T01:00:00+08:00: %w", start, err)
	}
	origin := time.Now()
	return func() time.Time { return t.Add(time.Since(origin)) }, nil
}

// NewFrozen returns a clock that always reads start (RFC 3339). Simulations use
// it for the clearing service, so that every journal entry's time — and so the
// journal's hash chain and a bundle's journal_head — is the same in two runs
// with one seed. Deadlines and latencies never use it; they use real time.
func NewFrozen(start string) (Clock, error) {
	t, err := time.Parse(time.RFC3339, start)
	if err != nil {
		return nil, fmt.Errorf("clock start %q: want RFC 3339, e.g. 2026-11-01T01:00:00+08:00: %w", start, err)
	}
	return func() time.Time { return t }, nil
}
