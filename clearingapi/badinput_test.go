package clearingapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/audit"
	"gongji/clearingapi"
	"gongji/clearingdb"
	"gongji/internal/auditlog"
	"gongji/internal/pgtest"
	"gongji/internal/pii"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/money"
	"gongji/prepay"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/settlement"
)

// The bad-input table of the clearing service: hostile values in every field
// of every method of every service in gongji.clearing.v1, found by iterating
// the file descriptor. A method without a case, or a request field that no
// case names, fails the test, so a new RPC or field cannot go untested.

// biUTF8Marker stands in for invalid UTF-8 while a request is built: the
// proto library refuses to encode invalid strings, so the marker's bytes are
// replaced in the encoded request by biInvalidUTF8 (same length).
const biUTF8Marker = "~~UTF8~~"

var biInvalidUTF8 = []byte{0xff, 0xfe, 0xfd, 0xc3, 0x28, 0xa0, 0xa1, 0xe2}

// biRawCodec sends already-encoded bytes as they are (for invalid UTF-8) and
// decodes answers normally.
type biRawCodec struct{}

type biRaw []byte

func (biRawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(biRaw))}, nil
}

func (biRawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

func (biRawCodec) Name() string { return "proto" }

// biIDNumber builds a valid GB 11643-1999 ID number.
func biIDNumber(t testing.TB, addr, birth, seq string) string {
	t.Helper()
	c, err := pii.CheckDigit(addr + birth + seq)
	if err != nil {
		t.Fatal(err)
	}
	return addr + birth + seq + string(c)
}

// biHostile returns the hostile strings of a field kind. Every one must be
// refused. Kinds ending in "?" are optional: the empty string is valid there.
func biHostile(t testing.TB, kind string) []string {
	optional := strings.HasSuffix(kind, "?")
	kind = strings.TrimSuffix(kind, "?")
	huge := strings.Repeat("9", 100_000)
	common := []string{huge, biUTF8Marker}
	if !optional {
		common = append(common, "")
	}
	// An ID number typed into the wrong field must be refused, and not
	// echoed. Keys are no exception: they are logged, stored and exported
	// in clear, so a key never carries an ID number, whole or within.
	id := biIDNumber(t, "410105", "19800101", "777")
	common = append(common, id)
	switch kind {
	case "key":
		return append(common, strings.Repeat("k", 65), "two words", "ключ", "a\x00b", "tab\tkey",
			"k-"+id, id+"-1", "u:"+biIDNumber(t, "110101", "19900101", "123")+":2026")
	case "relid":
		return append(common, "R"+strings.Repeat("A", 24), "X"+strings.Repeat("a", 24), "R"+strings.Repeat("a", 25),
			"R"+strings.Repeat("a", 23), "R"+strings.Repeat("g", 24), "two words")
	case "amount": // positive, at most two decimals, NUMERIC(18,2)
		return append(common, "0", "0.00", "-1.00", "NaN", "Inf", "1e9", "1.234", " 1.00", "1,00", "0x10",
			"10000000000000000.00", "١٢", "+-1")
	case "signed": // any sign, zero allowed
		return append(common, "NaN", "-Inf", "1e9", "1.234", "-0.001", " 1.00", "1,00", "0x10", "10000000000000000.00",
			"-10000000000000000.00", "١٢", "+-1", "--1", "1.2.3")
	case "adjustment": // signed, not zero
		return append(biHostile(t, "signed?"), "0", "0.00", "-0.00")
	case "quota": // zero or more
		out := biHostile(t, "signed")
		if optional {
			out = biHostile(t, "signed?")
		}
		return append(out, "-1.00", "-0.01")
	case "province":
		return append(common, "41000", "999999", "410100", "abcdef", "4100000", "-41000", "４１００００")
	case "region-bj": // a pooling region of Beijing
		return append(common, "999999", regionOf(t, henan), "110000", "11010", "1101000", "abcdef")
	case "region-hn": // a pooling region of Henan
		return append(common, "999999", regionOf(t, beijing), "410000", "41010", "4101000", "abcdef")
	case "ingest-ref": // a reported ref: 1..64 of [0-9A-Za-z_-], never an ID number
		return append(common, strings.Repeat("a", 65), "two words", "a.b", "ключ", "ref_"+id, id+"_x")
	case "ref": // a person_ref: 32 lowercase hex
		return append(common, strings.Repeat("A", 32), strings.Repeat("a", 31), strings.Repeat("a", 33),
			strings.Repeat("g", 32), "two words")
	case "period":
		return append(common, "2026-07", "202613", "202600", "199912", "300001", "20260", "2026071", "２０２６０７",
			"-20260", "2026 7", "2O2607")
	case "text": // free text of 1..500 bytes
		return []string{"", strings.Repeat("x", settlement.DisputeReasonLenMax+1), biUTF8Marker, "a\x00b", huge}
	}
	t.Fatalf("unknown kind %s", kind)
	return nil
}

// biField is a request field: a dotted path (list elements by index, e.g.
// items.0.reason) and its kind:
//
//   - a kind of biHostile: those strings, each refused;
//   - "caller:CODE": a field that must name the calling province CODE: any
//     other value (hostile or another province) is PermissionDenied;
//   - "enum", "time", "time?" (optional), "message" (must be present),
//     "version" (int64 ≥ 1), "seq" (int64 > 0), "items" (1..10,000),
//     "records" (1..5,000 per batch);
//   - "any": every value is valid (a bool, an id chosen by the caller);
//   - "routed": the switch passes the field on to the target node without
//     looking at it (the switch holds no domain rules; the node decides and
//     its refusal is passed back). The nodes' PeerService checks these
//     fields: provinceapi/peer_badinput_test.go. Not sent hostile here;
//   - "unread": the method does not read the field in this case (documented
//     where it is listed); not sent hostile.
//
// name is what the refusal must mention; default the path's last element.
type biField struct{ path, kind, name string }

// biCase is one base request of a method (valid as is) and its fields.
type biCase struct {
	method string // "gongji.clearing.v1.SwitchService.Authorize"
	as     tlsconf.Identity
	req    proto.Message
	out    proto.Message
	fields []biField
}

func biHostileTimes(now time.Time) []*timestamppb.Timestamp {
	return []*timestamppb.Timestamp{
		{Seconds: -62135596801}, {Seconds: 1, Nanos: 2_000_000_000},
		timestamppb.New(time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC)),
		timestamppb.New(time.Date(3000, 1, 2, 0, 0, 0, 0, time.UTC)),
		timestamppb.New(now.Add(72 * time.Hour)),
	}
}

// biVariants are the hostile values of f (nil: clear the field) and the
// code a call with one of them must end with.
func biVariants(t testing.TB, f biField, now time.Time, base proto.Message) ([]*protoreflect.Value, codes.Code) {
	var out []*protoreflect.Value
	str := func(ss ...string) {
		for _, s := range ss {
			v := protoreflect.ValueOfString(s)
			out = append(out, &v)
		}
	}
	i64 := func(ns ...int64) {
		for _, n := range ns {
			v := protoreflect.ValueOfInt64(n)
			out = append(out, &v)
		}
	}
	switch kind, arg, _ := strings.Cut(f.kind, ":"); kind {
	case "caller":
		str(append(biHostile(t, "province"), hainan, map[bool]string{true: henan, false: beijing}[arg != henan])...)
		return out, codes.PermissionDenied
	case "other":
		// Another provincial unit than the caller's own (arg).
		str(append(biHostile(t, "province"), arg)...)
	case "nonempty":
		str("X", "BU2")
	case "idnumber":
		// ID numbers never leave their province: any, valid or not.
		str(append(biHostile(t, "key"), biIDNumber(t, "410105", "19800101", "777"), biIDNumber(t, "110101", "19900101", "123"))...)
	case "message":
		return []*protoreflect.Value{nil}, codes.InvalidArgument
	case "enum", "enum?":
		for _, e := range []int32{0, 99, -1} {
			if e == 0 && kind == "enum?" {
				continue
			}
			v := protoreflect.ValueOfEnum(protoreflect.EnumNumber(e))
			out = append(out, &v)
		}
	case "time", "time?":
		if kind == "time" {
			out = append(out, nil)
		}
		for _, ts := range biHostileTimes(now) {
			v := protoreflect.ValueOfMessage(ts.ProtoReflect())
			out = append(out, &v)
		}
	case "btime", "btime?":
		// A time the caller's node keeps (a relationship's expiry lies in the
		// future by design): the hostile times but the one ahead of the clock.
		if kind == "btime" {
			out = append(out, nil)
		}
		hostile := biHostileTimes(now)
		for _, ts := range hostile[:len(hostile)-1] {
			v := protoreflect.ValueOfMessage(ts.ProtoReflect())
			out = append(out, &v)
		}
	case "version":
		i64(0, -1, math.MinInt64)
	case "seq":
		i64(0, -1, math.MinInt64)
	case "items", "records":
		// The list emptied, and one over its limit (copies of the first element).
		out = append(out, nil)
		n := settlement.DisputedItemsMax + 1
		if kind == "records" {
			n = clearingapi.DefaultReportBatchRecordsMax + 1
			out = out[:0] // an empty batch is valid: nothing to store
		}
		fd := base.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(f.path))
		list := base.ProtoReflect().New().Mutable(fd).List()
		first := base.ProtoReflect().Get(fd).List().Get(0).Message().Interface()
		for i := 0; i < n; i++ {
			list.Append(protoreflect.ValueOfMessage(proto.Clone(first).ProtoReflect()))
		}
		v := protoreflect.ValueOfList(list)
		out = append(out, &v)
	case "any", "unread", "routed":
		return nil, codes.OK
	default:
		str(biHostile(t, f.kind)...)
	}
	return out, codes.InvalidArgument
}

// biMutate sets (or clears, for nil) the field at path of m; numeric path
// elements index lists.
func biMutate(m protoreflect.Message, path string, v *protoreflect.Value) {
	parts := strings.Split(path, ".")
	for i := 0; i < len(parts)-1; i++ {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(parts[i]))
		if fd.IsList() {
			idx, _ := strconv.Atoi(parts[i+1])
			i++
			m = m.Mutable(fd).List().Get(idx).Message()
			continue
		}
		m = m.Mutable(fd).Message()
	}
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(parts[len(parts)-1]))
	if v == nil {
		m.Clear(fd)
		return
	}
	m.Set(fd, *v)
}

// biLeaves lists the leaf paths of a request type (Timestamps are leaves;
// list elements have no index), the fields a case table must name.
func biLeaves(md protoreflect.MessageDescriptor, prefix string, depth int) []string {
	var out []string
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		p := prefix + string(fd.Name())
		if fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() != "google.protobuf.Timestamp" && depth < 6 {
			out = append(out, biLeaves(fd.Message(), p+".", depth+1)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// biNormal drops list indexes from a path.
func biNormal(path string) string {
	var keep []string
	for _, p := range strings.Split(path, ".") {
		if _, err := strconv.Atoi(p); err != nil {
			keep = append(keep, p)
		}
	}
	return strings.Join(keep, ".")
}

// biFingerprint is every table of the database with its row count and a
// hash of its rows: any insert, update or delete changes it. The audit trail
// is left out: it records every state-changing call, refused ones too
// (biAuditRefusals checks those rows).
func biFingerprint(t testing.TB, pool *pgxpool.Pool, skip ...string) map[string]string {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, tb := range tables {
		if slices.Contains(skip, tb) || tb == "audit_records" {
			continue
		}
		var n int64
		var h string
		q := fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(t::text, E'\n' ORDER BY t::text)), '') FROM %q t`, tb)
		if err := pool.QueryRow(ctx, q).Scan(&n, &h); err != nil {
			t.Fatalf("%s: %v", tb, err)
		}
		out[tb] = fmt.Sprintf("%d/%s", n, h)
	}
	return out
}

// biAuditHead is the last audit_records id (0 when there is none).
func biAuditHead(t testing.TB, pool *pgxpool.Pool) int64 {
	t.Helper()
	var id int64
	if err := pool.QueryRow(context.Background(), `SELECT coalesce(max(id), 0) FROM audit_records`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// biAuditRefusals fails if an audit row written after since records a call
// as done (ok, replayed), except a report batch: one with rejected records
// is acknowledged, and that is its audit row's outcome. It returns the rows.
func biAuditRefusals(t testing.TB, pool *pgxpool.Pool, since int64) int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT method, outcome FROM audit_records WHERE id > $1`, since)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	count := 0
	for rows.Next() {
		var method, outcome string
		if err := rows.Scan(&method, &outcome); err != nil {
			t.Fatal(err)
		}
		count++
		if (outcome == "ok" || outcome == "replayed") && method != clearingv1.ReportingService_ReportUsage_FullMethodName {
			t.Errorf("audit trail records a hostile call of %s as %s", method, outcome)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return count
}

// biDiff names the tables whose fingerprint differs.
func biDiff(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, fmt.Sprintf("%s (%s → %s)", k, v, b[k]))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k+" (new)")
		}
	}
	sort.Strings(out)
	return out
}

// biClock is the fixture's settable clock.
type biClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *biClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *biClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// biFixture is every clearing service (switch, reporting, statements with
// the export, admin) on one server with the production server options, on a
// real clearing database, with test doubles of the Henan and Beijing nodes.
type biFixture struct {
	certs string
	db    *pgtest.DB
	store *clearingdb.Store
	addr  string
	clock *biClock
	peers map[string]*testPeerNode
	conns map[tlsconf.Identity]*grpc.ClientConn
}

func (f *biFixture) conn(t *testing.T, id tlsconf.Identity) *grpc.ClientConn {
	t.Helper()
	if cc, ok := f.conns[id]; ok {
		return cc
	}
	cc := (&fixture{certs: f.certs, addr: f.addr}).dial(t, id)
	f.conns[id] = cc
	return cc
}

// biJuly: July 2026 is closed and settled, the statements are issued and
// still answerable; August is open. The clock stands an hour after close.
var biJuly, _ = region.ParsePeriod("202607")

func biSetup(t *testing.T) *biFixture {
	t.Helper()
	ctx := context.Background()
	f := &biFixture{certs: t.TempDir(), peers: map[string]*testPeerNode{}, conns: map[tlsconf.Identity]*grpc.ClientConn{}}
	if err := tlsconf.Init(f.certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	f.db = pgtest.New(t, migrations.Clearing)
	var err error
	if f.store, err = clearingdb.New(f.db.Pool, clearingdb.Config{}); err != nil {
		t.Fatal(err)
	}
	closeAt := biJuly.CutOff(f.store.Config().Settlement.CutOffGrace).Add(time.Hour)
	f.clock = &biClock{now: time.Date(2026, time.July, 20, 10, 0, 0, 0, region.Shanghai)}

	// July: Henan's sharers' usages in Beijing and back, both sides reported.
	for i, prov := range []string{henan, beijing} {
		if _, err := f.store.FundPrepay(ctx, clearingdb.PrepayMovement{Province: prov, Amount: money.MustParse("1000.00"),
			Key: fmt.Sprintf("bi-fund-%d", i)}, f.clock.Now()); err != nil {
			t.Fatal(err)
		}
	}
	seq := map[string]int64{}
	for _, u := range []struct{ key, payer, payee, amount string }{
		{"BU1", henan, beijing, "100.00"}, {"BU2", beijing, henan, "30.00"}, {"BU3", henan, beijing, "12.50"},
	} {
		for _, role := range []clearingdb.Role{clearingdb.RolePayer, clearingdb.RolePayee} {
			from := u.payer
			if role == clearingdb.RolePayee {
				from = u.payee
			}
			seq[from]++
			r := clearingdb.Record{Seq: seq[from], Kind: clearingdb.RecordUsage, Role: role, UsageKey: u.key, UsageKind: "PHARMACY",
				PayerProvince: u.payer, PayerRegion: regionOf(t, u.payer), PayeeProvince: u.payee, PayeeRegion: regionOf(t, u.payee),
				Amount: u.amount, OccurredAt: f.clock.Now(), SharerRef: ref("s" + u.key), BeneficiaryRef: ref("b" + u.key),
				RelationshipID: "R" + strings.Repeat("0", 23) + "1"}
			if ack, err := f.store.IngestBatch(ctx, from, []clearingdb.Record{r}, f.clock.Now()); err != nil || len(ack.Rejected) > 0 {
				t.Fatalf("ingest %s: %+v, %v", u.key, ack, err)
			}
		}
	}
	f.clock.set(closeAt)
	if _, err := f.store.ClosePeriod(ctx, biJuly, closeAt); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.SettlePeriod(ctx, biJuly, prepay.Config{}, closeAt); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.EnsurePeriod(ctx, biJuly.Next(), closeAt); err != nil {
		t.Fatal(err)
	}
	// Henan has disputed BU1: the operator's ResolveDispute has an item.
	if _, err := f.store.DisputeStatement(ctx, biJuly, henan, []settlement.DisputedItem{
		{UsageID: "BU1", ClaimedAmount: money.MustParse("90.00"), Reason: "partly refunded"}}, "bi-dispute-hn", closeAt); err != nil {
		t.Fatal(err)
	}
	f.clock.set(closeAt.Add(time.Hour))

	for _, code := range []string{henan, beijing} {
		f.peers[code] = startTestPeer(t, f.certs, code)
	}
	nodesFile := t.TempDir() + "/nodes.json"
	writeNodes(t, nodesFile, map[string]string{henan: f.peers[henan].addr, beijing: f.peers[beijing].addr})
	log := zap.NewNop()
	certs := reloader(t, f.certs, clearingID)
	reg, err := clearingapi.NewNodes(clearingapi.NodesOptions{File: nodesFile, TLS: certs, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	metrics := serve.NewMetrics("clearing-badinput")
	am, err := clearingapi.NewMetrics(metrics.Registry)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := clearingapi.NewSwitch(clearingapi.SwitchOptions{Nodes: reg, Store: f.store, Clock: f.clock.Now, Log: log, Metrics: am})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := clearingapi.NewReporting(clearingapi.ReportingOptions{Store: f.store, Clock: f.clock.Now, Log: log, Metrics: am})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clearingapi.NewAdminServer(f.store, prepay.Config{}, f.clock.Now, log)
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := clearingapi.NewStatementServer(f.store, f.clock.Now, log)
	if err != nil {
		t.Fatal(err)
	}
	key, err := audit.ParsePseudonymKey(strings.Repeat("5a", 32))
	if err != nil {
		t.Fatal(err)
	}
	exp, err := clearingapi.NewExportServer(clearingapi.ExportServerOptions{Store: f.store, Key: key, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	stmts.SetExport(exp)
	// Wired as cmd/clearing does, the audit trail included.
	rec, err := auditlog.New(auditlog.Options{DB: f.db.Pool, Log: log, Clock: f.clock.Now})
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

// biInvoke sends raw (an encoded request of c's method) as c.as and returns
// the answer's error; a server stream is read to its end, a client stream
// (ReportUsage) gets one message and its first answer (into c.out).
func (f *biFixture) biInvoke(t *testing.T, c biCase, raw []byte, out proto.Message) error {
	t.Helper()
	md := biMethod(t, c.method)
	name := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	cc := f.conn(t, c.as)
	ctx := hang(t)
	codec := grpc.ForceCodecV2(biRawCodec{})
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		return cc.Invoke(ctx, name, biRaw(raw), out, codec)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: md.IsStreamingClient(), ServerStreams: md.IsStreamingServer()}, name, codec)
	if err != nil {
		return err
	}
	if err := st.SendMsg(biRaw(raw)); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if md.IsStreamingClient() {
		// ReportUsage: the first ack, or the stream's error.
		return st.RecvMsg(out)
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	for {
		if err := st.RecvMsg(proto.Clone(out)); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func biMethod(t testing.TB, full string) protoreflect.MethodDescriptor {
	t.Helper()
	md, err := findMethod(full)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func biEncode(t testing.TB, m proto.Message) []byte {
	t.Helper()
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.ReplaceAll(raw, []byte(biUTF8Marker), biInvalidUTF8)
}

// biEchoes reports whether msg repeats a hostile value long enough to carry
// personal data (an ID number has 18 characters).
func biEchoes(v *protoreflect.Value, msg string) bool {
	if v == nil {
		return false
	}
	s, ok := v.Interface().(string)
	return ok && len(s) >= 12 && strings.Contains(msg, s)
}

// TestBadInput sends hostile values (empty, huge, negative, NaN, exponents,
// too many decimals, invalid UTF-8, wrong codes, bad periods, unknown enums,
// impossible times, lists over their limits) in every field of every method
// of SwitchService, ReportingService, StatementService (the export stream
// included) and AdminService. Each call must be refused with InvalidArgument
// naming the field (PermissionDenied where the field names the caller's own
// province), without echoing the value, and nothing may be written: every
// table of the clearing database is fingerprinted before and after. A
// hostile report record is the exception DESIGN makes for the stream: it is
// rejected and acknowledged (stored as a rejection, never as a usage), so
// report_receipts and report_rejects may grow by exactly those records.
// Afterwards the unmodified requests are sent to show that they were valid,
// so each refusal was the hostile field's.
func TestBadInput(t *testing.T) {
	t.Parallel()
	f := biSetup(t)
	ctx := hang(t)
	now := f.clock.Now()
	bj, hn, op := provinceID(beijing), provinceID(henan), tlsconf.Identity{Kind: tlsconf.Operator}
	relID := "R" + strings.Repeat("ab", 12)
	f.peers[henan].setQuota(relID, "1000.00")
	at := timestamppb.New(now.Add(-time.Hour))
	dbt := func(key string) *provincev1.DebitRequest {
		return &provincev1.DebitRequest{UsageKey: key, RelationshipId: relID, Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY,
			Amount: "10.00", PayeeProvince: beijing, PayeeRegionCode: regionOf(t, beijing), OccurredAt: at, BeneficiaryRef: ref("ben")}
	}
	// A usage to reverse, routed before the table (its switch log row is
	// part of the "before" fingerprint).
	if _, err := clearingv1.NewSwitchServiceClient(f.conn(t, bj)).Authorize(ctx,
		&clearingv1.AuthorizeRequest{Debit: dbt("bi-u0"), PayerProvince: henan}); err != nil {
		t.Fatal(err)
	}
	snapshot := func() *provincev1.Relationship {
		return &provincev1.Relationship{RelationshipId: relID, SharerRef: ref("sha"), SharerProvince: henan, SharerRegion: regionOf(t, henan),
			BeneficiaryRef: ref("ben"), BeneficiaryProvince: beijing, Relation: provincev1.RelationType_RELATION_TYPE_PARENT,
			ProposedBy: provincev1.Side_SIDE_SHARER, Status: provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE,
			Quota: "1000.00", Used: "10.00", Version: 3, ProposedAt: timestamppb.New(now.Add(-48 * time.Hour)),
			ExpiresAt: timestamppb.New(now.Add(-24 * time.Hour)), UpdatedAt: at}
	}
	cmd := func(action provincev1.RelationshipAction, key string) *provincev1.ApplyRelationshipCommandRequest {
		return &provincev1.ApplyRelationshipCommandRequest{Action: action, CommandKey: key, OriginProvince: beijing,
			RelationshipId: relID, By: provincev1.Side_SIDE_BENEFICIARY}
	}
	propose := cmd(provincev1.RelationshipAction_RELATIONSHIP_ACTION_PROPOSE, "bi-p1")
	propose.RelationshipId, propose.By = "", provincev1.Side_SIDE_UNSPECIFIED
	propose.BeneficiaryRegion = regionOf(t, beijing)
	propose.Proposal = &provincev1.ProposeRelationshipRequest{
		Sharer:      &provincev1.PartyRef{ProvinceCode: henan, Id: &provincev1.PartyRef_PersonRef{PersonRef: ref("sha2")}},
		Beneficiary: &provincev1.PartyRef{ProvinceCode: beijing, Id: &provincev1.PartyRef_PersonRef{PersonRef: ref("ben2")}},
		Relation:    provincev1.RelationType_RELATION_TYPE_CHILD, ProposedBy: provincev1.Side_SIDE_BENEFICIARY, ProposalKey: "bi-p1",
	}
	auto := cmd(provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO, "bi-auto1")
	auto.Reason = provincev1.DissolveReason_DISSOLVE_REASON_TRANSFER
	record := func(kind clearingv1.RecordKind) *clearingv1.ReportBatch {
		r := &clearingv1.UsageRecord{Kind: kind, Role: clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, UsageKey: "bi-report",
			UsageKind: provincev1.UsageKind_USAGE_KIND_PHARMACY, PayerProvince: henan, PayerRegion: regionOf(t, henan),
			PayeeProvince: beijing, PayeeRegion: regionOf(t, beijing), Amount: "5.00", OccurredAt: at,
			SharerRef: ref("sha"), BeneficiaryRef: ref("ben"), RelationshipId: relID}
		switch kind {
		case clearingv1.RecordKind_RECORD_KIND_REVERSAL:
			r.ReversalOf = "BU2"
		case clearingv1.RecordKind_RECORD_KIND_RELATIONSHIP:
			r.Relationship = snapshot()
		}
		return &clearingv1.ReportBatch{BatchId: 1, Records: []*clearingv1.UsageRecord{r}}
	}

	sw, stmt, adm := "gongji.clearing.v1.SwitchService.", "gongji.clearing.v1.StatementService.", "gongji.clearing.v1.AdminService."
	rep := "gongji.clearing.v1.ReportingService.ReportUsage"
	period := []biField{{"setlym", "period", ""}}
	// The switch checks a relayed snapshot as completely as the replica
	// node will (a relationship id is a key to the switch: its exact form is
	// the authority node's rule; amounts and times in form only), so a bad
	// snapshot is refused before it is routed or logged.
	relFields := func(prefix string) []biField {
		return []biField{{prefix + "relationship_id", "key", ""}, {prefix + "sharer_ref", "ref", ""},
			{prefix + "sharer_region", "region-hn", ""}, {prefix + "beneficiary_ref", "ref", ""},
			{prefix + "beneficiary_province", "province", ""}, {prefix + "relation", "enum", ""},
			{prefix + "proposed_by", "enum", ""}, {prefix + "status", "enum", ""}, {prefix + "quota", "quota", ""},
			{prefix + "used", "quota", ""}, {prefix + "version", "version", ""}, {prefix + "proposed_at", "btime", ""},
			{prefix + "expires_at", "btime", ""}, {prefix + "updated_at", "btime", ""}, {prefix + "returned", "quota?", ""},
			{prefix + "activated_at", "btime?", ""}, {prefix + "ended_at", "btime?", ""}}
	}
	party := func(prefix string) []biField {
		return []biField{{prefix, "message", ""}, {prefix + ".province_code", "province", ""},
			{prefix + ".person_ref", "ref", ""}, {prefix + ".id_number", "idnumber", prefix}}
	}
	cases := []biCase{
		{sw + "Authorize", bj, &clearingv1.AuthorizeRequest{Debit: dbt("bi-u1"), PayerProvince: henan}, &clearingv1.AuthorizeResponse{},
			[]biField{{"debit", "message", ""}, {"debit.usage_key", "key", ""}, {"debit.relationship_id", "key", ""},
				{"debit.kind", "enum", ""}, {"debit.amount", "amount", ""}, {"debit.payee_province", "caller:" + beijing, ""},
				{"debit.payee_region_code", "region-bj", ""}, {"debit.occurred_at", "time", ""}, {"debit.beneficiary_ref", "ref", ""},
				{"payer_province", "other:" + beijing, ""}}},
		{sw + "AuthorizeReversal", bj, &clearingv1.AuthorizeReversalRequest{PayerProvince: henan,
			Reversal: &provincev1.ReverseDebitRequest{ReversalKey: "bi-rv1", UsageKey: "bi-u0", Amount: "1.00", OccurredAt: at, PayeeProvince: beijing}},
			&clearingv1.AuthorizeReversalResponse{},
			[]biField{{"reversal", "message", ""}, {"reversal.reversal_key", "key", ""}, {"reversal.usage_key", "key", ""},
				{"reversal.amount", "amount", ""}, {"reversal.occurred_at", "time", ""}, {"reversal.payee_province", "caller:" + beijing, ""},
				{"payer_province", "other:" + beijing, ""}}},
		{sw + "RelayRelationshipCommand", bj, &clearingv1.RelayRelationshipCommandRequest{TargetProvince: henan,
			Command: cmd(provincev1.RelationshipAction_RELATIONSHIP_ACTION_CONSENT, "bi-c1")}, &clearingv1.RelayRelationshipCommandResponse{},
			[]biField{{"command", "message", ""}, {"command.action", "enum", ""}, {"command.command_key", "key", ""},
				{"command.origin_province", "caller:" + beijing, ""}, {"command.relationship_id", "key", ""}, {"command.by", "enum", ""},
				{"target_province", "other:" + beijing, ""},
				// CONSENT reads no proposal, reason or beneficiary region:
				// the cases below send them where they count.
				{"command.proposal", "unread", ""}, {"command.reason", "unread", ""}, {"command.beneficiary_region", "unread", ""}}},
		{sw + "RelayRelationshipCommand", bj, &clearingv1.RelayRelationshipCommandRequest{TargetProvince: henan, Command: propose},
			&clearingv1.RelayRelationshipCommandResponse{},
			append(append([]biField{{"command.proposal", "message", ""}, {"command.relationship_id", "key?", ""},
				{"command.beneficiary_region", "region-bj?", ""}, {"command.proposal.relation", "enum", ""},
				{"command.proposal.proposed_by", "enum", ""}, {"command.proposal.proposal_key", "key", ""}},
				party("command.proposal.sharer")...), party("command.proposal.beneficiary")...)},
		{sw + "RelayRelationshipCommand", bj, &clearingv1.RelayRelationshipCommandRequest{TargetProvince: henan, Command: auto},
			&clearingv1.RelayRelationshipCommandResponse{}, []biField{{"command.reason", "enum", ""}}},
		{sw + "RelayRelationshipSnapshot", hn, &clearingv1.RelayRelationshipSnapshotRequest{TargetProvince: beijing, Relationship: snapshot()},
			&clearingv1.RelayRelationshipSnapshotResponse{},
			append(relFields("relationship."), biField{"relationship", "message", ""},
				biField{"relationship.sharer_province", "caller:" + henan, ""}, biField{"relationship.dissolve_reason", "enum?", ""},
				biField{"target_province", "other:" + henan, ""})},

		{rep, bj, record(clearingv1.RecordKind_RECORD_KIND_USAGE), &clearingv1.ReportAck{},
			[]biField{{"batch_id", "any", ""}, {"records", "records", ""}, {"records.0.seq", "seq", ""}, {"records.0.kind", "enum", ""},
				{"records.0.role", "enum", ""}, {"records.0.usage_key", "key", ""}, {"records.0.reversal_of", "nonempty", ""},
				{"records.0.usage_kind", "enum", ""}, {"records.0.payer_province", "province", ""},
				{"records.0.payer_region", "region-hn", ""}, {"records.0.payee_province", "caller:" + beijing, ""},
				{"records.0.payee_region", "region-bj", ""}, {"records.0.amount", "amount", ""}, {"records.0.occurred_at", "time", ""},
				// Reported refs have the clearing database's looser form
				// (the switch and the nodes require the person_ref form).
				{"records.0.sharer_ref", "ingest-ref", ""}, {"records.0.beneficiary_ref", "ingest-ref", ""}, {"records.0.relationship_id", "key?", ""},
				// A usage record carries no relationship snapshot.
				{"records.0.relationship", "unread", ""}}},
		{rep, bj, record(clearingv1.RecordKind_RECORD_KIND_REVERSAL), &clearingv1.ReportAck{},
			[]biField{{"records.0.reversal_of", "key", ""}}},
		{rep, bj, record(clearingv1.RecordKind_RECORD_KIND_RELATIONSHIP), &clearingv1.ReportAck{},
			[]biField{{"records.0.relationship", "message", ""}, {"records.0.relationship.relationship_id", "key", ""},
				{"records.0.relationship.version", "version", ""}, {"records.0.relationship.status", "enum", ""},
				{"records.0.relationship.sharer_province", "province", ""},
				{"records.0.relationship.beneficiary_province", "province", ""},
				{"records.0.relationship.updated_at", "time", ""},
				// The clearing service counts relationship changes: it reads
				// id, version, status, the two provinces and the time of the
				// change, and stores nothing else of the snapshot.
				{"records.0.relationship.sharer_ref", "unread", ""}, {"records.0.relationship.sharer_region", "unread", ""},
				{"records.0.relationship.beneficiary_ref", "unread", ""}, {"records.0.relationship.relation", "unread", ""},
				{"records.0.relationship.proposed_by", "unread", ""}, {"records.0.relationship.dissolve_reason", "unread", ""},
				{"records.0.relationship.quota", "unread", ""}, {"records.0.relationship.used", "unread", ""},
				{"records.0.relationship.proposed_at", "unread", ""}, {"records.0.relationship.expires_at", "unread", ""},
				{"records.0.relationship.returned", "unread", ""}, {"records.0.relationship.activated_at", "unread", ""},
				{"records.0.relationship.ended_at", "unread", ""}}},

		{stmt + "GetStatement", bj, &clearingv1.GetStatementRequest{Setlym: biJuly.String()}, &clearingv1.Statement{}, period},
		{stmt + "ConfirmStatement", bj, &clearingv1.ConfirmStatementRequest{Setlym: biJuly.String(), ConfirmKey: "bi-confirm"},
			&clearingv1.Statement{}, append([]biField{{"confirm_key", "key", "answer key"}}, period...)},
		{stmt + "DisputeStatement", bj, &clearingv1.DisputeStatementRequest{Setlym: biJuly.String(), DisputeKey: "bi-dispute",
			Items: []*clearingv1.DisputedItem{{UsageId: "BU2", ClaimedAmount: "25.00", Reason: "部分退款"}}},
			&clearingv1.Statement{}, append([]biField{{"dispute_key", "key", "answer key"}, {"items", "items", ""},
				{"items.0.usage_id", "key", "usage id"}, {"items.0.claimed_amount", "signed", ""}, {"items.0.reason", "text", ""}}, period...)},
		{stmt + "GetProvinceExport", bj, &clearingv1.GetProvinceExportRequest{Setlym: biJuly.String()}, &clearingv1.ExportChunk{}, period},

		{adm + "ClosePeriod", op, &clearingv1.PeriodRequest{Setlym: biJuly.Next().String()}, &clearingv1.PeriodStatus{}, period},
		{adm + "SettlePeriod", op, &clearingv1.PeriodRequest{Setlym: biJuly.String()}, &clearingv1.PeriodStatus{}, period},
		{adm + "GetPeriodStatus", op, &clearingv1.PeriodRequest{Setlym: biJuly.String()}, &clearingv1.PeriodStatus{}, period},
		{adm + "ListPeriods", op, &clearingv1.ListPeriodsRequest{}, &clearingv1.ListPeriodsResponse{}, nil},
		{adm + "GetPrepayStatus", op, &clearingv1.GetPrepayStatusRequest{ProvinceCode: henan}, &clearingv1.PrepayStatus{},
			[]biField{{"province_code", "province?", ""}}},
		{adm + "FundPrepay", op, &clearingv1.PrepayMovementRequest{ProvinceCode: henan, Amount: "10.00", MovementKey: "bi-fund"},
			&clearingv1.PrepayAccount{}, []biField{{"province_code", "province", ""}, {"amount", "amount", ""}, {"movement_key", "key", ""}}},
		{adm + "ReplenishPrepay", op, &clearingv1.PrepayMovementRequest{ProvinceCode: henan, Amount: "1.00", MovementKey: "bi-replenish"},
			&clearingv1.PrepayAccount{}, []biField{{"province_code", "province", ""}, {"amount", "amount", ""}, {"movement_key", "key", ""}}},
		{adm + "VerifyJournal", op, &clearingv1.VerifyJournalRequest{}, &clearingv1.VerifyJournalResponse{}, nil},
		{adm + "ResolveDispute", op, &clearingv1.ResolveDisputeRequest{Setlym: biJuly.String(), ProvinceCode: henan, UsageId: "BU1",
			Accept: true, AdjustmentAmount: "-10.00", ResolutionKey: "bi-resolve"}, &clearingv1.ResolveDisputeResponse{},
			append([]biField{{"province_code", "province", ""}, {"usage_id", "key", "usage id"}, {"accept", "any", ""},
				{"adjustment_amount", "adjustment", ""}, {"resolution_key", "key", "resolution key"}}, period...)},
	}

	// Every method of every service has cases, and every field of its
	// request is named by one of them.
	services := clearingv1.File_gongji_clearing_v1_clearing_proto.Services()
	methods := 0
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			md := sd.Methods().Get(j)
			methods++
			named := map[string]bool{}
			has := false
			for _, c := range cases {
				if c.method != string(md.FullName()) {
					continue
				}
				has = true
				if c.req.ProtoReflect().Descriptor() != md.Input() {
					t.Fatalf("%s: base request is a %s, want %s", c.method, c.req.ProtoReflect().Descriptor().FullName(), md.Input().FullName())
				}
				for _, fl := range c.fields {
					named[biNormal(fl.path)] = true
				}
			}
			if !has {
				t.Fatalf("no bad-input cases for %s", md.FullName())
			}
			for _, leaf := range biLeaves(md.Input(), "", 0) {
				if !named[leaf] {
					t.Errorf("%s: field %s has no bad-input case", md.FullName(), leaf)
				}
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	before, auditFrom := biFingerprint(t, f.db.Pool), biAuditHead(t, f.db.Pool)
	calls, rejected := 0, 0
	seq := int64(1000)
	// The report cases last: they may write rejections (see above).
	sort.SliceStable(cases, func(i, j int) bool { return cases[i].method != rep && cases[j].method == rep })
	reportsFrom := -1
	for i, c := range cases {
		if c.method == rep && reportsFrom < 0 {
			reportsFrom = i
			if diff := biDiff(before, biFingerprint(t, f.db.Pool)); len(diff) > 0 {
				t.Fatalf("refused calls wrote: %s", strings.Join(diff, "; "))
			}
		}
		for _, fl := range c.fields {
			variants, want := biVariants(t, fl, now, c.req)
			name := fl.name
			if name == "" {
				name = fl.path[strings.LastIndex(fl.path, ".")+1:]
			}
			for k, v := range variants {
				m := proto.Clone(c.req)
				if c.method == rep {
					// A fresh seq and key per record, so that no record is a
					// duplicate of an earlier one (which would not be validated).
					seq++
					r := m.(*clearingv1.ReportBatch).GetRecords()[0]
					r.Seq, r.UsageKey = seq, fmt.Sprintf("bi-report-%d", seq)
				}
				biMutate(m.ProtoReflect(), fl.path, v)
				calls++
				out := proto.Clone(c.out)
				err := f.biInvoke(t, c, biEncode(t, m), out)
				st := status.Convert(err)
				what := fmt.Sprintf("%s with hostile %s #%d", c.method, fl.path, k)
				if c.method == rep && fl.kind != "seq" && fl.kind != "records" {
					// A hostile record is rejected and acknowledged.
					ack, _ := out.(*clearingv1.ReportAck)
					if err != nil || len(ack.GetRejected()) != 1 || ack.GetRejected()[0].GetSeq() != seq {
						t.Errorf("%s: %v, ack %v; want the record rejected and acknowledged", what, err, ack)
						continue
					}
					rejected++
					reason := ack.GetRejected()[0].GetReason()
					if biEchoes(v, reason) || len(reason) > 2048 {
						t.Errorf("%s: the rejection echoes the value (%d bytes)", what, len(reason))
					}
					continue
				}
				if st.Code() != want || (want == codes.InvalidArgument && !strings.Contains(st.Message(), name)) {
					t.Errorf("%s: %s %.300q, want %s naming %s", what, st.Code(), st.Message(), want, name)
				}
				if biEchoes(v, st.Message()) || len(st.Message()) > 2048 {
					t.Errorf("%s: the reply echoes the value (%d bytes)", what, len(st.Message()))
				}
			}
		}
	}
	after := biFingerprint(t, f.db.Pool, "report_receipts", "report_rejects")
	for tb := range before {
		if tb == "report_receipts" || tb == "report_rejects" {
			delete(before, tb)
		}
	}
	if diff := biDiff(before, after); len(diff) > 0 {
		t.Fatalf("refused calls wrote: %s", strings.Join(diff, "; "))
	}
	var stored int
	if err := f.db.Pool.QueryRow(ctx, `SELECT count(*) FROM report_rejects WHERE province = $1 AND seq > 1000`, beijing).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != rejected {
		t.Errorf("report_rejects holds %d of the %d rejected records", stored, rejected)
	}
	audited := biAuditRefusals(t, f.db.Pool, auditFrom)
	t.Logf("figures: %d methods, %d hostile calls refused (%d of them report records rejected and acknowledged), nothing else written "+
		"(%d audit rows, none recording a hostile call as done)", methods, calls, rejected, audited)

	// The unmodified requests were valid: none is InvalidArgument.
	for _, c := range cases {
		m := proto.Clone(c.req)
		if c.method == rep {
			seq++
			r := m.(*clearingv1.ReportBatch).GetRecords()[0]
			r.Seq, r.UsageKey = seq, fmt.Sprintf("bi-report-%d", seq)
		}
		out := proto.Clone(c.out)
		err := f.biInvoke(t, c, biEncode(t, m), out)
		if st := status.Convert(err); st.Code() == codes.InvalidArgument || st.Code() == codes.Internal {
			t.Errorf("base request of %s is itself refused: %s %q", c.method, st.Code(), st.Message())
		}
		if ack, ok := out.(*clearingv1.ReportAck); ok && err == nil && len(ack.GetRejected()) > 0 {
			t.Errorf("base record of %s rejected: %s", c.method, ack.GetRejected()[0].GetReason())
		}
	}
	// Hostile ID numbers went into every field, keys included, and the
	// rejected records were kept: no table holds one in clear.
	biNoIDNumbers(t, f.db.Pool)
}

// biNoIDNumbers fails if any row of any table of the database (the audit
// trail, report_rejects' jsonb records and switch_log included), as text,
// has an 18-character window that is a valid GB 11643 number.
func biNoIDNumbers(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		rows, err := pool.Query(ctx, fmt.Sprintf(`SELECT t::text FROM %q t`, tb))
		if err != nil {
			t.Fatalf("%s: %v", tb, err)
		}
		texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: %v", tb, err)
		}
		for _, row := range texts {
			if pii.ContainsID(row) {
				t.Errorf("table %s holds an ID number in clear: %.300s", tb, row)
			}
		}
	}
}
