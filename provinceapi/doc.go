// Package provinceapi is the gRPC layer of a province node: the
// ProvinceService its own systems call, the PeerService the clearing switch
// calls on behalf of other provinces, the sharing.Remote that reaches other
// provinces through the switch, and the background workers that stream the
// outbox to the clearing service, deliver the relay queue and expire
// proposals. Handlers authorise the caller from its verified certificate,
// validate and map every field (ID numbers become person_refs here and go no
// further), call sharing.Service, and map its errors to codes in one place
// (errors.go). The rules live in sharing/, the storage in provincedb/.
//
// Public API: NewProvinceServer, NewPeerServer and Register (the two
// services), ServerOptions and CallerName (for serve.GRPCOptions),
// DialClearing and NewRemote (the connection to the clearing service and
// sharing.Remote over it), NewWorkers (outbox streamer, relay worker,
// proposal sweeper) and NewMetrics.
//
// Decisions recorded here (where DESIGN, docs/architecture.md and the protos
// are silent):
//
//   - Authorisation. ProvinceService: this province's own certificate only
//     (gongji:province:<own>); PeerService: gongji:clearing only. Anything
//     else is PermissionDenied before the request is read; a call without a
//     verified certificate is Unauthenticated (with mutual TLS the handshake
//     already refuses a client without one).
//   - ErrWrongProvince is PermissionDenied: a province acting on data another
//     province owns (DESIGN §5). Inside a *FieldError (e.g. a payee province
//     that is not this node) it is InvalidArgument naming the field.
//   - Every status a handler returns for a domain error carries a
//     google.rpc.ErrorInfo (domain ErrorDomain, reason = the sentinel), so the
//     node on the other side of the switch gets the same sentinel back
//     (Remote) while its caller gets the payer's status unchanged.
//   - Keys. Every idempotency key (usage, reversal, proposal, command, credit,
//     spend, change) is 1–64 printable ASCII characters without spaces
//     (KeyLenMax = settlement.UsageIDLenMax: a usage or reversal key becomes a
//     usage_id at the clearing service). A reversal key must differ from the
//     usage key it reverses: both are usage ids there. A key that contains a
//     GB 11643 identity number (pii.ContainsID) is refused like a malformed
//     one: keys are stored, logged and exported in clear, so one can never
//     carry an ID number. Relationship ids contain none either (sharing
//     derives them so, and ValidRelationshipID refuses any other).
//   - Invalid UTF-8 in a request string is InvalidArgument naming the field,
//     not Internal (serve.ServerCodec). Edge messages never quote the offending
//     value, so a hostile value (an ID number in the wrong field) is never
//     echoed into replies or call logs.
//   - ChangeEnrollment is idempotent by change_key: the first answer is
//     stored (commands) and replayed to a retry, and the key reused for a
//     different change is refused; a new key repeating the current state
//     changes nothing.
//     TRANSFER names a pooling region of this province; a move to another
//     province is a TERMINATION here. effective_at is optional, validated
//     (years 2000–2999, at most a day ahead) and not stored.
//   - The Relationship message carries returned, activated_at and ended_at
//     (fields 17–19). A snapshot without them (a node that predates them)
//     gets ended_at = updated_at and returned = quota − used for an ended
//     relationship, as the authority keeps them; activated_at stays unknown.
//   - CreditAccount and SpendOwn answer with the account as it is after the
//     call (a replay shows the current balances, and moves nothing).
//   - ListRelationships returns at most ListRelationshipsMax relationships
//     (the proto has no pagination).
//   - Relay delivery: a message the other node refuses for good
//     (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition,
//     PermissionDenied) is marked done, counted as dropped and logged at
//     error level; an automatic dissolution that finds the relationship
//     already ended is simply done. Everything else is retried after 1 s,
//     2 s, 4 s … up to RelayRetryMax.
//   - The outbox streamer keeps one batch in flight: a node's outbox is
//     small per second (DESIGN §6: a few usages a second per province on
//     average) and catching up after an outage goes at ReportBatch records
//     per round trip; a window would add ordering cases without need.
package provinceapi
