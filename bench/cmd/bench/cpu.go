package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// cpuMeter splits a timed section's CPU between this process (gRPC, TLS,
// protobuf, validation, the client side) and the PostgreSQL server processes
// of the run's cluster (every process pg_stat_activity lists: backends and
// background workers). A process that ended during the section is missed, so
// the server figure is a lower bound; the pools keep their connections, so
// for these runs it is close.
type cpuMeter struct {
	pool  *pgxpool.Pool
	self0 time.Duration
	pg0   map[int]time.Duration
}

const clockTicks = 100 // USER_HZ on Linux

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func pgCPU(ctx context.Context, pool *pgxpool.Pool) map[int]time.Duration {
	out := map[int]time.Duration{}
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity`)
	if err != nil {
		return out
	}
	var pids []int
	for rows.Next() {
		var pid int
		if rows.Scan(&pid) == nil {
			pids = append(pids, pid)
		}
	}
	rows.Close()
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out[pid] = time.Duration(ut+st) * time.Second / clockTicks
	}
	return out
}

func startCPU(ctx context.Context, pool *pgxpool.Pool) *cpuMeter {
	return &cpuMeter{pool: pool, self0: selfCPU(), pg0: pgCPU(ctx, pool)}
}

// stop returns the CPU seconds of this process and of the server since start.
func (m *cpuMeter) stop(ctx context.Context) (self, server float64) {
	self = (selfCPU() - m.self0).Seconds()
	for pid, t := range pgCPU(ctx, m.pool) {
		server += (t - m.pg0[pid]).Seconds()
	}
	return self, server
}

// cpuNote formats CPU seconds per unit of work in microseconds.
func cpuNote(self, server float64, units int, unit string) string {
	return fmt.Sprintf("CPU per %s: this process %.1f µs, PostgreSQL %.1f µs", unit,
		self/float64(units)*1e6, server/float64(units)*1e6)
}
