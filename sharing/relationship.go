package sharing

import (
	"crypto/sha256"
	"fmt"
	"time"

	"gongji/internal/pii"
	"gongji/ledger"
	"gongji/money"
	"gongji/region"
)

// Relation is the beneficiary's relation to the sharer: the near relatives of
// Civil Code art. 1045 (R2). RelationParent means "the beneficiary is the
// sharer's parent".
type Relation string

const (
	RelationSpouse              Relation = "SPOUSE"
	RelationParent              Relation = "PARENT"
	RelationChild               Relation = "CHILD"
	RelationSibling             Relation = "SIBLING"
	RelationGrandparentPaternal Relation = "GRANDPARENT_PATERNAL"
	RelationGrandparentMaternal Relation = "GRANDPARENT_MATERNAL"
	RelationGrandchildPaternal  Relation = "GRANDCHILD_PATERNAL"
	RelationGrandchildMaternal  Relation = "GRANDCHILD_MATERNAL"
)

// Relations lists every near-relative relation.
var Relations = []Relation{
	RelationSpouse, RelationParent, RelationChild, RelationSibling,
	RelationGrandparentPaternal, RelationGrandparentMaternal,
	RelationGrandchildPaternal, RelationGrandchildMaternal,
}

// Valid reports whether r is a near relative.
func (r Relation) Valid() bool {
	for _, x := range Relations {
		if r == x {
			return true
		}
	}
	return false
}

// Side is a party of a relationship.
type Side string

const (
	SideSharer      Side = "SHARER"
	SideBeneficiary Side = "BENEFICIARY"
)

func (s Side) Valid() bool { return s == SideSharer || s == SideBeneficiary }

// Other returns the other party.
func (s Side) Other() Side {
	if s == SideSharer {
		return SideBeneficiary
	}
	return SideSharer
}

// Status is a relationship's state. Transitions (CanTransition):
//
//	PENDING → ACTIVE     consent by the party that did not propose, before expiry (R4)
//	PENDING → DECLINED   decline by that party, before expiry
//	PENDING → EXPIRED    the sweeper, at or after expires_at
//	PENDING → DISSOLVED  withdrawal by either party before expiry, or an automatic dissolution (R6)
//	ACTIVE  → DISSOLVED  either party at any time (R5), or automatically (R6)
//
// DECLINED, EXPIRED and DISSOLVED are final.
type Status string

const (
	StatusPending   Status = "PENDING"
	StatusActive    Status = "ACTIVE"
	StatusDeclined  Status = "DECLINED"
	StatusExpired   Status = "EXPIRED"
	StatusDissolved Status = "DISSOLVED"
)

func (s Status) Valid() bool {
	switch s {
	case StatusPending, StatusActive, StatusDeclined, StatusExpired, StatusDissolved:
		return true
	}
	return false
}

// Live reports PENDING or ACTIVE: the states R3 allows once per ordered pair.
func (s Status) Live() bool { return s == StatusPending || s == StatusActive }

// CanTransition reports whether from → to is one of the transitions above.
func CanTransition(from, to Status) bool {
	switch from {
	case StatusPending:
		return to == StatusActive || to == StatusDeclined || to == StatusExpired || to == StatusDissolved
	case StatusActive:
		return to == StatusDissolved
	}
	return false
}

// DissolveReason says why a relationship was dissolved.
type DissolveReason string

const (
	ReasonVoluntarySharer      DissolveReason = "VOLUNTARY_SHARER"      // R5
	ReasonVoluntaryBeneficiary DissolveReason = "VOLUNTARY_BENEFICIARY" // R5
	ReasonTransfer             DissolveReason = "TRANSFER"              // R6: moved to another pooling region
	ReasonSuspension           DissolveReason = "SUSPENSION"
	ReasonTermination          DissolveReason = "TERMINATION"
	ReasonDeath                DissolveReason = "DEATH"
	ReasonAccountLost          DissolveReason = "ACCOUNT_LOST" // switched to 单建统筹 or the resident scheme
)

func (r DissolveReason) Valid() bool {
	switch r {
	case ReasonVoluntarySharer, ReasonVoluntaryBeneficiary, ReasonTransfer, ReasonSuspension,
		ReasonTermination, ReasonDeath, ReasonAccountLost:
		return true
	}
	return false
}

// Automatic reports an R6 reason (an enrollment change), as opposed to R5.
func (r DissolveReason) Automatic() bool {
	return r.Valid() && r != ReasonVoluntarySharer && r != ReasonVoluntaryBeneficiary
}

// VoluntaryReason is the R5 reason for a dissolution asked for by side.
func VoluntaryReason(by Side) DissolveReason {
	if by == SideSharer {
		return ReasonVoluntarySharer
	}
	return ReasonVoluntaryBeneficiary
}

// Relationship is a sharing relationship (共济关系). The node of the sharer's
// province is its authority (it holds the quota); the beneficiary's node, when
// in another province, keeps a replica that is updated by version.
//
// Money invariants kept by every method (checked by CheckConservation):
// 0 ≤ Used ≤ Quota; while live, the quota account holds Quota − Used; once
// ended it holds nothing and Returned = Quota − Used (R7).
type Relationship struct {
	ID                  string         `json:"relationship_id"`
	SharerRef           string         `json:"sharer_ref"`
	SharerProvince      string         `json:"sharer_province"`
	SharerRegion        string         `json:"sharer_region"` // the payer region of every usage (fixed: a transfer dissolves)
	BeneficiaryRef      string         `json:"beneficiary_ref"`
	BeneficiaryProvince string         `json:"beneficiary_province"`
	Relation            Relation       `json:"relation"`
	ProposedBy          Side           `json:"proposed_by"`
	Status              Status         `json:"status"`
	DissolveReason      DissolveReason `json:"dissolve_reason,omitempty"`
	Quota               money.Yuan     `json:"quota"`    // total earmarked (R8)
	Used                money.Yuan     `json:"used"`     // usages minus reversals; replicas may lag
	Returned            money.Yuan     `json:"returned"` // unused quota given back on dissolution (R7)
	Version             int64          `json:"version"`  // bumped by every change of state or quota
	ProposedAt          time.Time      `json:"proposed_at"`
	ExpiresAt           time.Time      `json:"expires_at"`
	ActivatedAt         time.Time      `json:"activated_at"` // zero until ACTIVE
	EndedAt             time.Time      `json:"ended_at"`     // zero while live
	UpdatedAt           time.Time      `json:"updated_at"`
}

// RelationshipID derives a relationship's id from where and under which key
// it was proposed: "R" + the first 24 hex of sha256(province ":" key). A
// retried proposal therefore names the same relationship on every node. In
// the rare case (about one key in 10^6) that those 24 characters contain a
// GB 11643 identity number, the id is taken from sha256 of the digest
// instead, and so on (pii.IDFreeHex): relationship ids are keys that every
// node and the clearing service store and log, and no key ever carries an
// ID number, not even by chance.
func RelationshipID(originProvince, proposalKey string) string {
	h := sha256.Sum256([]byte(originProvince + ":" + proposalKey))
	return "R" + pii.IDFreeHex(h[:], 24)
}

// ValidRelationshipID checks the form produced by RelationshipID: "R" and
// 24 lowercase hex characters, containing no identity number
// (pii.ContainsID, which does not depend on the date, so an id valid once
// stays valid).
func ValidRelationshipID(id string) bool {
	if len(id) != 25 || id[0] != 'R' {
		return false
	}
	for i := 1; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'f') {
			return false
		}
	}
	return !pii.ContainsID(id)
}

// ProvinceOf returns the province of a side.
func (r Relationship) ProvinceOf(s Side) string {
	if s == SideSharer {
		return r.SharerProvince
	}
	return r.BeneficiaryProvince
}

// RefOf returns the person_ref of a side.
func (r Relationship) RefOf(s Side) string {
	if s == SideSharer {
		return r.SharerRef
	}
	return r.BeneficiaryRef
}

// CrossProvince reports R13 for usages of this relationship.
func (r Relationship) CrossProvince() bool { return r.SharerProvince != r.BeneficiaryProvince }

// Remaining is the quota still usable: Quota − Used while ACTIVE, else zero.
func (r Relationship) Remaining() money.Yuan {
	if r.Status != StatusActive {
		return money.Zero
	}
	return r.Quota.Sub(r.Used)
}

// Unused is the money still frozen in the quota account: Quota − Used while
// live, zero once ended.
func (r Relationship) Unused() money.Yuan {
	if !r.Status.Live() {
		return money.Zero
	}
	return r.Quota.Sub(r.Used)
}

// Validate checks a relationship snapshot's fields (used on replicas arriving
// from another node). Errors are *FieldError.
func (r Relationship) Validate() error {
	switch {
	case !ValidRelationshipID(r.ID):
		return fieldErrf("relationship_id", "malformed id")
	case !r.Relation.Valid():
		return fieldErr("relation", ErrNotRelative)
	case !r.ProposedBy.Valid():
		return fieldErrf("proposed_by", "unknown side %q", string(r.ProposedBy))
	case !r.Status.Valid():
		return fieldErrf("status", "unknown status %q", string(r.Status))
	case r.DissolveReason != "" && !r.DissolveReason.Valid():
		return fieldErrf("dissolve_reason", "unknown reason %q", string(r.DissolveReason))
	case r.Version < 1:
		return fieldErrf("version", "must be at least 1")
	case (r.Status == StatusDissolved) != (r.DissolveReason != ""):
		return fieldErrf("dissolve_reason", "set exactly when DISSOLVED")
	case r.Status.Live() != r.EndedAt.IsZero():
		return fieldErrf("ended_at", "set exactly when the relationship has ended")
	case r.ProposedAt.IsZero() || r.ExpiresAt.IsZero() || r.UpdatedAt.IsZero():
		return fieldErrf("proposed_at", "proposed_at, expires_at and updated_at are required")
	case r.SharerRef == r.BeneficiaryRef:
		return fieldErr("beneficiary_ref", ErrSelfSharing)
	case r.Quota.IsNegative() || r.Used.IsNegative() || r.Returned.IsNegative() || r.Used.GreaterThan(r.Quota) ||
		!r.Quota.InRange() || !r.Returned.InRange():
		return fieldErrf("quota", "inconsistent quota %s / used %s / returned %s", r.Quota, r.Used, r.Returned)
	}
	if err := validRef("sharer_ref", r.SharerRef); err != nil {
		return err
	}
	if err := validRef("beneficiary_ref", r.BeneficiaryRef); err != nil {
		return err
	}
	if _, err := region.ParseRegionIn(r.SharerRegion, r.SharerProvince); err != nil {
		return fieldErr("sharer_region", err)
	}
	if _, err := region.ParseProvince(r.BeneficiaryProvince); err != nil {
		return fieldErr("beneficiary_province", err)
	}
	return nil
}

// Proposal asks for a new relationship (R4).
type Proposal struct {
	Key                 string   `json:"key"`              // idempotency key of the proposing system
	Origin              string   `json:"origin,omitempty"` // province where it was proposed; "" = this node
	By                  Side     `json:"by"`
	SharerRef           string   `json:"sharer_ref"`
	SharerProvince      string   `json:"sharer_province"`
	BeneficiaryRef      string   `json:"beneficiary_ref"`
	BeneficiaryProvince string   `json:"beneficiary_province"`
	Relation            Relation `json:"relation"`
}

// ProvinceOf returns the province of a side.
func (p Proposal) ProvinceOf(s Side) string {
	if s == SideSharer {
		return p.SharerProvince
	}
	return p.BeneficiaryProvince
}

// Validate checks the proposal's fields and R2's form: refs, provinces, a near
// relation (ErrNotRelative) and two different people (ErrSelfSharing). Errors
// are *FieldError.
func (p Proposal) Validate() error {
	if err := validKey("key", p.Key); err != nil {
		return err
	}
	if !p.By.Valid() {
		return fieldErrf("by", "unknown side %q", string(p.By))
	}
	if err := validRef("sharer_ref", p.SharerRef); err != nil {
		return err
	}
	if err := validRef("beneficiary_ref", p.BeneficiaryRef); err != nil {
		return err
	}
	if _, err := region.ParseProvince(p.SharerProvince); err != nil {
		return fieldErr("sharer_province", err)
	}
	if _, err := region.ParseProvince(p.BeneficiaryProvince); err != nil {
		return fieldErr("beneficiary_province", err)
	}
	if p.Origin != "" {
		if _, err := region.ParseProvince(p.Origin); err != nil {
			return fieldErr("origin", err)
		}
	}
	if p.SharerRef == p.BeneficiaryRef {
		return fieldErr("beneficiary_ref", ErrSelfSharing)
	}
	if !p.Relation.Valid() {
		return fieldErr("relation", fmt.Errorf("%w: %q", ErrNotRelative, string(p.Relation)))
	}
	return nil
}

// NewRelationship applies R1/R2/R4 at the authority: the sharer (a Person of
// this province) must be able to share; the result is PENDING, version 1,
// expiring ttl after now, with no quota. p must have passed Validate and carry
// its Origin.
func NewRelationship(p Proposal, sharer Person, now time.Time, ttl time.Duration) (Relationship, error) {
	if sharer.Ref != p.SharerRef || sharer.Province != p.SharerProvince {
		return Relationship{}, fmt.Errorf("%w: sharer %s is not a person of %s", ErrWrongProvince, p.SharerRef, p.SharerProvince)
	}
	if err := sharer.CanShare(); err != nil {
		return Relationship{}, err
	}
	return Relationship{
		ID:                  RelationshipID(p.Origin, p.Key),
		SharerRef:           p.SharerRef,
		SharerProvince:      p.SharerProvince,
		SharerRegion:        sharer.Region,
		BeneficiaryRef:      p.BeneficiaryRef,
		BeneficiaryProvince: p.BeneficiaryProvince,
		Relation:            p.Relation,
		ProposedBy:          p.By,
		Status:              StatusPending,
		Version:             1,
		ProposedAt:          now,
		ExpiresAt:           now.Add(ttl),
		UpdatedAt:           now,
	}, nil
}

// CommandKind names a relationship command.
type CommandKind string

const (
	CommandConsent  CommandKind = "CONSENT"
	CommandDecline  CommandKind = "DECLINE"
	CommandDissolve CommandKind = "DISSOLVE"
	CommandSetQuota CommandKind = "SET_QUOTA"
)

func (k CommandKind) Valid() bool {
	switch k {
	case CommandConsent, CommandDecline, CommandDissolve, CommandSetQuota:
		return true
	}
	return false
}

// Command changes an existing relationship. It is applied at the authority
// (the sharer's node), idempotently by (Origin, Key): a retry replays the
// first answer; the same key with a different command is ErrKeyReused.
type Command struct {
	Key            string         `json:"key"`
	Origin         string         `json:"origin,omitempty"` // province where issued; "" = this node
	Kind           CommandKind    `json:"kind"`
	RelationshipID string         `json:"relationship_id"`
	By             Side           `json:"by"`               // the party acting
	Reason         DissolveReason `json:"reason,omitempty"` // DISSOLVE: "" = voluntary (R5); automatic reasons for R6
	Quota          money.Yuan     `json:"quota"`            // SET_QUOTA: the new total quota (≥ 0)
}

// Validate checks a command's fields. Errors are *FieldError.
func (c Command) Validate() error {
	if err := validKey("key", c.Key); err != nil {
		return err
	}
	if !c.Kind.Valid() {
		return fieldErrf("kind", "unknown command %q", string(c.Kind))
	}
	if !ValidRelationshipID(c.RelationshipID) {
		return fieldErrf("relationship_id", "malformed id")
	}
	if !c.By.Valid() {
		return fieldErrf("by", "unknown side %q", string(c.By))
	}
	if c.Origin != "" {
		if _, err := region.ParseProvince(c.Origin); err != nil {
			return fieldErr("origin", err)
		}
	}
	switch c.Kind {
	case CommandDissolve:
		if c.Reason != "" && !c.Reason.Valid() {
			return fieldErrf("reason", "unknown reason %q", string(c.Reason))
		}
		if c.Reason == ReasonVoluntarySharer && c.By != SideSharer || c.Reason == ReasonVoluntaryBeneficiary && c.By != SideBeneficiary {
			return fieldErrf("reason", "%s cannot be asked for by %s", c.Reason, c.By)
		}
	case CommandSetQuota:
		if c.By != SideSharer {
			return fieldErrf("by", "only the sharer sets the quota (it is their money)")
		}
		if c.Quota.IsNegative() {
			return fieldErrf("quota", "must not be negative")
		}
		if !c.Quota.InRange() {
			return fieldErr("quota", money.ErrOutOfRange)
		}
	default:
		if c.Reason != "" || !c.Quota.IsZero() {
			return fieldErrf("kind", "%s takes no reason or quota", c.Kind)
		}
	}
	return nil
}

// Apply decides a command against the relationship's current state (the
// caller holds the relationship locked). available is the sharer's available
// personal-account balance, used only to raise a quota. It returns the new
// relationship and the postings that must be booked in the same transaction
// (empty when no money moves). Errors: ErrBadTransition, ErrExpired,
// ErrNotActive, ErrBelowUsed, ErrInsufficientBalance.
func (r Relationship) Apply(c Command, available money.Yuan, now time.Time) (Relationship, ledger.Postings, error) {
	switch c.Kind {
	case CommandConsent, CommandDecline:
		if r.Status != StatusPending {
			return r, nil, fmt.Errorf("%w: %s of a %s relationship", ErrBadTransition, c.Kind, r.Status)
		}
		if c.By == r.ProposedBy {
			return r, nil, fmt.Errorf("%w: the %s proposed, so only the %s can %s", ErrBadTransition, r.ProposedBy, r.ProposedBy.Other(), c.Kind)
		}
		if !now.Before(r.ExpiresAt) {
			return r, nil, fmt.Errorf("%w: at %s", ErrExpired, r.ExpiresAt.Format(time.RFC3339))
		}
		r.Version++
		r.UpdatedAt = now
		if c.Kind == CommandConsent {
			r.Status = StatusActive
			r.ActivatedAt = now
		} else {
			r.Status = StatusDeclined
			r.EndedAt = now
		}
		return r, nil, nil
	case CommandDissolve:
		reason := c.Reason
		if reason == "" {
			reason = VoluntaryReason(c.By)
		}
		if r.Status == StatusPending && !reason.Automatic() && !now.Before(r.ExpiresAt) {
			return r, nil, fmt.Errorf("%w: at %s", ErrExpired, r.ExpiresAt.Format(time.RFC3339))
		}
		return r.Dissolve(reason, now)
	case CommandSetQuota:
		return r.SetQuota(c.Quota, available, now)
	}
	return r, nil, fmt.Errorf("%w: unknown command %q", ErrBadTransition, string(c.Kind))
}

// Dissolve ends a live relationship (R5/R6) and returns the postings that give
// the unused quota back to the sharer (R7). ErrBadTransition when not live.
func (r Relationship) Dissolve(reason DissolveReason, now time.Time) (Relationship, ledger.Postings, error) {
	if !r.Status.Live() {
		return r, nil, fmt.Errorf("%w: dissolve a %s relationship", ErrBadTransition, r.Status)
	}
	unused := r.Unused()
	r.Status = StatusDissolved
	r.DissolveReason = reason
	r.Returned = r.Returned.Add(unused)
	r.EndedAt = now
	r.UpdatedAt = now
	r.Version++
	return r, QuotaPostings(r, unused.Neg()), nil
}

// Expire ends a PENDING proposal whose time is up. ErrBadTransition otherwise.
func (r Relationship) Expire(now time.Time) (Relationship, error) {
	if r.Status != StatusPending {
		return r, fmt.Errorf("%w: expire a %s relationship", ErrBadTransition, r.Status)
	}
	if now.Before(r.ExpiresAt) {
		return r, fmt.Errorf("%w: proposal expires at %s", ErrBadTransition, r.ExpiresAt.Format(time.RFC3339))
	}
	r.Status = StatusExpired
	r.EndedAt = now
	r.UpdatedAt = now
	r.Version++
	return r, nil
}

// SetQuota applies R8: earmark (raise) from the available balance, or lower
// the quota but never below what is used. Only an ACTIVE relationship has a
// quota. Setting the current value changes nothing (no version bump).
// Errors: ErrNotActive, ErrBelowUsed, ErrInsufficientBalance.
func (r Relationship) SetQuota(q, available money.Yuan, now time.Time) (Relationship, ledger.Postings, error) {
	if r.Status != StatusActive {
		return r, nil, fmt.Errorf("%w: quota of a %s relationship", ErrNotActive, r.Status)
	}
	if q.LessThan(r.Used) {
		return r, nil, fmt.Errorf("%w: quota %s < used %s", ErrBelowUsed, q, r.Used)
	}
	delta := q.Sub(r.Quota)
	if delta.GreaterThan(available) {
		return r, nil, fmt.Errorf("%w: raising the quota by %s needs %s, available %s", ErrInsufficientBalance, delta, delta, available)
	}
	if delta.IsZero() {
		return r, nil, nil
	}
	r.Quota = q
	r.UpdatedAt = now
	r.Version++
	return r, QuotaPostings(r, delta), nil
}

// Authorize applies R9 to a usage of amount: the relationship must be ACTIVE
// and the amount must fit in the remaining quota. The caller holds the
// relationship locked, so two usages can never both fit in the same money.
func (r Relationship) Authorize(amount money.Yuan) Refusal {
	if r.Status != StatusActive {
		return RefusalNotActive
	}
	if amount.GreaterThan(r.Remaining()) {
		return RefusalQuotaExceeded
	}
	return RefusalNone
}

// WithUsage records an authorised usage: Used grows. The version is not
// bumped: replicas learn the used amount with the next state change.
func (r Relationship) WithUsage(amount money.Yuan) Relationship {
	r.Used = r.Used.Add(amount)
	return r
}

// WithReversal records a reversal of amount (R12): Used shrinks. While the
// relationship is live the money goes back to its quota account (toQuota);
// once it has ended it goes straight back to the sharer, as the rest of the
// unused quota did at dissolution (Returned grows).
func (r Relationship) WithReversal(amount money.Yuan) (updated Relationship, toQuota bool) {
	r.Used = r.Used.Sub(amount)
	if r.Status.Live() {
		return r, true
	}
	r.Returned = r.Returned.Add(amount)
	return r, false
}

// RelationshipFilter selects relationships for ListRelationships.
type RelationshipFilter struct {
	PersonRef string   // required: the person whose relationships to list
	Side      Side     // "" = either side; SideSharer = where the person shares
	Statuses  []Status // empty = all
	AfterID   string   // keyset pagination: ids greater than this
	Limit     int      // 1..ListLimitMax; 0 = ListLimitDefault
}

// List limits.
const (
	ListLimitDefault = 100
	ListLimitMax     = 1000
)

// Validate checks a filter and applies the default limit.
func (f RelationshipFilter) Validate() (RelationshipFilter, error) {
	if err := validRef("person_ref", f.PersonRef); err != nil {
		return f, err
	}
	if f.Side != "" && !f.Side.Valid() {
		return f, fieldErrf("side", "unknown side %q", string(f.Side))
	}
	for _, s := range f.Statuses {
		if !s.Valid() {
			return f, fieldErrf("statuses", "unknown status %q", string(s))
		}
	}
	if f.AfterID != "" && !ValidRelationshipID(f.AfterID) {
		return f, fieldErrf("after_id", "malformed id")
	}
	f.Limit, _ = limitOf(f.Limit)
	if f.Limit < 0 {
		return f, fieldErrf("limit", "must be between 0 and %d", ListLimitMax)
	}
	return f, nil
}

func limitOf(n int) (int, bool) {
	switch {
	case n == 0:
		return ListLimitDefault, true
	case n < 0 || n > ListLimitMax:
		return -1, false
	}
	return n, true
}
