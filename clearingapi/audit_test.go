package clearingapi_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/clearingapi"
	"gongji/clearingdb"
	"gongji/internal/auditlog"
	"gongji/internal/pgtest"
	"gongji/internal/pii"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/prepay"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
)

// clearingServices are the services of the clearing service, from their
// descriptors.
func clearingServices() []protoreflect.ServiceDescriptor {
	sds := clearingv1.File_gongji_clearing_v1_clearing_proto.Services()
	var out []protoreflect.ServiceDescriptor
	for i := 0; i < sds.Len(); i++ {
		out = append(out, sds.Get(i))
	}
	return out
}

// auditFixture is the whole clearing service (switch, reporting,
// statements, admin) over mTLS with the audit trail wired as cmd/clearing
// wires it, on a real clearing database, with test doubles of the Henan and
// Beijing nodes behind the switch, and a clock the test moves.
type auditFixture struct {
	certs string
	db    *pgtest.DB
	store *clearingdb.Store
	addr  string
	peers map[string]*testPeerNode

	mu    sync.Mutex
	now   time.Time
	conns map[tlsconf.Identity]*grpc.ClientConn
}

func (f *auditFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *auditFixture) setNow(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = t
}

func auditSetup(t *testing.T) *auditFixture {
	t.Helper()
	f := &auditFixture{certs: t.TempDir(), now: t0, peers: map[string]*testPeerNode{}, conns: map[tlsconf.Identity]*grpc.ClientConn{}}
	if err := tlsconf.Init(f.certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	f.db = pgtest.New(t, migrations.Clearing)
	var err error
	if f.store, err = clearingdb.New(f.db.Pool, clearingdb.Config{}); err != nil {
		t.Fatal(err)
	}
	nodes := map[string]string{}
	for _, code := range []string{henan, beijing} {
		f.peers[code] = startTestPeer(t, f.certs, code)
		nodes[code] = f.peers[code].addr
	}
	nodesFile := t.TempDir() + "/nodes.json"
	writeNodes(t, nodesFile, nodes)
	log := zap.NewNop()
	certs := reloader(t, f.certs, clearingID)
	reg, err := clearingapi.NewNodes(clearingapi.NodesOptions{File: nodesFile, TLS: certs, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	metrics := serve.NewMetrics("clearing-audit-test")
	am, err := clearingapi.NewMetrics(metrics.Registry)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := clearingapi.NewSwitch(clearingapi.SwitchOptions{Nodes: reg, Store: f.store, Clock: f.clock, Log: log, Metrics: am})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := clearingapi.NewReporting(clearingapi.ReportingOptions{Store: f.store, Clock: f.clock, Log: log, Metrics: am})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clearingapi.NewAdminServer(f.store, prepay.Config{}, f.clock, log)
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := clearingapi.NewStatementServer(f.store, f.clock, log)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := auditlog.New(auditlog.Options{DB: f.db.Pool, Log: log, Clock: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	opts := serve.GRPCOptions(log, metrics, clearingapi.CallerName,
		append(append(clearingapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(certs)))),
			clearingapi.AuditOptions(rec)...)...)
	srv := serve.NewServer(log, metrics, opts...)
	if err := (clearingapi.Services{Switch: sw, Reporting: rep, Statement: stmts, Admin: admin}).Register(srv.GRPC); err != nil {
		t.Fatal(err)
	}
	f.addr = runServer(t, srv, rep)
	return f
}

func (f *auditFixture) conn(t *testing.T, id tlsconf.Identity) *grpc.ClientConn {
	t.Helper()
	if f.conns[id] == nil {
		cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(
			tlsconf.ClientConfigFor(reloader(t, f.certs, id), "localhost", clearingID))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		f.conns[id] = cc
	}
	return f.conns[id]
}

func (f *auditFixture) rows(t *testing.T, reqID string) []auditlog.Record {
	t.Helper()
	rs, err := auditlog.List(context.Background(), f.db.Pool, auditlog.Filter{RequestID: reqID})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// fingerprint counts the rows of every table a clearing call can write
// (audit_records aside).
func (f *auditFixture) fingerprint(t *testing.T) string {
	t.Helper()
	var out string
	for _, table := range []string{"periods", "usages", "usage_keys", "report_receipts", "report_rejects", "switch_log",
		"journal_entries", "prepay_movements", "statements", "statement_disputes", "clearing_adjustments"} {
		var n int
		if err := f.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		out += fmt.Sprintf("%s=%d ", table, n)
	}
	return out
}

// unary calls a unary method as id under request id reqID.
func (f *auditFixture) unary(t *testing.T, id tlsconf.Identity, method string, req proto.Message, reqID string) error {
	t.Helper()
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	resp := dynamicpb.NewMessage(desc.(protoreflect.MethodDescriptor).Output())
	return f.conn(t, id).Invoke(metadata.AppendToOutgoingContext(hang(t), auditlog.RequestIDHeader, reqID), method, req, resp)
}

// report sends batches on one ReportUsage stream as id under request id
// reqID, each waiting for its ack, then closes the stream; it returns the
// stream's final error (nil after a clean close).
func (f *auditFixture) report(t *testing.T, id tlsconf.Identity, reqID string, batches ...*clearingv1.ReportBatch) error {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(hang(t), auditlog.RequestIDHeader, reqID)
	st, err := clearingv1.NewReportingServiceClient(f.conn(t, id)).ReportUsage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range batches {
		if err := st.Send(b); err != nil {
			break // the server ended the stream; Recv says why
		}
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	if err != nil && !strings.Contains(err.Error(), "EOF") {
		return err
	}
	return nil
}

// wantRows checks the audit rows of reqID as "actor|method|outcome|ref".
func (f *auditFixture) wantRows(t *testing.T, reqID string, want ...string) {
	t.Helper()
	var got []string
	for _, r := range f.rows(t, reqID) {
		got = append(got, strings.Join([]string{r.Actor, r.Method, r.Outcome, r.Ref}, "|"))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: audit rows\n%s\nwant\n%s", reqID, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

const (
	sw  = "/gongji.clearing.v1.SwitchService/"
	rp  = "/gongji.clearing.v1.ReportingService/"
	stm = "/gongji.clearing.v1.StatementService/"
	adm = "/gongji.clearing.v1.AdminService/"
)

// TestAuditEveryStateChangingMethod is generated from the service
// descriptors: every method of the four clearing services is classified
// (clearingapi.AuditPolicy), every state-changing one is called with a valid
// request in a month's scenario (routed calls, report batches, funding,
// close, statement answers, settlement, replenishment, a dispute
// resolution), and each call leaves exactly the audit rows it should — one,
// or one per report batch — with the caller's certificate identity, the
// method, the request id sent, the outcome and the ref. Read-only methods
// leave none; no row holds an ID number.
func TestAuditEveryStateChangingMethod(t *testing.T) {
	t.Parallel()
	f := auditSetup(t)
	policy := clearingapi.AuditPolicy()
	if un := policy.Unclassified(clearingServices()...); len(un) > 0 {
		t.Fatalf("methods missing from clearingapi.AuditPolicy: %v", un)
	}
	known := map[string]bool{}
	for _, sd := range clearingServices() {
		for i := 0; i < sd.Methods().Len(); i++ {
			known[auditlog.FullMethod(sd.Methods().Get(i))] = true
		}
	}
	for m := range policy {
		if !known[m] {
			t.Errorf("AuditPolicy names %s, which no service has", m)
		}
	}
	called := map[string]bool{}
	op, bj, hn := operatorID, provinceID(beijing), provinceID(henan)
	call := func(id tlsconf.Identity, method string, req proto.Message, reqID string, code codes.Code) {
		t.Helper()
		called[method] = true
		if err := f.unary(t, id, method, req, reqID); status.Code(err) != code {
			t.Fatalf("%s: %v, want %s", reqID, err, code)
		}
	}
	row := func(id tlsconf.Identity, method, outcome, ref string) string {
		return strings.Join([]string{id.String(), method, outcome, ref}, "|")
	}
	f.peers[henan].setQuota("R1", "100.00")

	// The switch: an approval, a refusal, a reversal, relayed commands and snapshots.
	call(bj, sw+"Authorize", &clearingv1.AuthorizeRequest{Debit: debit(t, "U1", "R1", beijing, "10.00"), PayerProvince: henan}, "sw-1", codes.OK)
	f.wantRows(t, "sw-1", row(bj, sw+"Authorize", "ok", "U1"))
	call(bj, sw+"Authorize", &clearingv1.AuthorizeRequest{Debit: debit(t, "U2", "R1", beijing, "500.00"), PayerProvince: henan}, "sw-2", codes.ResourceExhausted)
	f.wantRows(t, "sw-2", row(bj, sw+"Authorize", "refused: ResourceExhausted", "U2"))
	call(bj, sw+"AuthorizeReversal", &clearingv1.AuthorizeReversalRequest{PayerProvince: henan, Reversal: &provincev1.ReverseDebitRequest{
		ReversalKey: "RV1", UsageKey: "U1", Amount: "4.00", OccurredAt: timestamppb.New(t0.Add(-time.Minute)), PayeeProvince: beijing}}, "sw-3", codes.OK)
	f.wantRows(t, "sw-3", row(bj, sw+"AuthorizeReversal", "ok", "RV1"))
	call(bj, sw+"RelayRelationshipCommand", &clearingv1.RelayRelationshipCommandRequest{TargetProvince: henan,
		Command: &provincev1.ApplyRelationshipCommandRequest{Action: provincev1.RelationshipAction_RELATIONSHIP_ACTION_CONSENT,
			CommandKey: "c-1", OriginProvince: beijing, RelationshipId: "R1", By: provincev1.Side_SIDE_BENEFICIARY}}, "sw-4", codes.OK)
	f.wantRows(t, "sw-4", row(bj, sw+"RelayRelationshipCommand", "ok", "R1"))
	call(hn, sw+"RelayRelationshipSnapshot", &clearingv1.RelayRelationshipSnapshotRequest{TargetProvince: beijing,
		Relationship: withSnapshotFields(&provincev1.Relationship{RelationshipId: "R1", SharerRef: ref("s"), SharerProvince: henan, BeneficiaryRef: ref("b"),
			BeneficiaryProvince: beijing, Relation: provincev1.RelationType_RELATION_TYPE_SPOUSE,
			Status: provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE, Quota: "100.00", Used: "6.00", Version: 7}, regionOf(t, henan))}, "sw-5", codes.OK)
	f.wantRows(t, "sw-5", row(hn, sw+"RelayRelationshipSnapshot", "ok", "R1@7"))

	// Reporting: one row per batch, none for the stream; a resent batch is a replay.
	called[rp+"ReportUsage"] = true
	payer := func(seq int64, key, amount string) *clearingv1.UsageRecord {
		return usageRecord(t, seq, key, clearingv1.ReporterRole_REPORTER_ROLE_PAYER, henan, beijing, amount)
	}
	payee := func(seq int64, key, amount string) *clearingv1.UsageRecord {
		return usageRecord(t, seq, key, clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, amount)
	}
	b1 := &clearingv1.ReportBatch{BatchId: 1, Records: []*clearingv1.UsageRecord{payer(1, "U1", "10.00"), payer(2, "U3", "20.00")}}
	b2 := &clearingv1.ReportBatch{BatchId: 2, Records: []*clearingv1.UsageRecord{payer(3, "U4", "30.00")}}
	if err := f.report(t, hn, "rp-1", b1, b2); err != nil {
		t.Fatal(err)
	}
	f.wantRows(t, "rp-1", row(hn, rp+"ReportUsage", "ok", "batch 1 seq 1-2"), row(hn, rp+"ReportUsage", "ok", "batch 2 seq 3-3"))
	if err := f.report(t, hn, "rp-2", b1); err != nil {
		t.Fatal(err)
	}
	f.wantRows(t, "rp-2", row(hn, rp+"ReportUsage", "replayed", "batch 1 seq 1-2"))
	if err := f.report(t, bj, "rp-3", &clearingv1.ReportBatch{BatchId: 7, Records: []*clearingv1.UsageRecord{
		payee(5, "U1", "10.00"), payee(6, "U3", "20.00"), payee(7, "U4", "30.00")}}); err != nil {
		t.Fatal(err)
	}
	f.wantRows(t, "rp-3", row(bj, rp+"ReportUsage", "ok", "batch 7 seq 5-7"))

	// Operators and statements through a month.
	call(op, adm+"FundPrepay", &clearingv1.PrepayMovementRequest{ProvinceCode: henan, Amount: "1000.00", MovementKey: "f-1"}, "op-1", codes.OK)
	f.wantRows(t, "op-1", row(op, adm+"FundPrepay", "ok", "f-1"))
	f.setNow(f.store.Config().Settlement.CutOff(region.PeriodOf(t0)).Add(time.Hour))
	call(op, adm+"ClosePeriod", &clearingv1.PeriodRequest{Setlym: "202607"}, "op-2", codes.OK)
	f.wantRows(t, "op-2", row(op, adm+"ClosePeriod", "ok", "202607"))
	call(bj, stm+"ConfirmStatement", &clearingv1.ConfirmStatementRequest{Setlym: "202607", ConfirmKey: "bj-c"}, "st-1", codes.OK)
	f.wantRows(t, "st-1", row(bj, stm+"ConfirmStatement", "ok", "202607"))
	call(bj, stm+"ConfirmStatement", &clearingv1.ConfirmStatementRequest{Setlym: "202607", ConfirmKey: "bj-c"}, "st-2", codes.OK)
	f.wantRows(t, "st-2", row(bj, stm+"ConfirmStatement", "replayed", "202607"))
	call(hn, stm+"DisputeStatement", &clearingv1.DisputeStatementRequest{Setlym: "202607", DisputeKey: "hn-d",
		Items: []*clearingv1.DisputedItem{{UsageId: "U3", ClaimedAmount: "18.00", Reason: "refund not counted"}}}, "st-3", codes.OK)
	f.wantRows(t, "st-3", row(hn, stm+"DisputeStatement", "ok", "202607"))
	call(op, adm+"SettlePeriod", &clearingv1.PeriodRequest{Setlym: "202607"}, "op-3", codes.OK)
	f.wantRows(t, "op-3", row(op, adm+"SettlePeriod", "ok", "202607"))
	call(op, adm+"ReplenishPrepay", &clearingv1.PrepayMovementRequest{ProvinceCode: henan, Amount: "1.00", MovementKey: "r-1"}, "op-4", codes.OK)
	f.wantRows(t, "op-4", row(op, adm+"ReplenishPrepay", "ok", "r-1"))
	call(op, adm+"ResolveDispute", &clearingv1.ResolveDisputeRequest{Setlym: "202607", ProvinceCode: henan, UsageId: "U3",
		Accept: false, ResolutionKey: "res-1"}, "op-5", codes.OK)
	f.wantRows(t, "op-5", row(op, adm+"ResolveDispute", "ok", "202607/410000/U3"))

	// Read-only methods: no rows.
	for i, rc := range []struct {
		id     tlsconf.Identity
		method string
		req    proto.Message
	}{
		{bj, stm + "GetStatement", &clearingv1.GetStatementRequest{Setlym: "202607"}},
		{op, adm + "GetPeriodStatus", &clearingv1.PeriodRequest{Setlym: "202607"}},
		{op, adm + "ListPeriods", &clearingv1.ListPeriodsRequest{}},
		{op, adm + "GetPrepayStatus", &clearingv1.GetPrepayStatusRequest{}},
		{op, adm + "VerifyJournal", &clearingv1.VerifyJournalRequest{}},
	} {
		reqID := fmt.Sprintf("read-%d", i)
		if err := f.unary(t, rc.id, rc.method, rc.req, reqID); err != nil {
			t.Fatalf("%s: %v", rc.method, err)
		}
		f.wantRows(t, reqID)
	}

	for m := range known {
		if policy.Audited(m) && !called[m] {
			t.Errorf("state-changing method %s is not called by this test", m)
		}
	}
	rs, err := auditlog.List(context.Background(), f.db.Pool, auditlog.Filter{})
	if err != nil || len(rs) < 17 {
		t.Fatalf("%d audit rows, %v", len(rs), err)
	}
	for _, r := range rs {
		for _, s := range []string{r.Actor, r.Method, r.RequestID, r.Outcome, r.Ref} {
			for i := 0; i+pii.IDLen <= len(s); i++ {
				if pii.Validate(s[i:i+pii.IDLen]) == nil {
					t.Fatalf("audit row %+v holds an ID number", r)
				}
			}
		}
	}
}

// TestAuditFailedCalls: every state-changing method called with an invalid
// request by its rightful caller, or by a wrong identity, leaves exactly
// one audit row with the error's code and writes nothing else; a report
// stream refused before its first batch gets one row of its own, a batch
// refused inside a stream one row naming the batch.
func TestAuditFailedCalls(t *testing.T) {
	t.Parallel()
	f := auditSetup(t)
	policy := clearingapi.AuditPolicy()
	before := f.fingerprint(t)
	rightful := map[string]tlsconf.Identity{
		"SwitchService": provinceID(beijing), "ReportingService": provinceID(beijing),
		"StatementService": provinceID(beijing), "AdminService": operatorID,
	}
	wrong := map[string]tlsconf.Identity{
		"SwitchService": operatorID, "ReportingService": operatorID,
		"StatementService": operatorID, "AdminService": provinceID(beijing),
	}
	for _, sd := range clearingServices() {
		for i := 0; i < sd.Methods().Len(); i++ {
			md := sd.Methods().Get(i)
			method := auditlog.FullMethod(md)
			if md.IsStreamingClient() || md.IsStreamingServer() {
				continue // below
			}
			for _, who := range []struct {
				id      tlsconf.Identity
				outcome string
			}{{rightful[string(sd.Name())], "InvalidArgument"}, {wrong[string(sd.Name())], "PermissionDenied"}} {
				reqID := fmt.Sprintf("fail-%s-%s", who.id, md.Name())
				err := f.unary(t, who.id, method, dynamicpb.NewMessage(md.Input()), reqID)
				if !policy.Audited(method) {
					f.wantRows(t, reqID) // whatever the answer (a listing needs no argument)
					continue
				}
				f.wantRows(t, reqID, strings.Join([]string{who.id.String(), method, status.Code(err).String(), ""}, "|"))
				if status.Code(err).String() != who.outcome {
					t.Errorf("%s as %s: %v, want %s", method, who.id, err, who.outcome)
				}
			}
		}
	}
	// ReportUsage: refused before any batch (wrong identity), and a batch
	// with a record that cannot be acknowledged (seq 0).
	if err := f.report(t, operatorID, "fail-report-operator"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("report as the operator: %v", err)
	}
	f.wantRows(t, "fail-report-operator", strings.Join([]string{operatorID.String(), rp + "ReportUsage", "PermissionDenied", ""}, "|"))
	bad := &clearingv1.ReportBatch{BatchId: 9, Records: []*clearingv1.UsageRecord{
		usageRecord(t, 0, "U9", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "1.00")}}
	if err := f.report(t, provinceID(beijing), "fail-report-seq", bad); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("report with seq 0: %v", err)
	}
	f.wantRows(t, "fail-report-seq", strings.Join([]string{provinceID(beijing).String(), rp + "ReportUsage", "InvalidArgument", "batch 9 seq 0-0"}, "|"))

	if after := f.fingerprint(t); after != before {
		t.Fatalf("failed calls wrote:\nbefore %s\nafter  %s", before, after)
	}
}
