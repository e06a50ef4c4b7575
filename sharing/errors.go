package sharing

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error a Service method returns wraps at most one of
// them (plus ErrInvalidInput for a *FieldError); the gRPC layer maps them to
// status codes with errors.Is in one table. Anything else is internal.
var (
	// ErrInvalidInput: a request field is malformed or out of range. Always
	// carried by a *FieldError that names the field (InvalidArgument).
	ErrInvalidInput = errors.New("sharing: invalid input")
	// ErrNotFound: no such person, relationship, usage or reversal here (NotFound).
	ErrNotFound = errors.New("sharing: not found")
	// ErrWrongProvince: the request acts on data another province owns, or
	// names a province that does not match the relationship (PermissionDenied).
	ErrWrongProvince = errors.New("sharing: outside this province's data")

	// R1: a sharer must be an active employee-scheme enrollee with a personal account.
	ErrNoPersonalAccount = errors.New("sharing: no personal account (employee scheme with pooled + personal account mode required)")
	ErrSharerInactive    = errors.New("sharing: sharer is not actively insured")
	// ErrPersonInactive: the holder of a personal account is not active (own spending, credit).
	ErrPersonInactive = errors.New("sharing: person is not active")
	// R2: relatives only, never oneself; R10: medical and pharmacy usage need an insured beneficiary.
	ErrSelfSharing          = errors.New("sharing: a person cannot share with themself")
	ErrNotRelative          = errors.New("sharing: relation is not a near relative (Civil Code art. 1045)")
	ErrBeneficiaryUninsured = errors.New("sharing: beneficiary is not insured")
	// R3: at most one live relationship per ordered (sharer, beneficiary) pair (AlreadyExists).
	ErrDuplicateRelationship = errors.New("sharing: a live relationship already exists for this sharer and beneficiary")
	// R4/R5: transitions (FailedPrecondition).
	ErrBadTransition = errors.New("sharing: relationship transition not allowed")
	ErrExpired       = errors.New("sharing: proposal expired")
	ErrNotActive     = errors.New("sharing: relationship is not active")
	// R8/R9: quota and balance (FailedPrecondition; ResourceExhausted for the quota).
	ErrQuotaExceeded       = errors.New("sharing: usage exceeds the remaining quota")
	ErrBelowUsed           = errors.New("sharing: quota cannot be lowered below what is already used")
	ErrInsufficientBalance = errors.New("sharing: personal account balance is insufficient")
	// R11/R12: idempotency and reversal limits.
	ErrKeyReused            = errors.New("sharing: idempotency key reused with a different request")
	ErrReversalExceedsUsage = errors.New("sharing: reversals would exceed the usage")
	// ErrPersonExists: RegisterPerson for a registered person with different data
	// (AlreadyExists); use UpdateEnrollment to change an enrollment.
	ErrPersonExists = errors.New("sharing: person already registered with different data")
	// ErrUnavailable: a cross-province step could not be completed now; retry
	// with the same key (Unavailable).
	ErrUnavailable = errors.New("sharing: other province unavailable; retry with the same key")
	// ErrConservation: a money-conservation invariant does not hold (Internal;
	// a bug or a tampered database).
	ErrConservation = errors.New("sharing: conservation check failed")
)

// FieldError says which request field is wrong and why. It matches both
// ErrInvalidInput and its cause with errors.Is, so a caller can test for
// "bad input" in general or for, say, money.ErrTooPrecise in particular.
type FieldError struct {
	Field string // request field, snake_case as on the wire
	Err   error  // the cause, often a sentinel of money, region, pii or this package
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("sharing: invalid input: %s: %v", e.Field, e.Err)
}

// Unwrap exposes ErrInvalidInput and the cause.
func (e *FieldError) Unwrap() []error { return []error{ErrInvalidInput, e.Err} }

func fieldErr(field string, err error) error { return &FieldError{Field: field, Err: err} }

func fieldErrf(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Refusal is why the authority over a quota declined a usage. A refusal is
// an answer, not a failure: it is recorded under the usage key and replayed to
// a retry (R11), exactly like an approval.
type Refusal string

const (
	RefusalNone              Refusal = ""
	RefusalQuotaExceeded     Refusal = "QUOTA_EXCEEDED"
	RefusalNotActive         Refusal = "NOT_ACTIVE"
	RefusalSharerInactive    Refusal = "SHARER_INACTIVE"
	RefusalNoPersonalAccount Refusal = "NO_PERSONAL_ACCOUNT"
)

// Valid reports whether r is one of the refusals above (RefusalNone included).
func (r Refusal) Valid() bool {
	switch r {
	case RefusalNone, RefusalQuotaExceeded, RefusalNotActive, RefusalSharerInactive, RefusalNoPersonalAccount:
		return true
	}
	return false
}

// Err returns the sentinel for a refusal, nil for RefusalNone.
func (r Refusal) Err() error {
	switch r {
	case RefusalNone:
		return nil
	case RefusalQuotaExceeded:
		return ErrQuotaExceeded
	case RefusalNotActive:
		return ErrNotActive
	case RefusalSharerInactive:
		return ErrSharerInactive
	case RefusalNoPersonalAccount:
		return ErrNoPersonalAccount
	}
	return fmt.Errorf("sharing: unknown refusal %q", string(r))
}
