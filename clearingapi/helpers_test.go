package clearingapi_test

import (
	"context"
	"crypto/tls"
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
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/clearingapi"
	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/internal/pii"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// hangGuard bounds every client call of a test, so that a bug shows up as a
// failure instead of a hung test binary. It is never what a test asserts.
const hangGuard = time.Minute

// Provinces of the tests: the payer (sharer's province) and two payees.
const (
	henan   = "410000" // payer: holds the sharers' accounts and quotas
	beijing = "110000" // payee
	hainan  = "460000" // another payee, and "another province" in authz tests
)

var (
	clearingID = tlsconf.Identity{Kind: tlsconf.Clearing}
	operatorID = tlsconf.Identity{Kind: tlsconf.Operator}
	// t0 is the clearing clock in every test: fixed, so periods and the
	// occurred_at bounds are deterministic.
	t0 = time.Date(2026, time.July, 15, 10, 0, 0, 0, region.Shanghai)
)

func provinceID(code string) tlsconf.Identity {
	return tlsconf.Identity{Kind: tlsconf.Province, Province: code}
}

// withSnapshotFields fills what every authority snapshot carries besides the
// fields a test cares about — the sharer's region, who proposed, and the
// proposal, expiry and update times — so that the switch's checks of a relayed
// snapshot pass; it returns r.
func withSnapshotFields(r *provincev1.Relationship, sharerRegion string) *provincev1.Relationship {
	at := time.Date(2026, 7, 1, 9, 0, 0, 0, time.UTC)
	if r.SharerRegion == "" {
		r.SharerRegion = sharerRegion
	}
	if r.ProposedBy == provincev1.Side_SIDE_UNSPECIFIED {
		r.ProposedBy = provincev1.Side_SIDE_SHARER
	}
	if r.ProposedAt == nil {
		r.ProposedAt = timestamppb.New(at)
	}
	if r.ExpiresAt == nil {
		r.ExpiresAt = timestamppb.New(at.Add(7 * 24 * time.Hour))
	}
	if r.UpdatedAt == nil {
		r.UpdatedAt = timestamppb.New(at.Add(time.Hour))
	}
	return r
}

func regionOf(t testing.TB, province string) string {
	t.Helper()
	p, err := region.ParseProvince(province)
	if err != nil {
		t.Fatal(err)
	}
	return p.Regions[0].Code
}

// ref makes a person_ref-shaped pseudonym (32 lowercase hex) from a label.
func ref(label string) string {
	return pii.PersonRef([]byte("gongji-clearingapi-test-person-key"), label)
}

func hang(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	return ctx
}

// fixture is a real clearing gRPC server (serve.NewServer, mTLS on
// loopback) on a real clearing database, with in-process test doubles of
// the province nodes.
type fixture struct {
	certs     string
	store     *clearingdb.Store
	db        *pgtest.DB
	nodesFile string
	peers     map[string]*testPeerNode
	addr      string // the clearing service
	logs      *observer.ObservedLogs
	reg       *clearingapi.Nodes
	services  clearingapi.Services
	rep       *clearingapi.Reporting
	metrics   *serve.Metrics
}

type fixtureOptions struct {
	peers   []string          // provinces with a running node double
	extra   map[string]string // more nodes-file entries (e.g. a node that is down)
	timeout time.Duration     // switch RPC timeout (default config's)
}

func setup(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	f := &fixture{certs: t.TempDir(), peers: map[string]*testPeerNode{}}
	if err := tlsconf.Init(f.certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	f.db = pgtest.New(t, migrations.Clearing)
	var err error
	if f.store, err = clearingdb.New(f.db.Pool, clearingdb.Config{}); err != nil {
		t.Fatal(err)
	}

	nodes := map[string]string{}
	for _, code := range o.peers {
		p := startTestPeer(t, f.certs, code)
		f.peers[code] = p
		nodes[code] = p.addr
	}
	for code, addr := range o.extra {
		nodes[code] = addr
	}
	f.nodesFile = filepath.Join(t.TempDir(), "nodes.json")
	writeNodes(t, f.nodesFile, nodes)

	core, logs := observer.New(zapcore.DebugLevel)
	f.logs = logs
	log := zap.New(core)
	certs := reloader(t, f.certs, clearingID)
	f.reg, err = clearingapi.NewNodes(clearingapi.NodesOptions{File: f.nodesFile, TLS: certs, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.reg.Close() })

	metrics := serve.NewMetrics("clearing-test")
	f.metrics = metrics
	am, err := clearingapi.NewMetrics(metrics.Registry)
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return t0 }
	sw, err := clearingapi.NewSwitch(clearingapi.SwitchOptions{Nodes: f.reg, Store: f.store, Clock: now, Log: log,
		Metrics: am, RPCTimeout: o.timeout})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := clearingapi.NewReporting(clearingapi.ReportingOptions{Store: f.store, Clock: now, Log: log, Metrics: am})
	if err != nil {
		t.Fatal(err)
	}
	opts := serve.GRPCOptions(log, metrics, clearingapi.CallerName,
		append(clearingapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(certs))))...)
	srv := serve.NewServer(log, metrics, opts...)
	f.services, f.rep = clearingapi.Services{Switch: sw, Reporting: rep}, rep
	if err := f.services.Register(srv.GRPC); err != nil {
		t.Fatal(err)
	}
	f.addr = runServer(t, srv, rep)
	return f
}

// metric returns the value of a counter of the fixture's registry with the
// given labels (0 when it has not been counted).
func (f *fixture) metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := f.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// runServer runs srv on a free loopback port until the test ends.
func runServer(t *testing.T, srv *serve.Server, rep *clearingapi.Reporting) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, lis, "", 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		rep.Shutdown()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return lis.Addr().String()
}

func writeNodes(t *testing.T, path string, nodes map[string]string) {
	t.Helper()
	b, err := json.Marshal(nodes)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
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

// dialTLS opens a client connection to the clearing service with cfg.
func (f *fixture) dialTLS(t testing.TB, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// dial connects as id, checking that the server is the clearing service.
func (f *fixture) dial(t testing.TB, id tlsconf.Identity) *grpc.ClientConn {
	return f.dialTLS(t, tlsconf.ClientConfigFor(reloader(t, f.certs, id), "localhost", clearingID))
}

func (f *fixture) switchClient(t testing.TB, province string) clearingv1.SwitchServiceClient {
	return clearingv1.NewSwitchServiceClient(f.dial(t, provinceID(province)))
}

// switchRows returns the switch log rows for key, routed to (or for
// snapshots, from) payer.
func (f *fixture) switchRows(t testing.TB, payer, key string) []clearingdb.SwitchEntry {
	t.Helper()
	rows, err := f.store.SwitchLogForKey(context.Background(), payer, key, t0)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

// debit builds a valid cross-province debit from payee to payer.
func debit(t testing.TB, key, relID, payee, amount string) *provincev1.DebitRequest {
	return &provincev1.DebitRequest{
		UsageKey: key, RelationshipId: relID, Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY, Amount: amount,
		PayeeProvince: payee, PayeeRegionCode: regionOf(t, payee), OccurredAt: timestamppb.New(t0.Add(-time.Hour)),
		BeneficiaryRef: ref("beneficiary-" + relID),
	}
}

// ---------------------------------------------------------------------------
// testPeerNode is a TEST DOUBLE of a province node's PeerService, not the
// province node: a small deterministic in-memory quota per relationship,
// idempotent by key, enough to watch the switch route, replay, refuse and
// retry. It accepts only the clearing service's certificate, as a real node
// does. Production province nodes live in provinceapi/provincedb.
type testPeerNode struct {
	provincev1.UnimplementedPeerServiceServer
	province, region, addr string

	mu sync.Mutex
	// failBefore: answer this many calls Unavailable before doing anything.
	failBefore int
	// failAfter: apply this many calls, then answer Unavailable anyway (as if
	// the connection broke after the commit).
	failAfter int
	// block: when non-nil, Debit waits for it to close (or its context).
	block     chan struct{}
	quota     map[string]money.Yuan // relationship id → remaining
	debits    map[string]debitEntry
	reversals map[string]reversalEntry
	commands  map[string]*provincev1.Relationship
	versions  map[string]int64
	calls     []string // "Debit:key", in arrival order
	callers   []string // the verified identity of every caller
}

type debitEntry struct {
	req  *provincev1.DebitRequest
	resp *provincev1.DebitResponse
}

type reversalEntry struct {
	req  *provincev1.ReverseDebitRequest
	resp *provincev1.ReverseResponse
}

func startTestPeer(t *testing.T, certs, code string) *testPeerNode {
	t.Helper()
	p := &testPeerNode{
		province: code, region: regionOf(t, code),
		quota: map[string]money.Yuan{}, debits: map[string]debitEntry{}, reversals: map[string]reversalEntry{},
		commands: map[string]*provincev1.Relationship{}, versions: map[string]int64{},
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = lis.Addr().String()
	onlyClearing := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, err := tlsconf.IdentityFromContext(ctx)
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		p.mu.Lock()
		p.callers = append(p.callers, id.String())
		p.mu.Unlock()
		if id != clearingID {
			return nil, status.Error(codes.PermissionDenied, "PeerService is for the clearing service only")
		}
		return h(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(reloader(t, certs, provinceID(code))))),
		grpc.UnaryInterceptor(onlyClearing))
	provincev1.RegisterPeerServiceServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return p
}

func (p *testPeerNode) setQuota(relID, amount string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.quota[relID] = money.MustParse(amount)
}

func (p *testPeerNode) remaining(relID string) money.Yuan {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.quota[relID]
}

func (p *testPeerNode) callLog() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...)
}

func (p *testPeerNode) callerLog() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.callers...)
}

// enter records a call and decides whether to fail it up front.
func (p *testPeerNode) enter(name string) error {
	p.calls = append(p.calls, name)
	if p.failBefore > 0 {
		p.failBefore--
		return status.Error(codes.Unavailable, "test double: not now")
	}
	return nil
}

// leave turns a success into Unavailable while failAfter lasts.
func (p *testPeerNode) leave() error {
	if p.failAfter > 0 {
		p.failAfter--
		return status.Error(codes.Unavailable, "test double: connection lost after commit")
	}
	return nil
}

func (p *testPeerNode) Debit(ctx context.Context, req *provincev1.DebitRequest) (*provincev1.DebitResponse, error) {
	p.mu.Lock()
	block := p.block
	p.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.enter("Debit:" + req.GetUsageKey()); err != nil {
		return nil, err
	}
	if prev, ok := p.debits[req.GetUsageKey()]; ok {
		if !proto.Equal(prev.req, req) {
			return nil, status.Errorf(codes.AlreadyExists, "usage key %s was used for another request", req.GetUsageKey())
		}
		resp := proto.Clone(prev.resp).(*provincev1.DebitResponse)
		resp.Replayed = true
		return resp, p.leave()
	}
	rem, ok := p.quota[req.GetRelationshipId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "relationship %s not found", req.GetRelationshipId())
	}
	amount, err := money.ParsePositive(req.GetAmount())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if amount.GreaterThan(rem) {
		return nil, status.Errorf(codes.ResourceExhausted, "usage %s exceeds the remaining quota %s", amount, rem)
	}
	rem = rem.Sub(amount)
	p.quota[req.GetRelationshipId()] = rem
	resp := &provincev1.DebitResponse{
		UsageKey: req.GetUsageKey(), Amount: amount.String(), QuotaRemaining: rem.String(),
		PayerProvince: p.province, PayerRegion: p.region, SharerRef: ref("sharer-" + req.GetRelationshipId()),
		BeneficiaryRef: req.GetBeneficiaryRef(), RelationshipId: req.GetRelationshipId(), Kind: req.GetKind(),
		OccurredAt: req.GetOccurredAt(),
	}
	p.debits[req.GetUsageKey()] = debitEntry{req: proto.Clone(req).(*provincev1.DebitRequest), resp: resp}
	return proto.Clone(resp).(*provincev1.DebitResponse), p.leave()
}

func (p *testPeerNode) ReverseDebit(_ context.Context, req *provincev1.ReverseDebitRequest) (*provincev1.ReverseResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.enter("ReverseDebit:" + req.GetReversalKey()); err != nil {
		return nil, err
	}
	if prev, ok := p.reversals[req.GetReversalKey()]; ok {
		if !proto.Equal(prev.req, req) {
			return nil, status.Errorf(codes.AlreadyExists, "reversal key %s was used for another request", req.GetReversalKey())
		}
		resp := proto.Clone(prev.resp).(*provincev1.ReverseResponse)
		resp.Replayed = true
		return resp, p.leave()
	}
	d, ok := p.debits[req.GetUsageKey()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "usage %s not found", req.GetUsageKey())
	}
	amount, err := money.ParsePositive(req.GetAmount())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	reversed := amount
	for _, r := range p.reversals {
		if r.req.GetUsageKey() == req.GetUsageKey() {
			reversed = reversed.Add(money.MustParse(r.resp.GetAmount()))
		}
	}
	if reversed.GreaterThan(money.MustParse(d.resp.GetAmount())) {
		return nil, status.Errorf(codes.FailedPrecondition, "reversals would exceed usage %s", req.GetUsageKey())
	}
	rel := d.req.GetRelationshipId()
	p.quota[rel] = p.quota[rel].Add(amount)
	resp := &provincev1.ReverseResponse{
		ReversalKey: req.GetReversalKey(), UsageKey: req.GetUsageKey(), Amount: amount.String(),
		ReversedTotal: reversed.String(), QuotaRemaining: p.quota[rel].String(),
	}
	p.reversals[req.GetReversalKey()] = reversalEntry{req: proto.Clone(req).(*provincev1.ReverseDebitRequest), resp: resp}
	return proto.Clone(resp).(*provincev1.ReverseResponse), p.leave()
}

func (p *testPeerNode) ApplyRelationshipCommand(_ context.Context, req *provincev1.ApplyRelationshipCommandRequest) (*provincev1.Relationship, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.enter("ApplyRelationshipCommand:" + req.GetCommandKey()); err != nil {
		return nil, err
	}
	if prev, ok := p.commands[req.GetCommandKey()]; ok {
		return proto.Clone(prev).(*provincev1.Relationship), p.leave()
	}
	id := req.GetRelationshipId()
	rel := &provincev1.Relationship{
		RelationshipId: id, SharerProvince: p.province, SharerRegion: p.region,
		BeneficiaryProvince: req.GetOriginProvince(), Status: provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE,
		Relation: provincev1.RelationType_RELATION_TYPE_PARENT, Quota: "0.00", Used: "0.00",
	}
	withSnapshotFields(rel, p.region)
	if req.GetAction() == provincev1.RelationshipAction_RELATIONSHIP_ACTION_PROPOSE {
		rel.RelationshipId = "R" + strings.Repeat("0", 23) + fmt.Sprint(len(p.commands)%10)
		rel.Status = provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING
		rel.SharerRef = req.GetProposal().GetSharer().GetPersonRef()
		rel.BeneficiaryRef = req.GetProposal().GetBeneficiary().GetPersonRef()
	}
	p.versions[rel.RelationshipId]++
	rel.Version = p.versions[rel.RelationshipId]
	p.commands[req.GetCommandKey()] = rel
	return proto.Clone(rel).(*provincev1.Relationship), p.leave()
}

func (p *testPeerNode) ApplyRelationshipSnapshot(_ context.Context, req *provincev1.ApplyRelationshipSnapshotRequest) (*provincev1.ApplyRelationshipSnapshotResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rel := req.GetRelationship()
	if err := p.enter(fmt.Sprintf("ApplyRelationshipSnapshot:%s@%d", rel.GetRelationshipId(), rel.GetVersion())); err != nil {
		return nil, err
	}
	have := p.versions[rel.GetRelationshipId()]
	if rel.GetVersion() <= have {
		return &provincev1.ApplyRelationshipSnapshotResponse{Applied: false, Version: have}, p.leave()
	}
	p.versions[rel.GetRelationshipId()] = rel.GetVersion()
	return &provincev1.ApplyRelationshipSnapshotResponse{Applied: true, Version: rel.GetVersion()}, p.leave()
}
