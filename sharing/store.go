package sharing

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Store is the persistence a Service needs: a province node's database.
//
// Every method is one transaction owned by the implementation (begin, work,
// commit; rollback on any error) and applies this package's rules inside it,
// under row locks: the relationship row before any account row, accounts in
// name order. Each method that changes a usage, a reversal or a relationship
// writes its outbox row (and, for a relationship shared with another
// province, its relay message) in the same transaction. now is the single
// clock reading of the operation, already normalised by Timestamp.
//
// Errors wrap this package's sentinels; a database failure that is not one of
// them is returned as is (internal). Transient conflicts (serialization
// failures, deadlocks) are retried inside the implementation, a bounded number
// of times; the context's deadline is honoured throughout.
type Store interface {
	// RegisterPerson inserts a person of this province (p.Province) with a
	// zero personal account. For a person registered already it applies
	// p.Enrollment as ChangeEnrollment would, in the same transaction.
	// ErrPersonExists when the stored masked ID differs (a ref collision or a
	// changed person key).
	RegisterPerson(ctx context.Context, p Person, now time.Time) (RegisterResult, error)
	// GetPerson returns a person of this province. ErrNotFound.
	GetPerson(ctx context.Context, ref string) (Person, error)
	// ChangeEnrollment applies ch (EnrollmentChange.Target of the current
	// enrollment, which must then Validate for province) and, when it is an R6 trigger (AutoDissolveReason), dissolves every live relationship of
	// the person this node is authority for, returning unused quota (R7), and
	// queues a dissolution command (relay, Origin = province) for each live
	// replica whose authority is elsewhere — all in the same transaction.
	// ErrNotFound.
	ChangeEnrollment(ctx context.Context, ch EnrollmentChange, province string, now time.Time) (EnrollmentResult, error)

	// Credit deposits into a personal account (ext:funding → person),
	// idempotent by key. ErrNotFound, ErrNoPersonalAccount, ErrPersonInactive,
	// ErrKeyReused; ErrInvalidInput when the balance would leave NUMERIC(18,2).
	Credit(ctx context.Context, m MovementRequest, province string, now time.Time) (Movement, error)
	// SpendOwn pays the holder's own cost from the available part only,
	// idempotent by key. ErrNotFound, ErrPersonInactive,
	// ErrInsufficientBalance, ErrKeyReused.
	SpendOwn(ctx context.Context, m MovementRequest, province string, now time.Time) (Movement, error)
	// GetAccount returns the available and earmarked parts. ErrNotFound.
	GetAccount(ctx context.Context, ref string) (Account, error)

	// Propose creates a PENDING relationship at its authority (the sharer is a
	// person of this node), idempotent by (Origin, Key). It checks R1 on the
	// sharer and, when the beneficiary is a person of this node, that they are
	// registered and alive. ErrNotFound, ErrNoPersonalAccount,
	// ErrSharerInactive, ErrBeneficiaryUninsured, ErrDuplicateRelationship,
	// ErrKeyReused.
	Propose(ctx context.Context, p Proposal, ttl time.Duration, now time.Time) (Relationship, error)
	// ApplyCommand applies a command at the authority (Relationship.Apply)
	// under the relationship's row lock, idempotent by (Origin, Key).
	// ErrNotFound, ErrWrongProvince (not the authority), ErrKeyReused and the
	// errors of Relationship.Apply.
	ApplyCommand(ctx context.Context, c Command, now time.Time) (Relationship, error)
	// ExpireProposals moves up to limit PENDING relationships (authority
	// rows) whose expiry is at or before now to EXPIRED and returns them.
	ExpireProposals(ctx context.Context, now time.Time, limit int) ([]Relationship, error)
	// ApplyReplica stores a snapshot of a relationship whose authority is
	// another node if it is newer (by version) than the stored one; it reports
	// whether it was applied. ErrWrongProvince when this node is the authority.
	ApplyReplica(ctx context.Context, snap Relationship) (bool, error)
	// GetRelationship returns a relationship (authority row or replica). ErrNotFound.
	GetRelationship(ctx context.Context, id string) (Relationship, error)
	// ListRelationships lists relationships by id; the filter is validated.
	ListRelationships(ctx context.Context, f RelationshipFilter) ([]Relationship, error)

	// Authorize decides a usage at the authority in role RoleLocal or
	// RolePayer (R9): under the relationship's row lock it checks
	// Relationship.Authorize and records the answer — approval with its
	// journal entry and outbox row, or refusal — under the usage key, so that
	// the same key with the same request hash replays it (R11).
	// ErrNotFound (relationship), ErrKeyReused.
	Authorize(ctx context.Context, req UsageRequest, role Role, now time.Time) (UsageResult, error)
	// RecordPayeeUsage records a usage the payer approved (res.Usage in role
	// RolePayee, with the payer's remaining quota), idempotent by usage key.
	// ErrKeyReused.
	RecordPayeeUsage(ctx context.Context, res UsageResult) (UsageResult, error)
	// Reverse reverses a LOCAL or PAYER usage recorded here (R12), idempotent
	// by reversal key, restoring the quota (or the sharer's account once the
	// relationship has ended). ErrNotFound, ErrKeyReused,
	// ErrReversalExceedsUsage, ErrWrongProvince (a PAYEE usage).
	Reverse(ctx context.Context, req ReversalRequest, now time.Time) (ReversalResult, error)
	// RecordPayeeReversal records a reversal the payer applied (res.Reversal
	// in role RolePayee, with the payer's remaining quota), idempotent by
	// reversal key. ErrNotFound (usage), ErrKeyReused, ErrReversalExceedsUsage.
	RecordPayeeReversal(ctx context.Context, res ReversalResult) (ReversalResult, error)
	// GetUsage returns an approved usage recorded here, with its reversed
	// total. ErrNotFound (also for a refused key).
	GetUsage(ctx context.Context, key string) (Usage, error)
	// LookupUsage returns the answer recorded under a usage key in any role,
	// approved or refused, with found=false when the key is unknown here.
	// ErrKeyReused when the stored request hash differs from hash.
	LookupUsage(ctx context.Context, key string, hash []byte) (res UsageResult, found bool, err error)
	// PrepareUsage reads, in one round trip, what Service.Spend and
	// Service.Debit decide on before the authorising transaction: the answer
	// recorded under key (Found; ErrKeyReused when the stored request hash
	// differs from hash) and, when there is none, the relationship and —
	// with withBeneficiary — its beneficiary as a person of this node (nil
	// when not registered here). ErrNotFound (relationship).
	PrepareUsage(ctx context.Context, key string, hash []byte, relationshipID string, withBeneficiary bool) (UsagePrep, error)
	// LookupReversal is LookupUsage for reversal keys.
	LookupReversal(ctx context.Context, key string, hash []byte) (res ReversalResult, found bool, err error)
	// GetReversal returns a reversal recorded here. ErrNotFound.
	GetReversal(ctx context.Context, key string) (Reversal, error)
	// ListUsages lists approved usages of a relationship by key.
	ListUsages(ctx context.Context, f UsageFilter) ([]Usage, error)

	// CheckConservation verifies the journal and the rules' money invariants
	// (see Service.CheckConservation). ErrConservation with a description.
	CheckConservation(ctx context.Context) error
}

// UsagePrep is what Store.PrepareUsage read: a recorded answer (Found), or
// the relationship and perhaps its beneficiary.
type UsagePrep struct {
	Found        bool
	Answer       UsageResult
	Relationship Relationship
	Beneficiary  *Person // nil when not asked for or not a person of this node
}

// OutboxKind is what an outbox row reports.
type OutboxKind string

const (
	OutboxUsage        OutboxKind = "USAGE"
	OutboxReversal     OutboxKind = "REVERSAL"
	OutboxRelationship OutboxKind = "RELATIONSHIP"
)

// OutboxRecord is one row of a node's transactional outbox: every committed
// usage, reversal and relationship change, numbered by a per-node sequence.
// Rows commit out of sequence order, so a reader always asks for the
// unacknowledged rows, never "everything after my cursor".
type OutboxRecord struct {
	Seq           int64      `json:"seq"`            // per-node sequence (bigserial); unique, gaps possible
	Kind          OutboxKind `json:"kind"`           // USAGE, REVERSAL or RELATIONSHIP
	Role          Role       `json:"role"`           // PAYER, PAYEE or LOCAL (relationship changes: LOCAL)
	CrossProvince bool       `json:"cross_province"` // R13: only these are cleared nationally
	Key           string     `json:"key"`            // usage key, reversal key, or "<relationship id>@<version>"
	Payload       []byte     `json:"payload"`        // JSON: a Usage, a Reversal or a Relationship
	CreatedAt     time.Time  `json:"created_at"`
}

// Usage decodes a USAGE payload.
func (r OutboxRecord) Usage() (Usage, error) {
	var u Usage
	return u, decodePayload(r.Kind, OutboxUsage, r.Payload, &u)
}

// Reversal decodes a REVERSAL payload.
func (r OutboxRecord) Reversal() (Reversal, error) {
	var v Reversal
	return v, decodePayload(r.Kind, OutboxReversal, r.Payload, &v)
}

// Relationship decodes a RELATIONSHIP payload.
func (r OutboxRecord) Relationship() (Relationship, error) {
	var v Relationship
	return v, decodePayload(r.Kind, OutboxRelationship, r.Payload, &v)
}

func decodePayload[K ~string](got, want K, payload []byte, v any) error {
	if got != want {
		return fmt.Errorf("sharing: payload is %s, not %s", got, want)
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("sharing: decode %s payload: %w", want, err)
	}
	return nil
}

// OutboxReader is what the outbox streamer needs.
type OutboxReader interface {
	// PendingOutbox returns up to limit unacknowledged rows in seq order.
	PendingOutbox(ctx context.Context, limit int) ([]OutboxRecord, error)
	// AckOutbox marks exactly these seqs acknowledged (idempotent).
	AckOutbox(ctx context.Context, seqs []int64) error
}

// RelayKind is what a relay message carries.
type RelayKind string

const (
	// RelaySnapshot: a relationship snapshot (JSON Relationship) for the
	// replica in TargetProvince; apply with Service.ApplyReplica.
	RelaySnapshot RelayKind = "SNAPSHOT"
	// RelayDissolve: an automatic dissolution command (JSON Command) for the
	// authority in TargetProvince; apply with Service.Apply.
	RelayDissolve RelayKind = "DISSOLVE"
)

// RelayMessage is a durable cross-province message, delivered at least once
// through the clearing service and applied idempotently (snapshots by
// version, commands by key).
type RelayMessage struct {
	ID             int64     `json:"id"`
	Kind           RelayKind `json:"kind"`
	TargetProvince string    `json:"target_province"`
	Key            string    `json:"key"` // dedup key: "<relationship id>@<version>" or the command key
	Payload        []byte    `json:"payload"`
	Attempts       int       `json:"attempts"` // deliveries started so far, this one included
	NextAttemptAt  time.Time `json:"next_attempt_at"`
	CreatedAt      time.Time `json:"created_at"`
}

// Snapshot decodes a SNAPSHOT payload.
func (m RelayMessage) Snapshot() (Relationship, error) {
	var v Relationship
	return v, decodePayload(m.Kind, RelaySnapshot, m.Payload, &v)
}

// DissolveCommand decodes a DISSOLVE payload.
func (m RelayMessage) DissolveCommand() (Command, error) {
	var v Command
	return v, decodePayload(m.Kind, RelayDissolve, m.Payload, &v)
}

// RelayQueue is what the relay worker needs.
type RelayQueue interface {
	// DueRelay leases up to limit undelivered messages due at now: each
	// returned message's attempts is incremented and its next attempt moved
	// past a lease, so a crashed worker's messages come due again.
	DueRelay(ctx context.Context, now time.Time, limit int) ([]RelayMessage, error)
	// RelayDone marks a message delivered (idempotent).
	RelayDone(ctx context.Context, id int64) error
	// RelayRetry schedules the next attempt of an undelivered message.
	RelayRetry(ctx context.Context, id int64, next time.Time) error
}

// Remote reaches another province's node through the clearing switch. It is
// implemented by the transport layer (gRPC client of the clearing service);
// errors it returns should wrap this package's sentinels (ErrUnavailable for
// anything worth retrying with the same key).
type Remote interface {
	// Propose forwards a proposal to the sharer's node and returns its snapshot.
	Propose(ctx context.Context, sharerProvince string, p Proposal) (Relationship, error)
	// Command forwards a relationship command to the authority and returns its snapshot.
	Command(ctx context.Context, sharerProvince string, c Command) (Relationship, error)
	// Debit asks the payer's node to authorise and debit a cross-province usage.
	Debit(ctx context.Context, payerProvince string, req UsageRequest) (UsageResult, error)
	// ReverseDebit asks the payer's node to reverse (part of) a usage.
	ReverseDebit(ctx context.Context, payerProvince string, req ReversalRequest) (ReversalResult, error)
}
