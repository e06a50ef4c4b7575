package sharing

import (
	"fmt"
	"strconv"
	"time"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
)

// Scheme is the basic medical-insurance scheme a person is enrolled in.
type Scheme string

const (
	SchemeEmployee Scheme = "EMPLOYEE" // 职工基本医疗保险
	SchemeResident Scheme = "RESIDENT" // 城乡居民基本医疗保险 (no personal account)
)

func (s Scheme) Valid() bool { return s == SchemeEmployee || s == SchemeResident }

// Mode is how an employee-scheme enrollment is funded (seed 001 §二).
type Mode string

const (
	ModePooledWithAccount Mode = "POOLED_WITH_ACCOUNT" // 统账结合: pooled fund plus a personal account
	ModePoolingOnly       Mode = "POOLING_ONLY"        // 单建统筹: no personal account
)

func (m Mode) Valid() bool { return m == ModePooledWithAccount || m == ModePoolingOnly }

// PersonStatus is the state of a person's enrollment in this province.
type PersonStatus string

const (
	PersonActive     PersonStatus = "ACTIVE"
	PersonSuspended  PersonStatus = "SUSPENDED"  // 中止参保 (e.g. contributions stopped)
	PersonTerminated PersonStatus = "TERMINATED" // 终止参保 (incl. transfer out of the province)
	PersonDeceased   PersonStatus = "DECEASED"
)

func (s PersonStatus) Valid() bool {
	switch s {
	case PersonActive, PersonSuspended, PersonTerminated, PersonDeceased:
		return true
	}
	return false
}

// Enrollment is the part of a person that enrollment events change.
type Enrollment struct {
	Region  string       `json:"region"` // pooling region (统筹地区) in this province
	Scheme  Scheme       `json:"scheme"`
	Mode    Mode         `json:"mode"`
	Status  PersonStatus `json:"status"`
	Insured bool         `json:"insured"` // 已参保: false for a relative registered only so a premium can be paid for them
}

// Validate checks an enrollment of a person in province: a known region of
// that province, known enums, and no personal-account mode in the resident
// scheme (which has none). Errors are *FieldError.
func (e Enrollment) Validate(province string) error {
	if _, err := region.ParseRegionIn(e.Region, province); err != nil {
		return fieldErr("region", err)
	}
	if !e.Scheme.Valid() {
		return fieldErrf("scheme", "unknown scheme %q", string(e.Scheme))
	}
	if !e.Mode.Valid() {
		return fieldErrf("mode", "unknown mode %q", string(e.Mode))
	}
	if e.Scheme == SchemeResident && e.Mode != ModePoolingOnly {
		return fieldErrf("mode", "the resident scheme has no personal account: mode must be %s", ModePoolingOnly)
	}
	if !e.Status.Valid() {
		return fieldErrf("status", "unknown status %q", string(e.Status))
	}
	return nil
}

// Person is someone enrolled (or registered to be enrolled) in this node's
// province. Nodes store only the pseudonym and a masked ID (architecture:
// "Identity and personal data"); the clear ID number never reaches a Person.
type Person struct {
	Ref      string `json:"person_ref"`
	MaskedID string `json:"masked_id"`
	Province string `json:"province"`
	Enrollment
	Version   int64     `json:"version"` // bumped by every enrollment change
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// IsInsured reports 已参保: enrolled, active and flagged insured.
func (p Person) IsInsured() bool { return p.Insured && p.Status == PersonActive }

// HasPersonalAccount reports whether the enrollment carries a personal account
// (employee scheme, 统账结合), regardless of status.
func (p Person) HasPersonalAccount() bool {
	return p.Scheme == SchemeEmployee && p.Mode == ModePooledWithAccount
}

// CanShare applies R1: only an actively insured employee-scheme enrollee with
// a personal account may be a sharer. Returns ErrNoPersonalAccount or
// ErrSharerInactive.
func (p Person) CanShare() error {
	if !p.HasPersonalAccount() {
		return fmt.Errorf("%w: person %s is %s/%s", ErrNoPersonalAccount, p.Ref, p.Scheme, p.Mode)
	}
	if !p.IsInsured() {
		return fmt.Errorf("%w: person %s is %s (insured=%t)", ErrSharerInactive, p.Ref, p.Status, p.Insured)
	}
	return nil
}

// CanBenefit applies R2/R10 on the beneficiary's side: medical and pharmacy
// costs need an insured beneficiary (已参保, seed 000 §四); a premium may be
// paid for someone not yet insured, because paying it enrolls them, but never
// for a deceased person. Returns ErrBeneficiaryUninsured.
func (p Person) CanBenefit(k Kind) error {
	if p.Status == PersonDeceased {
		return fmt.Errorf("%w: person %s is deceased", ErrBeneficiaryUninsured, p.Ref)
	}
	if k.NeedsInsured() && !p.IsInsured() {
		return fmt.Errorf("%w: %s usage needs an insured beneficiary; %s is %s (insured=%t)", ErrBeneficiaryUninsured, k, p.Ref, p.Status, p.Insured)
	}
	return nil
}

// CanBeProposedTo reports whether p may be named as a beneficiary at all: any
// registered person who is alive (R2: any scheme, insured or not).
func (p Person) CanBeProposedTo() error {
	if p.Status == PersonDeceased {
		return fmt.Errorf("%w: person %s is deceased", ErrBeneficiaryUninsured, p.Ref)
	}
	return nil
}

// RegisterPersonRequest registers a person of this province. The ID number is
// validated (GB 11643-1999), turned into the person_ref and a masked copy, and
// then dropped. Registering someone already registered brings their
// enrollment up to date (an EnrollmentChange with the full enrollment).
type RegisterPersonRequest struct {
	IDNumber string
	Enrollment
}

// EnrollmentChange changes a person's enrollment (the R6 trigger). It comes
// in one of two forms:
//
//   - a full new Enrollment (the state the enrollment system now holds), with
//     an optional Event naming the change when the state alone does not (e.g.
//     TRANSFER for a move to another province, recorded here as TERMINATED);
//   - an Event alone (zero Enrollment), applied to the current state under
//     lock: TRANSFER (with NewRegion), SUSPENSION, TERMINATION, DEATH or
//     ACCOUNT_LOST (to 单建统筹).
//
// A change that leaves the enrollment as it is does nothing, so repeating one
// is harmless.
type EnrollmentChange struct {
	PersonRef string `json:"person_ref"`
	Enrollment
	Event     DissolveReason `json:"event,omitempty"`      // an automatic reason, or ""
	NewRegion string         `json:"new_region,omitempty"` // TRANSFER by event
	// Key, when set, is the change's idempotency key (the API's change_key):
	// a retry gets the first answer, and the same key with a different change
	// is refused (ErrKeyReused). It shares the namespace of the province's
	// other command keys. A re-registration (RegisterPerson) has none.
	Key string `json:"key,omitempty"`
}

// Hash identifies the change's content under its key (see hashFields).
func (ch EnrollmentChange) Hash() []byte {
	return hashFields("gongji.sharing.enrollment.v1", ch.Key, ch.PersonRef, ch.Region, string(ch.Scheme),
		string(ch.Mode), string(ch.Status), strconv.FormatBool(ch.Insured), string(ch.Event), ch.NewRegion)
}

// byEvent reports the event-only form.
func (ch EnrollmentChange) byEvent() bool { return ch.Enrollment == (Enrollment{}) }

// Validate checks the change for a person of province. Errors are *FieldError.
func (ch EnrollmentChange) Validate(province string) error {
	if err := validRef("person_ref", ch.PersonRef); err != nil {
		return err
	}
	if ch.Key != "" {
		if err := validKey("change_key", ch.Key); err != nil {
			return err
		}
	}
	if !validEvent(ch.Event) {
		return fieldErrf("event", "must be an automatic dissolve reason, not %q", string(ch.Event))
	}
	if !ch.byEvent() {
		if ch.NewRegion != "" {
			return fieldErrf("new_region", "only with an event-only change")
		}
		return ch.Enrollment.Validate(province)
	}
	switch ch.Event {
	case "":
		return fieldErrf("event", "an enrollment or an event is required")
	case ReasonTransfer:
		if _, err := region.ParseRegionIn(ch.NewRegion, province); err != nil {
			return fieldErr("new_region", err)
		}
	default:
		if ch.NewRegion != "" {
			return fieldErrf("new_region", "only for TRANSFER")
		}
	}
	return nil
}

// Target returns the enrollment after the change, given the current one.
func (ch EnrollmentChange) Target(cur Enrollment) Enrollment {
	if !ch.byEvent() {
		return ch.Enrollment
	}
	next := cur
	switch ch.Event {
	case ReasonTransfer:
		next.Region = ch.NewRegion
	case ReasonSuspension:
		next.Status = PersonSuspended
	case ReasonTermination:
		next.Status = PersonTerminated
	case ReasonDeath:
		next.Status = PersonDeceased
	case ReasonAccountLost:
		next.Mode = ModePoolingOnly
	}
	return next
}

// RegisterResult is what RegisterPerson did.
type RegisterResult struct {
	Created bool `json:"created"` // false: the person was registered already
	// EnrollmentResult: the person as now registered and, when an existing
	// registration carried another enrollment, the effect of that change (R6).
	EnrollmentResult
}

// EnrollmentResult is what an enrollment change did.
type EnrollmentResult struct {
	Person Person `json:"person"`
	// Reason is the R6 trigger, or "" when the change does not end the
	// person's insurance relationship (e.g. reactivation).
	Reason DissolveReason `json:"reason,omitempty"`
	// Dissolved are the relationships this node ended in the same transaction
	// (this node is their authority), with their unused quota returned (R7).
	Dissolved []Relationship `json:"dissolved"`
	// Forwarded are the dissolution commands queued durably (relay queue, same
	// transaction) for relationships whose authority is another province.
	Forwarded []Command `json:"forwarded"`
	// Replayed: the answer stored under the change's key, given again.
	Replayed bool `json:"-"`
}

// AutoDissolveReason applies R6: it compares a person before and after an
// enrollment change and returns the reason that ends every relationship of
// the person, or false when the change is not a change of the insurance
// relationship that R6 names. event, when not empty, overrides the derived
// reason (it must be automatic and the change must still be a real change).
// Precedence, most specific first: death, termination, suspension (including
// losing the insured flag), transfer to another pooling region, loss of the
// personal account.
func AutoDissolveReason(old, updated Person, event DissolveReason) (DissolveReason, bool) {
	var r DissolveReason
	switch {
	case updated.Status == PersonDeceased && old.Status != PersonDeceased:
		r = ReasonDeath
	case updated.Status == PersonTerminated && old.Status != PersonTerminated:
		r = ReasonTermination
	case updated.Status == PersonSuspended && old.Status != PersonSuspended:
		r = ReasonSuspension
	case old.Insured && !updated.Insured:
		r = ReasonSuspension
	case updated.Region != old.Region:
		r = ReasonTransfer
	case old.HasPersonalAccount() && !updated.HasPersonalAccount():
		r = ReasonAccountLost
	default:
		return "", false
	}
	if event != "" {
		r = event
	}
	return r, true
}

// validEvent checks EnrollmentChange.Event.
func validEvent(e DissolveReason) bool { return e == "" || (e.Valid() && e.Automatic()) }

// Account is a person's personal account as the sharer sees it (R8).
type Account struct {
	PersonRef string     `json:"person_ref"`
	Available money.Yuan `json:"available"` // spendable by the holder
	Earmarked money.Yuan `json:"earmarked"` // frozen in live relationships' unused quota
}

// MovementRequest credits or debits a personal account directly.
type MovementRequest struct {
	Key       string     `json:"key"` // idempotency key from the funding or spending system
	PersonRef string     `json:"person_ref"`
	Amount    money.Yuan `json:"amount"`
}

// Movement is the answer to a MovementRequest; a retry replays it exactly.
type Movement struct {
	Key       string     `json:"key"`
	Kind      string     `json:"kind"` // EntryCredit or EntryOwnSpend
	PersonRef string     `json:"person_ref"`
	Amount    money.Yuan `json:"amount"`
	Available money.Yuan `json:"available"` // personal account after the movement
	EntryID   int64      `json:"entry_id"`
	At        time.Time  `json:"at"`
}

// validRef checks a person_ref field.
func validRef(field, ref string) error {
	if !pii.IsRef(ref) {
		return fieldErrf(field, "not a person_ref (32 lowercase hex)")
	}
	return nil
}
