package provinceapi

import (
	"context"

	"go.uber.org/zap"

	"gongji/internal/clock"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/sharing"
)

// PeerServer is gongji.province.v1.PeerService: what the clearing switch
// delivers from other provinces — debits and reversals against quotas this
// node holds, relationship commands for relationships it is the authority
// of, snapshots for its replicas. Only gongji:clearing may call it; the
// switch has already checked that each request's origin is its caller.
// Construct with NewPeerServer.
type PeerServer struct {
	provincev1.UnimplementedPeerServiceServer

	svc      *sharing.Service
	province string
	now      clock.Clock
	log      *zap.Logger
}

// NewPeerServer returns the PeerService of opts.Service's province. Errors:
// a missing Service.
func NewPeerServer(opts Options) (*PeerServer, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &PeerServer{svc: opts.Service, province: opts.Service.Province(), now: opts.Clock, log: opts.Log}, nil
}

func (s *PeerServer) fail(op string, err error) error { return statusError(s.log, op, err) }

// otherProvince checks a province code that must not be this node's: only
// cross-province requests arrive through the switch (R13).
func (c *edge) otherProvince(field, v, self string) string {
	c.province(field, v)
	if c.err == nil && v == self {
		c.failf(field, "is this node's own province; same-province requests never come through the switch")
	}
	return v
}

// Debit authorises and debits a cross-province usage against a quota this
// node holds (R9). The answer is recorded under the usage key and replayed
// to a retry. A refusal is returned as the code its sentinel maps to —
// ResourceExhausted for an exceeded quota, FailedPrecondition for a
// relationship that is not active, a sharer who is not insured or has no
// personal account — with an ErrorInfo naming it, which the switch passes to
// the payee's node and on to its caller.
func (s *PeerServer) Debit(ctx context.Context, req *provincev1.DebitRequest) (*provincev1.DebitResponse, error) {
	if err := requireClearing(ctx); err != nil {
		return nil, err
	}
	var c edge
	payee := c.otherProvince("payee_province", req.GetPayeeProvince(), s.province)
	u := sharing.UsageRequest{
		Key:            c.key("usage_key", req.GetUsageKey()),
		RelationshipID: c.relationshipID("relationship_id", req.GetRelationshipId()),
		Kind:           enum(&c, "kind", usageKinds, req.GetKind()),
		Amount:         c.amount("amount", req.GetAmount()),
		PayeeProvince:  payee,
		OccurredAt:     c.timestamp("occurred_at", req.GetOccurredAt(), true, s.now(), FutureSkewMax),
		BeneficiaryRef: c.ref("beneficiary_ref", req.GetBeneficiaryRef()),
	}
	if c.err == nil {
		u.PayeeRegion = c.regionIn("payee_region_code", req.GetPayeeRegionCode(), payee)
	}
	if c.err != nil {
		return nil, c.err
	}
	res, err := s.svc.Debit(ctx, u)
	if err == nil {
		err = res.Err() // a refusal is the answer, sent as its code
	}
	if err != nil {
		return nil, s.fail("Debit", err)
	}
	v := res.Usage
	return &provincev1.DebitResponse{
		UsageKey: v.Key, Amount: v.Amount.String(), QuotaRemaining: res.Remaining.String(), Replayed: res.Replayed,
		PayerProvince: v.PayerProvince, PayerRegion: v.PayerRegion, SharerRef: v.SharerRef,
		BeneficiaryRef: v.BeneficiaryRef, RelationshipId: v.RelationshipID, Kind: usageKinds.proto(v.Kind),
		OccurredAt: ts(v.OccurredAt),
	}, nil
}

// ReverseDebit restores quota for a reversal of a cross-province usage this
// node debited (R12), idempotent by reversal key; the payee province must be
// the usage's.
func (s *PeerServer) ReverseDebit(ctx context.Context, req *provincev1.ReverseDebitRequest) (*provincev1.ReverseResponse, error) {
	if err := requireClearing(ctx); err != nil {
		return nil, err
	}
	var c edge
	r := sharing.ReversalRequest{
		Key:           c.key("reversal_key", req.GetReversalKey()),
		UsageKey:      c.key("usage_key", req.GetUsageKey()),
		Amount:        c.amount("amount", req.GetAmount()),
		OccurredAt:    c.timestamp("occurred_at", req.GetOccurredAt(), true, s.now(), FutureSkewMax),
		PayeeProvince: c.otherProvince("payee_province", req.GetPayeeProvince(), s.province),
	}
	if c.err == nil && r.Key == r.UsageKey {
		c.failf("reversal_key", "must differ from the usage_key it reverses")
	}
	if c.err != nil {
		return nil, c.err
	}
	res, err := s.svc.ReverseDebit(ctx, r)
	if err != nil {
		return nil, s.fail("ReverseDebit", err)
	}
	return reversalToProto(res), nil
}

// ApplyRelationshipCommand applies a command from another province to a
// relationship this node is the authority of: PROPOSE (from the
// beneficiary's side; creates it here), CONSENT, DECLINE, DISSOLVE
// (voluntary) and DISSOLVE_AUTO (the beneficiary's enrollment changed, R6).
// Idempotent by (origin_province, command_key); returns the snapshot.
func (s *PeerServer) ApplyRelationshipCommand(ctx context.Context, req *provincev1.ApplyRelationshipCommandRequest) (*provincev1.Relationship, error) {
	if err := requireClearing(ctx); err != nil {
		return nil, err
	}
	var c edge
	origin := c.otherProvince("origin_province", req.GetOriginProvince(), s.province)
	key := c.key("command_key", req.GetCommandKey())
	if c.err != nil {
		return nil, c.err
	}
	var (
		r   sharing.Relationship
		err error
	)
	switch act := req.GetAction(); act {
	case provincev1.RelationshipAction_RELATIONSHIP_ACTION_PROPOSE:
		p := req.GetProposal()
		if p == nil {
			c.failf("proposal", "is required for PROPOSE")
			return nil, c.err
		}
		prop := sharing.Proposal{Key: c.key("proposal.proposal_key", p.GetProposalKey()), Origin: origin}
		prop.SharerProvince, prop.SharerRef = c.peerParty("proposal.sharer", p.GetSharer())
		prop.BeneficiaryProvince, prop.BeneficiaryRef = c.peerParty("proposal.beneficiary", p.GetBeneficiary())
		prop.Relation = enum(&c, "proposal.relation", relations, p.GetRelation())
		prop.By = enum(&c, "proposal.proposed_by", sides, p.GetProposedBy())
		if c.err == nil && prop.Key != key {
			// The relationship id derives from (origin, proposal key); one key
			// for both keeps a retried proposal on the same relationship.
			c.failf("command_key", "must equal proposal.proposal_key")
		}
		if c.err != nil {
			return nil, c.err
		}
		r, err = s.svc.Propose(ctx, prop)
	case provincev1.RelationshipAction_RELATIONSHIP_ACTION_CONSENT,
		provincev1.RelationshipAction_RELATIONSHIP_ACTION_DECLINE,
		provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE,
		provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO:
		cmd := sharing.Command{
			Key: key, Origin: origin, Kind: sharing.CommandDissolve,
			RelationshipID: c.relationshipID("relationship_id", req.GetRelationshipId()),
		}
		if act != provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO {
			cmd.Kind, _ = commandActions.domain(act)
		}
		if act == provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO && req.GetBy() == provincev1.Side_SIDE_UNSPECIFIED {
			// Only a beneficiary can be in another province than the
			// authority, so only their enrollment change arrives here.
			cmd.By = sharing.SideBeneficiary
		} else {
			cmd.By = enum(&c, "by", sides, req.GetBy())
		}
		if req.GetReason() != provincev1.DissolveReason_DISSOLVE_REASON_UNSPECIFIED {
			cmd.Reason = enum(&c, "reason", dissolveReasons, req.GetReason())
		}
		if c.err == nil && (act == provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO) != cmd.Reason.Automatic() {
			c.failf("reason", "DISSOLVE_AUTO needs an enrollment-change reason (R6), and only it may carry one")
		}
		if c.err != nil {
			return nil, c.err
		}
		r, err = s.svc.Apply(ctx, cmd)
	default:
		c.failf("action", "unknown or missing value %d", int32(act))
		return nil, c.err
	}
	if err != nil {
		return nil, s.fail("ApplyRelationshipCommand", err)
	}
	return relationshipToProto(r), nil
}

// peerParty reads a party of a proposal from another province: by
// person_ref only (ID numbers never leave their province).
func (c *edge) peerParty(field string, p *provincev1.PartyRef) (string, string) {
	if p == nil {
		c.failf(field, "is required")
		return "", ""
	}
	if _, ok := p.GetId().(*provincev1.PartyRef_PersonRef); !ok {
		c.failf(field, "must name the person by person_ref: ID numbers never leave their province")
		return "", ""
	}
	return c.province(field+".province_code", p.GetProvinceCode()), c.ref(field+".person_ref", p.GetPersonRef())
}

// ApplyRelationshipSnapshot updates this node's replica of a relationship
// whose beneficiary is local, if the snapshot is newer (by version). It
// answers whether it applied it and the version the replica now holds.
func (s *PeerServer) ApplyRelationshipSnapshot(ctx context.Context, req *provincev1.ApplyRelationshipSnapshotRequest) (*provincev1.ApplyRelationshipSnapshotResponse, error) {
	if err := requireClearing(ctx); err != nil {
		return nil, err
	}
	var c edge
	snap := relationshipFromProto(&c, "relationship", req.GetRelationship())
	if c.err != nil {
		return nil, c.err
	}
	applied, err := s.svc.ApplyReplica(ctx, snap)
	if err != nil {
		return nil, s.fail("ApplyRelationshipSnapshot", err)
	}
	version := snap.Version
	if !applied {
		held, err := s.svc.GetRelationship(ctx, snap.ID)
		if err != nil {
			return nil, s.fail("ApplyRelationshipSnapshot", err)
		}
		version = held.Version
	}
	return &provincev1.ApplyRelationshipSnapshotResponse{Applied: applied, Version: version}, nil
}
