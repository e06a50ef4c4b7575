package clearingapi_test

import (
	"context"
	"net"
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
	"gongji/internal/pgtest"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/prepay"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/region"
)

// The admin and statement services over real mutual TLS on loopback
// (certificates from tlsconf.Init in a temporary directory), on a real
// clearing database. Names start with "ops" so they never collide with the
// switch and reporting tests of this package.

const (
	opsBJ = "110000" // payer
	opsSH = "310000" // receiver
	opsGD = "440000" // payer
)

var (
	opsJuly     = time.Date(2026, time.July, 15, 10, 0, 0, 0, region.Shanghai)
	opsCutOff   = time.Date(2026, time.August, 6, 0, 0, 0, 0, region.Shanghai)
	opsAfterCut = opsCutOff.Add(10 * time.Hour)
)

type opsFixture struct {
	store *clearingdb.Store
	db    *pgtest.DB
	certs string
	addr  string
	logs  *observer.ObservedLogs

	mu  sync.Mutex
	now time.Time
}

func (f *opsFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *opsFixture) setNow(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = t
}

// opsSetup starts the admin and statement services and loads July 2026:
//
//	U1 北京 110100 → 上海 310100 100.00, U2 上海 → 北京 30.00, U3 广东 440100 → 上海 50.00
//
// net: 北京 −70.00, 上海 +120.00, 广东 −50.00; efficiency 1 − 120/180 = 0.333333.
func opsSetup(t *testing.T) *opsFixture {
	t.Helper()
	f := &opsFixture{certs: t.TempDir(), now: opsJuly}
	if err := tlsconf.Init(f.certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	f.db = pgtest.New(t, migrations.Clearing)
	var err error
	if f.store, err = clearingdb.New(f.db.Pool, clearingdb.Config{}); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	f.logs = logs
	log := zap.New(core)
	admin, err := clearingapi.NewAdminServer(f.store, prepay.Config{}, f.clock, log)
	if err != nil {
		t.Fatal(err)
	}
	stmt, err := clearingapi.NewStatementServer(f.store, f.clock, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(opsReloader(t, f.certs, tlsconf.Identity{Kind: tlsconf.Clearing})))))
	clearingv1.RegisterAdminServiceServer(srv, admin)
	clearingv1.RegisterStatementServiceServer(srv, stmt)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	f.addr = lis.Addr().String()

	var seq = map[string]int64{}
	for _, u := range []struct{ key, payer, payee, amount string }{
		{"U1", "110100", "310100", "100.00"}, {"U2", "310100", "110100", "30.00"}, {"U3", "440100", "310100", "50.00"},
	} {
		for _, role := range []clearingdb.Role{clearingdb.RolePayer, clearingdb.RolePayee} {
			r := clearingdb.Record{Kind: clearingdb.RecordUsage, Role: role, UsageKey: u.key, UsageKind: "PHARMACY",
				PayerProvince: u.payer[:2] + "0000", PayerRegion: u.payer, PayeeProvince: u.payee[:2] + "0000", PayeeRegion: u.payee,
				Amount: u.amount, OccurredAt: opsJuly, SharerRef: "s" + u.key, BeneficiaryRef: "b" + u.key, RelationshipID: "R" + u.key}
			from := r.PayerProvince
			if role == clearingdb.RolePayee {
				from = r.PayeeProvince
			}
			seq[from]++
			r.Seq = seq[from]
			if ack, err := f.store.IngestBatch(context.Background(), from, []clearingdb.Record{r}, opsJuly); err != nil || len(ack.Rejected) > 0 {
				t.Fatalf("ingest %s: %+v, %v", u.key, ack, err)
			}
		}
	}
	return f
}

func opsReloader(t testing.TB, dir string, id tlsconf.Identity) *tlsconf.Reloader {
	t.Helper()
	r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(dir, id), Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// conn dials the services as id, requiring the server to be the clearing service.
func (f *opsFixture) conn(t *testing.T, id tlsconf.Identity) *grpc.ClientConn {
	t.Helper()
	cfg := tlsconf.ClientConfigFor(opsReloader(t, f.certs, id), "localhost", tlsconf.Identity{Kind: tlsconf.Clearing})
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func (f *opsFixture) admin(t *testing.T) clearingv1.AdminServiceClient {
	return clearingv1.NewAdminServiceClient(f.conn(t, tlsconf.Identity{Kind: tlsconf.Operator}))
}

func opsCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang guard, never asserted
	t.Cleanup(cancel)
	return ctx
}

// opsWant checks a call's status code and that the message mentions want.
func opsWant(t *testing.T, what string, err error, code codes.Code, want string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), want) {
		t.Fatalf("%s: %v (%q), want %v mentioning %q", what, st.Code(), st.Message(), code, want)
	}
}

func TestAdminServiceOperatorsOnly(t *testing.T) {
	t.Parallel()
	f := opsSetup(t)
	ctx := opsCtx(t)
	for _, id := range []tlsconf.Identity{
		{Kind: tlsconf.Province, Province: opsBJ},
		{Kind: tlsconf.Clearing},
	} {
		c := clearingv1.NewAdminServiceClient(f.conn(t, id))
		calls := map[string]func() error{
			"ClosePeriod": func() error { _, err := c.ClosePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"}); return err },
			"SettlePeriod": func() error {
				_, err := c.SettlePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
				return err
			},
			"GetPeriodStatus": func() error {
				_, err := c.GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
				return err
			},
			"ListPeriods": func() error { _, err := c.ListPeriods(ctx, &clearingv1.ListPeriodsRequest{}); return err },
			"GetPrepayStatus": func() error {
				_, err := c.GetPrepayStatus(ctx, &clearingv1.GetPrepayStatusRequest{})
				return err
			},
			"FundPrepay": func() error {
				_, err := c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "1.00", MovementKey: "k"})
				return err
			},
			"ReplenishPrepay": func() error {
				_, err := c.ReplenishPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "1.00", MovementKey: "k"})
				return err
			},
			"VerifyJournal": func() error { _, err := c.VerifyJournal(ctx, &clearingv1.VerifyJournalRequest{}); return err },
			"ResolveDispute": func() error {
				_, err := c.ResolveDispute(ctx, &clearingv1.ResolveDisputeRequest{Setlym: "202607", ProvinceCode: opsSH, UsageId: "U1", ResolutionKey: "k"})
				return err
			},
		}
		for name, call := range calls {
			opsWant(t, id.String()+" "+name, call(), codes.PermissionDenied, "operators only")
		}
	}
	// Nothing happened.
	st, err := f.store.PeriodStatus(context.Background(), region.Period{Year: 2026, Month: time.July})
	if err != nil || st.State != "OPEN" {
		t.Fatalf("period after refused calls: %+v, %v", st, err)
	}
	if n, err := f.store.JournalHead(context.Background()); err != nil || n.LastID != 0 {
		t.Fatalf("journal after refused calls: %+v, %v", n, err)
	}
}

func TestAdminCloseSettlePrepay(t *testing.T) {
	t.Parallel()
	f := opsSetup(t)
	ctx := opsCtx(t)
	c := f.admin(t)

	st, err := c.GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
	if err != nil || st.GetState() != clearingv1.PeriodState_PERIOD_STATE_OPEN || st.GetUsageCount() != 3 ||
		st.GetGross() != "180.00" || st.GetExceptionCount() != 0 || st.GetNettingEfficiency() != "" || st.GetJournalHead() != "" {
		t.Fatalf("open status: %v, %v", st, err)
	}
	_, err = c.GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: "2026-07"})
	opsWant(t, "bad setlym", err, codes.InvalidArgument, "2026-07")
	_, err = c.GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: "202501"})
	opsWant(t, "unknown period", err, codes.NotFound, "202501")

	_, err = c.ClosePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
	opsWant(t, "close before the cut-off", err, codes.FailedPrecondition, "cut-off")
	_, err = c.SettlePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
	opsWant(t, "settle an open period", err, codes.FailedPrecondition, "not closed")

	// Deposits: validation, idempotency.
	_, err = c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "1.001", MovementKey: "f1"})
	opsWant(t, "three decimals", err, codes.InvalidArgument, "amount")
	_, err = c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "-1.00", MovementKey: "f1"})
	opsWant(t, "negative", err, codes.InvalidArgument, "amount")
	_, err = c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: "110100", Amount: "1.00", MovementKey: "f1"})
	opsWant(t, "a region is not a province", err, codes.InvalidArgument, "110100")
	_, err = c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "1.00", MovementKey: ""})
	opsWant(t, "no key", err, codes.InvalidArgument, "key")
	a, err := c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "50.00", MovementKey: "f1"})
	if err != nil || a.GetDeposit() != "50.00" {
		t.Fatalf("fund: %v, %v", a, err)
	}
	if a, err = c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "50.00", MovementKey: "f1"}); err != nil || a.GetDeposit() != "50.00" {
		t.Fatalf("replayed fund: %v, %v", a, err)
	}
	_, err = c.FundPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "60.00", MovementKey: "f1"})
	opsWant(t, "key reused", err, codes.AlreadyExists, "f1")
	_, err = c.ReplenishPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "1.00", MovementKey: "r1"})
	opsWant(t, "replenish without a draw", err, codes.FailedPrecondition, "exceeds what is due")

	f.setNow(opsAfterCut)
	st, err = c.ClosePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetState() != clearingv1.PeriodState_PERIOD_STATE_CLOSED || !st.GetClosedAt().AsTime().Equal(opsCutOff) ||
		st.GetNettingEfficiency() != "0.333333" || st.GetGross() != "180.00" || len(st.GetJournalHead()) != 64 || st.GetUsageCount() != 3 {
		t.Fatalf("closed: %v", st)
	}
	again, err := c.ClosePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
	if err != nil || again.GetJournalHead() != st.GetJournalHead() {
		t.Fatalf("re-close: %v, %v", again, err)
	}

	f.setNow(opsAfterCut.Add(time.Hour))
	st, err = c.SettlePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"})
	if err != nil || st.GetState() != clearingv1.PeriodState_PERIOD_STATE_SETTLED {
		t.Fatalf("settle: %v, %v", st, err)
	}
	ps, err := c.GetPrepayStatus(ctx, &clearingv1.GetPrepayStatusRequest{ProvinceCode: opsBJ})
	if err != nil {
		t.Fatal(err)
	}
	// 北京 owed 70.00: 50.00 drawn (a warning), 20.00 outstanding; required 2 × 100.00.
	if bj := ps.GetAccounts()[0]; bj.GetDeposit() != "0.00" || bj.GetOutstanding() != "20.00" || bj.GetReplenishmentDue() != "50.00" ||
		bj.GetRequired() != "200.00" || !bj.GetWarning() || ps.GetPoolTotal() != "0.00" {
		t.Fatalf("prepay of 北京: %v", ps)
	}
	all, err := c.GetPrepayStatus(ctx, &clearingv1.GetPrepayStatusRequest{})
	if err != nil || len(all.GetAccounts()) != 32 {
		t.Fatalf("all accounts: %d, %v", len(all.GetAccounts()), err)
	}
	a, err = c.ReplenishPrepay(ctx, &clearingv1.PrepayMovementRequest{ProvinceCode: opsBJ, Amount: "50.00", MovementKey: "r1"})
	if err != nil || a.GetDeposit() != "50.00" || a.GetReplenishmentDue() != "0.00" {
		t.Fatalf("replenish: %v, %v", a, err)
	}
	vj, err := c.VerifyJournal(ctx, &clearingv1.VerifyJournalRequest{})
	if err != nil || !vj.GetOk() || vj.GetFirstError() != "" || vj.GetEntries() < 6 || len(vj.GetHead()) != 64 {
		t.Fatalf("verify: %v, %v", vj, err)
	}
	list, err := c.ListPeriods(ctx, &clearingv1.ListPeriodsRequest{})
	if err != nil || len(list.GetPeriods()) != 1 || list.GetPeriods()[0].GetState() != clearingv1.PeriodState_PERIOD_STATE_SETTLED {
		t.Fatalf("list: %v, %v", list, err)
	}

	_, err = c.ResolveDispute(ctx, &clearingv1.ResolveDisputeRequest{Setlym: "202607", ProvinceCode: opsSH, UsageId: "U1", Accept: true, ResolutionKey: "x"})
	opsWant(t, "resolve what nobody disputed", err, codes.NotFound, "U1")

	// A broken journal is reported, not an error of the call.
	if _, err := f.db.Pool.Exec(context.Background(), `ALTER TABLE journal_entries DISABLE TRIGGER journal_entries_append_only;
		UPDATE journal_entries SET ref = 'tampered' WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	vj, err = c.VerifyJournal(ctx, &clearingv1.VerifyJournalRequest{})
	if err != nil || vj.GetOk() || !strings.Contains(vj.GetFirstError(), "entry 2") {
		t.Fatalf("verify after tampering: %v, %v", vj, err)
	}
}
