// Command bench measures gongji's hot paths against bare PostgreSQL doing
// the same writes or reads, in the same run, on the same server, and prints
// one table (also written as bench/results.json). See bench/README.md.
//
//	make bench                               # defaults, about 15 minutes on 2 cores
//	make bench ARGS="--quick"                # a smoke run of every row at tiny sizes
//	make bench ARGS="--only ingest"          # one group: ingest, auth, settle, export, node
//
// Every figure is a ratio to its baseline: ours ÷ baseline for rates and
// times alike; the goal column says which way is good.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// config holds every size and duration of a run (the flags).
type config struct {
	only       map[string]bool
	quick      bool
	out        string
	cpuProfile string

	ingestRecords   int
	ingestBatch     int
	ingestStreams   int
	ingestProvinces int
	ingestDupShare  float64

	authRates      []int
	authDuration   time.Duration
	authQuotas     int
	authHotQuotas  int
	authSatClients int
	authSatTime    time.Duration

	settleSizes []int
	exportSizes []int

	nodeClients  int
	nodeDuration time.Duration
	nodeQuotas   int
}

// groups are the names --only accepts, in the order a full run takes them.
var groups = []string{"ingest", "auth", "settle", "export", "node"}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	only := fs.String("only", "", "run only these groups, comma-separated: "+strings.Join(groups, ", ")+
		" (memory rows come with settle and export)")
	fs.BoolVar(&c.quick, "quick", false, "tiny sizes and short durations: a smoke run of every row (figures not meaningful)")
	fs.StringVar(&c.out, "out", "bench/results.json", "where to write the results as JSON (empty: not written)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the whole run (this process: servers and clients) to this file")

	fs.IntVar(&c.ingestRecords, "ingest-records", 1_000_000, "ingest: outbox records streamed, duplicates included")
	fs.IntVar(&c.ingestBatch, "ingest-batch", 5000, "ingest: records per ReportBatch (a node's --report-batch; at most 5000)")
	fs.IntVar(&c.ingestStreams, "ingest-streams", 4, "ingest: province nodes streaming at the same time")
	fs.IntVar(&c.ingestProvinces, "ingest-provinces", 32, "ingest: provinces whose nodes report (each has its own outbox and stream)")
	fs.Float64Var(&c.ingestDupShare, "ingest-dups", 0.10, "ingest: share of records that are duplicates (a replayed seq after a reconnect)")

	rates := fs.String("auth-rates", "100,250,500,1000,2000", "authorisation: offered rates, requests per second (open loop)")
	fs.DurationVar(&c.authDuration, "auth-duration", 12*time.Second, "authorisation: time at each offered rate (the bare baseline gets half)")
	fs.IntVar(&c.authQuotas, "auth-quotas", 2000, "authorisation: relationships of the spread run (concurrent requests never share a quota)")
	fs.IntVar(&c.authHotQuotas, "auth-hot", 100, "authorisation: relationships of the hot run (every request on one of these)")
	fs.IntVar(&c.authSatClients, "auth-sat-clients", 64, "authorisation: closed-loop clients of the throughput ratio")
	fs.DurationVar(&c.authSatTime, "auth-sat-duration", 10*time.Second, "authorisation: duration of each closed-loop throughput run")

	settle := fs.String("settle-sizes", "1000000,5000000,10000000", "settlement: usages in the closed period, one fresh database each (linearity needs ≥ 2)")
	export := fs.String("export-sizes", "1000000,10000000", "export: usages in the exported period (each must also be a settle size, else it gets its own fixture)")

	fs.IntVar(&c.nodeClients, "node-clients", 32, "province node: concurrent clients spending locally")
	fs.DurationVar(&c.nodeDuration, "node-duration", 15*time.Second, "province node: duration of each closed-loop run")
	fs.IntVar(&c.nodeQuotas, "node-quotas", 2000, "province node: local relationships the spends are spread over")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.authRates, err = intList(*rates); err != nil {
		return c, fmt.Errorf("--auth-rates: %w", err)
	}
	if c.settleSizes, err = intList(*settle); err != nil {
		return c, fmt.Errorf("--settle-sizes: %w", err)
	}
	if c.exportSizes, err = intList(*export); err != nil {
		return c, fmt.Errorf("--export-sizes: %w", err)
	}
	c.only = map[string]bool{}
	if *only != "" {
		for _, g := range strings.Split(*only, ",") {
			g = strings.TrimSpace(g)
			if g == "memory" {
				c.only["settle"], c.only["export"] = true, true
				continue
			}
			if !slices.Contains(groups, g) {
				return c, fmt.Errorf("--only %q: want one of %s", g, strings.Join(groups, ", "))
			}
			c.only[g] = true
		}
	}
	if c.quick {
		c.ingestRecords = 20_000
		c.ingestBatch = min(c.ingestBatch, 1000)
		c.authRates = []int{100, 200}
		c.authDuration = 3 * time.Second
		c.authQuotas, c.authHotQuotas = 200, 20
		c.authSatClients, c.authSatTime = 16, 2*time.Second
		c.settleSizes = []int{20_000, 40_000}
		c.exportSizes = []int{20_000}
		c.nodeClients, c.nodeDuration, c.nodeQuotas = 8, 2*time.Second, 200
	}
	switch {
	case c.ingestRecords < 1000 || c.ingestRecords > 100_000_000:
		return c, errors.New("--ingest-records: 1,000 to 100,000,000")
	case c.ingestBatch < 1 || c.ingestBatch > 5000:
		return c, errors.New("--ingest-batch: 1 to 5000 (the clearing service's limit)")
	case c.ingestProvinces < 2 || c.ingestProvinces > 32:
		return c, errors.New("--ingest-provinces: 2 to 32")
	case c.ingestStreams < 1 || c.ingestStreams > c.ingestProvinces:
		return c, errors.New("--ingest-streams: 1 to --ingest-provinces")
	case c.ingestDupShare < 0 || c.ingestDupShare > 0.5:
		return c, errors.New("--ingest-dups: 0 to 0.5")
	case c.authQuotas < 1 || c.authHotQuotas < 1 || c.authSatClients < 1 || c.authDuration <= 0 || c.authSatTime <= 0:
		return c, errors.New("--auth-*: positive values")
	case c.nodeClients < 1 || c.nodeClients > 256 || c.nodeDuration <= 0 || c.nodeQuotas < 1:
		return c, errors.New("--node-*: clients 1..256, positive duration and quotas")
	}
	for _, r := range c.authRates {
		if r < 1 || r > 100_000 {
			return c, errors.New("--auth-rates: each 1 to 100,000")
		}
	}
	for _, n := range append(slices.Clone(c.settleSizes), c.exportSizes...) {
		if n < 1000 || n > 100_000_000 {
			return c, errors.New("--settle-sizes/--export-sizes: each 1,000 to 100,000,000")
		}
	}
	return c, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ReplaceAll(f, "_", ""))
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func (c config) runs(group string) bool { return len(c.only) == 0 || c.only[group] }

// Row is one line of the table and of results.json.
type Row struct {
	Name     string  `json:"name"`
	Ours     float64 `json:"ours"`
	Baseline float64 `json:"baseline"`
	Unit     string  `json:"unit"`
	// Ratio is ours ÷ baseline (0 when there is no baseline).
	Ratio float64 `json:"ratio"`
	// Goal is "≥ x" or "≤ x" on the ratio, or an absolute goal in words;
	// empty for an informational row.
	Goal string `json:"goal"`
	// Met is nil for an informational row.
	Met  *bool  `json:"met"`
	Note string `json:"note"`
}

func ratio(ours, base float64) float64 {
	if base == 0 {
		return 0
	}
	return ours / base
}

func boolp(b bool) *bool { return &b }

// results is what bench/results.json holds.
type results struct {
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Machine  string    `json:"machine"`
	Postgres string    `json:"postgres"`
	Args     []string  `json:"args"`
	Rows     []Row     `json:"rows"`
	Errors   []string  `json:"errors,omitempty"`
}

// run is the state of one benchmark run.
type run struct {
	cfg  config
	pg   *pgHarness
	bins *binaries
	res  results
	tmp  string
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func (r *run) add(rows ...Row) {
	for _, row := range rows {
		if row.Ratio == 0 {
			row.Ratio = ratio(row.Ours, row.Baseline)
		}
		r.res.Rows = append(r.res.Rows, row)
		met := "-"
		if row.Met != nil {
			met = strconv.FormatBool(*row.Met)
		}
		logf("ROW %s: ours %s, baseline %s %s, ratio %.3f, goal %s, met %s; %s", row.Name, num(row.Ours),
			num(row.Baseline), row.Unit, row.Ratio, row.Goal, met, row.Note)
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == rssExecArg {
		os.Exit(rssExec(os.Args[2:]))
	}
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runAll(ctx, cfg))
}

func runAll(ctx context.Context, cfg config) int {
	start := time.Now()
	r := &run{cfg: cfg, res: results{Started: start, Args: os.Args[1:]}}
	var err error
	if r.tmp, err = os.MkdirTemp("", "gongji-bench-"); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer os.RemoveAll(r.tmp)
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	r.res.Machine = machine()
	logf("machine: %s", r.res.Machine)
	if r.pg, err = startPG(ctx, logf); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer r.pg.close()
	if r.res.Postgres, err = r.pg.serverInfo(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	logf("server: %s", r.res.Postgres)

	steps := []struct {
		group string
		fn    func(context.Context) error
	}{
		{"ingest", r.ingest},
		{"auth", r.auth},
		{"settle", r.settleAndExport},
		{"node", r.node},
	}
	failed := false
	for _, s := range steps {
		if s.group == "settle" {
			if !cfg.runs("settle") && !cfg.runs("export") {
				continue
			}
		} else if !cfg.runs(s.group) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		logf("== %s", s.group)
		t0 := time.Now()
		if err := s.fn(ctx); err != nil {
			failed = true
			msg := fmt.Sprintf("%s: %v", s.group, err)
			r.res.Errors = append(r.res.Errors, msg)
			logf("ERROR %s", msg)
		}
		logf("== %s done in %s", s.group, time.Since(t0).Round(time.Second))
	}
	r.res.Seconds = time.Since(start).Seconds()
	printTable(os.Stdout, r.res)
	if cfg.out != "" {
		b, _ := json.MarshalIndent(r.res, "", "  ")
		if err := os.WriteFile(cfg.out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Printf("\nwritten to %s\n", cfg.out)
	}
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

func machine() string {
	host := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		host = "Linux " + strings.TrimSpace(string(b))
	}
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average at start " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%s, %s, %d CPUs (%s)%s%s", host, runtime.GOARCH, runtime.NumCPU(), model, mem, load)
}

// num formats a figure with three significant digits or more.
func num(v float64) string {
	switch a := math.Abs(v); {
	case v == 0:
		return "0"
	case a >= 1000:
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 4, 64)
	}
}

func printTable(w *os.File, res results) {
	fmt.Fprintf(w, "\ngongji bench — %s\n%s\nrun took %s\n\n", res.Machine, res.Postgres,
		(time.Duration(res.Seconds) * time.Second).String())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "name\tours\tbaseline\tunit\tratio\tgoal\tmet\tnote")
	for _, r := range res.Rows {
		met := "-"
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*r.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\n", r.Name, num(r.Ours), num(r.Baseline), r.Unit, r.Ratio, r.Goal, met, r.Note)
	}
	_ = tw.Flush()
	for _, e := range res.Errors {
		fmt.Fprintf(w, "ERROR %s\n", e)
	}
}
