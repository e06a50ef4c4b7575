// Package federation starts a whole gongji federation as separate OS
// processes, the way it is deployed: one PostgreSQL server (DATABASE_URL or a
// private cluster) with one database per node, mTLS certificates from
// `clearing certs init`, the clearing service and the province nodes on
// loopback ports. It hands out gRPC clients with the right certificates and
// process control for fault drills. The demo and the e2e tests use it; it
// implements sim.Federation.
package federation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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
)

// startAttemptsMax bounds how often a server is started on a fresh port.
const startAttemptsMax = 4

// Options describe a federation.
type Options struct {
	Dir       string // certs/, logs/, keys, nodes.json go here
	Bin       string // directory with the clearing and provincenode binaries
	Seed      uint64 // demo keys are derived from it, so exports are reproducible
	Period    region.Period
	Provinces []string // default: all 32
	// ProposalExpiry and SweepInterval configure the nodes (real time).
	ProposalExpiry time.Duration
	SweepInterval  time.Duration
	CutOffGrace    time.Duration // the clearing service's --cutoff-grace; default 120h
	LogLevel       string        // default info
	Logf           func(format string, args ...any)
	// Server, if set, is used instead of starting one (and is not stopped).
	Server *pgboot.Server
}

// Federation is a running federation.
type Federation struct {
	o         Options
	srv       *pgboot.Server
	ownServer bool
	certs     string
	logs      string
	personKey string
	exportKey string
	clearing  *fleet.Proc
	clearArgs []string
	nodes     map[string]*fleet.Proc
	addrs     map[string]string // province -> node address; "clearing" -> clearing; "console" -> its HTTPS console
	dbs       map[string]string // province or "clearing" -> database URL

	conns []*grpc.ClientConn
	provs map[string]provincev1.ProvinceServiceClient
	stmts map[string]clearingv1.StatementServiceClient
	admin clearingv1.AdminServiceClient
	names []string
}

// DeterministicKey derives a simulation key from the seed, so that pseudonyms
// (and so exports) are the same in two runs with one seed. Production keys are
// random and secret; these are for simulations only.
func DeterministicKey(seed uint64, purpose string) []byte {
	h := sha256.Sum256([]byte(fmt.Sprintf("gongji-sim-%s-%d", purpose, seed)))
	return h[:]
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Start brings the federation up. On error everything started is stopped.
func Start(ctx context.Context, o Options) (f *Federation, err error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if len(o.Provinces) == 0 {
		o.Provinces = region.ProvinceCodes()
	}
	if o.ProposalExpiry == 0 {
		o.ProposalExpiry = 15 * time.Second
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Second
	}
	if o.CutOffGrace == 0 {
		o.CutOffGrace = 120 * time.Hour
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	f = &Federation{o: o, certs: filepath.Join(o.Dir, "certs"), logs: filepath.Join(o.Dir, "logs"),
		nodes: map[string]*fleet.Proc{}, addrs: map[string]string{}, dbs: map[string]string{},
		provs: map[string]provincev1.ProvinceServiceClient{}, stmts: map[string]clearingv1.StatementServiceClient{}}
	defer func() {
		if err != nil {
			f.Close()
			f = nil
		}
	}()
	for _, d := range []string{f.certs, f.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return f, err
		}
	}
	if o.Server != nil {
		f.srv = o.Server
	} else {
		o.Logf("starting PostgreSQL")
		if f.srv, err = pgboot.Start(ctx, pgboot.Options{Logf: o.Logf}); err != nil {
			return f, err
		}
		f.ownServer = true
	}
	bin := func(n string) string { return filepath.Join(o.Bin, n) }
	for _, n := range []string{"clearing", "provincenode"} {
		if _, err := os.Stat(bin(n)); err != nil {
			return f, fmt.Errorf("binary %s not found (run make build): %w", bin(n), err)
		}
	}
	o.Logf("generating mTLS certificates in %s", f.certs)
	if out, err := exec.CommandContext(ctx, bin("clearing"), "certs", "init", "--out", f.certs).CombinedOutput(); err != nil {
		return f, fmt.Errorf("certs init: %w\n%s", err, out)
	}
	f.personKey = filepath.Join(o.Dir, "person.key")
	f.exportKey = filepath.Join(o.Dir, "export.key")
	for path, purpose := range map[string]string{f.personKey: "person", f.exportKey: "export"} {
		if err := os.WriteFile(path, []byte(hex.EncodeToString(DeterministicKey(o.Seed, purpose))+"\n"), 0o600); err != nil {
			return f, err
		}
	}
	run := strconv.FormatInt(time.Now().UnixNano()%1_000_000_000_000, 36)
	o.Logf("creating %d databases", len(o.Provinces)+1)
	for _, n := range append([]string{"clearing"}, o.Provinces...) {
		name := "gongji_fed_" + run + "_" + n
		if err := f.srv.CreateDatabase(ctx, name, ""); err != nil {
			return f, err
		}
		f.names = append(f.names, name)
		f.dbs[n] = f.srv.URL(name)
	}
	// Fixed ports up front, so the clearing service knows every node's address.
	if f.addrs["clearing"], err = freePort(); err != nil {
		return f, err
	}
	if f.addrs["console"], err = freePort(); err != nil {
		return f, err
	}
	nodes := map[string]string{}
	for _, c := range o.Provinces {
		if nodes[c], err = freePort(); err != nil {
			return f, err
		}
		f.addrs[c] = nodes[c]
	}
	nodesFile := filepath.Join(o.Dir, "nodes.json")
	nb, _ := json.MarshalIndent(nodes, "", "  ")
	if err := os.WriteFile(nodesFile, nb, 0o644); err != nil {
		return f, err
	}
	// The federation lives through month M in minutes: its clocks start just
	// after M ends, before M's cut-off (docs/architecture.md, "Time").
	clock := o.Period.End().Add(time.Hour).Format(time.RFC3339)
	f.clearArgs = []string{"serve", "--listen", f.addrs["clearing"], "--database-url", f.dbs["clearing"],
		"--certs-dir", f.certs, "--nodes-file", nodesFile, "--export-key-file", f.exportKey,
		"--cutoff-grace", o.CutOffGrace.String(), "--log-format", "json", "--log-level", o.LogLevel,
		// The read-only operator console (HTTPS, operator or province client certificate).
		"--console-listen", f.addrs["console"],
		// A frozen clearing clock makes the journal (and journal_head) reproducible.
		"--clock-frozen"}
	// A port picked free can be taken by another process before the server
	// binds it (tests of other packages run at the same time): a server that
	// exits before it is ready is started again on a fresh port, a few times.
	for attempt := 1; ; attempt++ {
		o.Logf("starting the clearing service on %s", f.addrs["clearing"])
		f.clearing, err = fleet.Start(ctx, fleet.Spec{Name: "clearing", Binary: bin("clearing"),
			Args: append(append([]string{}, f.clearArgs...), "--clock-start", clock), LogPath: filepath.Join(f.logs, "clearing.log")})
		if err == nil {
			break
		}
		if attempt == startAttemptsMax {
			return f, err
		}
		if f.addrs["clearing"], err = freePort(); err != nil {
			return f, err
		}
		if f.addrs["console"], err = freePort(); err != nil {
			return f, err
		}
		f.clearArgs[2] = f.addrs["clearing"]
		f.clearArgs[slices.Index(f.clearArgs, "--console-listen")+1] = f.addrs["console"]
	}
	o.Logf("starting %d province nodes", len(o.Provinces))
	var wg sync.WaitGroup
	var mu sync.Mutex
	moved := false
	errs := make([]error, len(o.Provinces))
	for i, c := range o.Provinces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			addr := nodes[c]
			mu.Unlock()
			for attempt := 1; ; attempt++ {
				p, err := fleet.Start(ctx, fleet.Spec{Name: "node-" + c, Binary: bin("provincenode"), LogPath: filepath.Join(f.logs, "node-"+c+".log"),
					Args: []string{"serve", "--province", c, "--listen", addr, "--database-url", f.dbs[c],
						"--certs-dir", f.certs, "--clearing-addr", f.addrs["clearing"], "--person-key-file", f.personKey,
						"--clock-start", clock, "--proposal-expiry", o.ProposalExpiry.String(), "--sweep-interval", o.SweepInterval.String(),
						"--log-format", "json", "--log-level", o.LogLevel}})
				if err == nil {
					mu.Lock()
					f.nodes[c] = p
					nodes[c], f.addrs[c] = addr, addr
					mu.Unlock()
					return
				}
				if attempt == startAttemptsMax {
					errs[i] = err
					return
				}
				if addr, err = freePort(); err != nil {
					errs[i] = err
					return
				}
				mu.Lock()
				moved = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return f, err
	}
	if moved {
		// A node moved to another port: tell the clearing service (it re-reads
		// its nodes file on SIGHUP). A call routed before it has re-read gets
		// Unavailable and is retried by the caller with the same key.
		nb, _ := json.MarshalIndent(nodes, "", "  ")
		if err := os.WriteFile(nodesFile, nb, 0o644); err != nil {
			return f, err
		}
		if err := syscall.Kill(f.clearing.Pid(), syscall.SIGHUP); err != nil {
			return f, fmt.Errorf("reload the clearing service's nodes file: %w", err)
		}
	}
	return f, f.dial()
}

func (f *Federation) creds(id, want tlsconf.Identity) (grpc.DialOption, error) {
	r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(f.certs, id), Identity: id})
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(tlsconf.ClientConfigFor(r, "localhost", want))), nil
}

func (f *Federation) dial() error {
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
	for _, c := range f.o.Provinces {
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

// Province is a client of province code's node, with that province's certificate.
func (f *Federation) Province(code string) provincev1.ProvinceServiceClient { return f.provs[code] }

// Statement is a StatementService client acting as province code.
func (f *Federation) Statement(code string) clearingv1.StatementServiceClient { return f.stmts[code] }

// Admin is an AdminService client with the operator certificate.
func (f *Federation) Admin() clearingv1.AdminServiceClient { return f.admin }

// Provinces lists the provinces that have a node.
func (f *Federation) Provinces() []string { return f.o.Provinces }

// DatabaseURL is the database of a province node, or of "clearing".
func (f *Federation) DatabaseURL(node string) string { return f.dbs[node] }

// Node is the process of province code's node.
func (f *Federation) Node(code string) *fleet.Proc { return f.nodes[code] }

// Clearing is the clearing service's process.
func (f *Federation) Clearing() *fleet.Proc { return f.clearing }

// Addr is the gRPC address of a node or "clearing".
func (f *Federation) Addr(node string) string { return f.addrs[node] }

// ConsoleAddr is the address of the clearing service's operator console
// (HTTPS; a client certificate is required: see Endpoints()["console"]).
func (f *Federation) ConsoleAddr() string { return f.addrs["console"] }

// CertsDir, ExportKeyFile and LogsDir locate the federation's files.
func (f *Federation) CertsDir() string      { return f.certs }
func (f *Federation) ExportKeyFile() string { return f.exportKey }
func (f *Federation) LogsDir() string       { return f.logs }

// KillNode SIGKILLs a province node.
func (f *Federation) KillNode(_ context.Context, code string) error {
	f.o.Logf("SIGKILL province node %s (%s)", code, region.ProvinceName(code))
	f.nodes[code].Kill()
	return nil
}

// RestartNode starts a stopped or killed node again with the same arguments.
func (f *Federation) RestartNode(ctx context.Context, code string) error {
	f.o.Logf("restarting province node %s", code)
	return f.nodes[code].Restart(ctx)
}

// KillClearing SIGKILLs the clearing service.
func (f *Federation) KillClearing() { f.clearing.Kill() }

// RestartClearing stops the clearing service (gracefully, if still running)
// and starts it with its clock at clockStart.
func (f *Federation) RestartClearing(ctx context.Context, clockStart time.Time) error {
	f.o.Logf("restarting the clearing service with its clock at %s", clockStart.In(region.Shanghai).Format(time.RFC3339))
	if f.clearing.Running() {
		f.clearing.Stop(10 * time.Second)
	}
	f.clearing.Spec.Args = append(append([]string{}, f.clearArgs...), "--clock-start", clockStart.Format(time.RFC3339))
	return f.clearing.Restart(ctx)
}

// ClearingCmd runs a `clearing` subcommand against the clearing database
// (export gets --database-url and --export-key-file added).
func (f *Federation) ClearingCmd(ctx context.Context, args ...string) (string, error) {
	full := append([]string{}, args...)
	switch args[0] {
	case "export":
		full = append(full, "--database-url", f.dbs["clearing"], "--export-key-file", f.exportKey)
	case "period", "prepay", "journal":
		full = append(full, "--database-url", f.dbs["clearing"])
	}
	out, err := exec.CommandContext(ctx, filepath.Join(f.o.Bin, "clearing"), full...).CombinedOutput()
	return string(out), err
}

// Endpoint is how to reach one server with a client certificate.
type Endpoint struct {
	Addr string `json:"addr"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
	CA   string `json:"ca"`
}

// Endpoints lists every server with the certificate a user should present:
// the operator's for the clearing service and its console ("console", an
// HTTPS address), the province's own for its node.
func (f *Federation) Endpoints() map[string]Endpoint {
	eps := map[string]Endpoint{}
	op := tlsconf.FilesFor(f.certs, tlsconf.Identity{Kind: tlsconf.Operator})
	eps["clearing"] = Endpoint{Addr: f.addrs["clearing"], Cert: op.CertFile, Key: op.KeyFile, CA: op.CAFile}
	eps["console"] = Endpoint{Addr: f.addrs["console"], Cert: op.CertFile, Key: op.KeyFile, CA: op.CAFile}
	for _, c := range f.o.Provinces {
		fl := tlsconf.FilesFor(f.certs, tlsconf.Identity{Kind: tlsconf.Province, Province: c})
		eps[c] = Endpoint{Addr: f.addrs[c], Cert: fl.CertFile, Key: fl.KeyFile, CA: fl.CAFile}
	}
	return eps
}

// Close stops every process, drops the databases on a shared server and stops
// a private one.
func (f *Federation) Close() {
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
	if f.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if f.ownServer {
		_ = f.srv.Stop()
		return
	}
	for _, d := range f.names {
		_ = f.srv.DropDatabase(ctx, d)
	}
}
