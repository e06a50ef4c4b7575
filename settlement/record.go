package settlement

import (
	"errors"
	"fmt"
	"time"

	"gongji/money"
	"gongji/region"
)

// Sentinel errors of record validation. All map to InvalidArgument.
var (
	ErrBadEntryType     = errors.New("settlement: unknown entry type")
	ErrBadKind          = errors.New("settlement: unknown usage kind")
	ErrInvalidRecord    = errors.New("settlement: invalid record")
	ErrNotCrossProvince = errors.New("settlement: payer and payee are in the same province (R13: cleared inside the province)")
)

// EntryType says what a cleared row is (usages.csv entry_type).
type EntryType string

const (
	// EntryUsage is a usage: amount > 0, no reversal_of.
	EntryUsage EntryType = "USAGE"
	// EntryReversal reverses (part of) a usage: amount < 0, reversal_of names it.
	EntryReversal EntryType = "REVERSAL"
	// EntryAdjustment settles a dispute in a later period: amount of either
	// sign (never zero), reversal_of names the disputed record.
	EntryAdjustment EntryType = "ADJUSTMENT"
)

// ParseEntryType reads an entry type. Errors wrap ErrBadEntryType.
func ParseEntryType(s string) (EntryType, error) {
	switch t := EntryType(s); t {
	case EntryUsage, EntryReversal, EntryAdjustment:
		return t, nil
	}
	return "", fmt.Errorf("%w: %q", ErrBadEntryType, s)
}

// Kind is what a usage paid for (R10).
type Kind string

const (
	KindMedical         Kind = "MEDICAL"
	KindPharmacy        Kind = "PHARMACY"
	KindResidentPremium Kind = "RESIDENT_PREMIUM"
	KindLTCPremium      Kind = "LTC_PREMIUM"
)

// Kinds lists the four kinds.
var Kinds = []Kind{KindMedical, KindPharmacy, KindResidentPremium, KindLTCPremium}

// ParseKind reads a kind. Errors wrap ErrBadKind.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case KindMedical, KindPharmacy, KindResidentPremium, KindLTCPremium:
		return k, nil
	}
	return "", fmt.Errorf("%w: %q", ErrBadKind, s)
}

// Row is the part of a cleared record that the figures depend on: who owes
// whom, down to the pooling regions, and the signed amount (positive: the
// payer owes the payee).
type Row struct {
	PayerProvince string
	PayerRegion   string
	PayeeProvince string
	PayeeRegion   string
	Amount        money.Yuan
}

// Validate checks the codes (known, region inside its province), that the row
// is cross-province (R13), and that the amount is non-zero and in range.
// Errors wrap ErrInvalidRecord, ErrNotCrossProvince or a region error.
func (r Row) Validate() error {
	if _, err := region.ParseRegionIn(r.PayerRegion, r.PayerProvince); err != nil {
		return fmt.Errorf("%w: payer: %w", ErrInvalidRecord, err)
	}
	if _, err := region.ParseRegionIn(r.PayeeRegion, r.PayeeProvince); err != nil {
		return fmt.Errorf("%w: payee: %w", ErrInvalidRecord, err)
	}
	if r.PayerProvince == r.PayeeProvince {
		return fmt.Errorf("%w: %w: %s", ErrInvalidRecord, ErrNotCrossProvince, r.PayerProvince)
	}
	if r.Amount.IsZero() || !r.Amount.InRange() {
		return fmt.Errorf("%w: amount %s must be non-zero and within NUMERIC(18,2)", ErrInvalidRecord, r.Amount)
	}
	return nil
}

// ValidateRows validates every row and names the index of the first bad one.
func ValidateRows(rows []Row) error {
	for i, r := range rows {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("row %d: %w", i, err)
		}
	}
	return nil
}

// UsageIDLenMax bounds usage ids (the idempotency key from the place of
// usage, R11) and adjustment ids.
const UsageIDLenMax = 64

// Record is one cleared usage, reversal or adjustment: a usages.csv row.
type Record struct {
	UsageID    string
	Period     region.Period
	Type       EntryType
	Kind       Kind
	Row        // payer/payee province and region, signed amount
	OccurredAt time.Time
	Late       bool
	ReversalOf string // the reversed usage (REVERSAL) or the disputed record (ADJUSTMENT); "" for USAGE
	// SharerRef and BeneficiaryRef are keyed pseudonyms (HMAC), never ID numbers.
	SharerRef      string
	BeneficiaryRef string
}

// Validate checks a record before it is cleared: Row.Validate, the id, the
// entry type and kind, the sign rule of its type (USAGE > 0, REVERSAL < 0,
// ADJUSTMENT ≠ 0), reversal_of present exactly for REVERSAL and ADJUSTMENT,
// and a set occurred_at. Errors wrap ErrInvalidRecord (or ErrBadEntryType,
// ErrBadKind, ErrNotCrossProvince, region errors).
func (r Record) Validate() error {
	if r.UsageID == "" || len(r.UsageID) > UsageIDLenMax {
		return fmt.Errorf("%w: usage id must have 1..%d characters", ErrInvalidRecord, UsageIDLenMax)
	}
	if _, err := ParseEntryType(string(r.Type)); err != nil {
		return fmt.Errorf("%s: %w", r.UsageID, err)
	}
	if _, err := ParseKind(string(r.Kind)); err != nil {
		return fmt.Errorf("%s: %w", r.UsageID, err)
	}
	if err := r.Row.Validate(); err != nil {
		return fmt.Errorf("%s: %w", r.UsageID, err)
	}
	switch r.Type {
	case EntryUsage:
		if !r.Amount.IsPositive() {
			return fmt.Errorf("%w: %s: a usage amount must be > 0, got %s", ErrInvalidRecord, r.UsageID, r.Amount)
		}
		if r.ReversalOf != "" {
			return fmt.Errorf("%w: %s: a usage has no reversal_of", ErrInvalidRecord, r.UsageID)
		}
	case EntryReversal:
		if !r.Amount.IsNegative() {
			return fmt.Errorf("%w: %s: a reversal amount must be < 0, got %s", ErrInvalidRecord, r.UsageID, r.Amount)
		}
	}
	if r.Type != EntryUsage && (r.ReversalOf == "" || len(r.ReversalOf) > UsageIDLenMax || r.ReversalOf == r.UsageID) {
		return fmt.Errorf("%w: %s: %s needs reversal_of naming another record", ErrInvalidRecord, r.UsageID, r.Type)
	}
	if r.OccurredAt.IsZero() {
		return fmt.Errorf("%w: %s: occurred_at is not set", ErrInvalidRecord, r.UsageID)
	}
	return nil
}

// Rows extracts the rows Compute needs from records.
func Rows(records []Record) []Row {
	out := make([]Row, len(records))
	for i, r := range records {
		out[i] = r.Row
	}
	return out
}
