package provinceapi

import (
	"strconv"

	"google.golang.org/grpc"

	"gongji/internal/auditlog"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/sharing"
)

// AuditPolicy is the one classification of a province node's methods for
// the audit trail (internal/auditlog): every state-changing method of
// ProvinceService and PeerService with the ref its rows carry, every
// read-only one as such. A test over the service descriptors fails when a
// method is missing. svc turns an ID number in a request into its
// person_ref: the trail names people by ref only, never by ID number.
//
// Refs: the usage or reversal key of a spend, debit or reversal (Spend's
// ref is also how provincedb finds a refused usage to record "refused:
// <REFUSAL>"); the relationship id of relationship commands (for a proposal,
// the id it gets: sharing.RelationshipID(origin, key)); the movement key of
// a credit or own spending; the person_ref of a registration or an
// enrollment change; relationship@version of a replica snapshot.
func AuditPolicy(svc *sharing.Service) auditlog.Policy {
	own := svc.Province()
	personRef := func(id *provincev1.PersonId) string {
		switch v := id.GetId().(type) {
		case *provincev1.PersonId_PersonRef:
			return v.PersonRef
		case *provincev1.PersonId_IdNumber:
			if ref, err := svc.Ref(v.IdNumber); err == nil {
				return ref
			}
		}
		return "" // never the ID number itself
	}
	relID := (*provincev1.RelationshipCommand).GetRelationshipId
	return auditlog.Policy{
		provincev1.ProvinceService_RegisterPerson_FullMethodName: auditlog.Changes(func(r *provincev1.RegisterPersonRequest) string {
			ref, err := svc.Ref(r.GetIdNumber())
			if err != nil {
				return ""
			}
			return ref
		}),
		provincev1.ProvinceService_ChangeEnrollment_FullMethodName: auditlog.Changes(func(r *provincev1.ChangeEnrollmentRequest) string {
			return personRef(r.GetPerson())
		}),
		provincev1.ProvinceService_GetPerson_FullMethodName:     auditlog.ReadOnly(),
		provincev1.ProvinceService_CreditAccount_FullMethodName: auditlog.Changes((*provincev1.CreditAccountRequest).GetCreditKey),
		provincev1.ProvinceService_SpendOwn_FullMethodName:      auditlog.Changes((*provincev1.SpendOwnRequest).GetSpendKey),
		provincev1.ProvinceService_GetAccount_FullMethodName:    auditlog.ReadOnly(),
		provincev1.ProvinceService_ProposeRelationship_FullMethodName: auditlog.Changes(func(r *provincev1.ProposeRelationshipRequest) string {
			if r.GetProposalKey() == "" {
				return ""
			}
			return sharing.RelationshipID(own, r.GetProposalKey())
		}),
		provincev1.ProvinceService_ConsentRelationship_FullMethodName:  auditlog.Changes(relID),
		provincev1.ProvinceService_DeclineRelationship_FullMethodName:  auditlog.Changes(relID),
		provincev1.ProvinceService_DissolveRelationship_FullMethodName: auditlog.Changes(relID),
		provincev1.ProvinceService_GetRelationship_FullMethodName:      auditlog.ReadOnly(),
		provincev1.ProvinceService_ListRelationships_FullMethodName:    auditlog.ReadOnly(),
		provincev1.ProvinceService_SetQuota_FullMethodName:             auditlog.Changes((*provincev1.SetQuotaRequest).GetRelationshipId),
		provincev1.ProvinceService_Spend_FullMethodName:                auditlog.Changes((*provincev1.SpendRequest).GetUsageKey),
		provincev1.ProvinceService_Reverse_FullMethodName:              auditlog.Changes((*provincev1.ReverseRequest).GetReversalKey),

		provincev1.PeerService_Debit_FullMethodName:        auditlog.Changes((*provincev1.DebitRequest).GetUsageKey),
		provincev1.PeerService_ReverseDebit_FullMethodName: auditlog.Changes((*provincev1.ReverseDebitRequest).GetReversalKey),
		provincev1.PeerService_ApplyRelationshipCommand_FullMethodName: auditlog.Changes(func(r *provincev1.ApplyRelationshipCommandRequest) string {
			if id := r.GetRelationshipId(); id != "" {
				return id
			}
			if r.GetCommandKey() == "" || r.GetOriginProvince() == "" {
				return ""
			}
			return sharing.RelationshipID(r.GetOriginProvince(), r.GetCommandKey()) // PROPOSE
		}),
		provincev1.PeerService_ApplyRelationshipSnapshot_FullMethodName: auditlog.Changes(func(r *provincev1.ApplyRelationshipSnapshotRequest) string {
			if r.GetRelationship().GetRelationshipId() == "" {
				return ""
			}
			return r.GetRelationship().GetRelationshipId() + "@" + strconv.FormatInt(r.GetRelationship().GetVersion(), 10)
		}),
	}
}

// AuditOptions are the server options that write the node's audit trail
// with rec (on the node's database): the interceptors of AuditPolicy,
// naming callers by their certificate (CallerName). Append them to the
// options given to serve.GRPCOptions.
func AuditOptions(rec *auditlog.Recorder, svc *sharing.Service) []grpc.ServerOption {
	return rec.ServerOptions(AuditPolicy(svc), CallerName)
}
