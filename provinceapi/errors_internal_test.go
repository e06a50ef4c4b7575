package provinceapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"gongji/money"
	"gongji/sharing"
)

// TestStatusError checks the one error table (DESIGN §5) and what passes
// through it unchanged.
func TestStatusError(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	want := map[error]codes.Code{
		sharing.ErrInvalidInput: codes.InvalidArgument, sharing.ErrNotFound: codes.NotFound,
		sharing.ErrQuotaExceeded: codes.ResourceExhausted, sharing.ErrNotActive: codes.FailedPrecondition,
		sharing.ErrBadTransition: codes.FailedPrecondition, sharing.ErrExpired: codes.FailedPrecondition,
		sharing.ErrSharerInactive: codes.FailedPrecondition, sharing.ErrNoPersonalAccount: codes.FailedPrecondition,
		sharing.ErrBeneficiaryUninsured: codes.FailedPrecondition, sharing.ErrBelowUsed: codes.FailedPrecondition,
		sharing.ErrInsufficientBalance: codes.FailedPrecondition, sharing.ErrReversalExceedsUsage: codes.FailedPrecondition,
		sharing.ErrPersonInactive: codes.FailedPrecondition, sharing.ErrKeyReused: codes.AlreadyExists,
		sharing.ErrDuplicateRelationship: codes.AlreadyExists, sharing.ErrPersonExists: codes.AlreadyExists,
		sharing.ErrWrongProvince: codes.PermissionDenied, sharing.ErrUnavailable: codes.Unavailable,
		sharing.ErrSelfSharing: codes.InvalidArgument, sharing.ErrNotRelative: codes.InvalidArgument,
	}
	for sentinel, code := range want {
		err := statusError(log, "op", fmt.Errorf("usage k-1: %w", sentinel))
		st := status.Convert(err)
		if st.Code() != code || !strings.Contains(st.Message(), sentinel.Error()) {
			t.Errorf("%v: %s %q, want %s with the error's text", sentinel, st.Code(), st.Message(), code)
		}
		// The reason names the sentinel, so the other node gets it back.
		back := newRemoteError(st)
		if !errors.Is(back, sentinel) || back.GRPCStatus().Code() != code {
			t.Errorf("%v: did not survive the round trip through a status (%v)", sentinel, back)
		}
	}
	if len(want) != len(errorCodes) {
		t.Errorf("the table has %d entries, the test %d", len(errorCodes), len(want))
	}

	// A field error names the field and wins over the sentinel it wraps.
	fe := &sharing.FieldError{Field: "payee_province", Err: sharing.ErrWrongProvince}
	if st := status.Convert(statusError(log, "op", fe)); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "payee_province") {
		t.Errorf("field error: %s %q", st.Code(), st.Message())
	}
	fe = &sharing.FieldError{Field: "amount", Err: money.ErrTooPrecise}
	if st := status.Convert(statusError(log, "op", fe)); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "amount") {
		t.Errorf("field error: %s %q", st.Code(), st.Message())
	}

	// Another province's answer passes unchanged: code, message, details.
	remote := withReason(status.New(codes.ResourceExhausted, "usage x exceeds the remaining quota 1.00"), "QUOTA_EXCEEDED")
	re := newRemoteError(remote)
	got := status.Convert(statusError(log, "op", fmt.Errorf("spend: %w", re)))
	if !proto.Equal(got.Proto(), remote.Proto()) {
		t.Errorf("remote status changed: %v, want %v", got.Proto(), remote.Proto())
	}
	if !errors.Is(re, sharing.ErrQuotaExceeded) {
		t.Error("a payer's quota refusal is not ErrQuotaExceeded for the domain")
	}
	// A switch status without our details maps by code.
	if !errors.Is(newRemoteError(status.New(codes.Unavailable, "down")), sharing.ErrUnavailable) {
		t.Error("Unavailable is not ErrUnavailable")
	}
	if newRemoteError(status.New(codes.Internal, "x")).Unwrap() != nil {
		t.Error("Internal names a sentinel")
	}

	// Context errors keep their meaning.
	if c := status.Code(statusError(log, "op", fmt.Errorf("x: %w", context.DeadlineExceeded))); c != codes.DeadlineExceeded {
		t.Errorf("deadline: %s", c)
	}
	if c := status.Code(statusError(log, "op", context.Canceled)); c != codes.Canceled {
		t.Errorf("canceled: %s", c)
	}

	// Unknown errors are Internal with a generic message, logged in full.
	secret := "relation \"relationships\" does not exist at character 42"
	st := status.Convert(statusError(log, "Spend", errors.New(secret)))
	if st.Code() != codes.Internal || strings.Contains(st.Message(), "relationships") {
		t.Errorf("unknown error: %s %q", st.Code(), st.Message())
	}
	if logs.FilterMessage("internal error").FilterField(zap.String("op", "Spend")).Len() != 1 {
		t.Errorf("unknown error not logged: %v", logs.All())
	}
	// A hostile value is not echoed in full, and stays valid UTF-8.
	long := &sharing.FieldError{Field: "usage_key", Err: errors.New(strings.Repeat("\xff", 5000))}
	if m := status.Convert(statusError(log, "op", long)).Message(); len(m) > messageBytesMax+8 || strings.Contains(m, "\xff") {
		t.Errorf("message of %d bytes", len(m))
	}
	if statusError(log, "op", nil) != nil {
		t.Error("nil is not nil")
	}
}

// TestRecordToProto: every outbox kind becomes its wire record; an
// undecodable row is still sent (to be rejected visibly).
func TestRecordToProto(t *testing.T) {
	bad := sharing.OutboxRecord{Seq: 7, Kind: sharing.OutboxUsage, Role: sharing.RolePayer, Key: "u-1", Payload: []byte("{not json")}
	p, err := recordToProto(bad)
	if err == nil || p.GetSeq() != 7 || p.GetUsageKey() != "u-1" || p.GetAmount() != "" {
		t.Fatalf("undecodable row: %+v, %v", p, err)
	}
	unknown := sharing.OutboxRecord{Seq: 8, Kind: "GIFT", Key: strings.Repeat("k", 100)}
	if p, err := recordToProto(unknown); err == nil || p.GetUsageKey() != "" {
		t.Fatalf("unknown kind: %+v, %v", p, err)
	}
}

// TestRelayRetryPolicy: which answers end a relay message, and the delays.
func TestRelayRetryPolicy(t *testing.T) {
	for code, want := range map[codes.Code]bool{
		codes.InvalidArgument: true, codes.NotFound: true, codes.AlreadyExists: true, codes.FailedPrecondition: true,
		codes.PermissionDenied: true, codes.Unavailable: false, codes.Internal: false, codes.DeadlineExceeded: false,
		codes.Unauthenticated: false, codes.ResourceExhausted: false,
	} {
		if got := permanent(newRemoteError(status.New(code, "x"))); got != want {
			t.Errorf("%s: permanent=%t", code, got)
		}
	}
	if !permanent(fmt.Errorf("%w: bad payload", errUndeliverable)) || permanent(errInconsistent) || permanent(context.Canceled) {
		t.Error("local errors misclassified")
	}
	w := &Workers{o: WorkerOptions{RelayRetryMax: DefaultRelayRetryMax}}
	var got []string
	for _, n := range []int{1, 2, 3, 6, 7, 100, 1 << 30} {
		got = append(got, w.relayDelay(n).String())
	}
	if strings.Join(got, " ") != "1s 2s 4s 32s 1m0s 1m0s 1m0s" {
		t.Errorf("relay delays %v", got)
	}
}
