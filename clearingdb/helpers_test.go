package clearingdb_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/migrations"
	"gongji/region"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	bj = "110000" // 北京市: a payer in most tests
	sh = "310000" // 上海市: a payee in most tests
	gd = "440000" // 广东省
)

// t0 is a fixed clock in the middle of July 2026, Asia/Shanghai.
var t0 = time.Date(2026, time.July, 15, 10, 0, 0, 0, region.Shanghai)

// tb is the part of testing.TB the helpers use; *rapid.T has it too.
type tb interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

type bundle struct {
	ctx   context.Context
	db    *pgtest.DB
	store *clearingdb.Store
}

func setup(t *testing.T) bundle {
	t.Helper()
	db := pgtest.New(t, migrations.Clearing)
	st, err := clearingdb.New(db.Pool, clearingdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return bundle{ctx: context.Background(), db: db, store: st}
}

// regionOf returns the first pooling region of a province.
func regionOf(t tb, province string) string {
	p, err := region.ParseProvince(province)
	if err != nil {
		t.Fatal(err)
	}
	return p.Regions[0].Code
}

// pair builds the PAYER and PAYEE reports of one cross-province usage (seqs
// are set by the caller).
func pair(t tb, key, payer, payee, amount string, at time.Time) (clearingdb.Record, clearingdb.Record) {
	r := clearingdb.Record{
		Kind:           clearingdb.RecordUsage,
		UsageKey:       key,
		UsageKind:      "PHARMACY",
		PayerProvince:  payer,
		PayerRegion:    regionOf(t, payer),
		PayeeProvince:  payee,
		PayeeRegion:    regionOf(t, payee),
		Amount:         amount,
		OccurredAt:     at,
		SharerRef:      "s" + key,
		BeneficiaryRef: "b" + key,
		RelationshipID: "R" + key,
	}
	pr, pe := r, r
	pr.Role, pe.Role = clearingdb.RolePayer, clearingdb.RolePayee
	return pr, pe
}

// reversal builds the two reports of a reversal of usage `of`.
func reversal(t tb, key, of, payer, payee, amount string, at time.Time) (clearingdb.Record, clearingdb.Record) {
	pr, pe := pair(t, key, payer, payee, amount, at)
	pr.Kind, pe.Kind = clearingdb.RecordReversal, clearingdb.RecordReversal
	pr.ReversalOf, pe.ReversalOf = of, of
	return pr, pe
}

func withSeq(r clearingdb.Record, seq int64) clearingdb.Record {
	r.Seq = seq
	return r
}

func ingest(t tb, b bundle, province string, now time.Time, recs ...clearingdb.Record) clearingdb.Ack {
	t.Helper()
	ack, err := b.store.IngestBatch(b.ctx, province, recs, now)
	if err != nil {
		t.Fatalf("IngestBatch(%s): %v", province, err)
	}
	return ack
}

func mustPeriod(t tb, s string) region.Period {
	p, err := region.ParsePeriod(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func usageSet(t tb, b bundle, p region.Period) map[string]string {
	t.Helper()
	us, err := b.store.Usages(b.ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, u := range us {
		out[u.UsageID] = fmt.Sprintf("%s %s %s>%s %s late=%v payer=%v payee=%v rev=%s",
			u.Period, u.Type, u.PayerProvince, u.PayeeProvince, u.Amount, u.Late, u.PayerReported, u.PayeeReported, u.ReversalOf)
	}
	return out
}
