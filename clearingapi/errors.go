package clearingapi

import (
	"context"
	"errors"
	"gongji/internal/pgerr"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// errorCodes is the one table from the clearing service's sentinel errors to
// the gRPC codes of DESIGN §5, checked in order with errors.Is. The message of
// a mapped error is the error's own text: these errors describe the caller's
// request or the state of a period, never database internals.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{clearingdb.ErrNotFound, codes.NotFound},

	// Bad input.
	{clearingdb.ErrBatchTooLarge, codes.InvalidArgument},
	{clearingdb.ErrBadProvince, codes.InvalidArgument},
	{clearingdb.ErrBadSeq, codes.InvalidArgument},
	{clearingdb.ErrBadRecord, codes.InvalidArgument},
	{settlement.ErrInvalidRecord, codes.InvalidArgument},
	{settlement.ErrBadKind, codes.InvalidArgument},
	{settlement.ErrBadEntryType, codes.InvalidArgument},
	{settlement.ErrBadState, codes.InvalidArgument},
	{settlement.ErrNotCrossProvince, codes.InvalidArgument},
	{settlement.ErrBadDispute, codes.InvalidArgument},
	{prepay.ErrBadAmount, codes.InvalidArgument},
	{prepay.ErrUnknownProvince, codes.InvalidArgument},
	{money.ErrEmpty, codes.InvalidArgument},
	{money.ErrSyntax, codes.InvalidArgument},
	{money.ErrTooPrecise, codes.InvalidArgument},
	{money.ErrOutOfRange, codes.InvalidArgument},
	{money.ErrNotPositive, codes.InvalidArgument},
	{money.ErrInputTooLong, codes.InvalidArgument},
	{region.ErrBadCode, codes.InvalidArgument},
	{region.ErrUnknownProvince, codes.InvalidArgument},
	{region.ErrUnknownRegion, codes.InvalidArgument},
	{region.ErrWrongProvince, codes.InvalidArgument},
	{region.ErrBadPeriod, codes.InvalidArgument},

	// The state of a period or statement does not allow it (R14, R17).
	{settlement.ErrPeriodClosed, codes.FailedPrecondition}, // clearingdb.ErrPeriodClosed wraps it
	{clearingdb.ErrPeriodNotClosing, codes.FailedPrecondition},
	{settlement.ErrBadTransition, codes.FailedPrecondition},
	{settlement.ErrBeforeCutOff, codes.FailedPrecondition},
	{settlement.ErrEarlierPeriodOpen, codes.FailedPrecondition},
	{settlement.ErrNoOpenPeriod, codes.FailedPrecondition},
	{settlement.ErrAlreadyAnswered, codes.FailedPrecondition},
	{settlement.ErrWindowClosed, codes.FailedPrecondition},
	{settlement.ErrNothingToAdjust, codes.FailedPrecondition},
	{settlement.ErrAdjustmentPeriod, codes.FailedPrecondition},
	{prepay.ErrAlreadySettled, codes.FailedPrecondition},
	{prepay.ErrExceedsDue, codes.FailedPrecondition},
	{prepay.ErrExceedsOutstanding, codes.FailedPrecondition},

	// Retry later (same request, same key).
	{clearingdb.ErrRetriesExhausted, codes.Unavailable},
	{ErrUnknownNode, codes.Unavailable},
	{ErrNodesClosed, codes.Unavailable},
}

// internalMessage is all a caller learns of an unexpected error; the full
// error goes to the log.
const internalMessage = "internal error"

// codeOf returns the gRPC code for err: the table above, a gRPC status
// already in err, the context's own errors, or codes.Internal for anything
// unknown.
func codeOf(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	for _, e := range errorCodes {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Internal
}

// statusError turns any error of the clearing service's handlers into the
// gRPC status error a client can act on (DESIGN §5), for every service of
// this package. An error that already is a gRPC status passes unchanged;
// a known sentinel gets its code and its own message; anything else becomes
// codes.Internal with a generic message, and the full error is logged at
// error level with op (e.g. "ReportUsage") so it can be found. nil stays nil.
func statusError(log *zap.Logger, op string, err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		return s.Err()
	}
	code := codeOf(err)
	switch code {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		if pgerr.Unavailable(err) {
			log.Warn("database unavailable", zap.String("op", op), zap.Error(err))
			return status.Error(codes.Unavailable, "the clearing database is unavailable: retry with the same key")
		}
		log.Error("internal error", zap.String("op", op), zap.Error(err))
		return status.Error(codes.Internal, internalMessage)
	}
	return status.Error(code, err.Error())
}
