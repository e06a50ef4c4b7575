package provinceapi

import (
	"context"

	"go.uber.org/zap"

	"gongji/internal/clock"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/sharing"
)

// ListRelationshipsMax bounds the relationships ListRelationships returns
// for one person (the proto has no pagination): a person shares with, or is
// shared with by, a handful of relatives; a thousand is far beyond any real
// family and bounds the response.
const ListRelationshipsMax = sharing.ListLimitMax

// ProvinceServer is gongji.province.v1.ProvinceService: the API the
// province's own systems call (enrollment and premium collection, designated
// hospitals and pharmacies, the public app), with the province's own
// certificate. Construct with NewProvinceServer.
type ProvinceServer struct {
	provincev1.UnimplementedProvinceServiceServer

	svc      *sharing.Service
	province string
	now      clock.Clock
	log      *zap.Logger
}

// NewProvinceServer returns the ProvinceService of opts.Service's province.
// Errors: a missing Service.
func NewProvinceServer(opts Options) (*ProvinceServer, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &ProvinceServer{svc: opts.Service, province: opts.Service.Province(), now: opts.Clock, log: opts.Log}, nil
}

func (s *ProvinceServer) fail(op string, err error) error { return statusError(s.log, op, err) }

// RegisterPerson registers a person from the enrollment system, or brings a
// registered person's enrollment up to date; a change of the insurance
// relationship dissolves their relationships (R6) in the same transaction.
// The ID number becomes a person_ref and a masked copy here; the clear
// number is not stored or logged.
func (s *ProvinceServer) RegisterPerson(ctx context.Context, req *provincev1.RegisterPersonRequest) (*provincev1.RegisterPersonResponse, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	c.idNumber(s.svc, "id_number", req.GetIdNumber())
	e := sharing.Enrollment{
		Scheme:  enum(&c, "scheme", schemes, req.GetScheme()),
		Mode:    enum(&c, "mode", modes, req.GetMode()),
		Status:  enum(&c, "status", personStatuses, req.GetStatus()),
		Region:  c.regionIn("region_code", req.GetRegionCode(), s.province),
		Insured: req.GetInsured(),
	}
	if c.err != nil {
		return nil, c.err
	}
	res, err := s.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: req.GetIdNumber(), Enrollment: e})
	if err != nil {
		return nil, s.fail("RegisterPerson", err)
	}
	return &provincev1.RegisterPersonResponse{
		Person: personToProto(res.Person), Created: res.Created, Dissolved: relationshipsToProto(res.Dissolved),
	}, nil
}

// ChangeEnrollment records an enrollment event and dissolves the person's
// relationships (R6) in the same transaction, returning unused quota (R7);
// relationships whose authority is another province get a durable
// dissolution command. A retry with the same change_key gets the first
// answer; the key with a different change is AlreadyExists. A TRANSFER names a
// pooling region of this province; a move to another province is a
// TERMINATION here.
func (s *ProvinceServer) ChangeEnrollment(ctx context.Context, req *provincev1.ChangeEnrollmentRequest) (*provincev1.ChangeEnrollmentResponse, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	ref := c.personRef(s.svc, "person", req.GetPerson())
	event := enum(&c, "change", enrollmentChanges, req.GetChange())
	newRegion := req.GetNewRegionCode()
	if event == sharing.ReasonTransfer {
		c.regionIn("new_region_code", newRegion, s.province)
	} else if newRegion != "" {
		c.failf("new_region_code", "is only for ENROLLMENT_CHANGE_TRANSFER")
	}
	c.key("change_key", req.GetChangeKey())
	c.timestamp("effective_at", req.GetEffectiveAt(), false, s.now(), FutureSkewMax)
	if c.err != nil {
		return nil, c.err
	}
	res, err := s.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: ref, Event: event, NewRegion: newRegion,
		Key: req.GetChangeKey()})
	if err != nil {
		return nil, s.fail("ChangeEnrollment", err)
	}
	return &provincev1.ChangeEnrollmentResponse{Person: personToProto(res.Person), Dissolved: relationshipsToProto(res.Dissolved)}, nil
}

// GetPerson returns a person of this province.
func (s *ProvinceServer) GetPerson(ctx context.Context, req *provincev1.GetPersonRequest) (*provincev1.Person, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	ref := c.personRef(s.svc, "person", req.GetPerson())
	if c.err != nil {
		return nil, c.err
	}
	p, err := s.svc.GetPerson(ctx, ref)
	if err != nil {
		return nil, s.fail("GetPerson", err)
	}
	return personToProto(p), nil
}

// CreditAccount pays money into a personal account, idempotent by
// credit_key, and returns the account as it now is.
func (s *ProvinceServer) CreditAccount(ctx context.Context, req *provincev1.CreditAccountRequest) (*provincev1.Account, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	m := sharing.MovementRequest{
		PersonRef: c.personRef(s.svc, "person", req.GetPerson()),
		Amount:    c.amount("amount", req.GetAmount()),
		Key:       c.key("credit_key", req.GetCreditKey()),
	}
	if c.err != nil {
		return nil, c.err
	}
	if _, err := s.svc.Credit(ctx, m); err != nil {
		return nil, s.fail("CreditAccount", err)
	}
	return s.account(ctx, "CreditAccount", m.PersonRef)
}

// SpendOwn is the holder's own spending from the available part (earmarked
// quota is frozen, R8), idempotent by spend_key; returns the account as it
// now is.
func (s *ProvinceServer) SpendOwn(ctx context.Context, req *provincev1.SpendOwnRequest) (*provincev1.Account, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	m := sharing.MovementRequest{
		PersonRef: c.personRef(s.svc, "person", req.GetPerson()),
		Amount:    c.amount("amount", req.GetAmount()),
		Key:       c.key("spend_key", req.GetSpendKey()),
	}
	if c.err != nil {
		return nil, c.err
	}
	if _, err := s.svc.SpendOwn(ctx, m); err != nil {
		return nil, s.fail("SpendOwn", err)
	}
	return s.account(ctx, "SpendOwn", m.PersonRef)
}

// GetAccount returns a personal account's available and earmarked parts.
func (s *ProvinceServer) GetAccount(ctx context.Context, req *provincev1.GetAccountRequest) (*provincev1.Account, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	ref := c.personRef(s.svc, "person", req.GetPerson())
	if c.err != nil {
		return nil, c.err
	}
	return s.account(ctx, "GetAccount", ref)
}

func (s *ProvinceServer) account(ctx context.Context, op, ref string) (*provincev1.Account, error) {
	a, err := s.svc.GetAccount(ctx, ref)
	if err != nil {
		return nil, s.fail(op, err)
	}
	return accountToProto(a), nil
}

// ProposeRelationship starts a PENDING relationship (R4). The proposer acts
// from this province: the sharer (the relationship is created here) or the
// beneficiary (the proposal goes to the sharer's node through the switch
// when the sharer is elsewhere). Parties may be named by ID number; only
// their refs leave the node.
func (s *ProvinceServer) ProposeRelationship(ctx context.Context, req *provincev1.ProposeRelationshipRequest) (*provincev1.Relationship, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	var p sharing.Proposal
	p.SharerProvince, p.SharerRef = c.party(s.svc, "sharer", req.GetSharer())
	p.BeneficiaryProvince, p.BeneficiaryRef = c.party(s.svc, "beneficiary", req.GetBeneficiary())
	p.Relation = enum(&c, "relation", relations, req.GetRelation())
	p.By = enum(&c, "proposed_by", sides, req.GetProposedBy())
	p.Key = c.key("proposal_key", req.GetProposalKey())
	if c.err != nil {
		return nil, c.err
	}
	r, err := s.svc.Propose(ctx, p)
	if err != nil {
		return nil, s.fail("ProposeRelationship", err)
	}
	return relationshipToProto(r), nil
}

// command reads a RelationshipCommand.
func (c *edge) command(req *provincev1.RelationshipCommand) (id string, by sharing.Side, key string) {
	id = c.relationshipID("relationship_id", req.GetRelationshipId())
	by = enum(c, "by", sides, req.GetBy())
	key = c.key("command_key", req.GetCommandKey())
	return id, by, key
}

// ConsentRelationship makes a PENDING relationship ACTIVE; only the party
// that did not propose consents (R4).
func (s *ProvinceServer) ConsentRelationship(ctx context.Context, req *provincev1.RelationshipCommand) (*provincev1.Relationship, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	id, by, key := c.command(req)
	if c.err != nil {
		return nil, c.err
	}
	r, err := s.svc.Consent(ctx, sharing.CommandRequest{Key: key, RelationshipID: id, By: by})
	if err != nil {
		return nil, s.fail("ConsentRelationship", err)
	}
	return relationshipToProto(r), nil
}

// DeclineRelationship refuses a PENDING proposal.
func (s *ProvinceServer) DeclineRelationship(ctx context.Context, req *provincev1.RelationshipCommand) (*provincev1.Relationship, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	id, by, key := c.command(req)
	if c.err != nil {
		return nil, c.err
	}
	r, err := s.svc.Decline(ctx, sharing.CommandRequest{Key: key, RelationshipID: id, By: by})
	if err != nil {
		return nil, s.fail("DeclineRelationship", err)
	}
	return relationshipToProto(r), nil
}

// DissolveRelationship ends a relationship voluntarily (R5); the unused
// quota returns to the sharer in the same transaction (R7).
func (s *ProvinceServer) DissolveRelationship(ctx context.Context, req *provincev1.RelationshipCommand) (*provincev1.Relationship, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	id, by, key := c.command(req)
	if c.err != nil {
		return nil, c.err
	}
	r, err := s.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key, RelationshipID: id, By: by})
	if err != nil {
		return nil, s.fail("DissolveRelationship", err)
	}
	return relationshipToProto(r), nil
}

// GetRelationship returns a relationship this node holds (authority or replica).
func (s *ProvinceServer) GetRelationship(ctx context.Context, req *provincev1.GetRelationshipRequest) (*provincev1.Relationship, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	id := c.relationshipID("relationship_id", req.GetRelationshipId())
	if c.err != nil {
		return nil, c.err
	}
	r, err := s.svc.GetRelationship(ctx, id)
	if err != nil {
		return nil, s.fail("GetRelationship", err)
	}
	return relationshipToProto(r), nil
}

// ListRelationships lists a local person's relationships, either side, by
// id, at most ListRelationshipsMax.
func (s *ProvinceServer) ListRelationships(ctx context.Context, req *provincev1.ListRelationshipsRequest) (*provincev1.ListRelationshipsResponse, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	ref := c.personRef(s.svc, "person", req.GetPerson())
	if c.err != nil {
		return nil, c.err
	}
	var all []sharing.Relationship
	f := sharing.RelationshipFilter{PersonRef: ref, Limit: sharing.ListLimitDefault}
	for len(all) < ListRelationshipsMax {
		f.Limit = min(sharing.ListLimitDefault, ListRelationshipsMax-len(all))
		page, err := s.svc.ListRelationships(ctx, f)
		if err != nil {
			return nil, s.fail("ListRelationships", err)
		}
		all = append(all, page...)
		if len(page) < f.Limit {
			break
		}
		f.AfterID = page[len(page)-1].ID
	}
	return &provincev1.ListRelationshipsResponse{Relationships: relationshipsToProto(all)}, nil
}

// SetQuota sets the total earmarked quota of an ACTIVE relationship (R8), at
// the sharer's node: raising takes from the available balance, lowering never
// goes below used.
func (s *ProvinceServer) SetQuota(ctx context.Context, req *provincev1.SetQuotaRequest) (*provincev1.Relationship, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	q := sharing.SetQuotaRequest{
		RelationshipID: c.relationshipID("relationship_id", req.GetRelationshipId()),
		Quota:          c.quota("quota", req.GetQuota()),
		Key:            c.key("command_key", req.GetCommandKey()),
	}
	if c.err != nil {
		return nil, c.err
	}
	r, err := s.svc.SetQuota(ctx, q)
	if err != nil {
		return nil, s.fail("SetQuota", err)
	}
	return relationshipToProto(r), nil
}

// Spend authorises a beneficiary's usage against the quota (R9–R13): at this
// node when the sharer is local, else at the sharer's node through the
// switch, whose refusal code (ResourceExhausted, FailedPrecondition) the
// caller gets unchanged. A retry with the same key replays the first answer
// (replayed = true); the same key with another request is AlreadyExists.
func (s *ProvinceServer) Spend(ctx context.Context, req *provincev1.SpendRequest) (*provincev1.SpendResponse, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	u := sharing.UsageRequest{
		Key:            c.key("usage_key", req.GetUsageKey()),
		RelationshipID: c.relationshipID("relationship_id", req.GetRelationshipId()),
		Kind:           enum(&c, "kind", usageKinds, req.GetKind()),
		Amount:         c.amount("amount", req.GetAmount()),
		PayeeProvince:  s.province,
		PayeeRegion:    c.regionIn("payee_region_code", req.GetPayeeRegionCode(), s.province),
		OccurredAt:     c.timestamp("occurred_at", req.GetOccurredAt(), true, s.now(), FutureSkewMax),
	}
	if c.err != nil {
		return nil, c.err
	}
	res, err := s.svc.Spend(ctx, u)
	if err != nil {
		return nil, s.fail("Spend", err)
	}
	return &provincev1.SpendResponse{
		UsageKey: res.Usage.Key, Amount: res.Usage.Amount.String(), QuotaRemaining: res.Remaining.String(),
		Replayed: res.Replayed, CrossProvince: res.Usage.CrossProvince,
		PayerProvince: res.Usage.PayerProvince, PayerRegion: res.Usage.PayerRegion,
	}, nil
}

// Reverse refunds all or part of a usage paid in this province (R12),
// idempotent by reversal_key; a cross-province usage is reversed at the
// payer through the switch first.
func (s *ProvinceServer) Reverse(ctx context.Context, req *provincev1.ReverseRequest) (*provincev1.ReverseResponse, error) {
	if err := requireOwnProvince(ctx, s.province); err != nil {
		return nil, err
	}
	var c edge
	r := sharing.ReversalRequest{
		Key:        c.key("reversal_key", req.GetReversalKey()),
		UsageKey:   c.key("usage_key", req.GetUsageKey()),
		Amount:     c.amount("amount", req.GetAmount()),
		OccurredAt: c.timestamp("occurred_at", req.GetOccurredAt(), true, s.now(), FutureSkewMax),
	}
	if c.err == nil && r.Key == r.UsageKey {
		// Both become usage ids at the clearing service, in one key space.
		c.failf("reversal_key", "must differ from the usage_key it reverses")
	}
	if c.err != nil {
		return nil, c.err
	}
	res, err := s.svc.Reverse(ctx, r)
	if err != nil {
		return nil, s.fail("Reverse", err)
	}
	return reversalToProto(res), nil
}

func reversalToProto(res sharing.ReversalResult) *provincev1.ReverseResponse {
	return &provincev1.ReverseResponse{
		ReversalKey: res.Reversal.Key, UsageKey: res.Reversal.UsageKey, Amount: res.Reversal.Amount.String(),
		ReversedTotal: res.ReversedTotal.String(), QuotaRemaining: res.Remaining.String(), Replayed: res.Replayed,
	}
}

// regionIn checks a pooling region of province.
func (c *edge) regionIn(field, code, province string) string {
	if _, err := region.ParseRegionIn(code, province); err != nil {
		c.failf(field, "%s", codeReason(err))
	}
	return code
}
