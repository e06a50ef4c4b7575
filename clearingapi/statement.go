package clearingapi

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/clearingdb"
	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/region"
	"gongji/settlement"
)

// StatementServer implements clearingv1.StatementServiceServer: a province
// node reads, confirms and disputes its own statements (R17). The province is
// always the caller's, taken from its verified certificate; requests carry no
// province, so a node can never read or answer another province's statement,
// and any other identity (operator, clearing) is PermissionDenied. Safe for
// concurrent use.
type StatementServer struct {
	clearingv1.UnimplementedStatementServiceServer
	store *clearingdb.Store
	clock func() time.Time
	log   *zap.Logger
	// export streams province bundles (SetExport); nil: Unimplemented.
	export *ExportServer
}

// NewStatementServer returns the statement service on store. clock is the
// service's operational clock (--clock-start): the time of an answer, checked
// against the statement's confirmation window, and the "now" at which an
// unanswered statement past its window reads as DEEMED_CONFIRMED. The window
// itself is the one stored with each statement when it was issued (from the
// store's settlement.Config at close). log receives internal errors in full.
// Errors: a nil store, clock or log.
func NewStatementServer(store *clearingdb.Store, clock func() time.Time, log *zap.Logger) (*StatementServer, error) {
	if store == nil || clock == nil || log == nil {
		return nil, errors.New("clearingapi: NewStatementServer needs a store, a clock and a logger")
	}
	return &StatementServer{store: store, clock: clock, log: log}, nil
}

var statementStatuses = map[settlement.StatementStatus]clearingv1.StatementStatus{
	settlement.StatusIssued:          clearingv1.StatementStatus_STATEMENT_STATUS_ISSUED,
	settlement.StatusConfirmed:       clearingv1.StatementStatus_STATEMENT_STATUS_CONFIRMED,
	settlement.StatusDisputed:        clearingv1.StatementStatus_STATEMENT_STATUS_DISPUTED,
	settlement.StatusDeemedConfirmed: clearingv1.StatementStatus_STATEMENT_STATUS_DEEMED_CONFIRMED,
}

// statementPB maps a stored statement to the wire.
func statementPB(v clearingdb.StatementView) *clearingv1.Statement {
	out := &clearingv1.Statement{
		Setlym:       v.Period.String(),
		ProvinceCode: v.Province,
		PeriodState:  periodStates[v.PeriodState],
		Status:       statementStatuses[v.Status],
		Receivable:   v.Position.Receivable.String(),
		Payable:      v.Position.Payable.String(),
		Net:          v.Position.Net.String(),
		UsageCount:   int64(v.Usage.AsPayer.Entries + v.Usage.AsPayee.Entries),
		IssuedAt:     ts(v.IssuedAt),
		ConfirmBy:    ts(v.ConfirmBy),
	}
	for _, r := range v.Regions {
		out.Regions = append(out.Regions, &clearingv1.RegionLine{
			RegionCode: r.Region, Receivable: r.Receivable.String(), Payable: r.Payable.String(), Net: r.Net.String(),
		})
	}
	for _, in := range v.Instructions {
		out.Instructions = append(out.Instructions, &clearingv1.Instruction{
			Tier: string(in.Tier), FromCode: in.From, ToCode: in.To, Amount: in.Amount.String(),
		})
	}
	for _, e := range v.ReconExceptions {
		out.Exceptions = append(out.Exceptions, &clearingv1.ReconciliationException{UsageId: e.UsageID, Kind: e.Kind, Detail: e.Detail})
	}
	for _, d := range v.Disputes {
		out.Disputes = append(out.Disputes, &clearingv1.DisputedItem{
			UsageId: d.UsageID, ClaimedAmount: d.ClaimedAmount.String(), Reason: d.Reason,
		})
	}
	if r := v.Prepay; r != nil {
		out.Prepay = &clearingv1.PrepayLine{
			DepositBefore: r.DepositBefore.String(), Drawn: r.Drawn.String(), Outstanding: r.Outstanding.String(),
			DepositAfter: r.DepositAfter.String(), RequiredNext: r.RequiredNext.String(), Warning: r.Warning,
		}
	}
	return out
}

// callerAndPeriod authorises a province caller and parses its setlym.
func callerAndPeriod(ctx context.Context, setlym string) (string, region.Period, error) {
	prov, err := callerProvince(ctx)
	if err != nil {
		return "", region.Period{}, err
	}
	p, err := parsePeriod("setlym", setlym)
	if err != nil {
		return "", region.Period{}, err
	}
	return prov, p, nil
}

// GetStatement returns the caller's statement of a closed period.
func (s *StatementServer) GetStatement(ctx context.Context, req *clearingv1.GetStatementRequest) (*clearingv1.Statement, error) {
	prov, p, err := callerAndPeriod(ctx, req.GetSetlym())
	if err != nil {
		return nil, err
	}
	v, err := s.store.GetStatement(ctx, p, prov, s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "GetStatement", err)
	}
	return statementPB(v), nil
}

// ConfirmStatement confirms the caller's statement within its window;
// idempotent by confirm_key.
func (s *StatementServer) ConfirmStatement(ctx context.Context, req *clearingv1.ConfirmStatementRequest) (*clearingv1.Statement, error) {
	prov, p, err := callerAndPeriod(ctx, req.GetSetlym())
	if err != nil {
		return nil, err
	}
	v, err := s.store.ConfirmStatement(ctx, p, prov, req.GetConfirmKey(), s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "ConfirmStatement", err)
	}
	s.log.Info("statement confirmed", zap.String("period", p.String()), zap.String("province", prov))
	return statementPB(v), nil
}

// DisputeStatement disputes items of the caller's statement within its
// window; each claimed_amount is a signed decimal with at most two places
// ("0" means the record should not have been cleared). Idempotent by
// dispute_key.
func (s *StatementServer) DisputeStatement(ctx context.Context, req *clearingv1.DisputeStatementRequest) (*clearingv1.Statement, error) {
	prov, p, err := callerAndPeriod(ctx, req.GetSetlym())
	if err != nil {
		return nil, err
	}
	if n := len(req.GetItems()); n == 0 || n > settlement.DisputedItemsMax {
		return nil, status.Errorf(codes.InvalidArgument, "a dispute needs 1..%d items, got %d", settlement.DisputedItemsMax, n)
	}
	items := make([]settlement.DisputedItem, len(req.GetItems()))
	for i, it := range req.GetItems() {
		amt, err := money.Parse(it.GetClaimedAmount())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "items[%d].claimed_amount: %s", i, moneyReason(err))
		}
		items[i] = settlement.DisputedItem{UsageID: it.GetUsageId(), ClaimedAmount: amt, Reason: it.GetReason()}
	}
	v, err := s.store.DisputeStatement(ctx, p, prov, items, req.GetDisputeKey(), s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "DisputeStatement", err)
	}
	s.log.Info("statement disputed", zap.String("period", p.String()), zap.String("province", prov), zap.Int("items", len(items)))
	return statementPB(v), nil
}

// SetExport attaches the export server that streams province-scoped bundles.
// Without it GetProvinceExport answers Unimplemented.
func (s *StatementServer) SetExport(e *ExportServer) { s.export = e }

// GetProvinceExport streams the caller's own province-scoped export bundle of
// a settled period (ExportServer.GetProvinceExport does the work).
func (s *StatementServer) GetProvinceExport(req *clearingv1.GetProvinceExportRequest, stream grpc.ServerStreamingServer[clearingv1.ExportChunk]) error {
	if _, _, err := callerAndPeriod(stream.Context(), req.GetSetlym()); err != nil {
		return err
	}
	if s.export == nil {
		return status.Error(codes.Unimplemented, "GetProvinceExport is not configured on this server")
	}
	return s.export.GetProvinceExport(req, stream)
}
