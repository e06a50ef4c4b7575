package clearingapi_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"gongji/internal/tlsconf"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/settlement"
)

func (f *opsFixture) statements(t *testing.T, province string) clearingv1.StatementServiceClient {
	return clearingv1.NewStatementServiceClient(f.conn(t, tlsconf.Identity{Kind: tlsconf.Province, Province: province}))
}

func TestStatementServiceOwnProvinceOnly(t *testing.T) {
	t.Parallel()
	f := opsSetup(t)
	ctx := opsCtx(t)
	admin := f.admin(t)
	sh, bj, gd := f.statements(t, opsSH), f.statements(t, opsBJ), f.statements(t, opsGD)

	_, err := sh.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: "202607"})
	opsWant(t, "statement of an open period", err, codes.FailedPrecondition, "not closed")
	_, err = sh.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: "7"})
	opsWant(t, "bad setlym", err, codes.InvalidArgument, "setlym")

	f.setNow(opsAfterCut)
	if _, err := admin.ClosePeriod(ctx, &clearingv1.PeriodRequest{Setlym: "202607"}); err != nil {
		t.Fatal(err)
	}

	// Operators and the clearing identity do not read statements.
	for _, id := range []tlsconf.Identity{{Kind: tlsconf.Operator}, {Kind: tlsconf.Clearing}} {
		c := clearingv1.NewStatementServiceClient(f.conn(t, id))
		_, err := c.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: "202607"})
		opsWant(t, id.String()+" GetStatement", err, codes.PermissionDenied, "province nodes only")
		_, err = c.ConfirmStatement(ctx, &clearingv1.ConfirmStatementRequest{Setlym: "202607", ConfirmKey: "k"})
		opsWant(t, id.String()+" ConfirmStatement", err, codes.PermissionDenied, "province nodes only")
	}

	// Each province reads its own statement, and only its own.
	s, err := sh.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: "202607"})
	if err != nil {
		t.Fatal(err)
	}
	if s.GetProvinceCode() != opsSH || s.GetNet() != "120.00" || s.GetReceivable() != "150.00" || s.GetPayable() != "30.00" ||
		s.GetUsageCount() != 3 || len(s.GetRegions()) != 1 || s.GetRegions()[0].GetRegionCode() != "310100" ||
		len(s.GetInstructions()) != 2 || s.GetStatus() != clearingv1.StatementStatus_STATEMENT_STATUS_ISSUED ||
		s.GetPeriodState() != clearingv1.PeriodState_PERIOD_STATE_CLOSED || s.GetPrepay() != nil ||
		!s.GetConfirmBy().AsTime().Equal(opsAfterCut.Add(settlement.DefaultConfirmationWindow)) {
		t.Fatalf("statement of 上海: %v", s)
	}
	for _, in := range s.GetInstructions() {
		if in.GetFromCode() != opsSH && in.GetToCode() != opsSH {
			t.Fatalf("上海 sees an instruction it is not party to: %v", in)
		}
	}
	b, err := bj.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: "202607"})
	if err != nil || b.GetProvinceCode() != opsBJ || b.GetNet() != "-70.00" {
		t.Fatalf("statement of 北京: %v, %v", b, err)
	}

	// Disputes: only records the caller is party to, well-formed amounts.
	_, err = bj.DisputeStatement(ctx, &clearingv1.DisputeStatementRequest{Setlym: "202607", DisputeKey: "d1",
		Items: []*clearingv1.DisputedItem{{UsageId: "U3", ClaimedAmount: "0", Reason: "not ours"}}})
	opsWant(t, "dispute another province's record", err, codes.InvalidArgument, "U3")
	_, err = bj.DisputeStatement(ctx, &clearingv1.DisputeStatementRequest{Setlym: "202607", DisputeKey: "d1",
		Items: []*clearingv1.DisputedItem{{UsageId: "U1", ClaimedAmount: "ninety", Reason: "x"}}})
	opsWant(t, "bad claimed amount", err, codes.InvalidArgument, "claimed_amount")
	_, err = bj.DisputeStatement(ctx, &clearingv1.DisputeStatementRequest{Setlym: "202607", DisputeKey: "d1"})
	opsWant(t, "no items", err, codes.InvalidArgument, "items")

	dispute := &clearingv1.DisputeStatementRequest{Setlym: "202607", DisputeKey: "sh-d1",
		Items: []*clearingv1.DisputedItem{{UsageId: "U1", ClaimedAmount: "90.00", Reason: "a refund of 10.00 was not reported"}}}
	s, err = sh.DisputeStatement(ctx, dispute)
	if err != nil || s.GetStatus() != clearingv1.StatementStatus_STATEMENT_STATUS_DISPUTED || len(s.GetDisputes()) != 1 {
		t.Fatalf("dispute: %v, %v", s, err)
	}
	if s, err = sh.DisputeStatement(ctx, dispute); err != nil || s.GetStatus() != clearingv1.StatementStatus_STATEMENT_STATUS_DISPUTED {
		t.Fatalf("replayed dispute: %v, %v", s, err)
	}

	// 北京 confirms; a second answer under another key is refused.
	if s, err = bj.ConfirmStatement(ctx, &clearingv1.ConfirmStatementRequest{Setlym: "202607", ConfirmKey: "bj-c1"}); err != nil ||
		s.GetStatus() != clearingv1.StatementStatus_STATEMENT_STATUS_CONFIRMED {
		t.Fatalf("confirm: %v, %v", s, err)
	}
	_, err = bj.ConfirmStatement(ctx, &clearingv1.ConfirmStatementRequest{Setlym: "202607", ConfirmKey: "bj-c2"})
	opsWant(t, "second confirmation", err, codes.FailedPrecondition, "already answered")
	_, err = bj.DisputeStatement(ctx, &clearingv1.DisputeStatementRequest{Setlym: "202607", DisputeKey: "bj-c1",
		Items: []*clearingv1.DisputedItem{{UsageId: "U1", ClaimedAmount: "1.00", Reason: "x"}}})
	opsWant(t, "the confirmation's key for a dispute", err, codes.AlreadyExists, "bj-c1")

	// 广东 stays silent: after the window its statement reads as deemed
	// confirmed and an answer is too late.
	f.setNow(opsAfterCut.Add(settlement.DefaultConfirmationWindow + time.Minute))
	_, err = gd.ConfirmStatement(ctx, &clearingv1.ConfirmStatementRequest{Setlym: "202607", ConfirmKey: "gd-c1"})
	opsWant(t, "late confirmation", err, codes.FailedPrecondition, "window")
	if s, err = gd.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: "202607"}); err != nil ||
		s.GetStatus() != clearingv1.StatementStatus_STATEMENT_STATUS_DEEMED_CONFIRMED {
		t.Fatalf("广东 after the window: %v, %v", s, err)
	}

	// The operator accepts 上海's dispute with an explicit adjustment.
	res := &clearingv1.ResolveDisputeRequest{Setlym: "202607", ProvinceCode: opsSH, UsageId: "U1", Accept: true,
		AdjustmentAmount: "-10.00", ResolutionKey: "res-1"}
	r, err := admin.ResolveDispute(ctx, res)
	if err != nil || r.GetAdjustmentSetlym() != "202608" || !strings.HasPrefix(r.GetAdjustmentUsageId(), "ADJ-202607-") {
		t.Fatalf("resolve: %v, %v", r, err)
	}
	if r2, err := admin.ResolveDispute(ctx, res); err != nil || r2.GetAdjustmentUsageId() != r.GetAdjustmentUsageId() {
		t.Fatalf("replayed resolution: %v, %v", r2, err)
	}
	res.AdjustmentAmount = "-11.00"
	_, err = admin.ResolveDispute(ctx, res)
	opsWant(t, "resolution key reused", err, codes.AlreadyExists, "res-1")
	res.ResolutionKey = "res-2"
	_, err = admin.ResolveDispute(ctx, res)
	opsWant(t, "second resolution", err, codes.FailedPrecondition, "already resolved")
	aug, err := admin.GetPeriodStatus(ctx, &clearingv1.PeriodRequest{Setlym: "202608"})
	if err != nil || aug.GetUsageCount() != 1 || aug.GetGross() != "-10.00" {
		t.Fatalf("August after the adjustment: %v, %v", aug, err)
	}

	// Without an export server attached the method is Unimplemented; the
	// identity is still checked first (export_test.go covers the wired path).
	stream, err := sh.GetProvinceExport(ctx, &clearingv1.GetProvinceExportRequest{Setlym: "202607"})
	if err == nil {
		_, err = stream.Recv()
	}
	opsWant(t, "GetProvinceExport", err, codes.Unimplemented, "not configured")
	opStream, err := clearingv1.NewStatementServiceClient(f.conn(t, tlsconf.Identity{Kind: tlsconf.Operator})).
		GetProvinceExport(ctx, &clearingv1.GetProvinceExportRequest{Setlym: "202607"})
	if err == nil {
		_, err = opStream.Recv()
	}
	if err == io.EOF {
		t.Fatal("operator export stream ended without an error")
	}
	opsWant(t, "operator GetProvinceExport", err, codes.PermissionDenied, "province nodes only")

	// A statement whose stored figures no longer reconcile is an internal
	// error: a generic message to the caller, the full error in the log.
	if _, err := f.db.Pool.Exec(context.Background(), `ALTER TABLE period_positions DISABLE TRIGGER period_positions_frozen;
		UPDATE period_positions SET receivable = receivable + 1, net = net + 1 WHERE setlym = 202607 AND province = '310000'`); err != nil {
		t.Fatal(err)
	}
	_, err = sh.GetStatement(ctx, &clearingv1.GetStatementRequest{Setlym: "202607"})
	opsWant(t, "tampered figures", err, codes.Internal, "internal error")
	if logged := f.logs.FilterMessage("internal error").FilterField(zap.String("op", "GetStatement")).All(); len(logged) != 1 ||
		!strings.Contains(logged[0].ContextMap()["error"].(string), "does not reconcile") {
		t.Fatalf("internal error log: %+v", logged)
	}
}
