package sharing

import (
	"fmt"
	"time"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
)

// Kind is what a usage paid for (R10).
type Kind string

const (
	KindMedical         Kind = "MEDICAL"          // out-of-pocket cost at a designated medical institution
	KindPharmacy        Kind = "PHARMACY"         // drugs, devices, consumables at a designated retail pharmacy
	KindResidentPremium Kind = "RESIDENT_PREMIUM" // 居民医保个人缴费
	KindLTCPremium      Kind = "LTC_PREMIUM"      // 长期护理保险个人缴费
)

// Kinds lists every usage kind.
var Kinds = []Kind{KindMedical, KindPharmacy, KindResidentPremium, KindLTCPremium}

func (k Kind) Valid() bool {
	for _, x := range Kinds {
		if k == x {
			return true
		}
	}
	return false
}

// NeedsInsured reports R10: medical and pharmacy costs need an insured
// beneficiary; premiums may be paid for someone not yet insured.
func (k Kind) NeedsInsured() bool { return k == KindMedical || k == KindPharmacy }

// Role is the part a node plays in a usage or reversal it records.
type Role string

const (
	RoleLocal Role = "LOCAL" // sharer and beneficiary in this province: settled inside the province
	RolePayer Role = "PAYER" // this node holds the sharer's quota; the payee is in another province
	RolePayee Role = "PAYEE" // the cost was paid in this province from another province's quota
)

func (r Role) Valid() bool { return r == RoleLocal || r == RolePayer || r == RolePayee }

// keyLenMax bounds idempotency keys (usage, reversal and command keys).
const keyLenMax = 128

// validKey checks an idempotency key chosen by a caller (usage, reversal,
// proposal, command, credit, spend and change keys): 1..keyLenMax printable
// ASCII characters without spaces, and no GB 11643 identity number in it
// (pii.ContainsID; the error then also matches pii.ErrContainsID). A key is
// an opaque identifier: it is stored, logged, sent to the clearing service
// and exported (a usage key is the usage_id of usages.csv) as it is, so an
// ID number in one would leave the province in clear. There is no reason to
// ever put one there, so such a key is refused before anything is written,
// rather than masked (a masked key would no longer name its request).
func validKey(field, k string) error {
	if k == "" || len(k) > keyLenMax {
		return fieldErrf(field, "must be 1 to %d bytes", keyLenMax)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return fieldErrf(field, "must be printable ASCII without spaces")
		}
	}
	if pii.ContainsID(k) {
		return fieldErr(field, pii.ErrContainsID)
	}
	return nil
}

func validAmount(field string, a money.Yuan) error {
	switch {
	case !a.InRange():
		return fieldErr(field, money.ErrOutOfRange)
	case !a.IsPositive():
		return fieldErr(field, money.ErrNotPositive)
	}
	return nil
}

// ParseAmount is money.ParsePositive for request fields: the errors are
// *FieldError, so the edge gets ErrInvalidInput plus the money sentinel
// (ErrTooPrecise, ErrOutOfRange, ErrNotPositive, ErrSyntax, …).
func ParseAmount(field, s string) (money.Yuan, error) {
	y, err := money.ParsePositive(s)
	if err != nil {
		return money.Zero, fieldErr(field, err)
	}
	return y, nil
}

// ParseQuota is money.Parse for a quota: zero allowed, negative refused.
func ParseQuota(field, s string) (money.Yuan, error) {
	y, err := money.Parse(s)
	if err != nil {
		return money.Zero, fieldErr(field, err)
	}
	if y.IsNegative() {
		return money.Zero, fieldErrf(field, "must not be negative")
	}
	return y, nil
}

// Timestamp normalises an instant the way the databases keep it: UTC,
// microseconds, no monotonic reading. Every time a Service stores or hashes
// goes through it, so a value read back compares equal to the one written.
func Timestamp(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// UsageRequest asks to pay a cost of the beneficiary from a relationship's
// quota. The same request is the Spend at the payee's node and, for a
// cross-province usage, the Debit the clearing switch forwards to the payer.
type UsageRequest struct {
	Key            string     `json:"usage_key"` // globally unique, from the place where it happened (R11)
	RelationshipID string     `json:"relationship_id"`
	Kind           Kind       `json:"kind"`
	Amount         money.Yuan `json:"amount"`
	PayeeProvince  string     `json:"payee_province"` // where the cost was paid: the beneficiary's province
	PayeeRegion    string     `json:"payee_region"`   // pooling region of the institution (mdtrtarea_admvs)
	OccurredAt     time.Time  `json:"occurred_at"`
	// BeneficiaryRef, when set (the switch sends it with a Debit), must name
	// the relationship's beneficiary. It is a consistency check, not part of
	// the request hash.
	BeneficiaryRef string `json:"beneficiary_ref,omitempty"`
}

// Validate checks the fields. Errors are *FieldError.
func (r UsageRequest) Validate() error {
	if err := validKey("usage_key", r.Key); err != nil {
		return err
	}
	if !ValidRelationshipID(r.RelationshipID) {
		return fieldErrf("relationship_id", "malformed id")
	}
	if !r.Kind.Valid() {
		return fieldErrf("kind", "unknown usage kind %q", string(r.Kind))
	}
	if err := validAmount("amount", r.Amount); err != nil {
		return err
	}
	if _, err := region.ParseProvince(r.PayeeProvince); err != nil {
		return fieldErr("payee_province", err)
	}
	if _, err := region.ParseRegionIn(r.PayeeRegion, r.PayeeProvince); err != nil {
		return fieldErr("payee_region", err)
	}
	if r.OccurredAt.IsZero() {
		return fieldErrf("occurred_at", "required")
	}
	if r.BeneficiaryRef != "" {
		return validRef("beneficiary_ref", r.BeneficiaryRef)
	}
	return nil
}

// Hash is the request hash stored with the usage key (R11): sha256 over a
// canonical encoding (see canonical). Same key + same hash replays the first
// answer; same key + another hash is ErrKeyReused.
func (r UsageRequest) Hash() []byte {
	return hashFields("gongji.sharing.usage.v1",
		r.Key, r.RelationshipID, string(r.Kind), r.Amount.String(),
		r.PayeeProvince, r.PayeeRegion, stamp(r.OccurredAt))
}

// Usage is a recorded usage: everything the outbox and the clearing need.
type Usage struct {
	Key            string     `json:"usage_key"`
	RelationshipID string     `json:"relationship_id"`
	Kind           Kind       `json:"kind"`
	Amount         money.Yuan `json:"amount"`
	PayerProvince  string     `json:"payer_province"` // the sharer's province (where the money is)
	PayerRegion    string     `json:"payer_region"`   // the sharer's pooling region (insuplc_admdvs)
	PayeeProvince  string     `json:"payee_province"`
	PayeeRegion    string     `json:"payee_region"`
	SharerRef      string     `json:"sharer_ref"`
	BeneficiaryRef string     `json:"beneficiary_ref"`
	OccurredAt     time.Time  `json:"occurred_at"`
	RecordedAt     time.Time  `json:"recorded_at"` // when this node committed it
	Role           Role       `json:"role"`
	CrossProvince  bool       `json:"cross_province"`
	Reversed       money.Yuan `json:"reversed"` // sum of reversals so far (zero in the first answer)
}

// NewUsage builds the usage an authorised request records at a node in role.
func NewUsage(req UsageRequest, rel Relationship, role Role, now time.Time) Usage {
	return Usage{
		Key:            req.Key,
		RelationshipID: rel.ID,
		Kind:           req.Kind,
		Amount:         req.Amount,
		PayerProvince:  rel.SharerProvince,
		PayerRegion:    rel.SharerRegion,
		PayeeProvince:  req.PayeeProvince,
		PayeeRegion:    req.PayeeRegion,
		SharerRef:      rel.SharerRef,
		BeneficiaryRef: rel.BeneficiaryRef,
		OccurredAt:     Timestamp(req.OccurredAt),
		RecordedAt:     now,
		Role:           role,
		CrossProvince:  rel.SharerProvince != req.PayeeProvince,
	}
}

// Request returns the request a usage answers (its hash is the stored one).
func (u Usage) Request() UsageRequest {
	return UsageRequest{Key: u.Key, RelationshipID: u.RelationshipID, Kind: u.Kind, Amount: u.Amount,
		PayeeProvince: u.PayeeProvince, PayeeRegion: u.PayeeRegion, OccurredAt: u.OccurredAt}
}

// Reversible is what may still be reversed (R12).
func (u Usage) Reversible() money.Yuan { return u.Amount.Sub(u.Reversed) }

// Validate checks a usage record arriving from another node (a payee record).
func (u Usage) Validate() error {
	if err := u.Request().Validate(); err != nil {
		return err
	}
	if !u.Role.Valid() {
		return fieldErrf("role", "unknown role %q", string(u.Role))
	}
	if _, err := region.ParseRegionIn(u.PayerRegion, u.PayerProvince); err != nil {
		return fieldErr("payer_region", err)
	}
	if err := validRef("sharer_ref", u.SharerRef); err != nil {
		return err
	}
	if err := validRef("beneficiary_ref", u.BeneficiaryRef); err != nil {
		return err
	}
	if u.SharerRef == u.BeneficiaryRef {
		return fieldErr("beneficiary_ref", ErrSelfSharing)
	}
	if u.CrossProvince != (u.PayerProvince != u.PayeeProvince) {
		return fieldErrf("cross_province", "does not match the provinces")
	}
	if u.Reversed.IsNegative() || u.Reversed.GreaterThan(u.Amount) {
		return fieldErrf("reversed", "must be between 0 and the amount")
	}
	return nil
}

// UsageResult is the authority's answer to a usage request: approved with
// the recorded usage, or refused with a reason. Both are stored under the
// usage key and replayed to a retry exactly, except for Replayed.
type UsageResult struct {
	Approved bool    `json:"approved"`
	Refusal  Refusal `json:"refusal,omitempty"`
	Usage    Usage   `json:"usage"` // approved: the recorded usage; refused: the request's fields
	// Remaining is the relationship's remaining quota at the authority right
	// after the decision (a payee record keeps the payer's figure).
	Remaining money.Yuan `json:"quota_remaining"`
	// Replayed is true when this is the stored first answer to a retry.
	Replayed bool `json:"replayed"`
}

// Err is nil for an approval and the refusal's sentinel otherwise.
func (d UsageResult) Err() error {
	if d.Approved {
		return nil
	}
	return fmt.Errorf("usage %s: %w", d.Usage.Key, d.Refusal.Err())
}

// ReversalRequest reverses all or part of a usage (R12): a refund.
type ReversalRequest struct {
	Key        string     `json:"reversal_key"` // globally unique, from the place where it happened
	UsageKey   string     `json:"usage_key"`
	Amount     money.Yuan `json:"amount"`
	OccurredAt time.Time  `json:"occurred_at"` // decides the clearing period (the reversal's own month)
	// PayeeProvince, when set (the switch sends it with a ReverseDebit), must
	// be the usage's payee province. A consistency check, not hashed.
	PayeeProvince string `json:"payee_province,omitempty"`
}

// Validate checks the fields. Errors are *FieldError.
func (r ReversalRequest) Validate() error {
	if err := validKey("reversal_key", r.Key); err != nil {
		return err
	}
	if err := validKey("usage_key", r.UsageKey); err != nil {
		return err
	}
	if err := validAmount("amount", r.Amount); err != nil {
		return err
	}
	if r.OccurredAt.IsZero() {
		return fieldErrf("occurred_at", "required")
	}
	if r.PayeeProvince != "" {
		if _, err := region.ParseProvince(r.PayeeProvince); err != nil {
			return fieldErr("payee_province", err)
		}
	}
	return nil
}

// Hash is the reversal request hash (see UsageRequest.Hash).
func (r ReversalRequest) Hash() []byte {
	return hashFields("gongji.sharing.reversal.v1", r.Key, r.UsageKey, r.Amount.String(), stamp(r.OccurredAt))
}

// Reversal is a recorded reversal. It repeats the usage's routing fields so
// that a reversal report is complete on its own.
type Reversal struct {
	Key            string     `json:"reversal_key"`
	UsageKey       string     `json:"reversal_of"`
	Amount         money.Yuan `json:"amount"` // positive; the clearing export shows it negated
	OccurredAt     time.Time  `json:"occurred_at"`
	RecordedAt     time.Time  `json:"recorded_at"`
	Role           Role       `json:"role"`
	CrossProvince  bool       `json:"cross_province"`
	RelationshipID string     `json:"relationship_id"`
	Kind           Kind       `json:"kind"`
	PayerProvince  string     `json:"payer_province"`
	PayerRegion    string     `json:"payer_region"`
	PayeeProvince  string     `json:"payee_province"`
	PayeeRegion    string     `json:"payee_region"`
	SharerRef      string     `json:"sharer_ref"`
	BeneficiaryRef string     `json:"beneficiary_ref"`
}

// NewReversal builds the reversal of u that a node records in role.
func NewReversal(req ReversalRequest, u Usage, role Role, now time.Time) Reversal {
	return Reversal{
		Key: req.Key, UsageKey: u.Key, Amount: req.Amount, OccurredAt: Timestamp(req.OccurredAt), RecordedAt: now,
		Role: role, CrossProvince: u.CrossProvince, RelationshipID: u.RelationshipID, Kind: u.Kind,
		PayerProvince: u.PayerProvince, PayerRegion: u.PayerRegion, PayeeProvince: u.PayeeProvince,
		PayeeRegion: u.PayeeRegion, SharerRef: u.SharerRef, BeneficiaryRef: u.BeneficiaryRef,
	}
}

// ReversalResult is the answer to a reversal request, replayed exactly to a
// retry except for Replayed.
type ReversalResult struct {
	Reversal      Reversal   `json:"reversal"`
	ReversedTotal money.Yuan `json:"reversed_total"`  // the usage's reversals so far, this one included
	Remaining     money.Yuan `json:"quota_remaining"` // at the authority right after it (zero once ended)
	Replayed      bool       `json:"replayed"`
}

// Request returns the request a reversal answers.
func (r Reversal) Request() ReversalRequest {
	return ReversalRequest{Key: r.Key, UsageKey: r.UsageKey, Amount: r.Amount, OccurredAt: r.OccurredAt}
}

// CheckReversal applies R12: amount must not exceed what is left of u.
// Returns ErrReversalExceedsUsage.
func CheckReversal(u Usage, amount money.Yuan) error {
	if amount.GreaterThan(u.Reversible()) {
		return fmt.Errorf("%w: usage %s amount %s, reversed %s, asked %s", ErrReversalExceedsUsage, u.Key, u.Amount, u.Reversed, amount)
	}
	return nil
}

// UsageFilter selects usages for ListUsages.
type UsageFilter struct {
	RelationshipID string // required
	AfterKey       string // keyset pagination by usage key
	Limit          int    // 0 = ListLimitDefault, at most ListLimitMax
}

// Validate checks a filter and applies the default limit.
func (f UsageFilter) Validate() (UsageFilter, error) {
	if !ValidRelationshipID(f.RelationshipID) {
		return f, fieldErrf("relationship_id", "malformed id")
	}
	n, ok := limitOf(f.Limit)
	if !ok {
		return f, fieldErrf("limit", "must be between 0 and %d", ListLimitMax)
	}
	f.Limit = n
	return f, nil
}
