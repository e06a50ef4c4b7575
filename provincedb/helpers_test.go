package provincedb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gongji/internal/pgtest"
	"gongji/internal/pii"
	"gongji/migrations"
	"gongji/money"
	"gongji/provincedb"
	"gongji/sharing"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Property tests drive a real database: keep them modest unless asked
	// (-rapid.checks / -rapid.steps on the command line win).
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["rapid.checks"] {
		_ = flag.Set("rapid.checks", "30")
	}
	if !set["rapid.nofailfile"] {
		_ = flag.Set("rapid.nofailfile", "true") // the printed seed reproduces a failure
	}
	if !set["rapid.steps"] {
		_ = flag.Set("rapid.steps", "60")
	}
	pgtest.Main(m)
}

// Provinces and regions used by the tests.
const (
	henan    = "410000" // 河南省
	zhengzh  = "410100" // 郑州市
	luoyang  = "410300"
	beijing  = "110000"
	bjRegion = "110100"
)

var personKey = []byte("gongji-test-person-key-0123456789")

// clock is a settable clock shared by a test's services.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 7, 1, 9, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// node is one province node: a database, its store and service.
type node struct {
	db    *pgtest.DB
	store *provincedb.Store
	svc   *sharing.Service
}

func newNode(t testing.TB, province string, clk *clock, remote sharing.Remote) *node {
	t.Helper()
	db := pgtest.New(t, migrations.Province)
	st, err := provincedb.New(db.Pool, provincedb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.BindProvince(context.Background(), province); err != nil {
		t.Fatal(err)
	}
	svc, err := sharing.NewService(st, sharing.Config{Province: province, PersonKey: personKey, Now: clk.Now, Remote: remote})
	if err != nil {
		t.Fatal(err)
	}
	return &node{db: db, store: st, svc: svc}
}

// idSeq makes every generated ID number unique within the test binary.
var idSeq atomic.Int64

// newID returns a valid GB 11643 number with the given address prefix.
func newID(t testing.TB, address string) string {
	t.Helper()
	n := idSeq.Add(1)
	first17 := fmt.Sprintf("%s%s%03d", address, time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, int(n/1000)).Format("20060102"), n%1000)
	c, err := pii.CheckDigit(first17)
	if err != nil {
		t.Fatal(err)
	}
	return first17 + string(c)
}

var keySeq atomic.Int64

// key returns a fresh idempotency key.
func key(prefix string) string { return fmt.Sprintf("%s-%d", prefix, keySeq.Add(1)) }

func y(s string) money.Yuan { return money.MustParse(s) }

func employee(region string) sharing.Enrollment {
	return sharing.Enrollment{Region: region, Scheme: sharing.SchemeEmployee, Mode: sharing.ModePooledWithAccount, Status: sharing.PersonActive, Insured: true}
}

func resident(region string, insured bool) sharing.Enrollment {
	return sharing.Enrollment{Region: region, Scheme: sharing.SchemeResident, Mode: sharing.ModePoolingOnly, Status: sharing.PersonActive, Insured: insured}
}

// register adds a person and returns their ref.
func (n *node) register(t testing.TB, e sharing.Enrollment) string {
	t.Helper()
	res, err := n.svc.RegisterPerson(context.Background(), sharing.RegisterPersonRequest{IDNumber: newID(t, "410102"), Enrollment: e})
	if err != nil || !res.Created {
		t.Fatalf("register: %+v %v", res, err)
	}
	return res.Person.Ref
}

// credit deposits money.
func (n *node) credit(t testing.TB, ref, amount string) {
	t.Helper()
	if _, err := n.svc.Credit(context.Background(), sharing.MovementRequest{Key: key("credit"), PersonRef: ref, Amount: y(amount)}); err != nil {
		t.Fatalf("credit: %v", err)
	}
}

// activeRel proposes (by the sharer), consents (by the beneficiary) and sets a quota.
func (n *node) activeRel(t testing.TB, sharer, beneficiary, quota string) sharing.Relationship {
	t.Helper()
	ctx := context.Background()
	prov := n.svc.Province()
	r, err := n.svc.Propose(ctx, sharing.Proposal{Key: key("prop"), By: sharing.SideSharer, SharerRef: sharer, SharerProvince: prov,
		BeneficiaryRef: beneficiary, BeneficiaryProvince: prov, Relation: sharing.RelationParent})
	if err != nil {
		t.Fatalf("propose: %v", err)
	}
	if r, err = n.svc.Consent(ctx, sharing.CommandRequest{Key: key("consent"), RelationshipID: r.ID, By: sharing.SideBeneficiary}); err != nil {
		t.Fatalf("consent: %v", err)
	}
	if quota != "" {
		if r, err = n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("quota"), RelationshipID: r.ID, Quota: y(quota)}); err != nil {
			t.Fatalf("set quota: %v", err)
		}
	}
	return r
}

func (n *node) account(t testing.TB, ref string) sharing.Account {
	t.Helper()
	a, err := n.svc.GetAccount(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (n *node) rel(t testing.TB, id string) sharing.Relationship {
	t.Helper()
	r, err := n.svc.GetRelationship(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (n *node) conserved(t testing.TB) {
	t.Helper()
	if err := n.svc.CheckConservation(context.Background()); err != nil {
		t.Fatalf("conservation: %v", err)
	}
}

func spendReq(rel sharing.Relationship, kind sharing.Kind, amount string, at time.Time) sharing.UsageRequest {
	return sharing.UsageRequest{Key: key("use"), RelationshipID: rel.ID, Kind: kind, Amount: y(amount),
		PayeeProvince: rel.BeneficiaryProvince, PayeeRegion: regionOf(rel.BeneficiaryProvince), OccurredAt: at}
}

func regionOf(province string) string {
	switch province {
	case henan:
		return luoyang
	case beijing:
		return bjRegion
	}
	panic(province)
}

func eq(a, b money.Yuan) bool { return a.Equal(b) }

// wantErr fails unless err matches every target (nil: no error expected).
func wantErr(t testing.TB, what string, err error, targets ...error) {
	t.Helper()
	if len(targets) == 0 {
		if err != nil {
			t.Fatalf("%s: unexpected error %v", what, err)
		}
		return
	}
	for _, target := range targets {
		if !errors.Is(err, target) {
			t.Fatalf("%s: error %v, want %v", what, err, target)
		}
	}
}

// firstAnswer is a replayed answer as it was first given: the same in every
// field but Replayed, which must be set.
func firstAnswer[T any](t testing.TB, what string, replay T, replayed bool, clear func(*T)) T {
	t.Helper()
	if !replayed {
		t.Fatalf("%s: not marked as replayed", what)
	}
	clear(&replay)
	return replay
}

// sameJSON compares values by their wire form: money.Yuan holds a big.Int
// pointer, so == on structs holding amounts compares pointers.
func sameJSON(t testing.TB, what string, got, want any) {
	t.Helper()
	g, err1 := json.Marshal(got)
	w, err2 := json.Marshal(want)
	if err1 != nil || err2 != nil || !bytes.Equal(g, w) {
		t.Fatalf("%s:\n got %s\nwant %s", what, g, w)
	}
}

// balanceOf reads an account's cached balance straight from the database.
func (n *node) balanceOf(t testing.TB, account string) money.Yuan {
	t.Helper()
	var b money.Yuan
	if err := n.db.Pool.QueryRow(context.Background(), `SELECT balance FROM accounts WHERE name = $1`, account).Scan(&b); err != nil {
		t.Fatalf("balance of %s: %v", account, err)
	}
	return b
}

// count runs a count query.
func (n *node) count(t testing.TB, sql string, args ...any) int {
	t.Helper()
	var c int
	if err := n.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&c); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return c
}
