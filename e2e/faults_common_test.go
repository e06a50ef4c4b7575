package e2e

// Helpers shared by the fault tests (faults_*_test.go) and the soak test.
// They sit beside harness_test.go's helpers rather than changing them: a
// federation on a server the test owns, relationship set-up that waits for
// the beneficiary's replica, a spend driver that retries with the same key
// and records every attempt, and the exactly-once check.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/federation"
	"gongji/internal/pgboot"
	"gongji/internal/pgtest"
	"gongji/money"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/sim"
)

// faultRetryFor bounds how long one operation is retried with its key.
const faultRetryFor = 2 * time.Minute

// faultAttemptTimeout is a client's deadline for one attempt: above the
// nodes' --rpc-timeout (5 s), so that a node's own "no answer in time"
// (Unavailable) reaches the client before the client gives up itself.
const faultAttemptTimeout = 15 * time.Second

// transientCodes are what a client retries with the same key during network
// faults and restarts: the server was unreachable or the outcome is unknown.
var transientCodes = []codes.Code{codes.Unavailable, codes.DeadlineExceeded}

// dbOutageCodes add Internal: while its database is down a node or the
// clearing service answers Internal (a connection error is not one of the
// sentinels that map to Unavailable; see docs/reliability.md, "Findings").
var dbOutageCodes = []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.Internal}

// privateServer starts a PostgreSQL cluster owned by this test alone, even
// when DATABASE_URL names a shared server (pgboot.Options.Private): the test
// kills it, and must never kill the server other tests use.
func privateServer(t *testing.T) *pgboot.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := pgboot.Start(ctx, pgboot.Options{Private: true, MaxConnections: 200, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	return srv
}

// faultFederation is startFederation on srv (nil: the shared test server);
// it also returns the federation's directory (nodes.json lives there).
func faultFederation(t *testing.T, period region.Period, seed uint64, provinces []string, srv *pgboot.Server) (*federation.Federation, string) {
	t.Helper()
	if srv == nil {
		srv = pgtest.Server(t)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := federation.Start(ctx, federation.Options{
		Dir: dir, Bin: binaries(t), Seed: seed, Period: period, Provinces: provinces,
		ProposalExpiry: time.Minute, SweepInterval: 500 * time.Millisecond,
		Server: srv, Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			keepLogs(t, f.LogsDir())
		}
		f.Close()
	})
	return f, dir
}

// callRetry runs fn until it succeeds, fails with a code not in again, or
// faultRetryFor has passed; each attempt gets faultAttemptTimeout. It returns
// the failed attempts' codes.
func callRetry[T any](ctx context.Context, again []codes.Code, fn func(ctx context.Context) (T, error)) (T, []codes.Code, error) {
	deadline := time.Now().Add(faultRetryFor)
	backoff := 20 * time.Millisecond
	var failed []codes.Code
	for {
		cctx, cancel := context.WithTimeout(ctx, faultAttemptTimeout)
		v, err := fn(cctx)
		cancel()
		if err == nil {
			return v, failed, nil
		}
		c := status.Code(err)
		if !hasCode(again, c) || time.Now().After(deadline) {
			return v, failed, err
		}
		failed = append(failed, c)
		select {
		case <-ctx.Done():
			return v, failed, ctx.Err()
		case <-time.After(backoff): // back-off between retries, not synchronisation
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func hasCode(cs []codes.Code, c codes.Code) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

// faultPair sets up n active relationships, sharers in a (5,000 yuan each,
// quota quotaYuan) and beneficiaries in b, like pair, but the consent at b is
// retried while b's replica has not yet received the proposal (NotFound), and
// it returns once b's replica of each relationship is ACTIVE. tag keeps keys
// and people apart when one federation pairs more than once.
func faultPair(t *testing.T, f *federation.Federation, a, b string, n int, quotaYuan, tag string, again []codes.Code) []string {
	t.Helper()
	ctx := context.Background()
	ra, rb := firstRegion(a), firstRegion(b)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ids := make([]string, n)
	for i := 0; i < n; i++ {
		seq := 500 + i
		sid := sim.MakeID(ra, 1985, 1+i%12, 1+i%28, seq)
		bid := sim.MakeID(rb, 1955, 1+i%12, 1+i%28, seq)
		_, _, err := callRetry(ctx, again, func(ctx context.Context) (*provincev1.RegisterPersonResponse, error) {
			return f.Province(a).RegisterPerson(ctx, &provincev1.RegisterPersonRequest{IdNumber: sid, Scheme: provincev1.Scheme_SCHEME_EMPLOYEE,
				Mode: provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT, Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: ra, Insured: true})
		})
		must(err)
		_, _, err = callRetry(ctx, again, func(ctx context.Context) (*provincev1.RegisterPersonResponse, error) {
			return f.Province(b).RegisterPerson(ctx, &provincev1.RegisterPersonRequest{IdNumber: bid, Scheme: provincev1.Scheme_SCHEME_RESIDENT,
				Mode: provincev1.AccountMode_ACCOUNT_MODE_POOLING_ONLY, Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: rb, Insured: true})
		})
		must(err)
		_, _, err = callRetry(ctx, again, func(ctx context.Context) (*provincev1.Account, error) {
			return f.Province(a).CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: &provincev1.PersonId{Id: &provincev1.PersonId_IdNumber{IdNumber: sid}},
				Amount: "5000.00", CreditKey: fmt.Sprintf("%s-credit-%d", tag, i)})
		})
		must(err)
		rel, _, err := callRetry(ctx, again, func(ctx context.Context) (*provincev1.Relationship, error) {
			return f.Province(a).ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
				Sharer:      &provincev1.PartyRef{ProvinceCode: a, Id: &provincev1.PartyRef_IdNumber{IdNumber: sid}},
				Beneficiary: &provincev1.PartyRef{ProvinceCode: b, Id: &provincev1.PartyRef_IdNumber{IdNumber: bid}},
				Relation:    provincev1.RelationType_RELATION_TYPE_PARENT, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: fmt.Sprintf("%s-prop-%d", tag, i)})
		})
		must(err)
		// The proposal reaches b's replica through the relay queue, shortly
		// after the sharer's node answered: NotFound until then.
		_, _, err = callRetry(ctx, append([]codes.Code{codes.NotFound}, again...), func(ctx context.Context) (*provincev1.Relationship, error) {
			return f.Province(b).ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: rel.GetRelationshipId(),
				By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: fmt.Sprintf("%s-consent-%d", tag, i)})
		})
		must(err)
		_, _, err = callRetry(ctx, again, func(ctx context.Context) (*provincev1.Relationship, error) {
			return f.Province(a).SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: rel.GetRelationshipId(), Quota: quotaYuan,
				CommandKey: fmt.Sprintf("%s-quota-%d", tag, i)})
		})
		must(err)
		ids[i] = rel.GetRelationshipId()
	}
	waitReplicasActive(t, f, b, ids)
	return ids
}

func firstRegion(province string) string {
	for _, p := range region.Provinces() {
		if p.Code == province {
			return p.Regions[0].Code
		}
	}
	return ""
}

// waitReplicasActive polls b's database (bounded) until its replica of each
// relationship is ACTIVE.
func waitReplicasActive(t *testing.T, f *federation.Federation, b string, ids []string) {
	t.Helper()
	p := pool(t, f.DatabaseURL(b))
	deadline := time.Now().Add(time.Minute)
	for {
		var active int
		err := p.QueryRow(context.Background(), `SELECT count(*) FROM relationships WHERE id = ANY($1) AND status = 'ACTIVE'`, ids).Scan(&active)
		if err == nil && active == len(ids) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas at %s: %d of %d ACTIVE after a minute (%v)", b, active, len(ids), err)
		}
		time.Sleep(50 * time.Millisecond) // polls another process's relay, bounded by deadline
	}
}

// attempt is one call of a spend, as the client saw it.
type attempt struct {
	start, end time.Time
	code       codes.Code
}

// approval is the answer a client finally got for one usage key.
type approval struct {
	rel       string
	amountFen int64
	remaining string
	replayed  bool
	retries   int
}

// spender drives Spend calls at the payee's node and keeps what every
// attempt returned. Safe for concurrent use.
type spender struct {
	f      *federation.Federation
	payee  string
	period region.Period
	again  []codes.Code

	mu       sync.Mutex
	approved map[string]approval
	attempts []attempt
	failures map[codes.Code]int
}

func newSpender(f *federation.Federation, payee string, period region.Period, again []codes.Code) *spender {
	return &spender{f: f, payee: payee, period: period, again: again, approved: map[string]approval{}, failures: map[codes.Code]int{}}
}

// spend asks for a cross-province usage of amountFen on rel under key,
// retrying with the same key (the request is the same on every attempt).
// A refusal or an error outside s.again ends it with that error.
func (s *spender) spend(ctx context.Context, key, rel string, amountFen int64, occurred time.Time) (approval, error) {
	req := &provincev1.SpendRequest{UsageKey: key, RelationshipId: rel, Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY,
		Amount: money.FromFen(amountFen).String(), PayeeRegionCode: firstRegion(s.payee), OccurredAt: timestamppb.New(occurred)}
	resp, failed, err := callRetry(ctx, s.again, func(ctx context.Context) (*provincev1.SpendResponse, error) {
		start := time.Now()
		r, err := s.f.Province(s.payee).Spend(ctx, req)
		s.mu.Lock()
		s.attempts = append(s.attempts, attempt{start: start, end: time.Now(), code: status.Code(err)})
		if err != nil {
			s.failures[status.Code(err)]++
		}
		s.mu.Unlock()
		return r, err
	})
	if err != nil {
		return approval{}, fmt.Errorf("spend %s: %w", key, err)
	}
	got, perr := money.Parse(resp.GetAmount())
	if perr != nil || got.Fen() != amountFen || resp.GetUsageKey() != key {
		return approval{}, fmt.Errorf("spend %s: answer for %q of %q, asked %s", key, resp.GetUsageKey(), resp.GetAmount(), req.Amount)
	}
	a := approval{rel: rel, amountFen: amountFen, remaining: resp.GetQuotaRemaining(), replayed: resp.GetReplayed(), retries: len(failed)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.approved[key]; dup {
		return a, fmt.Errorf("spend %s: driven twice by the test", key)
	}
	s.approved[key] = a
	return a, nil
}

// counts returns the approvals and failed attempts so far.
func (s *spender) counts() (approved, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.failures {
		failed += n
	}
	return len(s.approved), failed
}

// fastestSince is the shortest successful attempt that started at or after t0.
func (s *spender) fastestSince(t0 time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	fastest := time.Duration(-1)
	for _, a := range s.attempts {
		if a.code == codes.OK && !a.start.Before(t0) && (fastest < 0 || a.end.Sub(a.start) < fastest) {
			fastest = a.end.Sub(a.start)
		}
	}
	return fastest
}

// failureSummary names the failed attempts by code, e.g. "Unavailable×3".
func (s *spender) failureSummary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for c, n := range s.failures {
		parts = append(parts, fmt.Sprintf("%s×%d", c, n))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// randomSpends runs workers goroutines that spend on rels at the payee's
// node (amounts 0.01–maxFen/100 yuan, seeded) until stop is closed (a spend
// in progress is finished) or ctx ends (it is abandoned); keys are
// prefix-NNNNNN. The returned channel yields the first error (or nil) when
// all workers have finished.
func (s *spender) randomSpends(ctx context.Context, prefix string, rels []string, workers int, maxFen int64, seed uint64, stop <-chan struct{}) <-chan error {
	done := make(chan error, 1)
	var next sync.Mutex
	n := 0
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				next.Lock()
				key := fmt.Sprintf("%s-%06d", prefix, n)
				n++
				next.Unlock()
				rel := rels[rng.IntN(len(rels))]
				occurred := s.period.Start().Add(time.Duration(rng.IntN(28*24)) * time.Hour)
				if _, err := s.spend(ctx, key, rel, 1+rng.Int64N(maxFen), occurred); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}(w)
	}
	go func() { wg.Wait(); done <- first }()
	return done
}

// background runs randomSpends until the returned finish is called, which
// stops the workers, waits for them to finish their spends and fails the
// test on a spend's error. If the test ends first (a failed assertion),
// cleanup abandons the spends in progress and waits for the workers.
func (s *spender) background(t *testing.T, prefix string, rels []string, workers int, maxFen int64, seed uint64) (finish func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stop := make(chan struct{})
	done := s.randomSpends(ctx, prefix, rels, workers, maxFen, seed, stop)
	var once sync.Once
	var err error
	end := func() { once.Do(func() { close(stop); err = <-done }) }
	t.Cleanup(func() { cancel(); end() })
	return func() {
		t.Helper()
		end()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor polls cond (bounded by limit) and fails the test with what when it
// does not come true.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond) // polls progress made by other goroutines and processes, bounded
	}
}

// checkExactlyOnce asserts that the payer's node a committed exactly the
// usages the clients were told were approved, once each, with their amounts,
// and that each relationship's used quota at a (the authority) is the sum of
// its approved amounts: no answer was lost without its debit being kept, no
// retry moved money twice. It returns the number of approvals checked.
func checkExactlyOnce(t *testing.T, f *federation.Federation, a string, s *spender, rels []string) int {
	t.Helper()
	ctx := context.Background()
	p := pool(t, f.DatabaseURL(a))
	rows, err := p.Query(ctx, `SELECT usage_key, relationship_id, amount::text FROM usages
		WHERE role = 'PAYER' AND approved AND relationship_id = ANY($1)`, rels)
	if err != nil {
		t.Fatal(err)
	}
	committed := map[string]approval{}
	for rows.Next() {
		var key, rel, amount string
		if err := rows.Scan(&key, &rel, &amount); err != nil {
			t.Fatal(err)
		}
		committed[key] = approval{rel: rel, amountFen: money.MustParse(amount).Fen()}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var diffs []string
	want := map[string]int64{}
	for key, ap := range s.approved {
		want[ap.rel] += ap.amountFen
		c, ok := committed[key]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: approved to the client, not committed at the payer", key))
		case c.rel != ap.rel || c.amountFen != ap.amountFen:
			diffs = append(diffs, fmt.Sprintf("%s: client told %s on %s, payer committed %s on %s", key,
				money.FromFen(ap.amountFen), ap.rel, money.FromFen(c.amountFen), c.rel))
		}
	}
	for key := range committed {
		if _, ok := s.approved[key]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: committed at the payer, never approved to a client", key))
		}
	}
	used := map[string]int64{}
	rs, err := p.Query(ctx, `SELECT id, used::text FROM relationships WHERE authority AND id = ANY($1)`, rels)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id, u string
		if err := rs.Scan(&id, &u); err != nil {
			t.Fatal(err)
		}
		used[id] = money.MustParse(u).Fen()
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	for _, rel := range rels {
		if used[rel] != want[rel] {
			diffs = append(diffs, fmt.Sprintf("relationship %s: used %s at the authority, approvals sum to %s",
				rel, money.FromFen(used[rel]), money.FromFen(want[rel])))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("… and %d more", len(diffs)-20))
		}
		t.Errorf("not exactly once:\n%s", joinLines(diffs))
	}
	return len(s.approved)
}

// nodesRunning fails the test if a process of the federation has exited.
func nodesRunning(t *testing.T, f *federation.Federation, when string) {
	t.Helper()
	if !f.Clearing().Running() {
		t.Errorf("%s: the clearing service exited (log %s)", when, f.LogsDir())
	}
	for _, c := range f.Provinces() {
		if !f.Node(c).Running() {
			t.Errorf("%s: node %s exited (log %s)", when, c, f.LogsDir())
		}
	}
}

// pgBackendWaiting reports whether a backend of database db (other than
// ours) is waiting for a lock: a transaction stopped half way, where the
// test holds the lock it needs.
func pgBackendWaiting(ctx context.Context, adminURL, db string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'`, db).Scan(&n)
	return n > 0, err
}

// dbName is the database a connection URL names.
func dbName(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}
