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
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"gongji/internal/fleet"
	"gongji/internal/pgboot"
	"gongji/internal/tlsconf"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
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
	fs.IntVar(&o.people, "people", 6000, "synthetic people (at least 4 per pooling region are made)")
	fs.IntVar(&o.usages, "usages", 20000, "planned usages in the month")
	fs.IntVar(&o.workers, "workers", 32, "concurrent request streams of the driver")
	fs.Uint64Var(&o.seed, "seed", 1, "seed: the same seed sends the same requests and gives byte-identical exports")
	fs.StringVar(&o.period, "period", "202610", "the simulated month (setlym)")
	fs.StringVar(&o.out, "out", "demo-out", "output directory (summary.json, exports/, certs/, logs/)")
	fs.StringVar(&o.bin, "bin", "", "directory with the clearing and provincenode binaries (default: next to this one)")
	fs.BoolVar(&o.json, "json", false, "print the summary as JSON instead of a table")
	fs.BoolVar(&o.serve, "serve", false, "keep the federation running after the month until Ctrl-C (prints endpoints and grpcurl lines)")
	fs.DurationVar(&o.proposalExpiry, "proposal-expiry", 15*time.Second, "the nodes' proposal expiry in this simulation (real time)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: demo [flags]\n\nRuns a simulated national month end to end (see README.md). Uses DATABASE_URL if set,\nelse a private PostgreSQL that is removed afterwards.\n\n")
		fs.PrintDefaults()
	}
	_ = fs.Parse(os.Args[1:])
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

// fed is the running federation: processes and their gRPC clients.
type fed struct {
	o         options
	srv       *pgboot.Server
	certs     string
	logs      string
	clearing  *fleet.Proc
	clearArgs []string
	nodes     map[string]*fleet.Proc
	addrs     map[string]string // province -> node address; "clearing" -> clearing

	mu        sync.Mutex
	conns     []*grpc.ClientConn
	provs     map[string]provincev1.ProvinceServiceClient
	stmts     map[string]clearingv1.StatementServiceClient
	admin     clearingv1.AdminServiceClient
	databases []string
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
	f := &fed{o: o, certs: filepath.Join(o.out, "certs"), logs: filepath.Join(o.out, "logs"),
		nodes: map[string]*fleet.Proc{}, addrs: map[string]string{},
		provs: map[string]provincev1.ProvinceServiceClient{}, stmts: map[string]clearingv1.StatementServiceClient{}}
	for _, d := range []string{f.certs, f.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	defer f.shutdown()

	setupStart := time.Now()
	logf("starting PostgreSQL")
	f.srv, err = pgboot.Start(ctx, pgboot.Options{Logf: logf})
	if err != nil {
		return err
	}
	if err := f.setup(ctx, period); err != nil {
		return err
	}
	setupSeconds := time.Since(setupStart).Seconds()

	pop := sim.Generate(sim.Config{People: o.people, Seed: o.seed, Year: period.Year})
	people, links, cross := pop.Counts()
	logf("population: %d people in 387 pooling regions, %d proposed relationships (%d cross-province)", people, links, cross)
	cfg := sim.MonthConfig{
		Period: period, Usages: o.usages, Seed: o.seed, Workers: o.workers,
		ProposalExpiry: o.proposalExpiry, KillNode: "410000", SmallDeposit: "310000", DisputeProvince: "510000",
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
	if out, err := f.clearingCmd(ctx, "export", "--period", period.String(), "--out", exportDir); err != nil {
		return fmt.Errorf("export: %w\n%s", err, out)
	}
	sum.Seconds["export"] = time.Since(expStart).Seconds()
	verStart := time.Now()
	out, err := f.clearingCmd(ctx, "verify", exportDir)
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
		return f.serve(ctx)
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

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// deterministicKey derives a demo key from the seed, so that pseudonyms (and so
// exports) are the same in two runs with one seed. Production keys are random
// and kept secret; these are for the simulation only.
func deterministicKey(seed uint64, purpose string) []byte {
	h := sha256.Sum256([]byte(fmt.Sprintf("gongji-demo-%s-%d", purpose, seed)))
	return h[:]
}

func (f *fed) setup(ctx context.Context, period region.Period) error {
	bin := func(n string) string { return filepath.Join(f.o.bin, n) }
	for _, n := range []string{"clearing", "provincenode"} {
		if _, err := os.Stat(bin(n)); err != nil {
			return fmt.Errorf("binary %s not found (run make build or use --bin): %w", bin(n), err)
		}
	}
	logf("generating mTLS certificates in %s", f.certs)
	if out, err := exec.CommandContext(ctx, bin("clearing"), "certs", "init", "--out", f.certs).CombinedOutput(); err != nil {
		return fmt.Errorf("certs init: %w\n%s", err, out)
	}
	personKey := filepath.Join(f.o.out, "person.key")
	exportKey := filepath.Join(f.o.out, "export.key")
	if err := os.WriteFile(personKey, []byte(hex.EncodeToString(deterministicKey(f.o.seed, "person"))+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(exportKey, []byte(hex.EncodeToString(deterministicKey(f.o.seed, "export"))+"\n"), 0o600); err != nil {
		return err
	}
	run := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000, 36)
	dbName := func(n string) string { return "gongji_demo_" + run + "_" + n }
	codes := region.ProvinceCodes()
	logf("creating 33 databases")
	for _, n := range append([]string{"clearing"}, codes...) {
		if err := f.srv.CreateDatabase(ctx, dbName(n), ""); err != nil {
			return err
		}
		f.databases = append(f.databases, dbName(n))
	}
	// Fixed ports up front so the clearing service knows every node's address.
	var err error
	if f.addrs["clearing"], err = freePort(); err != nil {
		return err
	}
	nodes := map[string]string{}
	for _, c := range codes {
		if nodes[c], err = freePort(); err != nil {
			return err
		}
		f.addrs[c] = nodes[c]
	}
	nodesFile := filepath.Join(f.o.out, "nodes.json")
	nb, _ := json.MarshalIndent(nodes, "", "  ")
	if err := os.WriteFile(nodesFile, nb, 0o644); err != nil {
		return err
	}
	// The federation lives through month M in minutes: its clocks start just
	// after M ends, before M's cut-off (docs/architecture.md, "Time").
	clock := period.End().Add(time.Hour).Format(time.RFC3339)
	f.clearArgs = []string{"serve", "--listen", f.addrs["clearing"], "--database-url", f.srv.URL(dbName("clearing")),
		"--certs-dir", f.certs, "--nodes-file", nodesFile, "--export-key-file", exportKey,
		"--cutoff-grace", "120h", "--log-format", "json", "--log-level", "info"}
	logf("starting the clearing service on %s", f.addrs["clearing"])
	f.clearing, err = fleet.Start(ctx, fleet.Spec{Name: "clearing", Binary: bin("clearing"),
		Args: append(append([]string{}, f.clearArgs...), "--clock-start", clock), LogPath: filepath.Join(f.logs, "clearing.log")})
	if err != nil {
		return err
	}
	logf("starting 32 province nodes")
	var wg sync.WaitGroup
	errs := make([]error, len(codes))
	for i, c := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := fleet.Start(ctx, fleet.Spec{Name: "node-" + c, Binary: bin("provincenode"), LogPath: filepath.Join(f.logs, "node-"+c+".log"),
				Args: []string{"serve", "--province", c, "--listen", nodes[c], "--database-url", f.srv.URL(dbName(c)),
					"--certs-dir", f.certs, "--clearing-addr", f.addrs["clearing"], "--person-key-file", personKey,
					"--clock-start", clock, "--proposal-expiry", f.o.proposalExpiry.String(), "--sweep-interval", "1s",
					"--log-format", "json", "--log-level", "info"}})
			if err != nil {
				errs[i] = err
				return
			}
			f.mu.Lock()
			f.nodes[c] = p
			f.mu.Unlock()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return f.dial()
}

func (f *fed) creds(id tlsconf.Identity, want tlsconf.Identity) (grpc.DialOption, error) {
	files := tlsconf.FilesFor(f.certs, id)
	r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: files, Identity: id})
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(tlsconf.ClientConfigFor(r, "localhost", want))), nil
}

func (f *fed) dial() error {
	clearingID := tlsconf.Identity{Kind: tlsconf.Clearing}
	op, err := f.creds(tlsconf.Identity{Kind: tlsconf.Operator}, clearingID)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(f.addrs["clearing"], op)
	if err != nil {
		return err
	}
	f.conns = append(f.conns, cc)
	f.admin = clearingv1.NewAdminServiceClient(cc)
	for _, c := range region.ProvinceCodes() {
		id := tlsconf.Identity{Kind: tlsconf.Province, Province: c}
		// The province's own systems talk to its node with the province certificate.
		toNode, err := f.creds(id, id)
		if err != nil {
			return err
		}
		nc, err := grpc.NewClient(f.addrs[c], toNode)
		if err != nil {
			return err
		}
		toClearing, err := f.creds(id, clearingID)
		if err != nil {
			return err
		}
		sc, err := grpc.NewClient(f.addrs["clearing"], toClearing)
		if err != nil {
			return err
		}
		f.conns = append(f.conns, nc, sc)
		f.provs[c] = provincev1.NewProvinceServiceClient(nc)
		f.stmts[c] = clearingv1.NewStatementServiceClient(sc)
	}
	return nil
}

func (f *fed) Province(code string) provincev1.ProvinceServiceClient   { return f.provs[code] }
func (f *fed) Statement(code string) clearingv1.StatementServiceClient { return f.stmts[code] }
func (f *fed) Admin() clearingv1.AdminServiceClient                    { return f.admin }

func (f *fed) KillNode(_ context.Context, code string) error {
	logf("SIGKILL province node %s (%s) mid-month", code, region.ProvinceName(code))
	f.nodes[code].Kill()
	return nil
}

func (f *fed) RestartNode(ctx context.Context, code string) error {
	logf("restarting province node %s", code)
	return f.nodes[code].Restart(ctx)
}

func (f *fed) RestartClearing(ctx context.Context, clockStart time.Time) error {
	logf("restarting the clearing service with its clock at %s (past the cut-off)", clockStart.In(region.Shanghai).Format(time.RFC3339))
	f.clearing.Stop(10 * time.Second)
	f.clearing.Spec.Args = append(append([]string{}, f.clearArgs...), "--clock-start", clockStart.Format(time.RFC3339))
	return f.clearing.Restart(ctx)
}

func (f *fed) clearingCmd(ctx context.Context, args ...string) (string, error) {
	full := append([]string{}, args...)
	if args[0] == "export" {
		full = append(full, "--database-url", f.clearArgs[4], "--export-key-file", filepath.Join(f.o.out, "export.key"))
	}
	out, err := exec.CommandContext(ctx, filepath.Join(f.o.bin, "clearing"), full...).CombinedOutput()
	return string(out), err
}

func (f *fed) serve(ctx context.Context) error {
	type ep struct {
		Addr string `json:"addr"`
		Cert string `json:"cert"`
		Key  string `json:"key"`
		CA   string `json:"ca"`
	}
	eps := map[string]ep{}
	opFiles := tlsconf.FilesFor(f.certs, tlsconf.Identity{Kind: tlsconf.Operator})
	eps["clearing"] = ep{Addr: f.addrs["clearing"], Cert: opFiles.CertFile, Key: opFiles.KeyFile, CA: opFiles.CAFile}
	for _, c := range region.ProvinceCodes() {
		fl := tlsconf.FilesFor(f.certs, tlsconf.Identity{Kind: tlsconf.Province, Province: c})
		eps[c] = ep{Addr: f.addrs[c], Cert: fl.CertFile, Key: fl.KeyFile, CA: fl.CAFile}
	}
	b, _ := json.MarshalIndent(eps, "", "  ")
	if err := os.WriteFile(filepath.Join(f.o.out, "endpoints.json"), b, 0o644); err != nil {
		return err
	}
	c := eps["clearing"]
	n := eps["410000"]
	fmt.Printf("\nThe federation keeps running until Ctrl-C. Endpoints: %s\n", filepath.Join(f.o.out, "endpoints.json"))
	fmt.Printf("  clearing service   %s\n  province nodes     32, e.g. 410000 %s\n\n", c.Addr, n.Addr)
	fmt.Printf("  grpcurl -cacert %s -cert %s -key %s -authority localhost %s list\n", c.CA, c.Cert, c.Key, c.Addr)
	fmt.Printf("  grpcurl -cacert %s -cert %s -key %s -authority localhost -d '{\"setlym\":\"%s\"}' %s gongji.clearing.v1.AdminService/GetPeriodStatus\n", c.CA, c.Cert, c.Key, f.o.period, c.Addr)
	fmt.Printf("  grpcurl -cacert %s -cert %s -key %s -authority localhost %s list gongji.province.v1.ProvinceService\n\n", n.CA, n.Cert, n.Key, n.Addr)
	<-ctx.Done()
	return nil
}

func (f *fed) shutdown() {
	for _, c := range f.conns {
		_ = c.Close()
	}
	var wg sync.WaitGroup
	for _, p := range f.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(10 * time.Second) }()
	}
	if f.clearing != nil {
		wg.Add(1)
		go func() { defer wg.Done(); f.clearing.Stop(10 * time.Second) }()
	}
	wg.Wait()
	if f.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if !f.srv.Owned() {
			for _, d := range f.databases {
				_ = f.srv.DropDatabase(ctx, d)
			}
		}
		_ = f.srv.Stop()
	}
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
