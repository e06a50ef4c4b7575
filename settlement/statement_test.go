package settlement_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"gongji/money"
	"gongji/settlement"
	"gongji/settlement/settlementtest"
)

func TestBuildStatements(t *testing.T) {
	t.Parallel()
	records := augustScenario()
	rows := settlement.Rows(records)
	res := settlement.Compute(rows)
	exc := []settlement.Exception{{UsageID: "U2", Kind: settlement.ExcMismatch, Field: "kind", Provinces: []string{ha, gd}}}
	sts, err := settlement.BuildStatements(per(2026, 8), res, settlement.CountTallies(rows), exc)
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 32 {
		t.Fatalf("%d statements, want 32", len(sts))
	}
	var henan settlement.Statement
	for _, st := range sts {
		if st.Province == ha {
			henan = st
		}
		if len(st.Exceptions) > 0 != (st.Province == ha || st.Province == gd) {
			t.Errorf("%s: exceptions %v", st.Province, st.Exceptions)
		}
	}
	got := fmt.Sprintf("%s %s %s | payer %d %s | payee %d %s",
		henan.Position.Receivable, henan.Position.Payable, henan.Position.Net,
		henan.Usage.AsPayer.Entries, henan.Usage.AsPayer.Sum, henan.Usage.AsPayee.Entries, henan.Usage.AsPayee.Sum)
	// As payer: U1 1000.00, U2 250.50, R1 −200.00, U7 60.00; as payee: U3 300.00, U5 120.25.
	if want := "420.25 1110.50 -690.25 | payer 4 1110.50 | payee 2 420.25"; got != want {
		t.Errorf("henan statement: %s, want %s", got, want)
	}
	var regions, ins []string
	for _, r := range henan.Regions {
		regions = append(regions, r.Region+":"+r.Net.String())
	}
	for _, in := range henan.Instructions {
		ins = append(ins, fmt.Sprintf("%s %s→%s %s", in.Tier, in.From, in.To, in.Amount))
	}
	if g, w := strings.Join(regions, " "), "410100:-500.00 410300:-250.50 419900:60.25"; g != w {
		t.Errorf("regions %s, want %s", g, w)
	}
	if g, w := strings.Join(ins, "; "), "NATIONAL 410000→000000 690.25; PROVINCE 410000→419900 60.25; PROVINCE 410100→410000 500.00; PROVINCE 410300→410000 250.50"; g != w {
		t.Errorf("instructions %s, want %s", g, w)
	}

	// A province with no activity still gets its (zero) statement.
	if st := sts[0]; st.Province != bj || st.Position.Net.String() != "424.91" {
		t.Errorf("first statement %s %s", st.Province, st.Position.Net)
	}
	if st := sts[31]; st.Province != "660000" || !st.Position.Net.IsZero() || len(st.Instructions) != 0 {
		t.Errorf("last statement %+v", st)
	}

	// Tallies that do not add up to the figures are refused.
	bad := settlement.CountTallies(rows[1:])
	if _, err := settlement.BuildStatements(per(2026, 8), res, bad, nil); !errors.Is(err, settlement.ErrStatementMismatch) {
		t.Errorf("want ErrStatementMismatch, got %v", err)
	}
	// An inconsistent result is refused before any statement is cut.
	broken := cloneResult(res)
	broken.Instructions = broken.Instructions[1:]
	if _, err := settlement.BuildStatements(per(2026, 8), broken, settlement.CountTallies(rows), nil); !errors.Is(err, settlement.ErrInconsistent) {
		t.Errorf("want ErrInconsistent, got %v", err)
	}
	// A statement tampered with after issue fails its own reconciliation.
	henan.Instructions[0].Amount = money.MustParse("690.24")
	if err := henan.Reconcile(); !errors.Is(err, settlement.ErrStatementMismatch) {
		t.Errorf("tampered statement: %v", err)
	}
}

func TestAnswerStatement(t *testing.T) {
	t.Parallel()
	cfg := settlement.Config{}.WithDefaults()
	issued := at("2026-09-08T10:00:00+08:00")
	deadline := at("2026-09-18T10:00:00+08:00")
	if !cfg.ConfirmationDeadline(issued).Equal(deadline) {
		t.Fatalf("deadline %s", cfg.ConfirmationDeadline(issued))
	}
	item := settlement.DisputedItem{UsageID: "U2", ClaimedAmount: money.MustParse("200.50"), Reason: "pharmacy refunded 50.00 at the counter"}
	for _, tc := range []struct {
		name   string
		status settlement.StatementStatus
		answer settlement.Answer
		want   settlement.StatementStatus
		err    error
	}{
		{"confirm", settlement.StatusIssued, settlement.Answer{At: issued.Add(time.Hour)}, settlement.StatusConfirmed, nil},
		{"confirm at the deadline", settlement.StatusIssued, settlement.Answer{At: deadline}, settlement.StatusConfirmed, nil},
		{"dispute", settlement.StatusIssued, settlement.Answer{At: issued.Add(time.Hour), Disputes: []settlement.DisputedItem{item}}, settlement.StatusDisputed, nil},
		{"claim zero: should not have been cleared", settlement.StatusIssued, settlement.Answer{At: issued, Disputes: []settlement.DisputedItem{{UsageID: "U3", Reason: "unknown to us"}}}, settlement.StatusDisputed, nil},
		{"too late", settlement.StatusIssued, settlement.Answer{At: deadline.Add(time.Second)}, settlement.StatusIssued, settlement.ErrWindowClosed},
		{"already confirmed", settlement.StatusConfirmed, settlement.Answer{At: issued}, settlement.StatusConfirmed, settlement.ErrAlreadyAnswered},
		{"already deemed", settlement.StatusDeemedConfirmed, settlement.Answer{At: issued}, settlement.StatusDeemedConfirmed, settlement.ErrAlreadyAnswered},
		{"already disputed", settlement.StatusDisputed, settlement.Answer{At: issued, Disputes: []settlement.DisputedItem{item}}, settlement.StatusDisputed, settlement.ErrAlreadyAnswered},
		{"no usage id", settlement.StatusIssued, settlement.Answer{At: issued, Disputes: []settlement.DisputedItem{{Reason: "x"}}}, settlement.StatusIssued, settlement.ErrBadDispute},
		{"no reason", settlement.StatusIssued, settlement.Answer{At: issued, Disputes: []settlement.DisputedItem{{UsageID: "U2"}}}, settlement.StatusIssued, settlement.ErrBadDispute},
		{"reason too long", settlement.StatusIssued, settlement.Answer{At: issued, Disputes: []settlement.DisputedItem{{UsageID: "U2", Reason: strings.Repeat("字", 200)}}}, settlement.StatusIssued, settlement.ErrBadDispute},
		{"same usage twice", settlement.StatusIssued, settlement.Answer{At: issued, Disputes: []settlement.DisputedItem{item, item}}, settlement.StatusIssued, settlement.ErrBadDispute},
	} {
		got, err := cfg.AnswerStatement(tc.status, issued, tc.answer)
		if tc.err == nil && err != nil || tc.err != nil && !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("%s: got %s, %v; want %s, %v", tc.name, got, err, tc.want, tc.err)
		}
	}

	for _, tc := range []struct {
		status settlement.StatementStatus
		now    time.Time
		want   settlement.StatementStatus
		moved  bool
	}{
		{settlement.StatusIssued, deadline, settlement.StatusIssued, false},
		{settlement.StatusIssued, deadline.Add(time.Nanosecond), settlement.StatusDeemedConfirmed, true},
		{settlement.StatusDisputed, deadline.Add(time.Hour), settlement.StatusDisputed, false},
		{settlement.StatusConfirmed, deadline.Add(time.Hour), settlement.StatusConfirmed, false},
	} {
		got, moved := cfg.ExpireStatement(tc.status, issued, tc.now)
		if got != tc.want || moved != tc.moved {
			t.Errorf("expire %s at %s: %s %v", tc.status, tc.now, got, moved)
		}
	}
}

// TestDisputeAdjustedInNextPeriod: Henan disputes U2 of the closed August
// (250.50 cleared; the pharmacy refunded 50.00 at the counter). The
// resolution accepts 200.50, and the correction is an ADJUSTMENT of −50.00 in
// the open September, never an edit of August.
func TestDisputeAdjustedInNextPeriod(t *testing.T) {
	t.Parallel()
	var u2 settlement.Record
	for _, r := range augustScenario() {
		if r.UsageID == "U2" {
			u2 = r
		}
	}
	in := settlement.AdjustmentInput{
		Disputed:       u2,
		ResolvedAmount: money.MustParse("200.50"),
		AdjustmentID:   "A202609-U2",
		Target:         per(2026, 9),
		TargetState:    settlement.PeriodOpen,
		ResolvedAt:     at("2026-09-20T15:00:00+08:00"),
	}
	adj, err := settlement.BuildAdjustment(in)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%s %s %s %s %s/%s→%s/%s %s reversal_of=%s late=%v", adj.UsageID, adj.Period, adj.Type, adj.Kind,
		adj.PayerProvince, adj.PayerRegion, adj.PayeeProvince, adj.PayeeRegion, adj.Amount, adj.ReversalOf, adj.Late)
	if want := "A202609-U2 202609 ADJUSTMENT PHARMACY 410000/410300→440000/440300 -50.00 reversal_of=U2 late=false"; got != want {
		t.Fatalf("adjustment %s\nwant %s", got, want)
	}
	if adj.SharerRef != u2.SharerRef || adj.BeneficiaryRef != u2.BeneficiaryRef || !adj.OccurredAt.Equal(in.ResolvedAt) {
		t.Fatalf("adjustment lost pseudonyms or time: %+v", adj)
	}
	// The closed period is refused as a target, as is any non-open one.
	for _, st := range []settlement.PeriodState{settlement.PeriodClosed, settlement.PeriodSettled, settlement.PeriodClosing} {
		bad := in
		bad.Target, bad.TargetState = per(2026, 9), st
		if _, err := settlement.BuildAdjustment(bad); !errors.Is(err, settlement.ErrPeriodClosed) {
			t.Errorf("target %s: want ErrPeriodClosed, got %v", st, err)
		}
	}
	same := in
	same.Target = per(2026, 8) // the disputed record's own period, even if it were open
	if _, err := settlement.BuildAdjustment(same); !errors.Is(err, settlement.ErrAdjustmentPeriod) {
		t.Errorf("same period: %v", err)
	}
	none := in
	none.ResolvedAmount = u2.Amount
	if _, err := settlement.BuildAdjustment(none); !errors.Is(err, settlement.ErrNothingToAdjust) {
		t.Errorf("no change: %v", err)
	}
	noID := in
	noID.AdjustmentID = ""
	if _, err := settlement.BuildAdjustment(noID); !errors.Is(err, settlement.ErrInvalidRecord) {
		t.Errorf("no id: %v", err)
	}
	payerOwesMore := in
	payerOwesMore.ResolvedAmount = money.MustParse("260.00")
	if a, err := settlement.BuildAdjustment(payerOwesMore); err != nil || a.Amount.String() != "9.50" {
		t.Errorf("positive adjustment: %v %v", a.Amount, err)
	}

	// September: the adjustment plus one new usage 440100 → 410100 200.00.
	u8 := rec("U8", settlement.EntryUsage, settlement.KindMedical, "440100", "410100", "200.00", "2026-09-02T08:00:00+08:00", false, "")
	u8.Period = per(2026, 9)
	res := settlement.Compute(settlement.Rows([]settlement.Record{adj, u8}))
	if err := settlement.CheckResult(res); err != nil {
		t.Fatal(err)
	}
	// C→D −50.00, D→C 200.00: Henan rec 200.00, pay −50.00, net 250.00;
	// Guangdong rec −50.00, pay 200.00, net −250.00.
	wantIns := csvText(
		"tier,from_code,to_code,amount",
		"NATIONAL,000000,410000,250.00",
		"NATIONAL,440000,000000,250.00",
		"PROVINCE,410000,410100,200.00",
		"PROVINCE,410000,410300,50.00",
		"PROVINCE,440100,440000,200.00",
		"PROVINCE,440300,440000,50.00",
	)
	if got := string(settlementtest.InstructionsCSV(res)); got != wantIns {
		t.Errorf("september instructions\n%s want\n%s", got, wantIns)
	}
	wantGross := csvText("payer_province,payee_province,amount", "410000,440000,-50.00", "440000,410000,200.00")
	if got := string(settlementtest.GrossCSV(res)); got != wantGross {
		t.Errorf("september gross\n%s want\n%s", got, wantGross)
	}
}
