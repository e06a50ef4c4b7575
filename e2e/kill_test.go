package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/federation"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/sim"
)

// retry repeats an idempotent call while the server is unreachable (a killed
// node restarting), for at most two minutes.
func retry[T any](ctx context.Context, f func(ctx context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(2 * time.Minute)
	backoff := 20 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		v, err := f(cctx)
		cancel()
		c := status.Code(err)
		if err == nil || (c != codes.Unavailable && c != codes.DeadlineExceeded) || time.Now().After(deadline) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}

// pair sets up n cross-province relationships: sharers in province a, their
// parents (beneficiaries) in province b, each with a 2,000-yuan quota.
func pair(t *testing.T, f *federation.Federation, period region.Period, a, b string, n int) []string {
	t.Helper()
	ctx := context.Background()
	ra, rb := region.Provinces()[0].Regions[0].Code, ""
	for _, p := range region.Provinces() {
		if p.Code == a {
			ra = p.Regions[0].Code
		}
		if p.Code == b {
			rb = p.Regions[0].Code
		}
	}
	ids := make([]string, n)
	for i := 0; i < n; i++ {
		sid := sim.MakeID(ra, 1990, 1+i%12, 1+i%28, i)
		bid := sim.MakeID(rb, 1960, 1+i%12, 1+i%28, i)
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		_, err := retry(ctx, func(ctx context.Context) (*provincev1.RegisterPersonResponse, error) {
			return f.Province(a).RegisterPerson(ctx, &provincev1.RegisterPersonRequest{IdNumber: sid, Scheme: provincev1.Scheme_SCHEME_EMPLOYEE,
				Mode: provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT, Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: ra, Insured: true})
		})
		must(err)
		_, err = retry(ctx, func(ctx context.Context) (*provincev1.RegisterPersonResponse, error) {
			return f.Province(b).RegisterPerson(ctx, &provincev1.RegisterPersonRequest{IdNumber: bid, Scheme: provincev1.Scheme_SCHEME_RESIDENT,
				Mode: provincev1.AccountMode_ACCOUNT_MODE_POOLING_ONLY, Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: rb, Insured: true})
		})
		must(err)
		_, err = retry(ctx, func(ctx context.Context) (*provincev1.Account, error) {
			return f.Province(a).CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: &provincev1.PersonId{Id: &provincev1.PersonId_IdNumber{IdNumber: sid}},
				Amount: "5000.00", CreditKey: fmt.Sprintf("credit-%d", i)})
		})
		must(err)
		rel, err := retry(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
			return f.Province(a).ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
				Sharer:      &provincev1.PartyRef{ProvinceCode: a, Id: &provincev1.PartyRef_IdNumber{IdNumber: sid}},
				Beneficiary: &provincev1.PartyRef{ProvinceCode: b, Id: &provincev1.PartyRef_IdNumber{IdNumber: bid}},
				Relation:    provincev1.RelationType_RELATION_TYPE_PARENT, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: fmt.Sprintf("prop-%d", i)})
		})
		must(err)
		// The proposal reaches the beneficiary's node through the relay queue.
		_, err = retry(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
			r, err := f.Province(b).GetRelationship(ctx, &provincev1.GetRelationshipRequest{RelationshipId: rel.GetRelationshipId()})
			if status.Code(err) == codes.NotFound {
				return r, status.Error(codes.Unavailable, "proposal not replicated yet")
			}
			return r, err
		})
		must(err)
		_, err = retry(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
			return f.Province(b).ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: rel.GetRelationshipId(), By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: fmt.Sprintf("consent-%d", i)})
		})
		must(err)
		_, err = retry(ctx, func(ctx context.Context) (*provincev1.Relationship, error) {
			return f.Province(a).SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: rel.GetRelationshipId(), Quota: "2000.00", CommandKey: fmt.Sprintf("quota-%d", i)})
		})
		must(err)
		ids[i] = rel.GetRelationshipId()
	}
	_ = period
	return ids
}

// waitDrained waits (bounded) until the clearing service holds every
// cross-province record both sides committed: nothing in any outbox is
// unacknowledged and the clearing period shows no one-sided record.
func waitDrained(t *testing.T, f *federation.Federation, period region.Period) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(2 * time.Minute)
	tick := time.NewTicker(200 * time.Millisecond) // polls another process's progress, bounded by deadline
	defer tick.Stop()
	for {
		pending := 0
		for _, c := range f.Provinces() {
			var n int
			if err := pool(t, f.DatabaseURL(c)).QueryRow(ctx, `SELECT count(*) FROM outbox WHERE acked_at IS NULL`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			pending += n
		}
		st, err := retry(ctx, func(ctx context.Context) (*clearingv1.PeriodStatus, error) {
			return f.Admin().GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: period.String()})
		})
		if err != nil {
			t.Fatal(err)
		}
		if pending == 0 && st.GetExceptionCount() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not drained after 2 minutes: %d outbox rows unacknowledged, %d one-sided", pending, st.GetExceptionCount())
		}
		<-tick.C
	}
}

// TestNodeKilledDuringReporting SIGKILLs the payer or the payee node at seeded
// random points while usages flow and their reports stream to the clearing
// service (20 times; 60 with -long), restarts it, and checks that the clearing
// database ends with exactly the records the nodes committed.
func TestNodeKilledDuringReporting(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	f := startFederation(t, period, 3, []string{a, b})
	rels := pair(t, f, period, a, b, 8)
	iterations := 20
	if *long {
		iterations = 60
	}
	rng := rand.New(rand.NewPCG(42, 7))
	ctx := context.Background()
	spent := 0
	for it := 0; it < iterations; it++ {
		victim := a
		if rng.IntN(2) == 0 {
			victim = b
		}
		// A burst of usage (and some reversals) at the beneficiary's node; the
		// kill lands somewhere inside the stream of reports that follows.
		burst := 5 + rng.IntN(20)
		killAt := rng.IntN(burst)
		for i := 0; i < burst; i++ {
			if i == killAt {
				if err := f.KillNode(ctx, victim); err != nil {
					t.Fatal(err)
				}
				if err := f.RestartNode(ctx, victim); err != nil {
					t.Fatal(err)
				}
			}
			key := fmt.Sprintf("K%02d-%04d", it, i)
			amount := fmt.Sprintf("%d.%02d", 1+rng.IntN(20), rng.IntN(100))
			occurred := period.Start().Add(time.Duration(rng.IntN(28*24)) * time.Hour)
			rel := rels[rng.IntN(len(rels))]
			_, err := retry(ctx, func(ctx context.Context) (*provincev1.SpendResponse, error) {
				return f.Province(b).Spend(ctx, &provincev1.SpendRequest{UsageKey: key, RelationshipId: rel,
					Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY, Amount: amount, PayeeRegionCode: "410100", OccurredAt: timestamppb.New(occurred)})
			})
			if err != nil && status.Code(err) != codes.AlreadyExists {
				t.Fatalf("iteration %d spend %s: %v", it, key, err)
			}
			spent++
			if i%7 == 3 {
				_, err := retry(ctx, func(ctx context.Context) (*provincev1.ReverseResponse, error) {
					return f.Province(b).Reverse(ctx, &provincev1.ReverseRequest{ReversalKey: "R" + key, UsageKey: key, Amount: "0.50", OccurredAt: timestamppb.New(occurred.Add(time.Hour))})
				})
				if err != nil && status.Code(err) != codes.NotFound {
					t.Fatalf("iteration %d reverse %s: %v", it, key, err)
				}
			}
		}
	}
	waitDrained(t, f, period)
	n := compareRecords(t, f)
	if n == 0 {
		t.Fatal("no records reached the clearing service")
	}
	t.Logf("%d kills, %d spends, %d records equal at payer, payee and clearing", iterations, spent, n)
	checkConservation(t, f)
}
