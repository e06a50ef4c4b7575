package provinceapi

import (
	"context"
	"errors"
	"gongji/internal/pgerr"
	"strings"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/sharing"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo detail every mapped
// error carries. Its Reason names the domain sentinel (errorCodes), so that a
// node receiving the status through the clearing switch can turn it back
// into the same sentinel (remote.go) without parsing messages.
const ErrorDomain = "gongji.province.v1"

// messageBytesMax bounds the message of a returned status: an error text
// quotes at most a field's value, and a hostile value must not be echoed in
// full.
const messageBytesMax = 1024

// errorCodes is the one table from the sharing package's sentinel errors to
// the gRPC codes of DESIGN §5, checked in order with errors.Is, with the
// Reason of each code's ErrorInfo. Bad input comes first, so a *FieldError
// whose cause is another sentinel (a payee province that is not this one:
// ErrWrongProvince) is InvalidArgument naming the field.
//
// ErrWrongProvince is PermissionDenied: the request acts on data another
// province owns or names a party as being where they are not — a province
// acting outside its own data, DESIGN §5's definition of PermissionDenied.
// Malformed province codes never get that far (they are *FieldError).
var errorCodes = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{sharing.ErrInvalidInput, codes.InvalidArgument, "INVALID_INPUT"},
	{sharing.ErrSelfSharing, codes.InvalidArgument, "SELF_SHARING"},
	{sharing.ErrNotRelative, codes.InvalidArgument, "NOT_RELATIVE"},

	{sharing.ErrNotFound, codes.NotFound, "NOT_FOUND"},

	// R9: ResourceExhausted, the code a payer's refusal travels with through
	// the switch to the payee's caller.
	{sharing.ErrQuotaExceeded, codes.ResourceExhausted, "QUOTA_EXCEEDED"},

	{sharing.ErrNotActive, codes.FailedPrecondition, "NOT_ACTIVE"},
	{sharing.ErrSharerInactive, codes.FailedPrecondition, "SHARER_INACTIVE"},
	{sharing.ErrNoPersonalAccount, codes.FailedPrecondition, "NO_PERSONAL_ACCOUNT"},
	{sharing.ErrBadTransition, codes.FailedPrecondition, "BAD_TRANSITION"},
	{sharing.ErrExpired, codes.FailedPrecondition, "EXPIRED"},
	{sharing.ErrPersonInactive, codes.FailedPrecondition, "PERSON_INACTIVE"},
	{sharing.ErrBeneficiaryUninsured, codes.FailedPrecondition, "BENEFICIARY_UNINSURED"},
	{sharing.ErrBelowUsed, codes.FailedPrecondition, "BELOW_USED"},
	{sharing.ErrInsufficientBalance, codes.FailedPrecondition, "INSUFFICIENT_BALANCE"},
	{sharing.ErrReversalExceedsUsage, codes.FailedPrecondition, "REVERSAL_EXCEEDS_USAGE"},

	{sharing.ErrKeyReused, codes.AlreadyExists, "KEY_REUSED"},
	{sharing.ErrDuplicateRelationship, codes.AlreadyExists, "DUPLICATE_RELATIONSHIP"},
	{sharing.ErrPersonExists, codes.AlreadyExists, "PERSON_EXISTS"},

	{sharing.ErrWrongProvince, codes.PermissionDenied, "WRONG_PROVINCE"},

	{sharing.ErrUnavailable, codes.Unavailable, "UNAVAILABLE"},
}

// internalMessage is all a caller learns of an unexpected error; the full
// error goes to the log.
const internalMessage = "internal error"

// sentinelOf returns the sentinel an ErrorInfo reason names, for statuses
// that come back from another node through the switch.
func sentinelOf(reason string) (error, bool) {
	for _, e := range errorCodes {
		if e.reason == reason {
			return e.err, true
		}
	}
	return nil, false
}

// statusError turns any error of a handler into the gRPC status a client can
// act on (DESIGN §5). In order:
//
//   - a status that came back from the clearing switch (another province's
//     answer, *RemoteError) passes unchanged, code, message and details;
//   - the context's own errors become Canceled / DeadlineExceeded;
//   - a sharing sentinel gets its code from errorCodes, its own message (it
//     names the field of bad input) and an ErrorInfo naming the sentinel;
//   - a status made by this package's edge checks passes unchanged;
//   - anything else is Internal with a generic message, and the full error
//     is logged at error level with op. Errors name person_refs and keys,
//     never ID numbers (those are turned into refs before any call).
//
// nil stays nil.
func statusError(log *zap.Logger, op string, err error) error {
	if err == nil {
		return nil
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return re.GRPCStatus().Err()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the call's deadline passed: retry with the same key")
	}
	for _, e := range errorCodes {
		if errors.Is(err, e.err) {
			return withReason(status.New(e.code, cleanMessage(err.Error())), e.reason).Err()
		}
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown && st.Code() != codes.Internal {
		return st.Err()
	}
	if pgerr.Unavailable(err) {
		log.Warn("database unavailable", zap.String("op", op), zap.Error(err))
		return status.Error(codes.Unavailable, "the node's database is unavailable: retry with the same key")
	}
	log.Error("internal error", zap.String("op", op), zap.Error(err))
	return status.Error(codes.Internal, internalMessage)
}

// withReason attaches the ErrorInfo naming the sentinel. Attaching a
// well-formed detail cannot fail; if it ever did, the plain status is as good.
func withReason(st *status.Status, reason string) *status.Status {
	d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain})
	if err != nil {
		return st
	}
	return d
}

// reasonOf returns the ErrorInfo reason of a status of this domain.
func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// cleanMessage makes an error text safe to return: valid UTF-8, at most
// messageBytesMax bytes (cut at a rune boundary).
func cleanMessage(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= messageBytesMax {
		return s
	}
	n := messageBytesMax
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
