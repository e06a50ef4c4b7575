package clearingdb_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/migrations"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
	"gongji/settlement/settlementtest"
)

// Helpers of the part-2 tests (close, settle, statements, prepayment,
// journal). Names start with "op" so they never collide with the ingest
// tests' helpers in this package.

const (
	opBJ = "110000" // 北京市
	opSH = "310000" // 上海市
	opHN = "410000" // 河南省
	opGD = "440000" // 广东省
)

type opBundle struct {
	ctx   context.Context
	db    *pgtest.DB
	store *clearingdb.Store
}

func opSetup(t testing.TB) opBundle {
	t.Helper()
	db := pgtest.New(t, migrations.Clearing)
	st, err := clearingdb.New(db.Pool, clearingdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return opBundle{ctx: context.Background(), db: db, store: st}
}

func opPeriod(t testing.TB, s string) region.Period {
	t.Helper()
	p, err := region.ParsePeriod(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// opAfterCutOff is one hour after p's default cut-off (5 days after month end).
func opAfterCutOff(p region.Period) time.Time {
	return p.CutOff(settlement.DefaultCutOffGrace).Add(time.Hour)
}

// opReports builds the PAYER and PAYEE reports of one cross-province record
// (a reversal when reversalOf is set; amount is always positive text).
func opReports(key, reversalOf, payerRegion, payeeRegion, amount string, at time.Time) (clearingdb.Record, clearingdb.Record) {
	r := clearingdb.Record{
		Kind: clearingdb.RecordUsage, UsageKey: key, UsageKind: "MEDICAL",
		PayerProvince: payerRegion[:2] + "0000", PayerRegion: payerRegion,
		PayeeProvince: payeeRegion[:2] + "0000", PayeeRegion: payeeRegion,
		Amount: amount, OccurredAt: at, SharerRef: "s-" + key, BeneficiaryRef: "b-" + key, RelationshipID: "R-" + key,
	}
	if reversalOf != "" {
		r.Kind, r.ReversalOf = clearingdb.RecordReversal, reversalOf
		r.SharerRef, r.BeneficiaryRef, r.RelationshipID = "s-"+reversalOf, "b-"+reversalOf, "R-"+reversalOf
	}
	pr, pe := r, r
	pr.Role, pe.Role = clearingdb.RolePayer, clearingdb.RolePayee
	return pr, pe
}

// opSeq numbers each node's outbox.
type opSeq map[string]int64

// opIngest delivers records, each from the province its role names.
func opIngest(t testing.TB, b opBundle, seq opSeq, now time.Time, recs ...clearingdb.Record) {
	t.Helper()
	for _, r := range recs {
		from := r.PayerProvince
		if r.Role == clearingdb.RolePayee {
			from = r.PayeeProvince
		}
		seq[from]++
		r.Seq = seq[from]
		ack, err := b.store.IngestBatch(b.ctx, from, []clearingdb.Record{r}, now)
		if err != nil {
			t.Fatalf("ingest %s from %s: %v", r.UsageKey, from, err)
		}
		if len(ack.Rejected) != 0 {
			t.Fatalf("ingest %s from %s rejected: %+v", r.UsageKey, from, ack.Rejected)
		}
	}
}

// opTB is what both testing.TB and *rapid.T offer.
type opTB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// opCopyRows writes settlement rows straight into period p's usages
// partition (both sides reported), for property tests and benchmarks.
func opCopyRows(t opTB, b opBundle, p region.Period, rows []settlement.Row, now time.Time) {
	t.Helper()
	if _, err := b.store.EnsurePeriod(b.ctx, p, now); err != nil {
		t.Fatal(err)
	}
	occurred := p.Start().Add(time.Hour)
	_, err := b.db.Pool.CopyFrom(b.ctx, pgx.Identifier{"usages"}, []string{"setlym", "payer_province", "usage_id",
		"entry_type", "kind", "payer_region", "payee_province", "payee_region", "amount", "occurred_at", "late",
		"reversal_of", "sharer_ref", "beneficiary_ref", "relationship_id", "payer_reported", "payee_reported", "first_at"},
		pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
			r := rows[i]
			entry, rev := "USAGE", any(nil)
			if r.Amount.IsNegative() {
				entry, rev = "REVERSAL", fmt.Sprintf("%s-U%d", p, i-1)
			}
			return []any{p.Int(), r.PayerProvince, fmt.Sprintf("%s-U%d", p, i), entry, "MEDICAL", r.PayerRegion,
				r.PayeeProvince, r.PayeeRegion, r.Amount.String(), occurred, i%7 == 3, rev, "s", "b", "R", true, true, now}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
}

// opRender renders a Result as the four bundle CSV files.
func opRender(res settlement.Result) string {
	return string(settlementtest.GrossCSV(res)) + string(settlementtest.PositionsCSV(res)) +
		string(settlementtest.AllocationCSV(res)) + string(settlementtest.InstructionsCSV(res))
}

// opResult is the stored figures of p, failing the test on error.
func opResult(t testing.TB, b opBundle, p region.Period) settlement.Result {
	t.Helper()
	res, err := b.store.PeriodResult(b.ctx, p)
	if err != nil {
		t.Fatalf("PeriodResult(%s): %v", p, err)
	}
	return res
}

// opComputeStored runs the domain's Compute over the rows stored in p.
func opComputeStored(t testing.TB, b opBundle, p region.Period) settlement.Result {
	t.Helper()
	us, err := b.store.Usages(b.ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	rows := make([]settlement.Row, len(us))
	for i, u := range us {
		rows[i] = u.Row
	}
	return settlement.Compute(rows)
}

// opVerify fails the test unless the journal verifies.
func opVerify(t testing.TB, b opBundle) clearingdb.JournalCheck {
	t.Helper()
	chk, err := b.store.VerifyJournal(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !chk.OK {
		t.Fatalf("journal: %+v", chk)
	}
	return chk
}

func opYuan(s string) money.Yuan { return money.MustParse(s) }

func opFund(t testing.TB, b opBundle, province, amount, key string, now time.Time) {
	t.Helper()
	if _, err := b.store.FundPrepay(b.ctx, clearingdb.PrepayMovement{Province: province, Amount: opYuan(amount), Key: key}, now); err != nil {
		t.Fatalf("fund %s %s: %v", province, amount, err)
	}
}

// opPrepayCSV renders prepay rows like prepay.csv.
func opPrepayCSV(rows []prepay.Row) string {
	out := ""
	for _, r := range rows {
		out += fmt.Sprintf("%s,%s,%s,%s,%s,%s,%v\n", r.Province, r.DepositBefore, r.Drawn, r.Outstanding, r.DepositAfter, r.RequiredNext, r.Warning)
	}
	return out
}

// opNonZeroPrepay keeps the prepay rows that are not all zero.
func opNonZeroPrepay(rows []prepay.Row) string {
	var keep []prepay.Row
	for _, r := range rows {
		if !(r.DepositBefore.IsZero() && r.Drawn.IsZero() && r.Outstanding.IsZero() && r.RequiredNext.IsZero()) {
			keep = append(keep, r)
		}
	}
	return opPrepayCSV(keep)
}

// opCount runs a count query.
func opCount(t testing.TB, b opBundle, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := b.db.Pool.QueryRow(b.ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func opPositionsString(ps []settlement.Position) []string {
	var out []string
	for _, p := range ps {
		if !(p.Receivable.IsZero() && p.Payable.IsZero()) {
			out = append(out, fmt.Sprintf("%s %s/%s/%s", p.Province, p.Receivable, p.Payable, p.Net))
		}
	}
	return out
}
