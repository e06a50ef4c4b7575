package sharing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
)

// Defaults of Config (DESIGN §8; docs/architecture.md "Defaults").
const (
	// DefaultProposalTTL: a relative has a week to consent, as in comparable
	// provincial apps.
	DefaultProposalTTL = 7 * 24 * time.Hour
	// DefaultClockSkewMax: how far in the future an occurred_at may lie, to
	// absorb clock differences between an institution and the node.
	DefaultClockSkewMax = 5 * time.Minute
	// DefaultExpireBatchRowsMax: proposals expired per store transaction.
	DefaultExpireBatchRowsMax = 500
	// expireBatchesMax bounds one ExpireProposals call (TigerStyle: a limit on
	// every loop); the sweeper calls again on its next tick.
	expireBatchesMax = 100
)

// Config configures a Service.
type Config struct {
	// Province is this node's provincial unit (XX0000). Required.
	Province string
	// PersonKey is the national person key of PersonRef. Required.
	PersonKey []byte
	// ProposalTTL is how long a proposal waits for consent. Default DefaultProposalTTL.
	ProposalTTL time.Duration
	// ClockSkewMax bounds occurred_at in the future. Default DefaultClockSkewMax.
	ClockSkewMax time.Duration
	// ExpireBatchRowsMax is the rows per ExpireProposals transaction. Default DefaultExpireBatchRowsMax.
	ExpireBatchRowsMax int
	// Now is the clock; read once per operation. Default time.Now.
	Now func() time.Time
	// Remote reaches other provinces through the clearing switch. Nil: every
	// cross-province step returns ErrUnavailable.
	Remote Remote
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.ProposalTTL == 0 {
		c.ProposalTTL = DefaultProposalTTL
	}
	if c.ClockSkewMax == 0 {
		c.ClockSkewMax = DefaultClockSkewMax
	}
	if c.ExpireBatchRowsMax == 0 {
		c.ExpireBatchRowsMax = DefaultExpireBatchRowsMax
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if _, err := region.ParseProvince(c.Province); err != nil {
		return fmt.Errorf("sharing: config province: %w", err)
	}
	if len(c.PersonKey) < 16 {
		return errors.New("sharing: config person key must be at least 16 bytes")
	}
	if c.ProposalTTL <= 0 || c.ClockSkewMax < 0 || c.ExpireBatchRowsMax <= 0 || c.ExpireBatchRowsMax > 10000 {
		return errors.New("sharing: config: proposal TTL must be positive, skew non-negative, expire batch 1..10000")
	}
	return nil
}

// Service is a province node's sharing domain: people, personal accounts,
// relationships, quotas, usages and reversals (R1–R13). It validates every
// request at its door, routes it to the authority (this node's Store, or the
// sharer's node through Remote) and leaves transactions to the Store.
// It is safe for concurrent use.
type Service struct {
	store Store
	cfg   Config
}

// NewService returns a Service over store. cfg gets WithDefaults and must Validate.
func NewService(store Store, cfg Config) (*Service, error) {
	if store == nil {
		return nil, errors.New("sharing: nil store")
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Service{store: store, cfg: cfg}, nil
}

// Province is this node's province code.
func (s *Service) Province() string { return s.cfg.Province }

func (s *Service) now() time.Time { return Timestamp(s.cfg.Now()) }

// Ref validates an ID number (GB 11643-1999) and returns its person_ref, so
// the edge can accept ID numbers and pass only refs on. Errors are *FieldError
// wrapping a pii sentinel.
func (s *Service) Ref(idNumber string) (string, error) {
	id, err := pii.Parse(idNumber, s.cfg.Now())
	if err != nil {
		return "", fieldErr("id_number", err)
	}
	return pii.PersonRef(s.cfg.PersonKey, id.Number), nil
}

// RegisterPerson registers a person of this province from their ID number;
// only the ref and the masked number are kept. Registering someone already
// registered is idempotent and brings their enrollment up to date: a
// different enrollment is applied as an enrollment change, with its R6
// effects, in the same transaction. ErrInvalidInput, ErrPersonExists (the
// stored masked number differs: a ref collision or a changed person key).
func (s *Service) RegisterPerson(ctx context.Context, req RegisterPersonRequest) (RegisterResult, error) {
	now := s.now()
	id, err := pii.Parse(req.IDNumber, now)
	if err != nil {
		return RegisterResult{}, fieldErr("id_number", err)
	}
	if err := req.Enrollment.Validate(s.cfg.Province); err != nil {
		return RegisterResult{}, err
	}
	return s.store.RegisterPerson(ctx, Person{
		Ref:        pii.PersonRef(s.cfg.PersonKey, id.Number),
		MaskedID:   pii.Mask(id.Number),
		Province:   s.cfg.Province,
		Enrollment: req.Enrollment,
		Version:    1,
		CreatedAt:  now,
		UpdatedAt:  now,
	}, now)
}

// GetPerson returns a person of this province. ErrNotFound.
func (s *Service) GetPerson(ctx context.Context, ref string) (Person, error) {
	if err := validRef("person_ref", ref); err != nil {
		return Person{}, err
	}
	return s.store.GetPerson(ctx, ref)
}

// UpdateEnrollment records an enrollment change. When it changes the person's
// insurance relationship (transfer to another pooling region, suspension,
// termination, death, loss of the personal account: AutoDissolveReason), every
// live relationship of the person ends automatically (R6) in the same
// transaction, the unused quota going back to the sharer (R7); relationships
// whose authority is another province get a durable dissolution command in the
// same transaction. Nobody has to ask. The change is either the full new
// enrollment or an event applied to the current one (EnrollmentChange);
// repeating a change does nothing. ErrNotFound, ErrInvalidInput.
func (s *Service) UpdateEnrollment(ctx context.Context, ch EnrollmentChange) (EnrollmentResult, error) {
	if err := ch.Validate(s.cfg.Province); err != nil {
		return EnrollmentResult{}, err
	}
	return s.store.ChangeEnrollment(ctx, ch, s.cfg.Province, s.now())
}

// Credit deposits money into a personal account (contributions, transfers
// in), idempotent by key. ErrNotFound, ErrNoPersonalAccount,
// ErrPersonInactive, ErrKeyReused, ErrInvalidInput.
func (s *Service) Credit(ctx context.Context, m MovementRequest) (Movement, error) {
	if err := m.Validate(); err != nil {
		return Movement{}, err
	}
	return s.store.Credit(ctx, m, s.cfg.Province, s.now())
}

// SpendOwn pays the holder's own cost from the available part of the personal
// account; earmarked quota is frozen and cannot be spent this way (R8).
// Idempotent by key. ErrNotFound, ErrPersonInactive, ErrInsufficientBalance,
// ErrKeyReused, ErrInvalidInput.
func (s *Service) SpendOwn(ctx context.Context, m MovementRequest) (Movement, error) {
	if err := m.Validate(); err != nil {
		return Movement{}, err
	}
	return s.store.SpendOwn(ctx, m, s.cfg.Province, s.now())
}

// GetAccount returns a personal account's available and earmarked parts. ErrNotFound.
func (s *Service) GetAccount(ctx context.Context, ref string) (Account, error) {
	if err := validRef("person_ref", ref); err != nil {
		return Account{}, err
	}
	return s.store.GetAccount(ctx, ref)
}

// Propose starts a relationship (R4): PENDING until the other party consents,
// expiring after the configured TTL. The proposer acts from their own
// province (Origin; "" = this node). If the sharer is a person of this node
// the relationship is created here (this node is its authority); otherwise the
// proposal goes to the sharer's node through Remote and the returned snapshot
// is kept as a replica. Idempotent by (Origin, Key).
// Errors: ErrInvalidInput (with ErrSelfSharing or ErrNotRelative),
// ErrWrongProvince, ErrNotFound, ErrNoPersonalAccount, ErrSharerInactive,
// ErrBeneficiaryUninsured, ErrDuplicateRelationship, ErrKeyReused,
// ErrUnavailable.
func (s *Service) Propose(ctx context.Context, p Proposal) (Relationship, error) {
	if p.Origin == "" {
		p.Origin = s.cfg.Province
	}
	if err := p.Validate(); err != nil {
		return Relationship{}, err
	}
	if p.ProvinceOf(p.By) != p.Origin {
		return Relationship{}, fmt.Errorf("%w: a proposal by the %s must come from %s, not %s", ErrWrongProvince, p.By, p.ProvinceOf(p.By), p.Origin)
	}
	if p.SharerProvince == s.cfg.Province {
		return s.store.Propose(ctx, p, s.cfg.ProposalTTL, s.now())
	}
	if p.Origin != s.cfg.Province {
		return Relationship{}, fmt.Errorf("%w: sharer is in %s, not here", ErrWrongProvince, p.SharerProvince)
	}
	// The proposer is the beneficiary, a person of this node; the authority is elsewhere.
	ben, err := s.store.GetPerson(ctx, p.BeneficiaryRef)
	if err != nil {
		return Relationship{}, err
	}
	if err := ben.CanBeProposedTo(); err != nil {
		return Relationship{}, err
	}
	if s.cfg.Remote == nil {
		return Relationship{}, fmt.Errorf("%w: no route to %s", ErrUnavailable, p.SharerProvince)
	}
	snap, err := s.cfg.Remote.Propose(ctx, p.SharerProvince, p)
	if err != nil {
		return Relationship{}, err
	}
	if snap.ID != RelationshipID(p.Origin, p.Key) {
		return Relationship{}, fmt.Errorf("sharing: %s answered proposal %s with relationship %s", p.SharerProvince, p.Key, snap.ID)
	}
	return s.keepReplica(ctx, snap)
}

// keepReplica stores an authority's answer and returns it.
func (s *Service) keepReplica(ctx context.Context, snap Relationship) (Relationship, error) {
	snap = normaliseRelationship(snap)
	if err := s.checkReplica(snap); err != nil {
		return Relationship{}, err
	}
	if _, err := s.store.ApplyReplica(ctx, snap); err != nil {
		return Relationship{}, err
	}
	return snap, nil
}

// CommandRequest is a consent or decline.
type CommandRequest struct {
	Key            string // idempotency key of the acting system
	Origin         string // province where issued; "" = this node
	RelationshipID string
	By             Side // the acting party: must be the one that did not propose
}

// Consent makes a PENDING relationship ACTIVE (R4). Only the party that did
// not propose may consent, before expiry. Errors: ErrBadTransition (not
// PENDING, or the proposer consenting), ErrExpired, plus those of Apply.
func (s *Service) Consent(ctx context.Context, r CommandRequest) (Relationship, error) {
	return s.Apply(ctx, Command{Key: r.Key, Origin: r.Origin, Kind: CommandConsent, RelationshipID: r.RelationshipID, By: r.By})
}

// Decline ends a PENDING proposal (DECLINED). Errors as Consent.
func (s *Service) Decline(ctx context.Context, r CommandRequest) (Relationship, error) {
	return s.Apply(ctx, Command{Key: r.Key, Origin: r.Origin, Kind: CommandDecline, RelationshipID: r.RelationshipID, By: r.By})
}

// DissolveRequest ends a relationship.
type DissolveRequest struct {
	Key            string
	Origin         string
	RelationshipID string
	By             Side
	// Reason: "" for a voluntary dissolution by By (R5); an automatic reason
	// when By's insurance relationship changed (R6, normally sent by
	// UpdateEnrollment through the relay queue).
	Reason DissolveReason
}

// Dissolve ends a live relationship (R5/R6); the unused quota returns to the
// sharer in the same transaction (R7). Errors: ErrBadTransition (not live),
// ErrExpired (withdrawing an expired proposal), plus those of Apply.
func (s *Service) Dissolve(ctx context.Context, r DissolveRequest) (Relationship, error) {
	return s.Apply(ctx, Command{Key: r.Key, Origin: r.Origin, Kind: CommandDissolve, RelationshipID: r.RelationshipID, By: r.By, Reason: r.Reason})
}

// SetQuotaRequest sets the total quota of an ACTIVE relationship. Only the
// sharer does this; it is always applied at the sharer's node.
type SetQuotaRequest struct {
	Key            string
	Origin         string
	RelationshipID string
	Quota          money.Yuan // new total, ≥ 0
}

// SetQuota earmarks (raise) or releases (lower) quota (R8). Errors:
// ErrNotActive, ErrBelowUsed, ErrInsufficientBalance, plus those of Apply.
func (s *Service) SetQuota(ctx context.Context, r SetQuotaRequest) (Relationship, error) {
	return s.Apply(ctx, Command{Key: r.Key, Origin: r.Origin, Kind: CommandSetQuota, RelationshipID: r.RelationshipID, By: SideSharer, Quota: r.Quota})
}

// Apply runs any relationship command: the typed methods above use it, and
// the transport calls it for commands forwarded from other provinces
// (Origin set to the sender). The acting side must belong to Origin. At the
// authority the command is applied idempotently by (Origin, Key); elsewhere it
// is forwarded to the authority and the answer kept as a replica.
// Errors: ErrInvalidInput, ErrNotFound, ErrWrongProvince, ErrKeyReused,
// ErrUnavailable and the transition errors of Relationship.Apply.
func (s *Service) Apply(ctx context.Context, c Command) (Relationship, error) {
	if c.Origin == "" {
		c.Origin = s.cfg.Province
	}
	if err := c.Validate(); err != nil {
		return Relationship{}, err
	}
	rel, err := s.store.GetRelationship(ctx, c.RelationshipID)
	if err != nil {
		return Relationship{}, err
	}
	if rel.ProvinceOf(c.By) != c.Origin {
		return Relationship{}, fmt.Errorf("%w: the %s of %s is in %s, the command came from %s", ErrWrongProvince, c.By, rel.ID, rel.ProvinceOf(c.By), c.Origin)
	}
	if rel.SharerProvince == s.cfg.Province {
		return s.store.ApplyCommand(ctx, c, s.now())
	}
	if c.Origin != s.cfg.Province {
		return Relationship{}, fmt.Errorf("%w: %s is not the authority of %s", ErrWrongProvince, s.cfg.Province, rel.ID)
	}
	if s.cfg.Remote == nil {
		return Relationship{}, fmt.Errorf("%w: no route to %s", ErrUnavailable, rel.SharerProvince)
	}
	snap, err := s.cfg.Remote.Command(ctx, rel.SharerProvince, c)
	if err != nil {
		return Relationship{}, err
	}
	if snap.ID != rel.ID {
		return Relationship{}, fmt.Errorf("sharing: %s answered a command on %s with %s", rel.SharerProvince, rel.ID, snap.ID)
	}
	return s.keepReplica(ctx, snap)
}

// ExpireProposals moves every PENDING proposal of this authority whose expiry
// is at or before now to EXPIRED, in batches, and returns how many. A
// background sweeper calls it periodically.
func (s *Service) ExpireProposals(ctx context.Context, now time.Time) (int, error) {
	now = Timestamp(now)
	n := 0
	for i := 0; i < expireBatchesMax; i++ {
		done, err := s.store.ExpireProposals(ctx, now, s.cfg.ExpireBatchRowsMax)
		n += len(done)
		if err != nil || len(done) < s.cfg.ExpireBatchRowsMax {
			return n, err
		}
	}
	return n, nil
}

// GetRelationship returns a relationship this node holds (authority or
// replica; a replica's Used may lag). ErrNotFound.
func (s *Service) GetRelationship(ctx context.Context, id string) (Relationship, error) {
	if !ValidRelationshipID(id) {
		return Relationship{}, fieldErrf("relationship_id", "malformed id")
	}
	return s.store.GetRelationship(ctx, id)
}

// ListRelationships lists a person's relationships by id (keyset pagination).
func (s *Service) ListRelationships(ctx context.Context, f RelationshipFilter) ([]Relationship, error) {
	f, err := f.Validate()
	if err != nil {
		return nil, err
	}
	return s.store.ListRelationships(ctx, f)
}

// checkOccurred refuses an occurred_at too far in the future.
func (s *Service) checkOccurred(t, now time.Time) error {
	if t.After(now.Add(s.cfg.ClockSkewMax)) {
		return fieldErrf("occurred_at", "%s is in the future", t.Format(time.RFC3339))
	}
	return nil
}

// Spend pays a cost of a beneficiary of this province from a relationship's
// quota (R9–R13). It is called by the institution's system where the cost was
// paid (the payee). Order of checks:
//
//  1. the request's fields (ErrInvalidInput; the payee region must be in this province);
//  2. a known usage key replays its first answer, approval or refusal (R11;
//     Replayed set), or fails with ErrKeyReused when the request differs —
//     nothing moves;
//  3. the beneficiary's eligibility for the kind (R10, ErrBeneficiaryUninsured);
//  4. the authority decides: this node's store when the sharer is local
//     (LOCAL usage), else the sharer's node through Remote.Debit (cross-province,
//     R13), after which this node records its PAYEE copy.
//
// An approval returns the result and a nil error. A refusal returns the
// result (Approved false) and its sentinel: ErrQuotaExceeded, ErrNotActive,
// ErrSharerInactive or ErrNoPersonalAccount. Other errors: ErrNotFound,
// ErrWrongProvince, ErrUnavailable (retry with the same key).
func (s *Service) Spend(ctx context.Context, req UsageRequest) (UsageResult, error) {
	if req.PayeeProvince == "" {
		req.PayeeProvince = s.cfg.Province
	}
	req.OccurredAt = Timestamp(req.OccurredAt)
	if err := req.Validate(); err != nil {
		return UsageResult{}, err
	}
	if req.PayeeProvince != s.cfg.Province {
		return UsageResult{}, fieldErr("payee_province", fmt.Errorf("%w: a usage is spent where it is paid; this node serves %s", ErrWrongProvince, s.cfg.Province))
	}
	now := s.now()
	if err := s.checkOccurred(req.OccurredAt, now); err != nil {
		return UsageResult{}, err
	}
	// One round trip: a recorded answer, else the relationship and its beneficiary.
	prep, err := s.store.PrepareUsage(ctx, req.Key, req.Hash(), req.RelationshipID, true)
	if err != nil || prep.Found {
		return answer(prep.Answer, err)
	}
	rel := prep.Relationship
	if rel.BeneficiaryProvince != s.cfg.Province {
		return UsageResult{}, fmt.Errorf("%w: the beneficiary of %s is in %s", ErrWrongProvince, rel.ID, rel.BeneficiaryProvince)
	}
	if req.BeneficiaryRef != "" && req.BeneficiaryRef != rel.BeneficiaryRef {
		return UsageResult{}, fieldErrf("beneficiary_ref", "is not the beneficiary of %s", rel.ID)
	}
	ben := prep.Beneficiary
	if ben == nil {
		return UsageResult{}, fmt.Errorf("person %s: %w", rel.BeneficiaryRef, ErrNotFound)
	}
	if err := ben.CanBenefit(req.Kind); err != nil {
		return UsageResult{}, err
	}
	if rel.SharerProvince == s.cfg.Province {
		return answer(s.store.Authorize(ctx, req, RoleLocal, now))
	}
	if s.cfg.Remote == nil {
		return UsageResult{}, fmt.Errorf("%w: no route to %s", ErrUnavailable, rel.SharerProvince)
	}
	req.BeneficiaryRef = rel.BeneficiaryRef
	res, err := s.cfg.Remote.Debit(ctx, rel.SharerProvince, req)
	if err != nil {
		return UsageResult{}, err
	}
	if !res.Approved {
		res.Replayed = false
		return res, res.Err()
	}
	if !bytes.Equal(res.Usage.Request().Hash(), req.Hash()) || res.Usage.RelationshipID != rel.ID || res.Usage.SharerRef != rel.SharerRef || res.Usage.BeneficiaryRef != rel.BeneficiaryRef {
		return UsageResult{}, fmt.Errorf("sharing: %s approved usage %s with different fields", rel.SharerProvince, req.Key)
	}
	res.Usage.Role, res.Usage.RecordedAt = RolePayee, now
	return s.RecordPayeeUsage(ctx, res)
}

// answer turns a recorded answer into Spend's result: an approval, or a
// refusal with its error.
func answer(res UsageResult, err error) (UsageResult, error) {
	if err != nil {
		return UsageResult{}, err
	}
	return res, res.Err()
}

// Debit is the payer side of a cross-province usage, called by the clearing
// switch on the sharer's node: authorise against the quota and debit it
// (quota → due:clearing), or refuse. The answer — approved or refused with a
// reason — is recorded under the usage key and replayed to a retry; the same
// key with a different request is ErrKeyReused and moves nothing.
// The error is nil for a refusal: the refusal is the answer.
// Errors: ErrInvalidInput (also when the payee is this province, or
// BeneficiaryRef names someone else), ErrNotFound, ErrWrongProvince, ErrKeyReused.
func (s *Service) Debit(ctx context.Context, req UsageRequest) (UsageResult, error) {
	req.OccurredAt = Timestamp(req.OccurredAt)
	if err := req.Validate(); err != nil {
		return UsageResult{}, err
	}
	if req.PayeeProvince == s.cfg.Province {
		return UsageResult{}, fieldErrf("payee_province", "a debit is for a usage paid in another province; spend locally")
	}
	now := s.now()
	if err := s.checkOccurred(req.OccurredAt, now); err != nil {
		return UsageResult{}, err
	}
	prep, err := s.store.PrepareUsage(ctx, req.Key, req.Hash(), req.RelationshipID, false)
	if err != nil || prep.Found {
		return prep.Answer, err
	}
	rel := prep.Relationship
	if rel.SharerProvince != s.cfg.Province {
		return UsageResult{}, fmt.Errorf("%w: %s is not the authority of %s", ErrWrongProvince, s.cfg.Province, rel.ID)
	}
	if rel.BeneficiaryProvince != req.PayeeProvince {
		return UsageResult{}, fmt.Errorf("%w: the beneficiary of %s is in %s, the usage was paid in %s", ErrWrongProvince, rel.ID, rel.BeneficiaryProvince, req.PayeeProvince)
	}
	if req.BeneficiaryRef != "" && req.BeneficiaryRef != rel.BeneficiaryRef {
		return UsageResult{}, fieldErrf("beneficiary_ref", "is not the beneficiary of %s", rel.ID)
	}
	return s.store.Authorize(ctx, req, RolePayer, now)
}

// RecordPayeeUsage records at the beneficiary's node a cross-province usage
// the payer approved (ext:paid:KIND → due:from_clearing) with its PAYEE outbox
// row, idempotent by usage key. Spend calls it after Remote.Debit; the
// transport may call it to complete a usage approved earlier.
// Errors: ErrInvalidInput, ErrWrongProvince, ErrKeyReused.
func (s *Service) RecordPayeeUsage(ctx context.Context, res UsageResult) (UsageResult, error) {
	u := &res.Usage
	u.Role, u.Reversed = RolePayee, money.Zero
	u.OccurredAt = Timestamp(u.OccurredAt)
	if u.RecordedAt.IsZero() {
		u.RecordedAt = s.now()
	}
	u.RecordedAt = Timestamp(u.RecordedAt)
	if !res.Approved || res.Refusal != RefusalNone {
		return UsageResult{}, fieldErrf("approved", "only an approved usage is recorded at the payee")
	}
	if err := u.Validate(); err != nil {
		return UsageResult{}, err
	}
	if res.Remaining.IsNegative() || !res.Remaining.InRange() {
		return UsageResult{}, fieldErrf("quota_remaining", "out of range")
	}
	if u.PayeeProvince != s.cfg.Province || u.PayerProvince == s.cfg.Province {
		return UsageResult{}, fmt.Errorf("%w: payee record of %s→%s at %s", ErrWrongProvince, u.PayerProvince, u.PayeeProvince, s.cfg.Province)
	}
	res.Replayed = false
	return s.store.RecordPayeeUsage(ctx, res)
}

// Reverse reverses all or part of a usage (R12), at the node where the usage
// was paid: a LOCAL usage here; a PAYEE usage through Remote.ReverseDebit at
// the payer, then recorded here. The quota is restored; reversals never add up
// to more than the usage. Idempotent by reversal key (Replayed set on a retry).
// Errors: ErrInvalidInput, ErrNotFound, ErrReversalExceedsUsage, ErrKeyReused,
// ErrWrongProvince (a PAYER usage: reverse it where it was paid), ErrUnavailable.
func (s *Service) Reverse(ctx context.Context, req ReversalRequest) (ReversalResult, error) {
	req.OccurredAt = Timestamp(req.OccurredAt)
	if err := req.Validate(); err != nil {
		return ReversalResult{}, err
	}
	now := s.now()
	if err := s.checkOccurred(req.OccurredAt, now); err != nil {
		return ReversalResult{}, err
	}
	if res, found, err := s.store.LookupReversal(ctx, req.Key, req.Hash()); err != nil || found {
		return res, err
	}
	u, err := s.store.GetUsage(ctx, req.UsageKey)
	if err != nil {
		return ReversalResult{}, err
	}
	switch u.Role {
	case RoleLocal:
		return s.store.Reverse(ctx, req, now)
	case RolePayee:
	default:
		return ReversalResult{}, fmt.Errorf("%w: usage %s was paid in %s; reverse it there", ErrWrongProvince, u.Key, u.PayeeProvince)
	}
	if err := CheckReversal(u, req.Amount); err != nil {
		return ReversalResult{}, err
	}
	if s.cfg.Remote == nil {
		return ReversalResult{}, fmt.Errorf("%w: no route to %s", ErrUnavailable, u.PayerProvince)
	}
	req.PayeeProvince = s.cfg.Province
	res, err := s.cfg.Remote.ReverseDebit(ctx, u.PayerProvince, req)
	if err != nil {
		return ReversalResult{}, err
	}
	if !bytes.Equal(res.Reversal.Request().Hash(), req.Hash()) {
		return ReversalResult{}, fmt.Errorf("sharing: %s applied reversal %s with different fields", u.PayerProvince, req.Key)
	}
	res.Reversal.Role, res.Reversal.RecordedAt = RolePayee, now
	return s.RecordPayeeReversal(ctx, res)
}

// ReverseDebit is the payer side of a cross-province reversal, called by the
// clearing switch on the sharer's node for a PAYER usage (due:clearing →
// quota). Idempotent by reversal key. Errors: ErrInvalidInput, ErrNotFound,
// ErrWrongProvince (not a PAYER usage, or another payee province),
// ErrReversalExceedsUsage, ErrKeyReused.
func (s *Service) ReverseDebit(ctx context.Context, req ReversalRequest) (ReversalResult, error) {
	req.OccurredAt = Timestamp(req.OccurredAt)
	if err := req.Validate(); err != nil {
		return ReversalResult{}, err
	}
	now := s.now()
	if err := s.checkOccurred(req.OccurredAt, now); err != nil {
		return ReversalResult{}, err
	}
	if res, found, err := s.store.LookupReversal(ctx, req.Key, req.Hash()); err != nil || found {
		return res, err
	}
	u, err := s.store.GetUsage(ctx, req.UsageKey)
	if err != nil {
		return ReversalResult{}, err
	}
	if u.Role != RolePayer {
		return ReversalResult{}, fmt.Errorf("%w: usage %s is %s here, not PAYER", ErrWrongProvince, u.Key, u.Role)
	}
	if req.PayeeProvince != "" && req.PayeeProvince != u.PayeeProvince {
		return ReversalResult{}, fmt.Errorf("%w: usage %s was paid in %s, not %s", ErrWrongProvince, u.Key, u.PayeeProvince, req.PayeeProvince)
	}
	return s.store.Reverse(ctx, req, now)
}

// RecordPayeeReversal records at the beneficiary's node a reversal the payer
// applied (due:from_clearing → ext:paid:KIND), idempotent by reversal key.
// Errors: ErrInvalidInput, ErrNotFound (usage), ErrWrongProvince,
// ErrReversalExceedsUsage, ErrKeyReused.
func (s *Service) RecordPayeeReversal(ctx context.Context, res ReversalResult) (ReversalResult, error) {
	r := &res.Reversal
	r.Role = RolePayee
	r.OccurredAt = Timestamp(r.OccurredAt)
	if r.RecordedAt.IsZero() {
		r.RecordedAt = s.now()
	}
	r.RecordedAt = Timestamp(r.RecordedAt)
	if err := r.Request().Validate(); err != nil {
		return ReversalResult{}, err
	}
	if res.Remaining.IsNegative() || !res.Remaining.InRange() {
		return ReversalResult{}, fieldErrf("quota_remaining", "out of range")
	}
	if r.PayeeProvince != s.cfg.Province {
		return ReversalResult{}, fmt.Errorf("%w: payee reversal for %s at %s", ErrWrongProvince, r.PayeeProvince, s.cfg.Province)
	}
	res.Replayed = false
	return s.store.RecordPayeeReversal(ctx, res)
}

// GetUsage returns an approved usage recorded here, with its reversed total. ErrNotFound.
func (s *Service) GetUsage(ctx context.Context, key string) (Usage, error) {
	if err := validKey("usage_key", key); err != nil {
		return Usage{}, err
	}
	return s.store.GetUsage(ctx, key)
}

// GetReversal returns a reversal recorded here. ErrNotFound.
func (s *Service) GetReversal(ctx context.Context, key string) (Reversal, error) {
	if err := validKey("reversal_key", key); err != nil {
		return Reversal{}, err
	}
	return s.store.GetReversal(ctx, key)
}

// ListUsages lists the approved usages of a relationship recorded here.
func (s *Service) ListUsages(ctx context.Context, f UsageFilter) ([]Usage, error) {
	f, err := f.Validate()
	if err != nil {
		return nil, err
	}
	return s.store.ListUsages(ctx, f)
}

// ApplyReplica applies a relationship snapshot pushed by its authority (the
// sharer's node) if its version is newer than the one held; it reports
// whether it did. Delivery is at least once and in any order; versions make
// that safe. Errors: ErrInvalidInput, ErrWrongProvince (this node is the
// authority, or the beneficiary is not of this province).
func (s *Service) ApplyReplica(ctx context.Context, snap Relationship) (bool, error) {
	snap = normaliseRelationship(snap)
	if err := s.checkReplica(snap); err != nil {
		return false, err
	}
	return s.store.ApplyReplica(ctx, snap)
}

func (s *Service) checkReplica(snap Relationship) error {
	if err := snap.Validate(); err != nil {
		return err
	}
	if snap.SharerProvince == s.cfg.Province || snap.BeneficiaryProvince != s.cfg.Province {
		return fmt.Errorf("%w: replica of %s (%s→%s) at %s", ErrWrongProvince, snap.ID, snap.SharerProvince, snap.BeneficiaryProvince, s.cfg.Province)
	}
	return nil
}

func normaliseRelationship(r Relationship) Relationship {
	for _, t := range []*time.Time{&r.ProposedAt, &r.ExpiresAt, &r.ActivatedAt, &r.EndedAt, &r.UpdatedAt} {
		if !t.IsZero() {
			*t = Timestamp(*t)
		}
	}
	return r
}

// CheckConservation verifies that money is conserved in this node's database:
// every journal entry balances and has at least two postings; every cached
// balance equals the sum of its postings; no personal or quota account is
// negative; all balances sum to zero; every authority relationship's quota
// account holds Quota − Used while live and nothing once ended (with Returned =
// Quota − Used); Used equals its usages minus their reversals; each usage's
// reversed total equals its reversals; the payout and clearing accounts equal
// what the usages say. ErrConservation describing the first violations.
// Read-only, one repeatable-read snapshot, and a full scan of the journal: an
// audit and test tool, not a per-request check.
func (s *Service) CheckConservation(ctx context.Context) error {
	return s.store.CheckConservation(ctx)
}
