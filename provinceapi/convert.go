package provinceapi

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/sharing"
)

// enumTable maps domain values to proto enum values, one pair per value, in
// both directions. A proto value not in the table (UNSPECIFIED, or a number
// this build does not know) has no domain value.
type enumTable[D comparable, P ~int32] []struct {
	d D
	p P
}

func (t enumTable[D, P]) domain(p P) (D, bool) {
	for _, e := range t {
		if e.p == p {
			return e.d, true
		}
	}
	var zero D
	return zero, false
}

// proto returns the proto value of d, or the zero (UNSPECIFIED) value.
func (t enumTable[D, P]) proto(d D) P {
	for _, e := range t {
		if e.d == d {
			return e.p
		}
	}
	return 0
}

var schemes = enumTable[sharing.Scheme, provincev1.Scheme]{
	{sharing.SchemeEmployee, provincev1.Scheme_SCHEME_EMPLOYEE},
	{sharing.SchemeResident, provincev1.Scheme_SCHEME_RESIDENT},
}

var modes = enumTable[sharing.Mode, provincev1.AccountMode]{
	{sharing.ModePooledWithAccount, provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT},
	{sharing.ModePoolingOnly, provincev1.AccountMode_ACCOUNT_MODE_POOLING_ONLY},
}

var personStatuses = enumTable[sharing.PersonStatus, provincev1.PersonStatus]{
	{sharing.PersonActive, provincev1.PersonStatus_PERSON_STATUS_ACTIVE},
	{sharing.PersonSuspended, provincev1.PersonStatus_PERSON_STATUS_SUSPENDED},
	{sharing.PersonTerminated, provincev1.PersonStatus_PERSON_STATUS_TERMINATED},
	{sharing.PersonDeceased, provincev1.PersonStatus_PERSON_STATUS_DECEASED},
}

// enrollmentChanges maps an enrollment event to the R6 reason it is recorded
// with (sharing.EnrollmentChange.Event).
var enrollmentChanges = enumTable[sharing.DissolveReason, provincev1.EnrollmentChange]{
	{sharing.ReasonTransfer, provincev1.EnrollmentChange_ENROLLMENT_CHANGE_TRANSFER},
	{sharing.ReasonSuspension, provincev1.EnrollmentChange_ENROLLMENT_CHANGE_SUSPENSION},
	{sharing.ReasonTermination, provincev1.EnrollmentChange_ENROLLMENT_CHANGE_TERMINATION},
	{sharing.ReasonDeath, provincev1.EnrollmentChange_ENROLLMENT_CHANGE_DEATH},
	{sharing.ReasonAccountLost, provincev1.EnrollmentChange_ENROLLMENT_CHANGE_ACCOUNT_LOST},
}

var relations = enumTable[sharing.Relation, provincev1.RelationType]{
	{sharing.RelationSpouse, provincev1.RelationType_RELATION_TYPE_SPOUSE},
	{sharing.RelationParent, provincev1.RelationType_RELATION_TYPE_PARENT},
	{sharing.RelationChild, provincev1.RelationType_RELATION_TYPE_CHILD},
	{sharing.RelationSibling, provincev1.RelationType_RELATION_TYPE_SIBLING},
	{sharing.RelationGrandparentPaternal, provincev1.RelationType_RELATION_TYPE_GRANDPARENT_PATERNAL},
	{sharing.RelationGrandparentMaternal, provincev1.RelationType_RELATION_TYPE_GRANDPARENT_MATERNAL},
	{sharing.RelationGrandchildPaternal, provincev1.RelationType_RELATION_TYPE_GRANDCHILD_PATERNAL},
	{sharing.RelationGrandchildMaternal, provincev1.RelationType_RELATION_TYPE_GRANDCHILD_MATERNAL},
}

var sides = enumTable[sharing.Side, provincev1.Side]{
	{sharing.SideSharer, provincev1.Side_SIDE_SHARER},
	{sharing.SideBeneficiary, provincev1.Side_SIDE_BENEFICIARY},
}

var relationshipStatuses = enumTable[sharing.Status, provincev1.RelationshipStatus]{
	{sharing.StatusPending, provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING},
	{sharing.StatusActive, provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE},
	{sharing.StatusDeclined, provincev1.RelationshipStatus_RELATIONSHIP_STATUS_DECLINED},
	{sharing.StatusExpired, provincev1.RelationshipStatus_RELATIONSHIP_STATUS_EXPIRED},
	{sharing.StatusDissolved, provincev1.RelationshipStatus_RELATIONSHIP_STATUS_DISSOLVED},
}

var dissolveReasons = enumTable[sharing.DissolveReason, provincev1.DissolveReason]{
	{sharing.ReasonVoluntarySharer, provincev1.DissolveReason_DISSOLVE_REASON_VOLUNTARY_SHARER},
	{sharing.ReasonVoluntaryBeneficiary, provincev1.DissolveReason_DISSOLVE_REASON_VOLUNTARY_BENEFICIARY},
	{sharing.ReasonTransfer, provincev1.DissolveReason_DISSOLVE_REASON_TRANSFER},
	{sharing.ReasonSuspension, provincev1.DissolveReason_DISSOLVE_REASON_SUSPENSION},
	{sharing.ReasonTermination, provincev1.DissolveReason_DISSOLVE_REASON_TERMINATION},
	{sharing.ReasonDeath, provincev1.DissolveReason_DISSOLVE_REASON_DEATH},
	{sharing.ReasonAccountLost, provincev1.DissolveReason_DISSOLVE_REASON_ACCOUNT_LOST},
}

var usageKinds = enumTable[sharing.Kind, provincev1.UsageKind]{
	{sharing.KindMedical, provincev1.UsageKind_USAGE_KIND_MEDICAL},
	{sharing.KindPharmacy, provincev1.UsageKind_USAGE_KIND_PHARMACY},
	{sharing.KindResidentPremium, provincev1.UsageKind_USAGE_KIND_RESIDENT_PREMIUM},
	{sharing.KindLTCPremium, provincev1.UsageKind_USAGE_KIND_LTC_PREMIUM},
}

var recordKinds = enumTable[sharing.OutboxKind, clearingv1.RecordKind]{
	{sharing.OutboxUsage, clearingv1.RecordKind_RECORD_KIND_USAGE},
	{sharing.OutboxReversal, clearingv1.RecordKind_RECORD_KIND_REVERSAL},
	{sharing.OutboxRelationship, clearingv1.RecordKind_RECORD_KIND_RELATIONSHIP},
}

var reporterRoles = enumTable[sharing.Role, clearingv1.ReporterRole]{
	{sharing.RolePayer, clearingv1.ReporterRole_REPORTER_ROLE_PAYER},
	{sharing.RolePayee, clearingv1.ReporterRole_REPORTER_ROLE_PAYEE},
	{sharing.RoleLocal, clearingv1.ReporterRole_REPORTER_ROLE_LOCAL},
}

// commandActions maps the relationship commands that travel between
// provinces. SET_QUOTA never does: only the sharer sets a quota, at the
// sharer's own node. Automatic dissolution is DISSOLVE with an automatic
// reason on the domain side and DISSOLVE_AUTO on the wire.
var commandActions = enumTable[sharing.CommandKind, provincev1.RelationshipAction]{
	{sharing.CommandConsent, provincev1.RelationshipAction_RELATIONSHIP_ACTION_CONSENT},
	{sharing.CommandDecline, provincev1.RelationshipAction_RELATIONSHIP_ACTION_DECLINE},
	{sharing.CommandDissolve, provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE},
}

// ts converts a time to the wire; the zero time is absent.
func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func personToProto(p sharing.Person) *provincev1.Person {
	return &provincev1.Person{
		PersonRef: p.Ref, ProvinceCode: p.Province, RegionCode: p.Region,
		Scheme: schemes.proto(p.Scheme), Mode: modes.proto(p.Mode), Status: personStatuses.proto(p.Status),
		Insured: p.Insured, IdMasked: p.MaskedID,
	}
}

func accountToProto(a sharing.Account) *provincev1.Account {
	return &provincev1.Account{
		PersonRef: a.PersonRef, Available: a.Available.String(), Earmarked: a.Earmarked.String(),
		Balance: a.Available.Add(a.Earmarked).String(),
	}
}

func relationshipToProto(r sharing.Relationship) *provincev1.Relationship {
	return &provincev1.Relationship{
		RelationshipId: r.ID, SharerRef: r.SharerRef, SharerProvince: r.SharerProvince, SharerRegion: r.SharerRegion,
		BeneficiaryRef: r.BeneficiaryRef, BeneficiaryProvince: r.BeneficiaryProvince,
		Relation: relations.proto(r.Relation), ProposedBy: sides.proto(r.ProposedBy),
		Status: relationshipStatuses.proto(r.Status), DissolveReason: dissolveReasons.proto(r.DissolveReason),
		Quota: r.Quota.String(), Used: r.Used.String(), Version: r.Version,
		ProposedAt: ts(r.ProposedAt), ExpiresAt: ts(r.ExpiresAt), UpdatedAt: ts(r.UpdatedAt),
		Returned: r.Returned.String(), ActivatedAt: ts(r.ActivatedAt), EndedAt: ts(r.EndedAt),
	}
}

func relationshipsToProto(rs []sharing.Relationship) []*provincev1.Relationship {
	out := make([]*provincev1.Relationship, len(rs))
	for i, r := range rs {
		out[i] = relationshipToProto(r)
	}
	return out
}

// relationshipFromProto reads an authority's snapshot (another node's
// answer or a relayed snapshot), returned, activated_at and ended_at
// included. A snapshot from a node that predates those fields (empty
// returned, unset times) gets them derived as the authority keeps them: an
// ended relationship ended at its last update (nothing changes its state
// after it ends) and returned quota − used (R7); activated_at then stays
// unknown. Errors: InvalidArgument naming the field.
func relationshipFromProto(c *edge, field string, p *provincev1.Relationship) sharing.Relationship {
	if p == nil {
		c.failf(field, "is required")
		return sharing.Relationship{}
	}
	r := sharing.Relationship{
		ID:                  c.relationshipID(field+".relationship_id", p.GetRelationshipId()),
		SharerRef:           c.ref(field+".sharer_ref", p.GetSharerRef()),
		SharerProvince:      c.province(field+".sharer_province", p.GetSharerProvince()),
		SharerRegion:        p.GetSharerRegion(),
		BeneficiaryRef:      c.ref(field+".beneficiary_ref", p.GetBeneficiaryRef()),
		BeneficiaryProvince: c.province(field+".beneficiary_province", p.GetBeneficiaryProvince()),
		Relation:            enum(c, field+".relation", relations, p.GetRelation()),
		ProposedBy:          enum(c, field+".proposed_by", sides, p.GetProposedBy()),
		Status:              enum(c, field+".status", relationshipStatuses, p.GetStatus()),
		Quota:               c.quota(field+".quota", p.GetQuota()),
		Used:                c.quota(field+".used", p.GetUsed()),
		Version:             p.GetVersion(),
		ProposedAt:          c.timestamp(field+".proposed_at", p.GetProposedAt(), true, time.Time{}, 0),
		ExpiresAt:           c.timestamp(field+".expires_at", p.GetExpiresAt(), true, time.Time{}, 0),
		UpdatedAt:           c.timestamp(field+".updated_at", p.GetUpdatedAt(), true, time.Time{}, 0),
		ActivatedAt:         c.timestamp(field+".activated_at", p.GetActivatedAt(), false, time.Time{}, 0),
		EndedAt:             c.timestamp(field+".ended_at", p.GetEndedAt(), false, time.Time{}, 0),
	}
	wireReturned := p.GetReturned() != ""
	if wireReturned {
		r.Returned = c.quota(field+".returned", p.GetReturned())
	}
	if c.err == nil {
		if _, err := region.ParseRegionIn(r.SharerRegion, r.SharerProvince); err != nil {
			c.failf(field+".sharer_region", "%s", codeReason(err))
		}
	}
	if p.GetDissolveReason() != provincev1.DissolveReason_DISSOLVE_REASON_UNSPECIFIED {
		r.DissolveReason = enum(c, field+".dissolve_reason", dissolveReasons, p.GetDissolveReason())
	}
	if r.Version < 1 {
		c.failf(field+".version", "must be at least 1")
	}
	if c.err != nil {
		return sharing.Relationship{}
	}
	if !r.Status.Live() && r.EndedAt.IsZero() {
		r.EndedAt = r.UpdatedAt
	}
	if !r.Status.Live() && !wireReturned {
		r.Returned = money.Zero
		if r.Quota.GreaterThan(r.Used) {
			r.Returned = r.Quota.Sub(r.Used)
		}
	}
	return r
}
