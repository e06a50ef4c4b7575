package clearingapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"gongji/audit"
	"gongji/clearingapi"
	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/money"
	"gongji/prepay"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/region"
)

// expStatements is a StatementService that serves only GetProvinceExport,
// delegating to an ExportServer exactly as the real statement server is
// meant to (see clearingapi.ExportServer).
type expStatements struct {
	clearingv1.UnimplementedStatementServiceServer
	exp *clearingapi.ExportServer
}

func (s expStatements) GetProvinceExport(req *clearingv1.GetProvinceExportRequest, stream grpc.ServerStreamingServer[clearingv1.ExportChunk]) error {
	return s.exp.GetProvinceExport(req, stream)
}

type expFixture struct {
	store  *clearingdb.Store
	key    audit.PseudonymKey
	certs  string
	addr   string
	period region.Period
}

const expUsagesHenan = 300 // enough for a usages.csv of several 64 KiB chunks

// expSetup builds a settled period 202607 (河南 410000 pays 北京 110000 for
// expUsagesHenan usages, 北京 pays 河南 for 20, 广东 440000 pays 北京 for 5)
// through the public clearingdb API, an open period 202608, and serves the
// export over mutual TLS.
func expSetup(t *testing.T) expFixture {
	t.Helper()
	ctx := context.Background()
	f := expFixture{certs: t.TempDir()}
	if err := tlsconf.Init(f.certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	db := pgtest.New(t, migrations.Clearing)
	var err error
	if f.store, err = clearingdb.New(db.Pool, clearingdb.Config{}); err != nil {
		t.Fatal(err)
	}
	if f.key, err = audit.ParsePseudonymKey(strings.Repeat("a5", 32)); err != nil {
		t.Fatal(err)
	}
	f.period, _ = region.ParsePeriod("202607")
	for i, prov := range []string{henan, beijing, "440000"} {
		if _, err := f.store.FundPrepay(ctx, clearingdb.PrepayMovement{Province: prov, Amount: money.MustParse("5000.00"),
			Key: fmt.Sprintf("exp-fund-%d", i)}, t0); err != nil {
			t.Fatal(err)
		}
	}
	outbox := map[string][]clearingdb.Record{}
	add := func(key, payer, payee, amount string, at time.Time) {
		r := clearingdb.Record{Kind: clearingdb.RecordUsage, UsageKey: key, UsageKind: "PHARMACY",
			PayerProvince: payer, PayerRegion: regionOf(t, payer), PayeeProvince: payee, PayeeRegion: regionOf(t, payee),
			Amount: amount, OccurredAt: at, SharerRef: ref("s-" + key), BeneficiaryRef: ref("b-" + key), RelationshipID: "R" + key}
		for _, side := range []struct {
			role clearingdb.Role
			prov string
		}{{clearingdb.RolePayer, payer}, {clearingdb.RolePayee, payee}} {
			rr := r
			rr.Role, rr.Seq = side.role, int64(len(outbox[side.prov])+1)
			outbox[side.prov] = append(outbox[side.prov], rr)
		}
	}
	at := time.Date(2026, time.July, 3, 9, 0, 0, 0, region.Shanghai)
	for i := range expUsagesHenan {
		add(fmt.Sprintf("410000-%05d", i), henan, beijing, fmt.Sprintf("%d.%02d", 1+i%97, i%100), at.Add(time.Duration(i)*time.Minute))
	}
	for i := range 20 {
		add(fmt.Sprintf("110000-%05d", i), beijing, henan, "12.34", at.Add(time.Duration(i)*time.Hour))
	}
	for i := range 5 {
		add(fmt.Sprintf("440000-%05d", i), "440000", beijing, "7.00", at.Add(time.Duration(i)*time.Hour))
	}
	for prov, recs := range outbox {
		ack, err := f.store.IngestBatch(ctx, prov, recs, t0)
		if err != nil || len(ack.Rejected) > 0 {
			t.Fatalf("ingest %s: %v %+v", prov, err, ack.Rejected)
		}
	}
	closeAt := f.period.CutOff(f.store.Config().Settlement.CutOffGrace).Add(time.Hour)
	if _, err := f.store.ClosePeriod(ctx, f.period, closeAt); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.SettlePeriod(ctx, f.period, prepay.Config{}, closeAt.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.EnsurePeriod(ctx, f.period.Next(), closeAt); err != nil {
		t.Fatal(err)
	}

	exp, err := clearingapi.NewExportServer(clearingapi.ExportServerOptions{Store: f.store, Key: f.key, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(reloader(t, f.certs, clearingID)))))
	clearingv1.RegisterStatementServiceServer(srv, expStatements{exp: exp})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	f.addr = lis.Addr().String()
	return f
}

func (f expFixture) client(t *testing.T, id tlsconf.Identity) clearingv1.StatementServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconf.ClientConfigFor(reloader(t, f.certs, id), "localhost", clearingID))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return clearingv1.NewStatementServiceClient(cc)
}

// chunks fetches the raw chunk stream, or the call's error.
func (f expFixture) chunks(t *testing.T, id tlsconf.Identity, setlym string) ([]*clearingv1.ExportChunk, error) {
	t.Helper()
	stream, err := f.client(t, id).GetProvinceExport(hang(t), &clearingv1.GetProvinceExportRequest{Setlym: setlym})
	if err != nil {
		return nil, err
	}
	var out []*clearingv1.ExportChunk
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, c)
	}
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range clearingapi.ExportFiles {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = b
	}
	return out
}

// TestGetProvinceExport: a province node receives its own scoped bundle in
// chunks of at most 64 KiB that reassemble to the bytes `clearing export
// --province` writes, with each file's sha256 on its last chunk; the bundle
// verifies against the province's statement; no identity can fetch another
// province's bundle; the period's state maps to the documented codes.
func TestGetProvinceExport(t *testing.T) {
	t.Parallel()
	f := expSetup(t)
	ctx := context.Background()

	// What the CLI writes for 河南.
	src, err := f.store.ExportSource(ctx, f.period, clearingdb.ExportOptions{Key: f.key, Province: henan})
	if err != nil {
		t.Fatal(err)
	}
	direct := filepath.Join(t.TempDir(), "direct")
	man, err := src.WriteBundle(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	want := readDir(t, direct)
	if len(want[audit.FileUsages]) <= clearingapi.ExportChunkBytesMax {
		t.Fatalf("usages.csv has %d bytes: the fixture must need more than one chunk", len(want[audit.FileUsages]))
	}

	// The raw chunk stream.
	chunks, err := f.chunks(t, provinceID(henan), "202607")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	var order []string
	for _, c := range chunks {
		if len(c.GetData()) > clearingapi.ExportChunkBytesMax {
			t.Errorf("%s: chunk of %d bytes", c.GetFileName(), len(c.GetData()))
		}
		if len(order) == 0 || order[len(order)-1] != c.GetFileName() {
			order = append(order, c.GetFileName())
		}
		got[c.GetFileName()] = append(got[c.GetFileName()], c.GetData()...)
		if !c.GetLast() {
			if c.GetSha256() != "" {
				t.Errorf("%s: sha256 on a chunk that is not the last", c.GetFileName())
			}
			continue
		}
		h := sha256.Sum256(got[c.GetFileName()])
		if c.GetSha256() != hex.EncodeToString(h[:]) {
			t.Errorf("%s: last chunk sha256 %s, the bytes hash to %x", c.GetFileName(), c.GetSha256(), h)
		}
		if s, ok := man.Files[c.GetFileName()]; ok && s.SHA256 != c.GetSha256() {
			t.Errorf("%s: stream sha256 %s, manifest %s", c.GetFileName(), c.GetSha256(), s.SHA256)
		}
	}
	if strings.Join(order, " ") != strings.Join(clearingapi.ExportFiles, " ") {
		t.Errorf("files in order %v, want %v", order, clearingapi.ExportFiles)
	}
	for _, n := range clearingapi.ExportFiles {
		if !bytes.Equal(got[n], want[n]) {
			t.Errorf("%s: streamed bytes differ from clearing export --province", n)
		}
	}

	// The node's side: ReceiveProvinceExport, then verification with its
	// own statement.
	stream, err := f.client(t, provinceID(henan)).GetProvinceExport(hang(t), &clearingv1.GetProvinceExportRequest{Setlym: "202607"})
	if err != nil {
		t.Fatal(err)
	}
	recv := filepath.Join(t.TempDir(), "received")
	if err := clearingapi.ReceiveProvinceExport(stream, recv); err != nil {
		t.Fatal(err)
	}
	for n, b := range readDir(t, recv) {
		if !bytes.Equal(b, want[n]) {
			t.Errorf("received %s differs", n)
		}
	}
	view, err := f.store.GetStatement(ctx, f.period, henan, t0.AddDate(0, 1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := clearingdb.VerifyProvinceBundle(ctx, os.DirFS(recv), clearingdb.ProvinceVerifyOptions{
		Province: henan, Statement: &view.Statement, Prepay: view.Prepay}); err != nil {
		t.Fatalf("received bundle: %v", err)
	}

	// 北京 gets its own bundle, never 河南's: the request names no province.
	bj, err := f.chunks(t, provinceID(beijing), "202607")
	if err != nil {
		t.Fatal(err)
	}
	var bjManifest []byte
	for _, c := range bj {
		if c.GetFileName() == audit.FileManifest {
			bjManifest = append(bjManifest, c.GetData()...)
		}
	}
	if !bytes.Contains(bjManifest, []byte(`"province": "110000"`)) {
		t.Errorf("北京's manifest:\n%s", bjManifest)
	}

	// Identities and period states.
	for _, tc := range []struct {
		name   string
		id     tlsconf.Identity
		setlym string
		code   codes.Code
	}{
		{"operator", operatorID, "202607", codes.PermissionDenied},
		{"clearing identity", clearingID, "202607", codes.PermissionDenied},
		{"bad setlym", provinceID(henan), "2026-07", codes.InvalidArgument},
		{"unknown period", provinceID(henan), "202501", codes.NotFound},
		{"open period", provinceID(henan), "202608", codes.FailedPrecondition},
	} {
		_, err := f.chunks(t, tc.id, tc.setlym)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
}

// TestReceiveProvinceExportRefuses: the receiver refuses a stream that
// breaks the chunk protocol, and leaves no partial files behind.
func TestReceiveProvinceExportRefuses(t *testing.T) {
	t.Parallel()
	good := func() []*clearingv1.ExportChunk {
		var out []*clearingv1.ExportChunk
		for _, n := range clearingapi.ExportFiles {
			data := []byte("header of " + n + "\n")
			h := sha256.Sum256(data)
			out = append(out, &clearingv1.ExportChunk{FileName: n, Data: data[:3]},
				&clearingv1.ExportChunk{FileName: n, Data: data[3:], Last: true, Sha256: hex.EncodeToString(h[:])})
		}
		return out
	}
	if err := clearingapi.ReceiveProvinceExport(&fakeChunks{chunks: good()}, filepath.Join(t.TempDir(), "ok")); err != nil {
		t.Fatalf("a good stream: %v", err)
	}
	for name, mutate := range map[string]func([]*clearingv1.ExportChunk) []*clearingv1.ExportChunk{
		"path outside the bundle": func(c []*clearingv1.ExportChunk) []*clearingv1.ExportChunk {
			c[0].FileName, c[1].FileName = "../evil.csv", "../evil.csv"
			return c
		},
		"wrong sha256": func(c []*clearingv1.ExportChunk) []*clearingv1.ExportChunk {
			c[1].Sha256 = strings.Repeat("0", 64)
			return c
		},
		"file missing":     func(c []*clearingv1.ExportChunk) []*clearingv1.ExportChunk { return c[2:] },
		"file cut short":   func(c []*clearingv1.ExportChunk) []*clearingv1.ExportChunk { return c[:len(c)-1] },
		"file sent twice":  func(c []*clearingv1.ExportChunk) []*clearingv1.ExportChunk { return append(c, c[0], c[1]) },
		"files interleave": func(c []*clearingv1.ExportChunk) []*clearingv1.ExportChunk { c[1], c[2] = c[2], c[1]; return c },
		"chunk too large": func(c []*clearingv1.ExportChunk) []*clearingv1.ExportChunk {
			c[0].Data = make([]byte, clearingapi.ExportChunkBytesMax+1)
			return c
		},
	} {
		dir := filepath.Join(t.TempDir(), "bad")
		err := clearingapi.ReceiveProvinceExport(&fakeChunks{chunks: mutate(good())}, dir)
		if !errors.Is(err, clearingapi.ErrExportStream) {
			t.Errorf("%s: %v, want ErrExportStream", name, err)
		}
		if left, _ := os.ReadDir(dir); len(left) > 0 {
			t.Errorf("%s: left %d files behind", name, len(left))
		}
	}
}

// fakeChunks is a client stream replaying fixed chunks.
type fakeChunks struct {
	grpc.ClientStream
	chunks []*clearingv1.ExportChunk
}

func (f *fakeChunks) Recv() (*clearingv1.ExportChunk, error) {
	if len(f.chunks) == 0 {
		return nil, io.EOF
	}
	c := f.chunks[0]
	f.chunks = f.chunks[1:]
	return c, nil
}

func (f *fakeChunks) Header() (metadata.MD, error) { return nil, nil }
func (f *fakeChunks) Trailer() metadata.MD         { return nil }
func (f *fakeChunks) CloseSend() error             { return nil }
func (f *fakeChunks) Context() context.Context     { return context.Background() }
