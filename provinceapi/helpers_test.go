package provinceapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"gongji/clearingapi"
	"gongji/clearingdb"
	"gongji/internal/auditlog"
	"gongji/internal/pgtest"
	"gongji/internal/pii"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/provinceapi"
	"gongji/provincedb"
	"gongji/region"
	"gongji/sharing"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// hangGuard bounds every wait of a test (client calls, polls), so that a bug
// shows as a failure instead of a hung test binary. It is never what a test
// asserts.
const hangGuard = time.Minute

// pollEvery is how often eventually re-checks its condition.
const pollEvery = 20 * time.Millisecond

// Provinces of the tests.
const (
	henan   = "410000" // the sharer's province: the authority, the payer
	beijing = "110000" // the beneficiary's province: the payee
	hainan  = "460000" // "another province" in authorisation tests
)

var (
	clearingID = tlsconf.Identity{Kind: tlsconf.Clearing}
	operatorID = tlsconf.Identity{Kind: tlsconf.Operator}
	// testPersonKey is the national person key of every test node.
	testPersonKey = []byte("gongji-provinceapi-test-national-person-key")
)

func provinceID(code string) tlsconf.Identity {
	return tlsconf.Identity{Kind: tlsconf.Province, Province: code}
}

func regionOf(t testing.TB, province string) string {
	t.Helper()
	p, err := region.ParseProvince(province)
	if err != nil {
		t.Fatal(err)
	}
	return p.Regions[0].Code
}

func secondRegionOf(t testing.TB, province string) string {
	t.Helper()
	p, err := region.ParseProvince(province)
	if err != nil {
		t.Fatal(err)
	}
	return p.Regions[1].Code
}

// idNumber builds a valid GB 11643-1999 ID number from a 6-digit address
// code, a birth date YYYYMMDD and a 3-digit sequence.
func idNumber(t testing.TB, addr, birth, seq string) string {
	t.Helper()
	first := addr + birth + seq
	c, err := pii.CheckDigit(first)
	if err != nil {
		t.Fatal(err)
	}
	return first + string(c)
}

func refOf(t testing.TB, id string) string {
	t.Helper()
	return pii.PersonRef(testPersonKey, id)
}

func hang(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or hangGuard passes.
func eventually(t testing.TB, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s (last error: %v)", what, hangGuard, last)
		}
		time.Sleep(pollEvery)
	}
}

func reloader(t testing.TB, dir string, id tlsconf.Identity) *tlsconf.Reloader {
	t.Helper()
	r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(dir, id), Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newCerts makes a CA and every certificate of the federation in a temp dir.
func newCerts(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := tlsconf.Init(dir, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// dial connects to addr as id, requiring the server to be want.
func dial(t testing.TB, certs, addr string, id, want tlsconf.Identity) *grpc.ClientConn {
	t.Helper()
	cfg := tlsconf.ClientConfigFor(reloader(t, certs, id), "localhost", want)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// runServer runs srv on lis until stop is called or the test ends; stop
// waits for it to finish.
func runServer(t testing.TB, srv *serve.Server, lis net.Listener, beforeStop func()) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, lis, "", 5*time.Second) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if beforeStop != nil {
				beforeStop()
			}
			if err := <-done; err != nil {
				t.Errorf("server: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// codeOf is the gRPC code of err with its message, for failure output.
func codeOf(err error) (codes.Code, string) {
	st := status.Convert(err)
	return st.Code(), st.Message()
}

func wantCode(t testing.TB, what string, err error, want codes.Code) {
	t.Helper()
	if got, msg := codeOf(err); got != want {
		t.Fatalf("%s: got %s (%q), want %s", what, got, msg, want)
	}
}

// testClock is a node's clock: real time plus an offset a test may advance.
type testClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

// ---------------------------------------------------------------------------
// A real province node: provincedb on its own database, sharing.Service,
// both gRPC services on a loopback mTLS server, optionally the Remote to a
// clearing service and the background workers.

type node struct {
	province, region string
	certs            string
	db               *pgtest.DB
	store            *provincedb.Store
	svc              *sharing.Service
	remote           *provinceapi.Remote
	conn             *grpc.ClientConn // to the clearing service (nil without one)
	addr             string
	clock            *testClock
	logs             *observer.ObservedLogs
	log              *zap.Logger
	metrics          *provinceapi.Metrics
	clientConn       *grpc.ClientConn                 // as the province's own systems
	client           provincev1.ProvinceServiceClient // the province's own systems
}

type nodeOptions struct {
	lis          net.Listener // default: a fresh loopback port
	clearingAddr string       // "" = no Remote (same-province only)
}

func startNode(t testing.TB, certs, province string, o nodeOptions) *node {
	t.Helper()
	n := &node{province: province, region: regionOf(t, province), certs: certs, clock: &testClock{}}
	core, logs := observer.New(zapcore.DebugLevel)
	n.logs, n.log = logs, zap.New(core).With(zap.String("node", province))
	n.db = pgtest.New(t, migrations.Province)
	var err error
	if n.store, err = provincedb.New(n.db.Pool, provincedb.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := n.store.BindProvince(context.Background(), province); err != nil {
		t.Fatal(err)
	}
	metrics := serve.NewMetrics("provincenode-test")
	if n.metrics, err = provinceapi.NewMetrics(metrics.Registry); err != nil {
		t.Fatal(err)
	}
	own := reloader(t, certs, provinceID(province))
	cfg := sharing.Config{Province: province, PersonKey: testPersonKey, Now: n.clock.now}
	if o.clearingAddr != "" {
		if n.conn, err = provinceapi.DialClearing(o.clearingAddr, own); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.conn.Close() })
		n.remote, err = provinceapi.NewRemote(provinceapi.RemoteOptions{
			Conn: n.conn, Province: province, Log: n.log, Metrics: n.metrics,
		})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Remote = n.remote
	}
	if n.svc, err = sharing.NewService(n.store, cfg); err != nil {
		t.Fatal(err)
	}
	apiOpts := provinceapi.Options{Service: n.svc, Clock: n.clock.now, Log: n.log}
	ps, err := provinceapi.NewProvinceServer(apiOpts)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := provinceapi.NewPeerServer(apiOpts)
	if err != nil {
		t.Fatal(err)
	}
	// Wired as cmd/provincenode does: every test runs with the audit trail.
	rec, err := auditlog.New(auditlog.Options{DB: n.db.Pool, Log: n.log, Clock: n.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	opts := serve.GRPCOptions(n.log, metrics, provinceapi.CallerName,
		append(append(provinceapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(own)))),
			provinceapi.AuditOptions(rec, n.svc)...)...)
	srv := serve.NewServer(n.log, metrics, opts...)
	provinceapi.Register(srv.GRPC, ps, peer)
	lis := o.lis
	if lis == nil {
		lis = listen(t)
	}
	n.addr = lis.Addr().String()
	runServer(t, srv, lis, nil)
	n.clientConn = n.dialAs(t, provinceID(province))
	n.client = provincev1.NewProvinceServiceClient(n.clientConn)
	return n
}

// dialAs connects to the node as id (checking that the server is the node).
func (n *node) dialAs(t testing.TB, id tlsconf.Identity) *grpc.ClientConn {
	return dial(t, n.certs, n.addr, id, provinceID(n.province))
}

// runWorkers starts the node's workers until the test ends (or stop).
func (n *node) runWorkers(t testing.TB) (stop func()) {
	t.Helper()
	w, err := provinceapi.NewWorkers(provinceapi.WorkerOptions{
		Service: n.svc, Outbox: n.store, Relay: n.store, Remote: n.remote, Conn: n.conn, Clock: n.clock.now,
		Log: n.log, Metrics: n.metrics, ReportBatch: 7, ReportInterval: 20 * time.Millisecond,
		SweepInterval: 50 * time.Millisecond, RelayInterval: 20 * time.Millisecond,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, RelayRetryMax: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

// register registers a person with the employee scheme and a personal account.
func (n *node) register(t testing.TB, id string) *provincev1.Person {
	t.Helper()
	resp, err := n.client.RegisterPerson(hang(t), &provincev1.RegisterPersonRequest{
		IdNumber: id, Scheme: provincev1.Scheme_SCHEME_EMPLOYEE,
		Mode:   provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT,
		Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: n.region, Insured: true,
	})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	return resp.GetPerson()
}

func (n *node) account(t testing.TB, ref string) *provincev1.Account {
	t.Helper()
	a, err := n.client.GetAccount(hang(t), &provincev1.GetAccountRequest{Person: byRef(ref)})
	if err != nil {
		t.Fatalf("account: %v", err)
	}
	return a
}

func (n *node) relationship(t testing.TB, id string) *provincev1.Relationship {
	t.Helper()
	r, err := n.client.GetRelationship(hang(t), &provincev1.GetRelationshipRequest{RelationshipId: id})
	if err != nil {
		t.Fatalf("relationship %s: %v", id, err)
	}
	return r
}

func (n *node) conserved(t testing.TB) {
	t.Helper()
	if err := n.svc.CheckConservation(context.Background()); err != nil {
		t.Fatalf("%s: %v", n.province, err)
	}
}

// seqs returns every outbox seq of the node and how many are unacknowledged.
func (n *node) seqs(t testing.TB) (all []int64, pending int) {
	t.Helper()
	rows, err := n.db.Pool.Query(context.Background(), `SELECT seq, acked_at IS NULL FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s int64
		var p bool
		if err := rows.Scan(&s, &p); err != nil {
			t.Fatal(err)
		}
		all = append(all, s)
		if p {
			pending++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return all, pending
}

// noIDNumbersLogged fails if any log line of the node carries one of ids.
func (n *node) noIDNumbersLogged(t testing.TB, ids ...string) {
	t.Helper()
	for _, e := range n.logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		text := e.Message + " " + string(b)
		for _, id := range ids {
			if strings.Contains(text, id) || strings.Contains(text, id[:17]) {
				t.Fatalf("%s logged an ID number: %s", n.province, text)
			}
		}
	}
}

func byRef(ref string) *provincev1.PersonId {
	return &provincev1.PersonId{Id: &provincev1.PersonId_PersonRef{PersonRef: ref}}
}

func byID(id string) *provincev1.PersonId {
	return &provincev1.PersonId{Id: &provincev1.PersonId_IdNumber{IdNumber: id}}
}

func party(province, ref string) *provincev1.PartyRef {
	return &provincev1.PartyRef{ProvinceCode: province, Id: &provincev1.PartyRef_PersonRef{PersonRef: ref}}
}

func partyID(province, id string) *provincev1.PartyRef {
	return &provincev1.PartyRef{ProvinceCode: province, Id: &provincev1.PartyRef_IdNumber{IdNumber: id}}
}

// ---------------------------------------------------------------------------
// A real clearing service: switch + reporting on its own clearing database,
// routing to the nodes of a nodes file; restartable on the same address.

type clearing struct {
	certs     string
	db        *pgtest.DB
	store     *clearingdb.Store
	nodesFile string
	reg       *clearingapi.Nodes
	addr      string
	log       *zap.Logger
	streamInt grpc.StreamServerInterceptor // optional, set before serve
	stop      func()
}

func startClearing(t testing.TB, certs string, lis net.Listener, nodes map[string]string, streamInt grpc.StreamServerInterceptor) *clearing {
	t.Helper()
	c := &clearing{certs: certs, log: zap.NewNop(), streamInt: streamInt}
	c.db = pgtest.New(t, migrations.Clearing)
	var err error
	if c.store, err = clearingdb.New(c.db.Pool, clearingdb.Config{}); err != nil {
		t.Fatal(err)
	}
	c.nodesFile = filepath.Join(t.TempDir(), "nodes.json")
	b, err := json.Marshal(nodes)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.nodesFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	c.reg, err = clearingapi.NewNodes(clearingapi.NodesOptions{File: c.nodesFile, TLS: reloader(t, certs, clearingID), Log: c.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.reg.Close() })
	c.addr = lis.Addr().String()
	c.serve(t, lis)
	return c
}

// serve runs a fresh switch and reporting service on lis.
func (c *clearing) serve(t testing.TB, lis net.Listener) {
	t.Helper()
	metrics := serve.NewMetrics("clearing-test")
	am, err := clearingapi.NewMetrics(metrics.Registry)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := clearingapi.NewSwitch(clearingapi.SwitchOptions{Nodes: c.reg, Store: c.store, Log: c.log, Metrics: am})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := clearingapi.NewReporting(clearingapi.ReportingOptions{Store: c.store, Log: c.log, Metrics: am})
	if err != nil {
		t.Fatal(err)
	}
	extra := append(clearingapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(reloader(t, c.certs, clearingID)))))
	rec, err := auditlog.New(auditlog.Options{DB: c.db.Pool, Log: c.log})
	if err != nil {
		t.Fatal(err)
	}
	extra = append(extra, clearingapi.AuditOptions(rec)...)
	if c.streamInt != nil {
		extra = append(extra, grpc.ChainStreamInterceptor(c.streamInt))
	}
	srv := serve.NewServer(c.log, metrics, serve.GRPCOptions(c.log, metrics, clearingapi.CallerName, extra...)...)
	if err := (clearingapi.Services{Switch: sw, Reporting: rep}).Register(srv.GRPC); err != nil {
		t.Fatal(err)
	}
	c.stop = runServer(t, srv, lis, rep.Shutdown)
}

// restart stops the clearing server and starts a new one on the same address.
func (c *clearing) restart(t testing.TB) {
	t.Helper()
	c.stop()
	var lis net.Listener
	eventually(t, "listen again on "+c.addr, func() (bool, error) {
		var err error
		lis, err = net.Listen("tcp", c.addr)
		return err == nil, err
	})
	c.serve(t, lis)
}

// receipts returns the seqs the clearing service received from province.
func (c *clearing) receipts(t testing.TB, province string) []int64 {
	t.Helper()
	rows, err := c.db.Pool.Query(context.Background(), `SELECT seq FROM report_receipts WHERE province = $1 ORDER BY seq`, province)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var s int64
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// federation is a clearing service and two province nodes.
type federation struct {
	certs    string
	clearing *clearing
	a, b     *node // a: henan (sharer), b: beijing (beneficiary)
}

func startFederation(t testing.TB, streamInt grpc.StreamServerInterceptor) *federation {
	t.Helper()
	f := &federation{certs: newCerts(t)}
	lisA, lisB, lisC := listen(t), listen(t), listen(t)
	f.clearing = startClearing(t, f.certs, lisC, map[string]string{
		henan: lisA.Addr().String(), beijing: lisB.Addr().String(),
	}, streamInt)
	f.a = startNode(t, f.certs, henan, nodeOptions{lis: lisA, clearingAddr: f.clearing.addr})
	f.b = startNode(t, f.certs, beijing, nodeOptions{lis: lisB, clearingAddr: f.clearing.addr})
	return f
}

// allReported waits until every outbox row of n is acknowledged and checks
// that the clearing service holds exactly n's seqs, each once.
func (f *federation) allReported(t testing.TB, n *node) {
	t.Helper()
	eventually(t, n.province+" outbox acknowledged", func() (bool, error) {
		_, pending := n.seqs(t)
		return pending == 0, fmt.Errorf("%d pending", pending)
	})
	all, _ := n.seqs(t)
	got := f.clearing.receipts(t, n.province)
	if fmt.Sprint(all) != fmt.Sprint(got) {
		t.Fatalf("%s: outbox seqs %v, clearing receipts %v", n.province, all, got)
	}
	rejects, err := f.clearing.store.Rejects(context.Background(), n.province)
	if err != nil || len(rejects) != 0 {
		t.Fatalf("%s: the clearing service rejected %+v (%v)", n.province, rejects, err)
	}
}
