package clearingapi

import (
	"fmt"
	"strconv"

	"google.golang.org/grpc"

	"gongji/internal/auditlog"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
)

// AuditPolicy is the one classification of the clearing service's methods
// for the audit trail (internal/auditlog): every state-changing method with
// the ref its rows carry, every read-only method as such. A test over the
// service descriptors fails when a method is missing.
//
//   - SwitchService: every routed call is a change (its switch log row, and
//     the target node's change); the row goes into the switch log's own
//     statement (clearingdb.LogSwitch). Ref: the usage, reversal or command
//     key, or relationship@version for a snapshot.
//   - ReportingService.ReportUsage: one row per acknowledged batch, not per
//     record (a batch is the unit the node retries and the clearing service
//     commits); ref "batch <id> seq <first>-<last>".
//   - StatementService: answering a statement changes it; reading it and
//     streaming its export do not (GetStatement may apply a due deemed
//     confirmation, a consequence of time that nobody asked for).
//   - AdminService: closing, settling, prepayment movements and dispute
//     resolutions change state; status, listings and journal verification
//     do not.
func AuditPolicy() auditlog.Policy {
	return auditlog.Policy{
		clearingv1.SwitchService_Authorize_FullMethodName: auditlog.Changes(func(r *clearingv1.AuthorizeRequest) string {
			return r.GetDebit().GetUsageKey()
		}),
		clearingv1.SwitchService_AuthorizeReversal_FullMethodName: auditlog.Changes(func(r *clearingv1.AuthorizeReversalRequest) string {
			return r.GetReversal().GetReversalKey()
		}),
		clearingv1.SwitchService_RelayRelationshipCommand_FullMethodName: auditlog.Changes(func(r *clearingv1.RelayRelationshipCommandRequest) string {
			if id := r.GetCommand().GetRelationshipId(); id != "" {
				return id
			}
			return r.GetCommand().GetCommandKey() // a PROPOSE names no relationship yet
		}),
		clearingv1.SwitchService_RelayRelationshipSnapshot_FullMethodName: auditlog.Changes(func(r *clearingv1.RelayRelationshipSnapshotRequest) string {
			if r.GetRelationship().GetRelationshipId() == "" {
				return ""
			}
			return r.GetRelationship().GetRelationshipId() + "@" + strconv.FormatInt(r.GetRelationship().GetVersion(), 10)
		}),

		clearingv1.ReportingService_ReportUsage_FullMethodName: auditlog.ChangesStream(),

		clearingv1.StatementService_GetStatement_FullMethodName: auditlog.ReadOnly(),
		clearingv1.StatementService_ConfirmStatement_FullMethodName: auditlog.Changes(func(r *clearingv1.ConfirmStatementRequest) string {
			return r.GetSetlym()
		}),
		clearingv1.StatementService_DisputeStatement_FullMethodName: auditlog.Changes(func(r *clearingv1.DisputeStatementRequest) string {
			return r.GetSetlym()
		}),
		clearingv1.StatementService_GetProvinceExport_FullMethodName: auditlog.ReadOnly(),

		clearingv1.AdminService_ClosePeriod_FullMethodName:     auditlog.Changes((*clearingv1.PeriodRequest).GetSetlym),
		clearingv1.AdminService_SettlePeriod_FullMethodName:    auditlog.Changes((*clearingv1.PeriodRequest).GetSetlym),
		clearingv1.AdminService_GetPeriodStatus_FullMethodName: auditlog.ReadOnly(),
		clearingv1.AdminService_ListPeriods_FullMethodName:     auditlog.ReadOnly(),
		clearingv1.AdminService_GetPrepayStatus_FullMethodName: auditlog.ReadOnly(),
		clearingv1.AdminService_FundPrepay_FullMethodName:      auditlog.Changes((*clearingv1.PrepayMovementRequest).GetMovementKey),
		clearingv1.AdminService_ReplenishPrepay_FullMethodName: auditlog.Changes((*clearingv1.PrepayMovementRequest).GetMovementKey),
		clearingv1.AdminService_VerifyJournal_FullMethodName:   auditlog.ReadOnly(),
		clearingv1.AdminService_ResolveDispute_FullMethodName: auditlog.Changes(func(r *clearingv1.ResolveDisputeRequest) string {
			if r.GetSetlym() == "" && r.GetProvinceCode() == "" && r.GetUsageId() == "" {
				return ""
			}
			return r.GetSetlym() + "/" + r.GetProvinceCode() + "/" + r.GetUsageId() // the disputed item
		}),
	}
}

// AuditOptions are the server options that write the clearing service's
// audit trail with rec (on the clearing database): the interceptors of
// AuditPolicy, naming callers by their certificate (CallerName). Append
// them to the options given to serve.GRPCOptions.
func AuditOptions(rec *auditlog.Recorder) []grpc.ServerOption {
	return rec.ServerOptions(AuditPolicy(), CallerName)
}

// batchRef names a report batch in the audit trail: its id and the range of
// its outbox sequence numbers.
func batchRef(b *clearingv1.ReportBatch) string {
	recs := b.GetRecords()
	if len(recs) == 0 {
		return fmt.Sprintf("batch %d (empty)", b.GetBatchId())
	}
	lo, hi := recs[0].GetSeq(), recs[0].GetSeq()
	for _, r := range recs[1:] {
		lo, hi = min(lo, r.GetSeq()), max(hi, r.GetSeq())
	}
	return fmt.Sprintf("batch %d seq %d-%d", b.GetBatchId(), lo, hi)
}
