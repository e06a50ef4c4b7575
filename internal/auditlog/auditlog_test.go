package auditlog_test

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"gongji/internal/auditlog"
	"gongji/internal/pgtest"
	"gongji/internal/pii"
	"gongji/migrations"
	provincev1 "gongji/proto/gen/gongji/province/v1"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// idNumber is a valid GB 11643 number (Beijing, born 1990-01-01).
func idNumber(t *testing.T) string {
	t.Helper()
	first := "11010119900101123"
	c, err := pii.CheckDigit(first)
	if err != nil {
		t.Fatal(err)
	}
	return first + string(c)
}

func TestClean(t *testing.T) {
	t.Parallel()
	id := idNumber(t)
	for _, tc := range []struct{ in, want string }{
		{"usage-1", "usage-1"},
		{"key-" + id + "-x", "key-" + pii.Mask(id) + "-x"},
		{strings.ToLower(id[:17]) + "x", strings.ToLower(id[:17]) + "x"}, // a wrong check character is no ID
		{"a\x00b\nc\x7fd", "a?b?c?d"},
		{"bad \xff utf8", "bad ? utf8"},
		{"aa" + id + id, "aa" + pii.Mask(id) + pii.Mask(id)},
	} {
		if got := auditlog.Clean(tc.in, 256); got != tc.want {
			t.Errorf("Clean(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// Overlapping numbers (the second begins with the last four characters
	// of the first) are both masked: masking the first and skipping past it
	// would leave the second readable.
	var first string
	for day := 10; day <= 28 && first == ""; day++ {
		cand := "110105198002" + strconv.Itoa(day) + "410"
		if c, err := pii.CheckDigit(cand); err == nil && c == '1' {
			first = cand + "1"
		}
	}
	c, err := pii.CheckDigit("41010519900101123")
	if err != nil || first == "" {
		t.Fatalf("no overlapping numbers: %v", err)
	}
	second := "41010519900101123" + string(c)
	got := auditlog.Clean("k-"+first+second[4:], 256)
	if want := "k-" + pii.Mask(first) + strings.Repeat("*", 10) + second[14:]; got != want || pii.ContainsID(got) {
		t.Errorf("overlapping numbers: Clean = %q, want %q", got, want)
	}
	// A hex person_ref is never mangled: it has letters or fails the ID check.
	ref := pii.PersonRef([]byte("k"), id)
	if got := auditlog.Clean(ref, 128); got != ref {
		t.Errorf("a person_ref was changed: %q → %q", ref, got)
	}
	// Truncation at a rune boundary, within the byte limit.
	got = auditlog.Clean(strings.Repeat("共济", 50), 10)
	if len(got) > 10 || !strings.HasPrefix("共济共济", got) || got != "共济共" {
		t.Errorf("truncated to %q", got)
	}
}

func TestRequestID(t *testing.T) {
	t.Parallel()
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 100 {
		id := auditlog.NewRequestID()
		if !uuid.MatchString(id) || seen[id] {
			t.Fatalf("NewRequestID = %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
	if got := auditlog.RequestID("req-7:a/b"); got != "req-7:a/b" {
		t.Errorf("a usable request id was replaced: %q", got)
	}
	for _, bad := range []string{"", "has space", "ünï", strings.Repeat("a", auditlog.RequestIDLenMax+1), "a\x00"} {
		if got := auditlog.RequestID(bad); !uuid.MatchString(got) {
			t.Errorf("RequestID(%q) = %q, want a generated one", bad, got)
		}
	}
	id := idNumber(t)
	if got := auditlog.RequestID("r-" + id); got != "r-"+pii.Mask(id) {
		t.Errorf("an ID number in a request id: %q", got)
	}
}

func TestOutcomeOf(t *testing.T) {
	t.Parallel()
	st, err := status.New(codes.ResourceExhausted, "over quota").WithDetails(&errdetails.ErrorInfo{Reason: "QUOTA_EXCEEDED", Domain: "x"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{status.Error(codes.InvalidArgument, "amount: bad"), "InvalidArgument"},
		{st.Err(), "ResourceExhausted: QUOTA_EXCEEDED"},
		{errors.New("period 202607: before its cut-off"), "error: period 202607: before its cut-off"},
		{errors.New("person " + idNumber(t)), "error: person " + pii.Mask(idNumber(t))},
	} {
		if got := auditlog.OutcomeOf(tc.err); got != tc.want {
			t.Errorf("OutcomeOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// bundle is a migrated database with a scratch table and a Recorder on it.
type bundle struct {
	db  *pgtest.DB
	rec *auditlog.Recorder
	at  time.Time
}

func setup(t *testing.T, s migrations.Schema) bundle {
	t.Helper()
	db := pgtest.New(t, s)
	if _, err := db.Pool.Exec(context.Background(), `CREATE TABLE scratch (v text)`); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, time.July, 15, 10, 0, 0, 0, time.UTC)
	rec, err := auditlog.New(auditlog.Options{DB: db.Pool, Clock: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	return bundle{db: db, rec: rec, at: at}
}

func (b bundle) records(t *testing.T) []auditlog.Record {
	t.Helper()
	rs, err := auditlog.List(context.Background(), b.db.Pool, auditlog.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func (b bundle) scratch(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM scratch`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// tx is what a store's transaction helper does: the work, the audit row
// before COMMIT, End with the commit's result.
func (b bundle) tx(ctx context.Context, t *testing.T, work func(pgx.Tx) error) (err error) {
	t.Helper()
	tx, err := b.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := auditlog.Begin(ctx)
	defer func() {
		a.End(err)
		_ = tx.Rollback(context.Background())
	}()
	if err := work(tx); err != nil {
		return err
	}
	if err := a.Insert(ctx, tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func insert(tx pgx.Tx) error {
	_, err := tx.Exec(context.Background(), `INSERT INTO scratch VALUES ('x')`)
	return err
}

// TestSameTransaction: the row commits with the change, rolls back with it,
// is written once per call however many transactions it runs, and Finish
// writes the row of a call that committed nothing.
func TestSameTransaction(t *testing.T) {
	t.Parallel()
	t.Run("commits with the change, once per call", func(t *testing.T) {
		t.Parallel()
		b := setup(t, migrations.Province)
		ctx, c := b.rec.Start(context.Background(), "gongji:province:410000", "/svc/M", "req-1")
		c.SetRef("key-1")
		for range 2 {
			if err := b.tx(ctx, t, insert); err != nil {
				t.Fatal(err)
			}
		}
		c.Finish(ctx, nil)
		rs := b.records(t)
		if len(rs) != 1 || b.scratch(t) != 2 {
			t.Fatalf("records %+v, scratch %d", rs, b.scratch(t))
		}
		r := rs[0]
		if r.Actor != "gongji:province:410000" || r.Method != "/svc/M" || r.RequestID != "req-1" || r.Outcome != "ok" ||
			r.Ref != "key-1" || !r.At.Equal(b.at) {
			t.Fatalf("record %+v", r)
		}
	})
	t.Run("rolls back with the change", func(t *testing.T) {
		t.Parallel()
		b := setup(t, migrations.Province)
		ctx, c := b.rec.Start(context.Background(), "gongji:operator", "/svc/M", "")
		// The work fails after the row is inserted: a deferred constraint
		// that fires at COMMIT.
		if _, err := b.db.Pool.Exec(context.Background(), `
			CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'GJ999'; END $$;
			CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON scratch
				DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit()`); err != nil {
			t.Fatal(err)
		}
		err := b.tx(ctx, t, insert)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "GJ999" {
			t.Fatalf("commit: %v, want GJ999", err)
		}
		if rs := b.records(t); len(rs) != 0 || b.scratch(t) != 0 {
			t.Fatalf("after a failed commit: records %+v, scratch %d", rs, b.scratch(t))
		}
		// The call failed: Finish records it, in a statement of its own.
		c.Finish(ctx, status.Error(codes.Internal, "internal error"))
		rs := b.records(t)
		if len(rs) != 1 || rs[0].Outcome != "Internal" || rs[0].RequestID != c.RequestID() {
			t.Fatalf("records %+v", rs)
		}
	})
	t.Run("outcomes", func(t *testing.T) {
		t.Parallel()
		b := setup(t, migrations.Clearing)
		bg := context.Background()

		// A refusal committed as data.
		ctx, c := b.rec.Start(bg, "a", "/svc/Refuse", "r-refused")
		_ = b.tx(ctx, t, func(tx pgx.Tx) error { auditlog.SetOutcome(ctx, auditlog.Refused("QUOTA_EXCEEDED")); return insert(tx) })
		c.Finish(ctx, status.Error(codes.ResourceExhausted, "over quota"))

		// An outcome set by a rolled-back attempt does not survive it.
		ctx, c = b.rec.Start(bg, "a", "/svc/Retry", "r-retry")
		_ = b.tx(ctx, t, func(pgx.Tx) error {
			auditlog.SetOutcome(ctx, auditlog.OutcomeReplayed)
			return errors.New("serialization failure")
		})
		if err := b.tx(ctx, t, insert); err != nil {
			t.Fatal(err)
		}
		c.Finish(ctx, nil)

		// A step committed as ok, then the call failed: a second row.
		ctx, c = b.rec.Start(bg, "a", "/svc/Partial", "r-partial")
		if err := b.tx(ctx, t, insert); err != nil {
			t.Fatal(err)
		}
		c.Finish(ctx, status.Error(codes.Unavailable, "down"))

		// Nothing committed, success (a replay answered from a read).
		ctx, c = b.rec.Start(bg, "a", "/svc/Replay", "r-replay")
		c.SetOutcome(auditlog.OutcomeReplayed)
		c.Finish(ctx, nil)

		// Transactions under Without record nothing; a child's row counts for
		// its parent.
		ctx, c = b.rec.Start(bg, "a", "/svc/Stream", "r-stream")
		if err := b.tx(auditlog.Without(ctx), t, insert); err != nil {
			t.Fatal(err)
		}
		cctx, child := auditlog.Child(ctx, "batch 1 seq 1-2")
		if err := b.tx(cctx, t, insert); err != nil {
			t.Fatal(err)
		}
		child.Finish(cctx, nil)
		c.Finish(ctx, status.Error(codes.Canceled, "gone"))

		got := map[string][]string{}
		for _, r := range b.records(t) {
			got[r.RequestID] = append(got[r.RequestID], r.Outcome+"|"+r.Ref)
		}
		want := map[string][]string{
			"r-refused": {"refused: QUOTA_EXCEEDED|"},
			"r-retry":   {"ok|"},
			"r-partial": {"ok|", "Unavailable|"},
			"r-replay":  {"replayed|"},
			"r-stream":  {"ok|batch 1 seq 1-2"},
		}
		if len(got) != len(want) {
			t.Errorf("got %v, want %v", got, want)
		}
		for k, w := range want {
			if strings.Join(got[k], ",") != strings.Join(w, ",") {
				t.Errorf("%s: %v, want %v", k, got[k], w)
			}
		}
	})
}

// TestAppendOnly: both databases refuse UPDATE, DELETE and TRUNCATE of
// audit rows.
func TestAppendOnly(t *testing.T) {
	t.Parallel()
	for _, s := range []migrations.Schema{migrations.Province, migrations.Clearing} {
		t.Run(string(s), func(t *testing.T) {
			t.Parallel()
			b := setup(t, s)
			ctx, c := b.rec.Start(context.Background(), "gongji:operator", "/svc/M", "req-1")
			c.Finish(ctx, nil)
			for _, sql := range []string{
				`UPDATE audit_records SET outcome = 'forged'`,
				`UPDATE audit_records SET actor = 'someone else' WHERE id = 1`,
				`DELETE FROM audit_records`,
				`TRUNCATE audit_records`,
			} {
				_, err := b.db.Pool.Exec(context.Background(), sql)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "23001" {
					t.Errorf("%s: %v, want restrict_violation", sql, err)
				}
			}
			if rs := b.records(t); len(rs) != 1 || rs[0].Outcome != "ok" || rs[0].Actor != "gongji:operator" {
				t.Fatalf("records %+v", rs)
			}
		})
	}
}

// TestInterceptors: the unary interceptor audits a state-changing method
// (request id from the metadata, ref from the rule, "replayed" from the
// answer, the code of a failure) and leaves a read-only one, health and
// reflection alone; the client interceptor forwards the request id.
func TestInterceptors(t *testing.T) {
	t.Parallel()
	b := setup(t, migrations.Province)
	const spend, get = "/gongji.province.v1.ProvinceService/Spend", "/gongji.province.v1.ProvinceService/GetPerson"
	p := auditlog.Policy{
		spend: auditlog.Changes((*provincev1.SpendRequest).GetUsageKey),
		get:   auditlog.ReadOnly(),
	}
	in := b.rec.UnaryServerInterceptor(p, func(context.Context) string { return "gongji:province:410000" })
	invoke := func(method, reqID string, req any, h grpc.UnaryHandler) error {
		ctx := context.Background()
		if reqID != "" {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(auditlog.RequestIDHeader, reqID))
		}
		_, err := in(ctx, req, &grpc.UnaryServerInfo{FullMethod: method}, h)
		return err
	}
	var forwarded string
	ok := func(resp any) grpc.UnaryHandler {
		return func(ctx context.Context, _ any) (any, error) {
			// What a handler calling another server sends on.
			out := auditlog.UnaryClientInterceptor()
			_ = out(ctx, "/x/Y", nil, nil, nil, func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
				md, _ := metadata.FromOutgoingContext(ctx)
				forwarded = strings.Join(md.Get(auditlog.RequestIDHeader), ",")
				return nil
			})
			return resp, nil
		}
	}
	fail := func(context.Context, any) (any, error) { return nil, status.Error(codes.InvalidArgument, "amount") }

	if err := invoke(spend, "r-1", &provincev1.SpendRequest{UsageKey: "u-1"}, ok(&provincev1.SpendResponse{})); err != nil {
		t.Fatal(err)
	}
	if forwarded != "r-1" {
		t.Errorf("forwarded request id %q, want r-1", forwarded)
	}
	if err := invoke(spend, "r-2", &provincev1.SpendRequest{UsageKey: "u-1"}, ok(&provincev1.SpendResponse{Replayed: true})); err != nil {
		t.Fatal(err)
	}
	if err := invoke(spend, "", &provincev1.SpendRequest{UsageKey: "u-" + idNumber(t)}, fail); err == nil {
		t.Fatal("want the handler's error")
	}
	for _, m := range []string{get, "/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"} {
		if err := invoke(m, "r-read", nil, ok(nil)); err != nil {
			t.Fatal(err)
		}
	}
	rs := b.records(t)
	if len(rs) != 3 {
		t.Fatalf("records %+v", rs)
	}
	for i, want := range []struct{ reqID, outcome, ref string }{
		{"r-1", "ok", "u-1"}, {"r-2", "replayed", "u-1"}, {"", "InvalidArgument", "u-" + pii.Mask(idNumber(t))},
	} {
		r := rs[i]
		if (want.reqID != "" && r.RequestID != want.reqID) || r.Outcome != want.outcome || r.Ref != want.ref ||
			r.Method != spend || r.Actor != "gongji:province:410000" {
			t.Errorf("record %d: %+v, want %+v", i, r, want)
		}
	}
	if !p.Audited("/gongji.province.v1.ProvinceService/NewMethod") || p.Audited(get) {
		t.Error("an unclassified method must be audited, a read-only one not")
	}
}
