package console_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/migrations"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// The fixture: a demo-sized national month built in a fresh clearing
// database through clearingdb's public functions only, the way the service
// builds it: both sides' reports ingested per province (IngestBatch), the
// previous month closed and settled, late records, the month closed
// (ClosePeriod), deposits funded (FundPrepay) so that some payers draw most
// of their deposit and some fall short, settled (SettlePeriod), statements
// confirmed and disputed, one dispute resolved with an adjustment in the
// next (open) month.

// Periods and instants of the fixture (Asia/Shanghai).
var (
	fxPrev = region.Period{Year: 2026, Month: time.September}
	fxCur  = region.Period{Year: 2026, Month: time.October}
	fxNext = region.Period{Year: 2026, Month: time.November}
	// fxNow is the console's clock: statements issued at the close are still
	// in their confirmation window.
	fxNow = time.Date(2026, time.November, 8, 12, 0, 0, 0, region.Shanghai)
)

// fixture is the built database and what the tests compare against.
type fixture struct {
	db       *pgtest.DB
	store    *clearingdb.Store
	usages   int // usages planned in fxCur
	disputer string
	disputed []string // usage ids disputed by disputer
}

var kinds = []string{"MEDICAL", "PHARMACY", "RESIDENT_PREMIUM", "LTC_PREMIUM"}

// allRegions lists the 387 pooling regions in code order.
func allRegions() []region.Region {
	var out []region.Region
	for _, p := range region.Provinces() {
		out = append(out, p.Regions...)
	}
	return out
}

// outbox collects each reporting province's records with its own sequence.
type outbox struct {
	recs map[string][]clearingdb.Record
	seq  map[string]int64
}

func newOutbox() *outbox {
	return &outbox{recs: map[string][]clearingdb.Record{}, seq: map[string]int64{}}
}

func (o *outbox) add(from string, r clearingdb.Record) {
	o.seq[from]++
	r.Seq = o.seq[from]
	o.recs[from] = append(o.recs[from], r)
}

// flush ingests every province's records in batches of at most 1000 and
// empties the outbox (sequences keep counting).
func (o *outbox) flush(t testing.TB, st *clearingdb.Store, now time.Time) {
	t.Helper()
	ctx := context.Background()
	codes := make([]string, 0, len(o.recs))
	for c := range o.recs {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	for _, c := range codes {
		recs := o.recs[c]
		for len(recs) > 0 {
			n := min(len(recs), 1000)
			ack, err := st.IngestBatch(ctx, c, recs[:n], now)
			if err != nil {
				t.Fatalf("ingest from %s: %v", c, err)
			}
			_ = ack // rejections are part of the fixture (REJECTED exceptions)
			recs = recs[n:]
		}
	}
	o.recs = map[string][]clearingdb.Record{}
}

func usageRecord(key, kind string, payer, payee region.Region, amount money.Yuan, at time.Time, n int) clearingdb.Record {
	return clearingdb.Record{Kind: clearingdb.RecordUsage, UsageKey: key, UsageKind: kind,
		PayerProvince: payer.ProvinceCode, PayerRegion: payer.Code, PayeeProvince: payee.ProvinceCode, PayeeRegion: payee.Code,
		Amount: amount.String(), OccurredAt: at, SharerRef: fmt.Sprintf("%032x", 1_000_000+n),
		BeneficiaryRef: fmt.Sprintf("%032x", 2_000_000+n), RelationshipID: fmt.Sprintf("R%08d", n)}
}

// both adds the PAYER and PAYEE reports of r.
func (o *outbox) both(r clearingdb.Record) {
	pr, pe := r, r
	pr.Role, pe.Role = clearingdb.RolePayer, clearingdb.RolePayee
	o.add(r.PayerProvince, pr)
	o.add(r.PayeeProvince, pe)
}

// buildFixture builds the month with `usages` usages in fxCur (every
// region is payer and payee of some) and about a tenth of that in fxPrev.
func buildFixture(t testing.TB, usages int) *fixture {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t, migrations.Clearing)
	st, err := clearingdb.New(db.Pool, clearingdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{db: db, store: st, usages: usages}
	rng := rand.New(rand.NewPCG(7, uint64(usages)))
	regs := allRegions()
	pick := func(i int) (region.Region, region.Region) {
		payer := regs[i%len(regs)]
		for k := 0; ; k++ {
			payee := regs[(i*7+13+k*31+rng.IntN(len(regs)))%len(regs)]
			if payee.ProvinceCode != payer.ProvinceCode {
				return payer, payee
			}
		}
	}
	amount := func() money.Yuan { return money.FromFen(100 + rng.Int64N(300_000)) }
	ob := newOutbox()

	// Deposits before anything is settled: small, so that September's
	// draws use most of some and October needs top-ups.
	for i, c := range region.ProvinceCodes() {
		fund(t, st, c, money.FromFen(int64(1_000+i*100)*100), "open-"+c, fxPrev.Start())
	}

	// September: a small month, closed and settled.
	for i := range max(usages/10, 50) {
		payer, payee := pick(i + 5)
		at := fxPrev.Start().Add(time.Duration(1+i%600) * time.Hour)
		ob.both(usageRecord(fmt.Sprintf("S%06d", i), kinds[i%4], payer, payee, amount(), at, 500_000+i))
	}
	ob.flush(t, st, fxPrev.End().Add(-time.Hour))
	prevCut := fxPrev.CutOff(settlement.DefaultCutOffGrace)
	if _, err := st.ClosePeriod(ctx, fxPrev, prevCut.Add(time.Hour)); err != nil {
		t.Fatalf("close %s: %v", fxPrev, err)
	}
	if _, err := st.SettlePeriod(ctx, fxPrev, prepay.Config{}, prevCut.Add(70*time.Minute)); err != nil {
		t.Fatalf("settle %s: %v", fxPrev, err)
	}

	// Late: September records arriving after September's cut-off go to
	// October, marked late.
	for i := range 24 {
		payer, payee := pick(i*17 + 3)
		at := fxPrev.End().Add(-time.Duration(2+i) * time.Hour)
		ob.both(usageRecord(fmt.Sprintf("L%06d", i), kinds[i%4], payer, payee, amount(), at, 600_000+i))
	}
	ob.flush(t, st, prevCut.Add(2*time.Hour))

	// October: the month itself, with the faults operators must see.
	for i := range usages {
		payer, payee := pick(i)
		at := fxCur.Start().Add(time.Duration(i%(30*24*60)) * time.Minute)
		r := usageRecord(fmt.Sprintf("U%06d", i), kinds[i%4], payer, payee, amount(), at, i)
		pr, pe := r, r
		pr.Role, pe.Role = clearingdb.RolePayer, clearingdb.RolePayee
		switch {
		case i%97 == 5: // only the payer reported: ONE_SIDED at close
			ob.add(r.PayerProvince, pr)
			continue
		case i%101 == 11: // the payee recorded another amount: AMOUNT_DIFFERS
			pe.Amount = money.MustParse(r.Amount).Add(money.MustParse("1.00")).String()
		case i%103 == 13: // the payee recorded another kind: FIELD_DIFFERS
			pe.UsageKind = kinds[(i+1)%4]
		}
		ob.add(r.PayerProvince, pr)
		ob.add(r.PayeeProvince, pe)
		if i%13 == 0 { // a partial refund later in the month
			rev := r
			rev.Kind, rev.UsageKey, rev.ReversalOf = clearingdb.RecordReversal, fmt.Sprintf("V%06d", i), r.UsageKey
			rev.Amount = money.MustParse(r.Amount).MulRatio(1, 3).Max(money.MustParse("0.01")).String()
			rev.OccurredAt = at.Add(time.Hour)
			if rev.OccurredAt.Before(fxCur.End()) {
				ob.both(rev)
			}
		}
	}
	ob.flush(t, st, fxCur.End().Add(time.Hour))
	// A payer sending a key again with another payload: REJECTED.
	for i := 17; i < usages; i += 307 {
		payer, payee := pick(i)
		_ = payee
		r := usageRecord(fmt.Sprintf("U%06d", i), kinds[i%4], payer, payee, money.MustParse("9.99"), fxCur.Start(), i)
		r.Role = clearingdb.RolePayer
		ob.add(payer.ProvinceCode, r)
	}
	ob.flush(t, st, fxCur.End().Add(2*time.Hour))

	cut := fxCur.CutOff(settlement.DefaultCutOffGrace)
	if _, err := st.ClosePeriod(ctx, fxCur, cut.Add(time.Hour)); err != nil {
		t.Fatalf("close %s: %v", fxCur, err)
	}

	// Deposits against October's obligations: ample, most of it (warning),
	// too little (shortfall), nothing added.
	res, err := st.PeriodResult(ctx, fxCur)
	if err != nil {
		t.Fatal(err)
	}
	now, err := st.PrepayStatus(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	deposit := map[string]money.Yuan{}
	for _, a := range now.Accounts {
		deposit[a.Province] = a.Deposit
	}
	payers := 0
	for _, p := range res.Positions {
		if !p.Net.IsNegative() {
			continue
		}
		obligation := p.Net.Neg()
		var target money.Yuan
		switch payers % 4 {
		case 0:
			target = obligation.MulRatio(2, 1)
		case 1:
			target = obligation.MulRatio(6, 5) // draws 83 %: warning
		case 2:
			target = obligation.MulRatio(1, 2) // falls short
		case 3:
			target = deposit[p.Province]
		}
		payers++
		if add := target.Sub(deposit[p.Province]); add.IsPositive() {
			fund(t, st, p.Province, add, "oct-"+p.Province, cut.Add(80*time.Minute))
		}
	}
	if _, err := st.SettlePeriod(ctx, fxCur, prepay.Config{}, cut.Add(90*time.Minute)); err != nil {
		t.Fatalf("settle %s: %v", fxCur, err)
	}

	// Statements: a few confirmed, one disputed (two items), one item
	// resolved with an adjustment in November.
	for i, c := range region.ProvinceCodes() {
		if i%3 == 0 && c != "410000" {
			if _, err := st.ConfirmStatement(ctx, fxCur, c, "confirm-"+c, cut.Add(24*time.Hour)); err != nil {
				t.Fatalf("confirm %s: %v", c, err)
			}
		}
	}
	us, err := st.Usages(ctx, fxCur)
	if err != nil {
		t.Fatal(err)
	}
	f.disputer = "410000"
	var items []settlement.DisputedItem
	for _, u := range us {
		if len(items) == 2 {
			break
		}
		if u.PayerProvince == f.disputer && u.Type == settlement.EntryUsage && !u.Late {
			items = append(items, settlement.DisputedItem{UsageID: u.UsageID, ClaimedAmount: u.Amount.MulRatio(1, 2), Reason: "患者已在本地退费 refunded locally"})
			f.disputed = append(f.disputed, u.UsageID)
		}
	}
	if len(items) != 2 {
		t.Fatalf("fixture: %s pays for %d usages, want 2 to dispute", f.disputer, len(items))
	}
	if _, err := st.DisputeStatement(ctx, fxCur, f.disputer, items, "dispute-"+f.disputer, cut.Add(25*time.Hour)); err != nil {
		t.Fatalf("dispute: %v", err)
	}
	if _, err := st.ResolveDispute(ctx, clearingdb.DisputeResolution{Period: fxCur, Province: f.disputer, UsageID: items[0].UsageID,
		Accept: true, Key: "resolve-1"}, fxNext.Start().Add(7*24*time.Hour)); err != nil {
		t.Fatalf("resolve: %v", err)
	}
	return f
}

func fund(t testing.TB, st *clearingdb.Store, province string, amount money.Yuan, key string, at time.Time) {
	t.Helper()
	if _, err := st.FundPrepay(context.Background(), clearingdb.PrepayMovement{Province: province, Amount: amount, Key: key}, at); err != nil {
		t.Fatalf("fund %s %s: %v", province, amount, err)
	}
}
