package clearingapi

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/prepay"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/region"
	"gongji/settlement"
)

// AdminServer implements clearingv1.AdminServiceServer: the national
// settlement operators' service (period close, settlement and status, the
// prepayment pool, journal verification, dispute resolution). Every method
// requires an operator certificate (gongji:operator) and checks it before it
// reads or writes anything. Safe for concurrent use.
type AdminServer struct {
	clearingv1.UnimplementedAdminServiceServer
	store  *clearingdb.Store
	prepay prepay.Config
	clock  func() time.Time
	log    *zap.Logger
}

// NewAdminServer returns the admin service on store. cfg is the prepayment
// policy used by SettlePeriod (WithDefaults is applied, then Validate: a bad
// policy fails here, at startup); clock is the service's operational clock
// (--clock-start), read once per call as the "now" of closes, settlements,
// movements and resolutions; log receives internal errors in full (callers
// only see a generic message). Errors: a nil store, clock or log, or
// prepay.ErrBadConfig.
func NewAdminServer(store *clearingdb.Store, cfg prepay.Config, clock func() time.Time, log *zap.Logger) (*AdminServer, error) {
	if store == nil || clock == nil || log == nil {
		return nil, errors.New("clearingapi: NewAdminServer needs a store, a clock and a logger")
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &AdminServer{store: store, prepay: cfg, clock: clock, log: log}, nil
}

// opsStatus is the one mapping of the errors of closing, settlement,
// statements and the prepayment pool to gRPC codes (DESIGN §5). In order:
// an invariant violation of the adapter (a bug, whatever it wraps) is
// Internal with a generic message and the full error logged; a reused
// idempotency key is AlreadyExists; a malformed key InvalidArgument; a period
// that is not closed (or an earlier one not settled) and a disputed item
// already resolved or adjusted are FailedPrecondition; everything else goes
// through the package's shared table (statusError: InvalidArgument for bad
// input, NotFound, FailedPrecondition for closed or not-yet-cut-off periods
// and answered statements, Unavailable, PermissionDenied and Unauthenticated
// statuses passed through, Internal for anything unknown). Messages of mapped
// errors are the error's own text, which names what was wrong.
func opsStatus(log *zap.Logger, op string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	switch {
	case clearingdb.IsInvariantViolation(err):
		log.Error("internal error", zap.String("op", op), zap.Error(err))
		return status.Error(codes.Internal, internalMessage)
	case errors.Is(err, clearingdb.ErrKeyReused):
		code = codes.AlreadyExists
	case errors.Is(err, clearingdb.ErrBadKey):
		code = codes.InvalidArgument
	case errors.Is(err, clearingdb.ErrPeriodNotFrozen),
		errors.Is(err, clearingdb.ErrEarlierPeriodUnsettled),
		errors.Is(err, clearingdb.ErrDisputeResolved),
		errors.Is(err, clearingdb.ErrAlreadyAdjusted):
		code = codes.FailedPrecondition
	default:
		return statusError(log, op, err)
	}
	return status.Error(code, err.Error())
}

// parsePeriod reads a setlym field. The refusal names the field and the
// form, not the value (see edge.go).
func parsePeriod(field, s string) (region.Period, error) {
	p, err := region.ParsePeriod(s)
	if err != nil {
		return region.Period{}, status.Errorf(codes.InvalidArgument, "%s%s: %s", field, quoteShort(s), codeReason(err))
	}
	return p, nil
}

// provinceArg checks a province code an operator names (prepayment,
// disputes); empty is allowed only when optional.
func provinceArg(field, v string, optional bool) error {
	if v == "" && optional {
		return nil
	}
	var c edgeCheck
	c.province(field, v)
	return c.err
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

var periodStates = map[settlement.PeriodState]clearingv1.PeriodState{
	settlement.PeriodOpen:    clearingv1.PeriodState_PERIOD_STATE_OPEN,
	settlement.PeriodClosing: clearingv1.PeriodState_PERIOD_STATE_CLOSING,
	settlement.PeriodClosed:  clearingv1.PeriodState_PERIOD_STATE_CLOSED,
	settlement.PeriodSettled: clearingv1.PeriodState_PERIOD_STATE_SETTLED,
}

// periodStatusPB maps a period's status. Figures of a closed period
// (netting efficiency, journal head) stay empty until it is CLOSED.
func periodStatusPB(st clearingdb.PeriodStatus) *clearingv1.PeriodStatus {
	out := &clearingv1.PeriodStatus{
		Setlym:         st.Setlym.String(),
		State:          periodStates[st.State],
		CutOff:         ts(st.CutOff),
		ClosedAt:       ts(st.ClosedAt),
		SettledAt:      ts(st.SettledAt),
		UsageCount:     st.UsageCount,
		LateCount:      st.LateCount,
		Gross:          st.Gross.String(),
		ExceptionCount: st.ExceptionCount,
	}
	if st.Frozen() {
		out.NettingEfficiency = st.NettingEfficiency.StringFixed(settlement.EfficiencyPlaces)
		out.JournalHead = st.JournalHead.String()
	}
	return out
}

// ClosePeriod closes a period (R15) at the service clock's now and returns
// its status; a closed period's status is returned unchanged.
func (s *AdminServer) ClosePeriod(ctx context.Context, req *clearingv1.PeriodRequest) (*clearingv1.PeriodStatus, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	p, err := parsePeriod("setlym", req.GetSetlym())
	if err != nil {
		return nil, err
	}
	st, err := s.store.ClosePeriod(ctx, p, s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "ClosePeriod", err)
	}
	s.log.Info("period closed", zap.String("period", p.String()), zap.String("gross_yuan", st.Gross.String()),
		zap.Int64("usages", st.UsageCount), zap.String("journal_head", st.JournalHead.String()))
	return periodStatusPB(st), nil
}

// SettlePeriod settles a closed period (R16, R18): prepayment draws,
// payouts, top-up requests; a settled period's status is returned unchanged.
func (s *AdminServer) SettlePeriod(ctx context.Context, req *clearingv1.PeriodRequest) (*clearingv1.PeriodStatus, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	p, err := parsePeriod("setlym", req.GetSetlym())
	if err != nil {
		return nil, err
	}
	st, err := s.store.SettlePeriod(ctx, p, s.prepay, s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "SettlePeriod", err)
	}
	s.log.Info("period settled", zap.String("period", p.String()))
	return periodStatusPB(st), nil
}

// GetPeriodStatus returns one period's status.
func (s *AdminServer) GetPeriodStatus(ctx context.Context, req *clearingv1.PeriodRequest) (*clearingv1.PeriodStatus, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	p, err := parsePeriod("setlym", req.GetSetlym())
	if err != nil {
		return nil, err
	}
	st, err := s.store.PeriodStatus(ctx, p)
	if err != nil {
		return nil, opsStatus(s.log, "GetPeriodStatus", err)
	}
	return periodStatusPB(st), nil
}

// ListPeriods returns every period's status, oldest first.
func (s *AdminServer) ListPeriods(ctx context.Context, _ *clearingv1.ListPeriodsRequest) (*clearingv1.ListPeriodsResponse, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	sts, err := s.store.PeriodStatuses(ctx)
	if err != nil {
		return nil, opsStatus(s.log, "ListPeriods", err)
	}
	out := &clearingv1.ListPeriodsResponse{}
	for _, st := range sts {
		out.Periods = append(out.Periods, periodStatusPB(st))
	}
	return out, nil
}

func prepayAccountPB(a clearingdb.PrepayAccount) *clearingv1.PrepayAccount {
	return &clearingv1.PrepayAccount{
		ProvinceCode:     a.Province,
		Deposit:          a.Deposit.String(),
		Required:         a.Required.String(),
		Outstanding:      a.Outstanding.String(),
		ReplenishmentDue: a.ReplenishDue.String(),
		Warning:          a.Warning,
	}
}

// GetPrepayStatus returns one province's prepayment account, or all 32 for
// an empty province_code, and the pool total.
func (s *AdminServer) GetPrepayStatus(ctx context.Context, req *clearingv1.GetPrepayStatusRequest) (*clearingv1.PrepayStatus, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	if err := provinceArg("province_code", req.GetProvinceCode(), true); err != nil {
		return nil, err
	}
	ps, err := s.store.PrepayStatus(ctx, req.GetProvinceCode())
	if err != nil {
		return nil, opsStatus(s.log, "GetPrepayStatus", err)
	}
	out := &clearingv1.PrepayStatus{PoolTotal: ps.PoolTotal.String()}
	for _, a := range ps.Accounts {
		out.Accounts = append(out.Accounts, prepayAccountPB(a))
	}
	return out, nil
}

// movement parses a PrepayMovementRequest: province_code a provincial unit,
// amount a positive decimal with at most two places, movement_key a key
// (the store checks the last again). Errors: InvalidArgument naming the field.
func movement(req *clearingv1.PrepayMovementRequest) (clearingdb.PrepayMovement, error) {
	var c edgeCheck
	c.province("province_code", req.GetProvinceCode())
	amt := c.amount("amount", req.GetAmount())
	c.key("movement_key", req.GetMovementKey(), settlement.UsageIDLenMax)
	if c.err != nil {
		return clearingdb.PrepayMovement{}, c.err
	}
	return clearingdb.PrepayMovement{Province: req.GetProvinceCode(), Amount: amt, Key: req.GetMovementKey()}, nil
}

// FundPrepay books money a province pays into its deposit; idempotent by
// movement_key.
func (s *AdminServer) FundPrepay(ctx context.Context, req *clearingv1.PrepayMovementRequest) (*clearingv1.PrepayAccount, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	m, err := movement(req)
	if err != nil {
		return nil, err
	}
	a, err := s.store.FundPrepay(ctx, m, s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "FundPrepay", err)
	}
	s.log.Info("prepay funded", zap.String("province", m.Province), zap.String("amount_yuan", m.Amount.String()), zap.String("movement_key", m.Key))
	return prepayAccountPB(a), nil
}

// ReplenishPrepay books a payer restoring what settlements drew; at most
// what is due; idempotent by movement_key.
func (s *AdminServer) ReplenishPrepay(ctx context.Context, req *clearingv1.PrepayMovementRequest) (*clearingv1.PrepayAccount, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	m, err := movement(req)
	if err != nil {
		return nil, err
	}
	a, err := s.store.ReplenishPrepay(ctx, m, s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "ReplenishPrepay", err)
	}
	s.log.Info("prepay replenished", zap.String("province", m.Province), zap.String("amount_yuan", m.Amount.String()), zap.String("movement_key", m.Key))
	return prepayAccountPB(a), nil
}

// VerifyJournal recomputes the clearing journal's hash chain and balances. A
// broken journal is a successful call with ok = false and first_error naming
// the first bad entry.
func (s *AdminServer) VerifyJournal(ctx context.Context, _ *clearingv1.VerifyJournalRequest) (*clearingv1.VerifyJournalResponse, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	chk, err := s.store.VerifyJournal(ctx)
	if err != nil {
		return nil, opsStatus(s.log, "VerifyJournal", err)
	}
	if !chk.OK {
		s.log.Error("clearing journal does not verify", zap.Int64("entry", chk.BadEntryID), zap.String("problem", chk.Problem))
	}
	return &clearingv1.VerifyJournalResponse{Ok: chk.OK, Entries: chk.Entries, Head: chk.Head.String(), FirstError: chk.Problem}, nil
}

// ResolveDispute settles a disputed statement item; accepted items become an
// ADJUSTMENT in the next open period. adjustment_amount is the signed
// adjustment as it will appear in usages.csv; empty means "the province's
// claimed amount is right". Idempotent by resolution_key.
func (s *AdminServer) ResolveDispute(ctx context.Context, req *clearingv1.ResolveDisputeRequest) (*clearingv1.ResolveDisputeResponse, error) {
	if err := requireOperator(ctx); err != nil {
		return nil, err
	}
	p, err := parsePeriod("setlym", req.GetSetlym())
	if err != nil {
		return nil, err
	}
	if err := provinceArg("province_code", req.GetProvinceCode(), false); err != nil {
		return nil, err
	}
	in := clearingdb.DisputeResolution{
		Period: p, Province: req.GetProvinceCode(), UsageID: req.GetUsageId(), Accept: req.GetAccept(), Key: req.GetResolutionKey(),
	}
	if a := req.GetAdjustmentAmount(); a != "" {
		if !in.Accept {
			return nil, status.Error(codes.InvalidArgument, "adjustment_amount is only meaningful when the dispute is accepted")
		}
		amt, err := money.Parse(a)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "adjustment_amount: %s", moneyReason(err))
		}
		if amt.IsZero() {
			return nil, status.Error(codes.InvalidArgument, "adjustment_amount must not be zero (reject the dispute instead)")
		}
		in.Adjustment = &amt
	}
	res, err := s.store.ResolveDispute(ctx, in, s.clock())
	if err != nil {
		return nil, opsStatus(s.log, "ResolveDispute", err)
	}
	out := &clearingv1.ResolveDisputeResponse{}
	if res.Accepted {
		out.AdjustmentUsageId, out.AdjustmentSetlym = res.AdjustmentID, res.AdjustmentPeriod.String()
	}
	s.log.Info("dispute resolved", zap.String("period", p.String()), zap.String("province", in.Province),
		zap.String("usage_key", in.UsageID), zap.Bool("accepted", res.Accepted), zap.String("adjustment", res.AdjustmentID))
	return out, nil
}
