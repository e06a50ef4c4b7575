// Command demo runs a simulated national month end to end: a private
// PostgreSQL (one database per node), mTLS certificates, the clearing service
// and all 32 province nodes as separate processes on loopback, and a month of
// people, relationships, usage, faults, close, settlement, statements, export
// and verification, driven through the public gRPC APIs only.
//
//	make demo                      # defaults: a few minutes on 2 cores
//	make demo ARGS="--usages 1000000 --seed 7"
//	make demo ARGS=--serve         # keep the federation running afterwards
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"gongji/internal/federation"
	"gongji/region"
	"gongji/sim"
)

type options struct {
	people, usages, workers int
	seed                    uint64
	period                  string
	out, bin                string
	json, serve             bool
	proposalExpiry          time.Duration
}

func main() {
	var o options
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	fs.IntVar(&o.people, "people", 0, "synthetic people (at least 4 per pooling region are made; 0: 6000, or --usages/10 when that is more,\nso that a larger month has more families rather than every quota exhausted)")
	fs.IntVar(&o.usages, "usages", 20000, "planned usages in the month")
	fs.IntVar(&o.workers, "workers", 32, "concurrent request streams of the driver")
	fs.Uint64Var(&o.seed, "seed", 1, "seed: the same seed sends the same requests and gives byte-identical exports")
	fs.StringVar(&o.period, "period", "202610", "the simulated month (setlym)")
	fs.StringVar(&o.out, "out", "demo-out", "output directory (summary.json, exports/, certs/, logs/)")
	fs.StringVar(&o.bin, "bin", "", "directory with the clearing and provincenode binaries (default: next to this one)")
	fs.BoolVar(&o.json, "json", false, "print the summary as JSON instead of a table")
	fs.BoolVar(&o.serve, "serve", false, "keep the federation running after the month until Ctrl-C (prints endpoints and grpcurl lines)")
	fs.DurationVar(&o.proposalExpiry, "proposal-expiry", 0, "the nodes' proposal expiry in this simulation (real time; 0: 15s + 10ms per proposal)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: demo [flags]\n\nRuns a simulated national month end to end (see README.md). Uses DATABASE_URL if set,\nelse a private PostgreSQL that is removed afterwards.\n\n")
		fs.PrintDefaults()
	}
	_ = fs.Parse(os.Args[1:])
	if o.people == 0 {
		o.people = max(6000, o.usages/10)
	}
	if o.bin == "" {
		self, err := os.Executable()
		if err != nil {
			fatal(err)
		}
		o.bin = filepath.Dir(self)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "demo:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, o options) error {
	period, err := region.ParsePeriod(o.period)
	if err != nil {
		return err
	}
	started := time.Now()
	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	// The population is generated before the federation starts: the nodes'
	// proposal expiry depends on how many proposals there are.
	pop := sim.Generate(sim.Config{People: o.people, Seed: o.seed, Year: period.Year})
	people, links, cross := pop.Counts()
	if o.proposalExpiry == 0 {
		o.proposalExpiry = sim.ProposalExpiry(links)
	}
	setupStart := time.Now()
	f, err := federation.Start(ctx, federation.Options{
		Dir: o.out, Bin: o.bin, Seed: o.seed, Period: period,
		ProposalExpiry: o.proposalExpiry, CutOffGrace: 120 * time.Hour, Logf: logf,
	})
	if err != nil {
		return err
	}
	defer f.Close()
	setupSeconds := time.Since(setupStart).Seconds()

	logf("population: %d people in 387 pooling regions, %d proposed relationships (%d cross-province)", people, links, cross)
	cfg := sim.MonthConfig{
		Period: period, Usages: o.usages, Seed: o.seed, Workers: o.workers,
		ProposalExpiry: o.proposalExpiry, KillNode: "410000", SmallDeposit: "440000", DisputeProvince: "510000",
		CutOffGrace: 120 * time.Hour, Progress: progress,
	}
	sum, err := sim.RunMonth(ctx, f, pop, cfg)
	if err != nil {
		return err
	}
	sum.Seconds["setup"] = setupSeconds

	// Export and verify with the clearing binary, as an auditor would.
	expStart := time.Now()
	exportDir := filepath.Join(o.out, "exports", period.String())
	if out, err := f.ClearingCmd(ctx, "export", "--period", period.String(), "--out", exportDir, "--workbook"); err != nil {
		return fmt.Errorf("export: %w\n%s", err, out)
	}
	sum.Seconds["export"] = time.Since(expStart).Seconds()
	verStart := time.Now()
	out, err := f.ClearingCmd(ctx, "verify", exportDir, "--journal-head", sum.JournalHead)
	sum.Verify = "ok"
	if err != nil {
		sum.Verify = strings.TrimSpace(out)
		if sum.Verify == "" {
			sum.Verify = err.Error()
		}
	}
	sum.Seconds["verify"] = time.Since(verStart).Seconds()
	sum.ExportDir = exportDir
	sum.Seconds["total"] = time.Since(started).Seconds()

	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := os.WriteFile(filepath.Join(o.out, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if o.json {
		fmt.Println(string(b))
	} else {
		printSummary(sum)
	}
	if sum.Verify != "ok" {
		return fmt.Errorf("verify failed: %s", sum.Verify)
	}
	if o.serve {
		return serve(ctx, f, o)
	}
	return nil
}

func progress(p sim.Progress) {
	if p.Final {
		logf("%-24s %8d/%-8d done in %6.1fs  (%.0f/s)", p.Phase, p.Done, p.Total, p.Elapsed.Seconds(), p.Rate)
		return
	}
	logf("%-24s %8d/%-8d %7.0f/s  ETA %s", p.Phase, p.Done, p.Total, p.Rate, p.ETA.Round(time.Second))
}

func serve(ctx context.Context, f *federation.Federation, o options) error {
	eps := f.Endpoints()
	b, _ := json.MarshalIndent(eps, "", "  ")
	if err := os.WriteFile(filepath.Join(o.out, "endpoints.json"), b, 0o644); err != nil {
		return err
	}
	c, n := eps["clearing"], eps["410000"]
	fmt.Printf("\nThe federation keeps running until Ctrl-C. Endpoints: %s\n", filepath.Join(o.out, "endpoints.json"))
	fmt.Printf("  clearing service   %s\n  province nodes     32, e.g. 410000 %s\n\n", c.Addr, n.Addr)
	fmt.Printf("  grpcurl -cacert %s -cert %s -key %s -authority localhost %s list\n", c.CA, c.Cert, c.Key, c.Addr)
	fmt.Printf("  grpcurl -cacert %s -cert %s -key %s -authority localhost -d '{\"setlym\":\"%s\"}' %s gongji.clearing.v1.AdminService/GetPeriodStatus\n", c.CA, c.Cert, c.Key, o.period, c.Addr)
	fmt.Printf("  grpcurl -cacert %s -cert %s -key %s -authority localhost %s list gongji.province.v1.ProvinceService\n\n", n.CA, n.Cert, n.Key, n.Addr)
	printConsole(eps["console"], o)
	<-ctx.Done()
	return nil
}

// printConsole tells how to open the operator console: it is HTTPS with a
// required client certificate, so a browser needs the operator certificate
// imported (as PKCS#12) and the demo CA trusted; curl takes the PEM files.
func printConsole(c federation.Endpoint, o options) {
	_, port, _ := strings.Cut(c.Addr, ":")
	url := "https://localhost:" + port + "/"
	p12 := filepath.Join(o.out, "operator.p12")
	fmt.Printf("Operator console (read-only, HTTPS; a client certificate is required)\n  %s\n\n", url)
	fmt.Printf("  with curl:\n    curl --cacert %s --cert %s --key %s %sapi/period/%s/overview\n\n", c.CA, c.Cert, c.Key, url, o.period)
	fmt.Printf("  in a browser: make a PKCS#12 of the operator certificate (password gongji) and import it,\n"+
		"  and trust the demo CA %s (certificate settings, \"Authorities\"), then open %s\n", c.CA, url)
	fmt.Printf("    openssl pkcs12 -export -in %s -inkey %s -certfile %s -name gongji-operator -passout pass:gongji -out %s\n", c.Cert, c.Key, c.CA, p12)
	fmt.Printf("  a province's view: the same with %s/province-XX0000.pem and -key.pem\n\n", filepath.Dir(c.Cert))
}

func printSummary(s *sim.Summary) {
	fmt.Printf("\n==== gongji simulated month %s ====\n", s.Period)
	fmt.Printf("provinces %d   people %d\n", s.Provinces, s.People)
	r := s.Relationships
	fmt.Printf("relationships: proposed %d (cross-province %d), active %d, declined %d, expired %d, dissolved voluntarily %d, automatically %d\n",
		r.Proposed, r.CrossProvince, r.Active, r.Declined, r.Expired, r.DissolvedVoluntary, r.DissolvedAuto)
	u := s.Usages
	fmt.Printf("usages: approved %d (%s yuan): cross-province %d, local %d; reversals %d; duplicate retries %d; late %d; refused over quota %d\n",
		u.Approved, u.AmountApproved, u.CrossProvince, u.Local, u.Reversals, u.DuplicateRetries, u.Late, u.RefusedOverQuota)
	fmt.Printf("restarts: node %d, clearing %d\n", s.Restarts.Node, s.Restarts.Clearing)
	fmt.Printf("gross %s yuan   netting efficiency %s   reconciliation exceptions %d\n", s.Gross, s.NettingEfficiency, s.Exceptions)
	fmt.Printf("\nnet positions (receivers first):\n")
	for _, p := range s.Positions {
		fmt.Printf("  %s %-10s receivable %14s  payable %14s  net %14s\n", p.Province, p.Name, p.Receivable, p.Payable, p.Net)
	}
	fmt.Printf("\nprepayment: drawn %s, warnings %d %v, shortfall %s %v\n", s.Prepay.Drawn, s.Prepay.Warnings, s.Prepay.WarningOf, s.Prepay.Shortfall, s.Prepay.Shortfalls)
	fmt.Printf("statements: %v\n", s.Statements)
	fmt.Printf("journal head %s\nexport %s   verify: %s\n", s.JournalHead, s.ExportDir, s.Verify)
	fmt.Printf("\nseconds per phase:\n")
	for _, k := range append(append([]string{"setup"}, s.PhaseOrder...), "export", "verify", "total") {
		fmt.Printf("  %-30s %7.1f\n", k, s.Seconds[k])
	}
}
