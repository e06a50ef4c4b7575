package clearingdb_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
	"gongji/settlement/settlementtest"
)

// The hand-computed scenario. Four provinces, a few regions, July 2026:
//
//	U1  北京 110100 → 上海 310100  100.00  both sides
//	U2  北京 110100 → 广东 440100   50.00  both sides
//	U3  上海 310100 → 北京 110100   30.00  both sides
//	U4  广东 440300 → 河南 410100   80.00  both sides
//	U5  河南 410200 → 广东 440100   20.00  payer only (ONE_SIDED at close)
//	R1  reversal of U1             −10.00  both sides
//	L1  上海 310100 → 河南 410100   40.00  occurred 31 July, arrives 7 August
//	                                       (after the cut-off): 202608, late
//
// gross   BJ→SH 90.00, BJ→GD 50.00, SH→BJ 30.00, GD→HN 80.00, HN→GD 20.00
// net     BJ 30−140 = −110.00, SH 90−30 = 60.00, GD 70−80 = −10.00, HN 80−20 = 60.00
// regions 110100 −110, 310100 +60, 440100 +70, 440300 −80, 410100 +80, 410200 −20
// efficiency 1 − 120/270 = 0.555556
//
// Deposits BJ 100.00, GD 50.00. Settlement: BJ draws 100.00 (warning, 10.00
// outstanding), GD draws 10.00; receivers SH and HN are owed 60.00 each and
// get 55.00 each (pro rata of 110.00), 5.00 each stays unpaid.
var (
	julyAt   = time.Date(2026, time.July, 15, 10, 0, 0, 0, region.Shanghai)
	lateAt   = time.Date(2026, time.July, 31, 20, 0, 0, 0, region.Shanghai)
	lateArr  = time.Date(2026, time.August, 7, 9, 0, 0, 0, region.Shanghai)
	closeJul = time.Date(2026, time.August, 7, 10, 0, 0, 0, region.Shanghai)
	settleAt = time.Date(2026, time.August, 8, 10, 0, 0, 0, region.Shanghai)
)

// opJuly loads the scenario's reports and deposits into a fresh database.
func opJuly(t testing.TB) opBundle {
	t.Helper()
	b := opSetup(t)
	seq := opSeq{}
	u1r, u1e := opReports("U1", "", "110100", "310100", "100.00", julyAt)
	u2r, u2e := opReports("U2", "", "110100", "440100", "50.00", julyAt)
	u3r, u3e := opReports("U3", "", "310100", "110100", "30.00", julyAt)
	u4r, u4e := opReports("U4", "", "440300", "410100", "80.00", julyAt)
	u5r, _ := opReports("U5", "", "410200", "440100", "20.00", julyAt)
	r1r, r1e := opReports("R1", "U1", "110100", "310100", "10.00", julyAt.Add(time.Hour))
	opIngest(t, b, seq, julyAt, u1e, u1r, u2r, u2e, u3r, u3e, u4e, u4r, u5r)
	opIngest(t, b, seq, julyAt.Add(time.Hour), r1r, r1e)
	l1r, l1e := opReports("L1", "", "310100", "410100", "40.00", lateAt)
	opIngest(t, b, seq, lateArr, l1r, l1e)
	opFund(t, b, opBJ, "100.00", "fund-bj-1", julyAt)
	opFund(t, b, opGD, "50.00", "fund-gd-1", julyAt)
	return b
}

const julyGross = `payer_province,payee_province,amount
110000,310000,90.00
110000,440000,50.00
310000,110000,30.00
410000,440000,20.00
440000,410000,80.00
`

const julyAllocation = `province_code,region_code,receivable,payable,net
110000,110100,30.00,140.00,-110.00
310000,310100,90.00,30.00,60.00
410000,410100,80.00,0.00,80.00
410000,410200,0.00,20.00,-20.00
440000,440100,70.00,0.00,70.00
440000,440300,0.00,80.00,-80.00
`

const julyInstructions = `tier,from_code,to_code,amount
NATIONAL,000000,310000,60.00
NATIONAL,000000,410000,60.00
NATIONAL,110000,000000,110.00
NATIONAL,440000,000000,10.00
PROVINCE,110100,110000,110.00
PROVINCE,310000,310100,60.00
PROVINCE,410000,410100,80.00
PROVINCE,410200,410000,20.00
PROVINCE,440000,440100,70.00
PROVINCE,440300,440000,80.00
`

const julyPrepay = `110000,100.00,100.00,10.00,0.00,280.00,true
310000,0.00,0.00,0.00,0.00,60.00,false
410000,0.00,0.00,0.00,0.00,40.00,false
440000,50.00,10.00,0.00,40.00,160.00,false
`

func TestCloseSettleScenario(t *testing.T) {
	t.Parallel()
	b := opJuly(t)
	jul, aug := opPeriod(t, "202607"), opPeriod(t, "202608")

	// Refused before the cut-off (2026-08-06 00:00 +08:00).
	if _, err := b.store.ClosePeriod(b.ctx, jul, time.Date(2026, time.August, 6, 0, 0, 0, 0, region.Shanghai)); !errors.Is(err, settlement.ErrBeforeCutOff) {
		t.Fatalf("close at the cut-off: %v, want ErrBeforeCutOff", err)
	}
	// 202608 may not close while 202607 is open (and it is before its cut-off anyway).
	if _, err := b.store.ClosePeriod(b.ctx, aug, opAfterCutOff(aug)); !errors.Is(err, settlement.ErrEarlierPeriodOpen) {
		t.Fatalf("close 202608 first: %v, want ErrEarlierPeriodOpen", err)
	}
	// Settling an open period is refused.
	if _, err := b.store.SettlePeriod(b.ctx, jul, prepay.Config{}, closeJul); !errors.Is(err, clearingdb.ErrPeriodNotFrozen) {
		t.Fatalf("settle open period: %v", err)
	}
	st, err := b.store.PeriodStatus(b.ctx, jul)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != settlement.PeriodOpen || st.UsageCount != 6 || st.ExceptionCount != 1 || st.Gross.String() != "270.00" {
		t.Fatalf("open status = %+v (want 6 rows, 1 one-sided, gross 270.00)", st)
	}

	st, err = b.store.ClosePeriod(b.ctx, jul, closeJul)
	if err != nil {
		t.Fatal(err)
	}
	cutOff := time.Date(2026, time.August, 6, 0, 0, 0, 0, region.Shanghai)
	if st.State != settlement.PeriodClosed || !st.ClosedAt.Equal(cutOff) || st.UsageCount != 6 || st.LateCount != 0 ||
		st.Gross.String() != "270.00" || st.NettingEfficiency.String() != "0.555556" || st.ExceptionCount != 1 ||
		st.OneSidedAtClose != 1 || st.JournalHead.LastID != 3 {
		t.Fatalf("closed status = %+v", st)
	}
	res := opResult(t, b, jul)
	for _, c := range []struct{ got, want string }{
		{string(settlementtest.GrossCSV(res)), julyGross},
		{string(settlementtest.AllocationCSV(res)), julyAllocation},
		{string(settlementtest.InstructionsCSV(res)), julyInstructions},
	} {
		if c.got != c.want {
			t.Fatalf("figures:\n%s\nwant\n%s", c.got, c.want)
		}
	}
	if got := opPositionsString(res.Positions); !slices.Equal(got, []string{
		"110000 30.00/140.00/-110.00", "310000 90.00/30.00/60.00", "410000 80.00/20.00/60.00", "440000 70.00/80.00/-10.00",
	}) {
		t.Fatalf("positions = %v", got)
	}
	// The SQL figures equal the domain's reference computation on the same rows.
	if want := opRender(opComputeStored(t, b, jul)); opRender(res) != want {
		t.Fatalf("SQL ≠ settlement.Compute:\n%s\nwant\n%s", opRender(res), want)
	}
	// Closing again changes nothing.
	again, err := b.store.ClosePeriod(b.ctx, jul, closeJul.Add(time.Hour))
	if err != nil || !again.ClosedAt.Equal(st.ClosedAt) || again.JournalHead.String() != st.JournalHead.String() {
		t.Fatalf("re-close = %+v, %v", again, err)
	}

	// The late record went to August.
	ast, err := b.store.PeriodStatus(b.ctx, aug)
	if err != nil || ast.UsageCount != 1 || ast.LateCount != 1 {
		t.Fatalf("202608 status = %+v, %v", ast, err)
	}

	// Statement of 上海.
	sv, err := b.store.GetStatement(b.ctx, jul, opSH, closeJul.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if sv.Status != settlement.StatusIssued || sv.Position.Net.String() != "60.00" || len(sv.Regions) != 1 ||
		sv.Usage.AsPayer.Entries != 1 || sv.Usage.AsPayer.Sum.String() != "30.00" ||
		sv.Usage.AsPayee.Entries != 2 || sv.Usage.AsPayee.Sum.String() != "90.00" ||
		len(sv.Instructions) != 2 || len(sv.ReconExceptions) != 0 || sv.Prepay != nil ||
		!sv.ConfirmBy.Equal(closeJul.Add(settlement.DefaultConfirmationWindow)) {
		t.Fatalf("statement of 上海 = %+v", sv)
	}
	gdv, err := b.store.GetStatement(b.ctx, jul, opGD, closeJul.Add(time.Hour))
	if err != nil || len(gdv.ReconExceptions) != 1 || gdv.ReconExceptions[0].UsageID != "U5" || gdv.ReconExceptions[0].Kind != clearingdb.ExcOneSided {
		t.Fatalf("statement of 广东 exceptions = %+v, %v", gdv.ReconExceptions, err)
	}

	// Settlement.
	st, err = b.store.SettlePeriod(b.ctx, jul, prepay.Config{}, settleAt)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != settlement.PeriodSettled || !st.SettledAt.Equal(settleAt) {
		t.Fatalf("settled status = %+v", st)
	}
	rows, err := b.store.PrepayRows(b.ctx, jul)
	if err != nil {
		t.Fatal(err)
	}
	if got := opNonZeroPrepay(rows); got != julyPrepay {
		t.Fatalf("prepay rows:\n%s", got)
	}
	for i, r := range rows {
		// draws + outstanding = what the payer owes (−net).
		if net := res.Positions[i].Net; net.IsNegative() && !r.Drawn.Add(r.Outstanding).Equal(net.Neg()) {
			t.Fatalf("%s: drawn %s + outstanding %s ≠ −net %s", r.Province, r.Drawn, r.Outstanding, net)
		}
	}
	opVerify(t, b)
	bal, err := b.store.JournalBalances(b.ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for acct, want := range map[string]string{
		"deposit:110000": "0.00", "deposit:440000": "40.00", "receivable:110000": "-10.00",
		"payable:310000": "5.00", "payable:410000": "5.00", "ext:bank": "-40.00", "centre:pool": "0.00",
		"clearing:receivable:110000": "0.00", "clearing:payable:310000": "0.00",
	} {
		if bal[acct].String() != want {
			t.Errorf("%s = %s, want %s", acct, bal[acct], want)
		}
	}
	ps, err := b.store.PrepayStatus(b.ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	bj := ps.Accounts[0]
	if bj.Province != opBJ || bj.Deposit.String() != "0.00" || bj.Outstanding.String() != "10.00" || bj.ReplenishDue.String() != "100.00" ||
		bj.Required.String() != "280.00" || !bj.Warning || ps.PoolTotal.String() != "40.00" {
		t.Fatalf("prepay status of 北京 = %+v, pool %s", bj, ps.PoolTotal)
	}
	if n := opCount(t, b, `SELECT count(*) FROM prepay_topups WHERE setlym = 202607`); n != 1 {
		t.Fatalf("top-up requests = %d, want 1 (北京)", n)
	}

	// 北京 pays its shortfall (passed on 5.00/5.00) and replenishes.
	m := clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("10.00"), Key: "sf-bj-1"}
	if _, err := b.store.PayShortfall(b.ctx, m, settleAt.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.ReplenishPrepay(b.ctx, clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("100.01"), Key: "rp-bj-x"}, settleAt); !errors.Is(err, prepay.ErrExceedsDue) {
		t.Fatalf("over-replenish: %v", err)
	}
	acct, err := b.store.ReplenishPrepay(b.ctx, clearingdb.PrepayMovement{Province: opBJ, Amount: opYuan("100.00"), Key: "rp-bj-1"}, settleAt)
	if err != nil || acct.Deposit.String() != "100.00" || acct.ReplenishDue.String() != "0.00" || acct.Outstanding.String() != "0.00" {
		t.Fatalf("after replenish: %+v, %v", acct, err)
	}
	bal, _ = b.store.JournalBalances(b.ctx, "payable:")
	if !bal["payable:310000"].IsZero() || !bal["payable:410000"].IsZero() {
		t.Fatalf("receivers still unpaid after the shortfall payment: %v", bal)
	}
	opVerify(t, b)

	// 上海 disputes U1: it says 80.00 (it cleared as 100.00).
	disputeAt := time.Date(2026, time.August, 9, 10, 0, 0, 0, region.Shanghai)
	items := []settlement.DisputedItem{{UsageID: "U1", ClaimedAmount: opYuan("80.00"), Reason: "partial refund not reported"}}
	if _, err := b.store.DisputeStatement(b.ctx, jul, opSH, []settlement.DisputedItem{{UsageID: "U4", ClaimedAmount: money.Zero, Reason: "not ours"}}, "d-sh-x", disputeAt); !errors.Is(err, settlement.ErrBadDispute) {
		t.Fatalf("dispute of another province's record: %v", err)
	}
	sv, err = b.store.DisputeStatement(b.ctx, jul, opSH, items, "d-sh-1", disputeAt)
	if err != nil || sv.Status != settlement.StatusDisputed || len(sv.Disputes) != 1 || sv.Disputes[0].ClearedAmount.String() != "100.00" ||
		sv.Prepay == nil || sv.Prepay.RequiredNext.String() != "60.00" {
		t.Fatalf("dispute: %+v, %v", sv, err)
	}
	// Replayed with the same key: the same answer; another answer under it: refused.
	if _, err := b.store.DisputeStatement(b.ctx, jul, opSH, items, "d-sh-1", disputeAt.Add(time.Minute)); err != nil {
		t.Fatalf("replayed dispute: %v", err)
	}
	if _, err := b.store.ConfirmStatement(b.ctx, jul, opSH, "d-sh-1", disputeAt); !errors.Is(err, clearingdb.ErrKeyReused) {
		t.Fatalf("confirm under the dispute's key: %v", err)
	}
	if _, err := b.store.ConfirmStatement(b.ctx, jul, opSH, "c-sh-1", disputeAt); !errors.Is(err, settlement.ErrAlreadyAnswered) {
		t.Fatalf("confirm after dispute: %v", err)
	}
	// 广东 confirms in time; 北京 never answers and is deemed confirmed after the window.
	if sv, err := b.store.ConfirmStatement(b.ctx, jul, opGD, "c-gd-1", disputeAt); err != nil || sv.Status != settlement.StatusConfirmed {
		t.Fatalf("confirm 广东: %+v, %v", sv.Status, err)
	}
	late := closeJul.Add(settlement.DefaultConfirmationWindow + time.Second)
	if _, err := b.store.ConfirmStatement(b.ctx, jul, opBJ, "c-bj-1", late); !errors.Is(err, settlement.ErrWindowClosed) {
		t.Fatalf("late confirm: %v", err)
	}
	if sv, err := b.store.GetStatement(b.ctx, jul, opBJ, late); err != nil || sv.Status != settlement.StatusDeemedConfirmed ||
		!sv.AnsweredAt.Equal(sv.ConfirmBy) {
		t.Fatalf("北京 after the window: %+v, %v", sv.Status, err)
	}
	n, err := b.store.ExpireStatements(b.ctx, late)
	if err != nil || n != 29 { // 32 − 上海 (disputed), 广东 (confirmed), 北京 (deemed on read)
		t.Fatalf("sweep expired %d, %v; want 29", n, err)
	}

	// The operator accepts 上海's claim: an ADJUSTMENT of −20.00 in August.
	resolveAt := time.Date(2026, time.August, 20, 10, 0, 0, 0, region.Shanghai)
	in := clearingdb.DisputeResolution{Period: jul, Province: opSH, UsageID: "U1", Accept: true, Key: "res-1"}
	rd, err := b.store.ResolveDispute(b.ctx, in, resolveAt)
	if err != nil {
		t.Fatal(err)
	}
	if !rd.Accepted || rd.AdjustmentPeriod != aug || rd.AdjustmentAmount.String() != "-20.00" || rd.AdjustmentID != clearingdb.AdjustmentID(jul, "U1") {
		t.Fatalf("resolution = %+v", rd)
	}
	if again, err := b.store.ResolveDispute(b.ctx, in, resolveAt.Add(time.Hour)); err != nil || again.AdjustmentID != rd.AdjustmentID ||
		again.AdjustmentPeriod != rd.AdjustmentPeriod || !again.AdjustmentAmount.Equal(rd.AdjustmentAmount) {
		t.Fatalf("replayed resolution = %+v, %v", again, err)
	}
	other := in
	other.Accept = false
	if _, err := b.store.ResolveDispute(b.ctx, other, resolveAt); !errors.Is(err, clearingdb.ErrKeyReused) {
		t.Fatalf("key reused: %v", err)
	}
	other.Key = "res-2"
	if _, err := b.store.ResolveDispute(b.ctx, other, resolveAt); !errors.Is(err, clearingdb.ErrDisputeResolved) {
		t.Fatalf("second resolution: %v", err)
	}
	adj, err := b.store.Usages(b.ctx, aug)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, u := range adj {
		if u.UsageID == rd.AdjustmentID {
			found = true
			if u.Type != settlement.EntryAdjustment || u.ReversalOf != "U1" || u.Amount.String() != "-20.00" || u.Late ||
				u.PayerRegion != "110100" || u.PayeeRegion != "310100" || u.Validate() != nil {
				t.Fatalf("adjustment row = %+v", u)
			}
		}
	}
	if !found {
		t.Fatalf("no adjustment row in 202608: %+v", adj)
	}
	// An adjustment is found by its id like a reported usage.
	if got, err := b.store.GetUsage(b.ctx, rd.AdjustmentID); err != nil || got.UsageID != rd.AdjustmentID ||
		got.Type != settlement.EntryAdjustment || got.Period != aug {
		t.Fatalf("GetUsage(%s) = %+v, %v", rd.AdjustmentID, got, err)
	}
	// July is untouched.
	if got := opRender(opResult(t, b, jul)); got != opRender(res) {
		t.Fatalf("July's figures changed after the resolution")
	}

	// August closes with the late record and the adjustment:
	// SH→HN 40.00, BJ→SH −20.00: BJ +20.00, SH −60.00, HN +40.00.
	st, err = b.store.ClosePeriod(b.ctx, aug, opAfterCutOff(aug))
	if err != nil {
		t.Fatal(err)
	}
	if st.UsageCount != 2 || st.LateCount != 1 || st.Gross.String() != "20.00" || st.NettingEfficiency.String() != "0" {
		t.Fatalf("August status = %+v", st)
	}
	ares := opResult(t, b, aug)
	if got := opPositionsString(ares.Positions); !slices.Equal(got, []string{
		"110000 0.00/-20.00/20.00", "310000 -20.00/40.00/-60.00", "410000 40.00/0.00/40.00",
	}) {
		t.Fatalf("August positions = %v", got)
	}
	if want := opRender(opComputeStored(t, b, aug)); opRender(ares) != want {
		t.Fatalf("August SQL ≠ Compute")
	}
	if _, err := b.store.SettlePeriod(b.ctx, aug, prepay.Config{}, opAfterCutOff(aug)); err != nil {
		t.Fatal(err)
	}
	opVerify(t, b)
}
