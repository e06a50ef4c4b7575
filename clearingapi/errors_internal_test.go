package clearingapi

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/settlement"
)

func TestStatusError(t *testing.T) {
	t.Parallel()
	secret := errors.New(`pgx: connect to host=db.internal user=gongji password=hunter2`)
	cases := []struct {
		err  error
		code codes.Code
		msg  string // "" = the error's own text
	}{
		{fmt.Errorf("get period 202607: %w", clearingdb.ErrNotFound), codes.NotFound, ""},
		{fmt.Errorf("batch 7: %w: 6000 records", clearingdb.ErrBatchTooLarge), codes.InvalidArgument, ""},
		{fmt.Errorf("batch 7: %w", clearingdb.ErrBadSeq), codes.InvalidArgument, ""},
		{fmt.Errorf("ingest: %w", clearingdb.ErrPeriodClosed), codes.FailedPrecondition, ""},
		{fmt.Errorf("close: %w", settlement.ErrBeforeCutOff), codes.FailedPrecondition, ""},
		{fmt.Errorf("ingest: %w", settlement.ErrNoOpenPeriod), codes.FailedPrecondition, ""},
		{fmt.Errorf("ingest: %w after 6 attempts", clearingdb.ErrRetriesExhausted), codes.Unavailable, ""},
		{fmt.Errorf("amount: %w", money.ErrTooPrecise), codes.InvalidArgument, ""},
		{fmt.Errorf("route: %w: 650000", ErrUnknownNode), codes.Unavailable, ""},
		{status.Error(codes.ResourceExhausted, "quota"), codes.ResourceExhausted, "quota"},
		{context.Canceled, codes.Canceled, ""},
		{fmt.Errorf("ingest: %w", context.DeadlineExceeded), codes.DeadlineExceeded, ""},
		{fmt.Errorf("ingest batch of 110000: %w", secret), codes.Internal, internalMessage},
	}
	for _, c := range cases {
		core, logs := observer.New(zapcore.DebugLevel)
		err := statusError(zap.New(core), "Test", c.err)
		st := status.Convert(err)
		want := c.msg
		if want == "" {
			want = c.err.Error()
		}
		if st.Code() != c.code || st.Message() != want {
			t.Errorf("%v: %v %q, want %v %q", c.err, st.Code(), st.Message(), c.code, want)
		}
		// Only unexpected errors are logged, in full; their text never reaches the caller.
		if logged := logs.Len(); (c.code == codes.Internal) != (logged == 1) {
			t.Errorf("%v: %d log lines", c.err, logged)
		}
	}
	if statusError(zap.NewNop(), "Test", nil) != nil {
		t.Error("nil error mapped to a status")
	}
}
