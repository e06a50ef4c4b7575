package main

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"gongji/clearingdb"
	"gongji/migrations"
	"gongji/money"
	"gongji/region"
)

// benchPeriod is the clearing period every settlement fixture fills: a
// fresh database per size, so this is the only (and earliest) open period.
var benchPeriod = region.Period{Year: 2026, Month: time.July}

// binaries builds cmd/clearing once per run: rows 3–5 run close, settle and
// export as the operator does, in a child `clearing` process, whose peak RSS
// the kernel reports exactly (rusage ru_maxrss).
type binaries struct{ clearing string }

func (r *run) buildBinaries(ctx context.Context) (*binaries, error) {
	if r.bins != nil {
		return r.bins, nil
	}
	out := filepath.Join(r.tmp, "clearing")
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/clearing")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/clearing (run bench from the repository root): %w", err)
	}
	logf("built cmd/clearing in %s", time.Since(t0).Round(time.Millisecond))
	r.bins = &binaries{clearing: out}
	return r.bins, nil
}

// childRun is one finished child process.
type childRun struct {
	secs   float64
	rssMiB float64 // peak resident set size (ru_maxrss)
	stdout string
}

// rssExecArg makes this binary a small launcher: `bench __rss-exec FILE BIN
// ARGS...` runs BIN, passes its output through, and writes BIN's peak RSS
// (KiB) to FILE. Why the detour: Go starts a child with vfork, so the child
// shares this process's address space until it execs, and Linux carries the
// larger high-water mark of the two into the child's ru_maxrss — the child
// would report the benchmark's own peak (its workloads are large). The
// launcher's address space is small, so the clearing process it starts
// reports its own peak.
const rssExecArg = "__rss-exec"

// rssExec is the launcher's main.
func rssExec(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench __rss-exec FILE BIN [ARGS...]")
		return 2
	}
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru != nil {
		_ = os.WriteFile(args[0], []byte(strconv.FormatInt(ru.Maxrss, 10)), 0o600)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// runChild runs bin with args through the launcher and returns its wall
// time and peak RSS.
func (r *run) runChild(ctx context.Context, bin string, args ...string) (childRun, error) {
	self, err := os.Executable()
	if err != nil {
		return childRun{}, err
	}
	rssFile := filepath.Join(r.tmp, fmt.Sprintf("rss-%d", time.Now().UnixNano()))
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, self, append([]string{rssExecArg, rssFile, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err = cmd.Run()
	secs := time.Since(t0).Seconds()
	if err != nil {
		return childRun{}, fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args[:min(2, len(args))], " "), err, tail(errb.String(), 20))
	}
	b, err := os.ReadFile(rssFile)
	if err != nil {
		return childRun{}, fmt.Errorf("peak RSS of %s: %w", filepath.Base(bin), err)
	}
	kib, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return childRun{}, err
	}
	return childRun{secs: secs, rssMiB: float64(kib) / 1024, stdout: out.String()}, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// settleFigures are one size's measurements.
type settleFigures struct {
	n                       int
	closeRun, settleRun     childRun
	baseProv, baseRegion    float64 // seconds of the two bare GROUP BYs (mean of before and after)
	export                  *childRun
	exportBase              float64
	loadSecs                float64
	exportBytes, exportRows int64
}

// settleAndExport runs rows 3 (settlement), 4 (export) and 5 (memory).
func (r *run) settleAndExport(ctx context.Context) error {
	bins, err := r.buildBinaries(ctx)
	if err != nil {
		return err
	}
	sizes := []int{}
	if r.cfg.runs("settle") {
		sizes = append(sizes, r.cfg.settleSizes...)
	}
	if r.cfg.runs("export") {
		for _, n := range r.cfg.exportSizes {
			if !slices.Contains(sizes, n) {
				sizes = append(sizes, n)
			}
		}
	}
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	var figs []settleFigures
	for _, n := range sizes {
		f, err := r.settleOne(ctx, bins, n, r.cfg.runs("export") && slices.Contains(r.cfg.exportSizes, n))
		if err != nil {
			return fmt.Errorf("%d usages: %w", n, err)
		}
		figs = append(figs, f)
	}
	r.reportSettle(figs)
	return nil
}

func (r *run) settleOne(ctx context.Context, bins *binaries, n int, withExport bool) (settleFigures, error) {
	f := settleFigures{n: n}
	db, err := r.pg.newDB(ctx, migrations.Clearing, 4)
	if err != nil {
		return f, err
	}
	defer db.drop()
	st, err := clearingdb.New(db.Pool, clearingdb.Config{})
	if err != nil {
		return f, err
	}
	p := benchPeriod
	now := p.Start().Add(19 * 24 * time.Hour)
	if _, err := st.EnsurePeriod(ctx, p, now); err != nil {
		return f, err
	}
	// Deposits: a month's average payable for most provinces, so settlement
	// draws, pays out and leaves a few shortfalls outstanding (R18).
	avgPayable := money.FromFen(int64(n) * 100_000 / 32) // mean amount ≈ 1,000 yuan
	for i, pr := range region.Provinces() {
		amt := avgPayable
		if i%5 == 0 {
			amt = money.FromFen(avgPayable.Fen() / 4)
		}
		if _, err := st.FundPrepay(ctx, clearingdb.PrepayMovement{Province: pr.Code, Amount: amt,
			Key: "bench-fund-" + pr.Code}, now); err != nil {
			return f, fmt.Errorf("fund prepay: %w", err)
		}
	}

	t0 := time.Now()
	if err := loadUsages(ctx, db, p, n, now); err != nil {
		return f, err
	}
	logf("settle %d: usages loaded in %.1fs", n, time.Since(t0).Seconds())
	// The baseline's table: the same rows, only what the sums need, plain
	// NUMERIC(18,2), no partitioning, no index.
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE bench_plain AS
		SELECT payer_province, payer_region, payee_province, payee_region, amount::numeric(18,2) AS amount
		FROM usages WHERE setlym = $1`, p.Int()); err != nil {
		return f, err
	}
	// Both tables as a settled-down partition is a few days after its
	// month: vacuumed (hint bits set, visibility map) and analysed.
	for _, t := range []string{"bench_plain", fmt.Sprintf("usages_p%d", p.Int())} {
		if _, err := db.Pool.Exec(ctx, "VACUUM ANALYZE "+t); err != nil {
			return f, err
		}
	}
	f.loadSecs = time.Since(t0).Seconds()
	logf("settle %d: fixture loaded in %.1fs", n, f.loadSecs)

	baseline := func() (float64, float64, error) {
		prov, err := timeQuery(ctx, db, `SELECT payer_province, payee_province, sum(amount)
			FROM bench_plain GROUP BY payer_province, payee_province`)
		if err != nil {
			return 0, 0, err
		}
		reg, err := timeQuery(ctx, db, `SELECT payer_region, payee_region, sum(amount)
			FROM bench_plain GROUP BY payer_region, payee_region`)
		return prov, reg, err
	}
	p1, r1, err := baseline()
	if err != nil {
		return f, err
	}

	cut := p.CutOff(st.Config().Settlement.CutOffGrace)
	common := []string{"--database-url", db.URL, "--period", p.String(), "--output", "json"}
	if f.closeRun, err = r.runChild(ctx, bins.clearing, append([]string{"period", "close",
		"--clock-start", cut.Add(time.Hour).Format(time.RFC3339)}, common...)...); err != nil {
		return f, err
	}
	if f.settleRun, err = r.runChild(ctx, bins.clearing, append([]string{"period", "settle",
		"--clock-start", cut.Add(2 * time.Hour).Format(time.RFC3339)}, common...)...); err != nil {
		return f, err
	}
	if !strings.Contains(f.settleRun.stdout, `"SETTLED"`) || !strings.Contains(f.closeRun.stdout, fmt.Sprintf(`"usage_count": %d`, n)) {
		return f, fmt.Errorf("close/settle did not report %d usages SETTLED:\n%s\n%s", n, f.closeRun.stdout, f.settleRun.stdout)
	}
	p2, r2, err := baseline()
	if err != nil {
		return f, err
	}
	f.baseProv, f.baseRegion = (p1+p2)/2, (r1+r2)/2
	logf("settle %d: close %.2fs (%.0f MiB), settle %.2fs (%.0f MiB); bare GROUP BY province pair %.2fs, region pair %.2fs",
		n, f.closeRun.secs, f.closeRun.rssMiB, f.settleRun.secs, f.settleRun.rssMiB, f.baseProv, f.baseRegion)

	if !withExport {
		return f, nil
	}
	// Export: the bare baseline is the export's own usages.csv SELECT (the
	// same columns, formatting and order) streamed by COPY to nowhere.
	sel := fmt.Sprintf(`SELECT usage_id, setlym::text, entry_type, kind,
			payer_province, payer_region, payee_province, payee_region, amount::text,
			to_char(occurred_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD"T"HH24:MI:SS') || '+08:00',
			CASE WHEN late THEN 'true' ELSE 'false' END,
			reversal_of, sharer_ref, beneficiary_ref
			FROM usages WHERE setlym = %d
			ORDER BY usage_id COLLATE "C"`, p.Int())
	bare := func() (float64, int64, error) {
		conn, err := db.Pool.Acquire(ctx)
		if err != nil {
			return 0, 0, err
		}
		defer conn.Release()
		t0 := time.Now()
		var cw countWriter
		if _, err := conn.Conn().PgConn().CopyTo(ctx, &cw, "COPY ("+sel+") TO STDOUT WITH (FORMAT csv, HEADER false)"); err != nil {
			return 0, 0, err
		}
		return time.Since(t0).Seconds(), cw.n, nil
	}
	b1, bytes1, err := bare()
	if err != nil {
		return f, err
	}
	keyFile := filepath.Join(r.tmp, "export.key")
	if err := os.WriteFile(keyFile, []byte("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"), 0o600); err != nil {
		return f, err
	}
	outDir := filepath.Join(r.tmp, fmt.Sprintf("bundle-%d", n))
	ex, err := r.runChild(ctx, bins.clearing, "export", "--database-url", db.URL, "--period", p.String(),
		"--out", outDir, "--export-key-file", keyFile)
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(outDir)
	info, err := os.Stat(filepath.Join(outDir, "usages.csv"))
	if err != nil {
		return f, fmt.Errorf("export wrote no usages.csv: %w", err)
	}
	b2, _, err := bare()
	if err != nil {
		return f, err
	}
	f.export, f.exportBase, f.exportBytes, f.exportRows = &ex, (b1+b2)/2, info.Size(), int64(n)
	logf("export %d: %.2fs (%.0f MiB peak RSS, usages.csv %d bytes); bare COPY %.2fs (%d bytes)",
		n, ex.secs, ex.rssMiB, info.Size(), f.exportBase, bytes1)
	return f, nil
}

// countWriter counts the bytes written to it and keeps none (the bare
// COPY's destination).
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// timeQuery runs q and reads every result row; it returns the seconds taken.
func timeQuery(ctx context.Context, db *benchDB, q string) (float64, error) {
	t0 := time.Now()
	rows, err := db.Pool.Query(ctx, q)
	if err != nil {
		return 0, err
	}
	for rows.Next() {
	}
	rows.Close()
	return time.Since(t0).Seconds(), rows.Err()
}

// loadUsages fills period p with n usages between all 32 provinces and
// their 387 pooling regions, both sides reported: 2 % reversals of an
// earlier usage, 5 % late, amounts 0.01–2,000.00 yuan, people repeating
// (200,000 sharers, 300,000 beneficiaries). Loaded with COPY into the
// period's partition (as ingest writes it; its guard checks the period).
func loadUsages(ctx context.Context, db *benchDB, p region.Period, n int, now time.Time) error {
	provinces := region.Provinces()
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	start := p.Start()
	span := int64(p.End().Sub(start) / time.Second)
	refs := func(prefix string, i int) string { return fmt.Sprintf("%s%031x", prefix, i) }
	i := 0
	src := pgx.CopyFromFunc(func() ([]any, error) {
		if i == n {
			return nil, nil
		}
		i++
		pi := rng.IntN(len(provinces))
		ei := (pi + 1 + rng.IntN(len(provinces)-1)) % len(provinces)
		payer, payee := provinces[pi], provinces[ei]
		fen := 1 + rng.Int64N(200_000)
		entry, reversalOf := "USAGE", any(nil)
		if i > 1 && rng.IntN(50) == 0 {
			entry, reversalOf, fen = "REVERSAL", fmt.Sprintf("U%010d", 1+rng.IntN(i-1)), -fen
		}
		at := start.Add(time.Duration(rng.Int64N(span)) * time.Second)
		late := rng.IntN(20) == 0
		if late { // a late record occurred in an earlier month (R14)
			at = at.AddDate(0, 0, -31)
		}
		return []any{int32(p.Int()), payer.Code, fmt.Sprintf("U%010d", i), entry,
			[...]string{"MEDICAL", "PHARMACY", "RESIDENT_PREMIUM", "LTC_PREMIUM"}[rng.IntN(4)],
			payer.Regions[rng.IntN(len(payer.Regions))].Code, payee.Code, payee.Regions[rng.IntN(len(payee.Regions))].Code,
			pgtype.Numeric{Int: big.NewInt(fen), Exp: -2, Valid: true}, at, late, reversalOf,
			refs("s", rng.IntN(200_000)), refs("b", rng.IntN(300_000)), fmt.Sprintf("R%023x", rng.IntN(250_000)),
			true, true, now, now}, nil
	})
	got, err := db.Pool.CopyFrom(ctx, pgx.Identifier{fmt.Sprintf("usages_p%d", p.Int())}, []string{"setlym", "payer_province", "usage_id",
		"entry_type", "kind", "payer_region", "payee_province", "payee_region", "amount", "occurred_at", "late",
		"reversal_of", "sharer_ref", "beneficiary_ref", "relationship_id", "payer_reported", "payee_reported",
		"first_at", "both_at"}, src)
	if err != nil {
		return fmt.Errorf("load usages: %w", err)
	}
	if got != int64(n) {
		return fmt.Errorf("load usages: %d of %d rows", got, n)
	}
	return nil
}

func millions(n int) string {
	if n%1_000_000 == 0 {
		return strconv.Itoa(n/1_000_000) + "M"
	}
	if n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// reportSettle turns the figures into rows 3, 4 and 5.
func (r *run) reportSettle(figs []settleFigures) {
	if len(figs) == 0 {
		return
	}
	var settled []settleFigures
	for _, f := range figs {
		if !r.cfg.runs("settle") || !slices.Contains(r.cfg.settleSizes, f.n) {
			continue
		}
		settled = append(settled, f)
		ours := f.closeRun.secs + f.settleRun.secs
		base := f.baseProv + f.baseRegion
		rt := ratio(ours, base)
		r.add(Row{Name: "settlement " + millions(f.n), Ours: ours, Baseline: base, Unit: "s", Ratio: rt,
			Goal: "≤ 1.50", Met: boolp(rt <= 1.5),
			Note: fmt.Sprintf("close %.2fs + settle %.2fs (child processes) vs bare GROUP BY province pair %.2fs + region pair %.2fs",
				f.closeRun.secs, f.settleRun.secs, f.baseProv, f.baseRegion)})
	}
	if len(settled) >= 2 {
		a, b := settled[0], settled[len(settled)-1]
		perA := (a.closeRun.secs + a.settleRun.secs) / float64(a.n) * 1e6
		perB := (b.closeRun.secs + b.settleRun.secs) / float64(b.n) * 1e6
		baseA := (a.baseProv + a.baseRegion) / float64(a.n) * 1e6
		baseB := (b.baseProv + b.baseRegion) / float64(b.n) * 1e6
		rt := ratio(perB, perA)
		r.add(Row{Name: fmt.Sprintf("settlement linearity %s→%s", millions(a.n), millions(b.n)), Ours: perB, Baseline: perA,
			Unit: "s per 1M", Ratio: rt, Goal: "≤ 1.25", Met: boolp(rt <= 1.25),
			Note: fmt.Sprintf("seconds per million usages at %s ÷ at %s (bare GROUP BY: %.3f → %.3f s per 1M)",
				millions(b.n), millions(a.n), baseA, baseB)})
		memA := max(a.closeRun.rssMiB, a.settleRun.rssMiB)
		memB := max(b.closeRun.rssMiB, b.settleRun.rssMiB)
		rt = ratio(memB, memA)
		r.add(Row{Name: fmt.Sprintf("memory close+settle %s vs %s", millions(b.n), millions(a.n)), Ours: memB, Baseline: memA,
			Unit: "MiB", Ratio: rt, Goal: "< 500 MiB, ratio ≤ 1.25", Met: boolp(memB < 500 && rt <= 1.25),
			Note: fmt.Sprintf("peak RSS of the clearing process (ru_maxrss) at %s usages, baseline: the same at %s", millions(b.n), millions(a.n))})
	} else if len(settled) == 1 {
		a := settled[0]
		mem := max(a.closeRun.rssMiB, a.settleRun.rssMiB)
		r.add(Row{Name: "memory close+settle " + millions(a.n), Ours: mem, Unit: "MiB", Goal: "< 500 MiB", Met: boolp(mem < 500),
			Note: "peak RSS of the clearing process (ru_maxrss); one size only: flatness not measured"})
	}
	var exported []settleFigures
	for _, f := range figs {
		if f.export == nil {
			continue
		}
		exported = append(exported, f)
		rt := ratio(f.export.secs, f.exportBase)
		r.add(Row{Name: "export " + millions(f.n), Ours: f.export.secs, Baseline: f.exportBase, Unit: "s", Ratio: rt,
			Goal: "≤ 2.00", Met: boolp(rt <= 2.0),
			Note: fmt.Sprintf("clearing export (all 7 files, fsync, HMAC pseudonyms; %.0f rows/s, usages.csv %.0f MB) vs bare COPY (SELECT …) TO STDOUT",
				float64(f.n)/f.export.secs, float64(f.exportBytes)/1e6)})
	}
	if len(exported) >= 2 {
		a, b := exported[0], exported[len(exported)-1]
		rt := ratio(b.export.rssMiB, a.export.rssMiB)
		r.add(Row{Name: fmt.Sprintf("memory export %s vs %s", millions(b.n), millions(a.n)), Ours: b.export.rssMiB,
			Baseline: a.export.rssMiB, Unit: "MiB", Ratio: rt, Goal: "< 500 MiB, ratio ≤ 1.25",
			Met:  boolp(b.export.rssMiB < 500 && rt <= 1.25),
			Note: fmt.Sprintf("peak RSS of clearing export at %s usages, baseline: the same at %s", millions(b.n), millions(a.n))})
	} else if len(exported) == 1 {
		a := exported[0]
		r.add(Row{Name: "memory export " + millions(a.n), Ours: a.export.rssMiB, Unit: "MiB", Goal: "< 500 MiB",
			Met: boolp(a.export.rssMiB < 500), Note: "peak RSS of clearing export (ru_maxrss); one size only: flatness not measured"})
	}
}
