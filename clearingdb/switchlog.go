package clearingdb

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/internal/auditlog"
	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// SwitchOp is what the switch routed.
type SwitchOp string

const (
	OpAuthorize            SwitchOp = "AUTHORIZE"             // Authorize → the payer's Debit
	OpReversal             SwitchOp = "REVERSAL"              // AuthorizeReversal → the payer's ReverseDebit
	OpRelationshipCommand  SwitchOp = "RELATIONSHIP_COMMAND"  // → the authority (sharer's node)
	OpRelationshipSnapshot SwitchOp = "RELATIONSHIP_SNAPSHOT" // authority → the replica (beneficiary's node)
)

// SwitchOutcome is how the routed call ended.
type SwitchOutcome string

const (
	OutcomeApproved    SwitchOutcome = "APPROVED"    // the target applied it (or replayed its first answer)
	OutcomeRefused     SwitchOutcome = "REFUSED"     // the target said no; Code names why
	OutcomeUnavailable SwitchOutcome = "UNAVAILABLE" // the target could not be reached in time
	OutcomeError       SwitchOutcome = "ERROR"       // anything else; Code/Detail say what
)

// Limits of a switch log entry's free-text fields.
const (
	switchKeyLenMax    = 128
	switchCodeLenMax   = 64
	switchDetailLenMax = 1024
)

// SwitchEntry is one routed call as the switch saw it.
type SwitchEntry struct {
	ID             int64 // assigned by LogSwitch
	Op             SwitchOp
	CallerProvince string // whose node called the switch (from its certificate)
	TargetProvince string // where the switch routed the call
	// Key: the usage key (AUTHORIZE), reversal key (REVERSAL), command key
	// (RELATIONSHIP_COMMAND), or relationship id and version (RELATIONSHIP_SNAPSHOT).
	Key        string
	ReversalOf string // REVERSAL: the usage key
	Outcome    SwitchOutcome
	Code       string // REFUSED/ERROR: the gRPC code name or domain reason
	Detail     string
	// What the switch knows of the usage, for the tie-break; zero values
	// mean "not known". Amount: the requested amount, or the approved one
	// when APPROVED.
	Amount         money.Yuan
	Kind           string
	PayerRegion    string
	PayeeProvince  string
	PayeeRegion    string
	OccurredAt     time.Time
	RelationshipID string
	StartedAt      time.Time
	FinishedAt     time.Time
}

// PayerProvince is the sharer's province, the entry's distribution key: the
// target of an authorisation, reversal or relationship command, the caller
// (the authority) of a relationship snapshot.
func (e *SwitchEntry) PayerProvince() string {
	if e.Op == OpRelationshipSnapshot {
		return e.CallerProvince
	}
	return e.TargetProvince
}

// Latency is FinishedAt − StartedAt.
func (e *SwitchEntry) Latency() time.Duration { return e.FinishedAt.Sub(e.StartedAt) }

// Validate checks an entry before it is logged. Errors wrap ErrBadRecord.
func (e *SwitchEntry) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: switch log: %s", ErrBadRecord, fmt.Sprintf(format, a...))
	}
	switch e.Op {
	case OpAuthorize, OpReversal, OpRelationshipCommand, OpRelationshipSnapshot:
	default:
		return bad("unknown op %q", e.Op)
	}
	switch e.Outcome {
	case OutcomeApproved, OutcomeRefused, OutcomeUnavailable, OutcomeError:
	default:
		return bad("unknown outcome %q", e.Outcome)
	}
	for _, c := range []string{e.CallerProvince, e.TargetProvince} {
		if _, err := region.ParseProvince(c); err != nil {
			return bad("%v", err)
		}
	}
	if !validKey(e.Key, switchKeyLenMax) {
		return bad("key must be 1..%d printable ASCII characters, containing no ID number", switchKeyLenMax)
	}
	if e.ReversalOf != "" && !validKey(e.ReversalOf, switchKeyLenMax) {
		return bad("reversal_of must be at most %d printable ASCII characters, containing no ID number", switchKeyLenMax)
	}
	if e.RelationshipID != "" && !validKey(e.RelationshipID, switchKeyLenMax) {
		return bad("relationship_id must be at most %d printable ASCII characters, containing no ID number", switchKeyLenMax)
	}
	if len(e.Code) > switchCodeLenMax || len(e.Detail) > switchDetailLenMax {
		return bad("code or detail too long")
	}
	if e.Amount.IsNegative() || !e.Amount.InRange() {
		return bad("amount %s must be >= 0 and within NUMERIC(18,2)", e.Amount)
	}
	if e.Kind != "" {
		if _, err := settlement.ParseKind(e.Kind); err != nil {
			return bad("%v", err)
		}
	}
	if e.PayeeProvince != "" {
		if _, err := region.ParseProvince(e.PayeeProvince); err != nil {
			return bad("payee: %v", err)
		}
	}
	for _, r := range []string{e.PayerRegion, e.PayeeRegion} {
		if r != "" {
			if _, err := region.ParseRegion(r); err != nil {
				return bad("%v", err)
			}
		}
	}
	if e.StartedAt.IsZero() || e.FinishedAt.Before(e.StartedAt) {
		return bad("started_at must be set and not after finished_at")
	}
	if y := e.StartedAt.In(region.Shanghai).Year(); y < 2000 || y > 2999 {
		return bad("started_at outside the years 2000-2999")
	}
	return nil
}

const sqlLogSwitch = `INSERT INTO switch_log (setlym, payer_province, op, caller_province, target_province, key,
		reversal_of, outcome, code, detail, amount, kind, payer_region, payee_province, payee_region, occurred_at,
		relationship_id, started_at, finished_at, latency_us)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
	RETURNING id`

// LogSwitch durably records one routed call: one INSERT in its own
// transaction (plus, once per month and process, the creation of the
// month's partition). It sets e.ID.
//
// The switch calls it after the routed call returned and before it answers
// its caller, and answers only if it succeeded (otherwise it answers
// Unavailable: the caller retries with the same key, the target replays its
// first answer, and that retry is logged). So every answer the switch gave is
// in the log. No asynchronous writer is needed for that: PostgreSQL already
// flushes the WAL of concurrent commits together (group commit), and the
// entry is one narrow row.
// Errors: ErrBadRecord, database errors.
func (s *Store) LogSwitch(ctx context.Context, e *SwitchEntry) error {
	if err := e.Validate(); err != nil {
		return err
	}
	p := region.PeriodOf(e.StartedAt)
	if _, ok := s.switchParts.Load(p.Int()); !ok {
		if _, err := s.pool.Exec(ctx, `SELECT clearing_ensure_switch_partition($1)`, p.Int()); err != nil {
			return fmt.Errorf("switch log partition %s: %w", p, err)
		}
		s.switchParts.Store(p.Int(), struct{}{})
	}
	var amount any
	if !e.Amount.IsZero() {
		amount = e.Amount
	}
	var occurred any
	if !e.OccurredAt.IsZero() {
		occurred = e.OccurredAt
	}
	// Code and Detail are free text from the target's answer (its status
	// message): kept, with every ID number in them masked.
	args := []any{p.Int(), e.PayerProvince(), string(e.Op), e.CallerProvince,
		e.TargetProvince, e.Key, e.ReversalOf, string(e.Outcome), pii.MaskAll(e.Code), pii.MaskAll(e.Detail), amount, e.Kind, e.PayerRegion,
		e.PayeeProvince, e.PayeeRegion, occurred, e.RelationshipID, e.StartedAt, e.FinishedAt,
		e.Latency().Microseconds()}
	// The routed call's audit row (internal/auditlog) goes into the same
	// statement as its switch log row: one round trip, one commit.
	auditlog.SetOutcome(ctx, switchAuditOutcome(e))
	audit := auditlog.Begin(ctx)
	var err error
	if audit == nil {
		err = s.pool.QueryRow(ctx, sqlLogSwitch, args...).Scan(&e.ID)
	} else {
		asql, aargs := audit.Statement(len(args) + 1)
		var outcome string
		err = s.pool.QueryRow(ctx, `WITH s AS (`+sqlLogSwitch+`), a AS (`+asql+`) SELECT s.id, a.outcome FROM s, a`,
			append(args, aargs...)...).Scan(&e.ID, &outcome)
		audit.Wrote(outcome)
		audit.End(err)
	}
	if err != nil {
		return fmt.Errorf("log switch %s %s: %w", e.Op, e.Key, err)
	}
	return nil
}

// switchAuditOutcome is the audit outcome of a routed call: "ok" when the
// target applied it (or replayed its first answer), else the switch log's
// outcome and code ("refused: ResourceExhausted", "unavailable: NO_NODE").
func switchAuditOutcome(e *SwitchEntry) string {
	if e.Outcome == OutcomeApproved {
		return auditlog.OutcomeOK
	}
	return strings.ToLower(string(e.Outcome)) + ": " + e.Code
}

const switchCols = `id, op, caller_province, target_province, key, reversal_of, outcome, code, detail,
	coalesce(amount, 0)::text, kind, payer_region, payee_province, payee_region, occurred_at, relationship_id,
	started_at, finished_at`

func scanSwitch(r pgx.CollectableRow) (SwitchEntry, error) {
	var (
		e            SwitchEntry
		op, out, amt string
		occurred     *time.Time
	)
	if err := r.Scan(&e.ID, &op, &e.CallerProvince, &e.TargetProvince, &e.Key, &e.ReversalOf, &out, &e.Code,
		&e.Detail, &amt, &e.Kind, &e.PayerRegion, &e.PayeeProvince, &e.PayeeRegion, &occurred, &e.RelationshipID,
		&e.StartedAt, &e.FinishedAt); err != nil {
		return e, err
	}
	e.Op, e.Outcome = SwitchOp(op), SwitchOutcome(out)
	if occurred != nil {
		e.OccurredAt = *occurred
	}
	var err error
	e.Amount, err = money.Parse(amt)
	return e, err
}

// SwitchLogForKey returns the entries for key routed to (or, for snapshots,
// from) payerProvince, oldest first, looking in the month of around and the
// months either side of it (pass the usage's occurred_at: the switch saw the
// authorisation when it happened, give or take a month boundary).
func (s *Store) SwitchLogForKey(ctx context.Context, payerProvince, key string, around time.Time) ([]SwitchEntry, error) {
	p := region.PeriodOf(around)
	rows, err := s.pool.Query(ctx, `SELECT `+switchCols+` FROM switch_log
		WHERE setlym IN ($1, $2, $3) AND payer_province = $4 AND key = $5
		ORDER BY started_at, id`, p.Prev().Int(), p.Int(), p.Next().Int(), payerProvince, key)
	if err != nil {
		return nil, fmt.Errorf("switch log for %s: %w", key, err)
	}
	out, err := pgx.CollectRows(rows, scanSwitch)
	if err != nil {
		return nil, fmt.Errorf("switch log for %s: %w", key, err)
	}
	return out, nil
}

// SwitchSummaryRow aggregates one month's switch log per
// (payer province, caller province, op, outcome).
type SwitchSummaryRow struct {
	PayerProvince  string
	CallerProvince string
	Op             SwitchOp
	Outcome        SwitchOutcome
	Calls          int64
	Amount         money.Yuan // sum of the amounts the entries carry
	LatencyP99     time.Duration
	LatencyMax     time.Duration
}

// SwitchSummary aggregates the switch log of the calls started in month p
// (Asia/Shanghai), sorted by its grouping columns. Grouped by the
// distribution key, so a distributed engine computes each group on one node.
func (s *Store) SwitchSummary(ctx context.Context, p region.Period) ([]SwitchSummaryRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT payer_province, caller_province, op, outcome, count(*),
			coalesce(sum(amount), 0)::text,
			percentile_disc(0.99) WITHIN GROUP (ORDER BY latency_us), max(latency_us)
		FROM switch_log WHERE setlym = $1
		GROUP BY payer_province, caller_province, op, outcome
		ORDER BY payer_province, caller_province, op, outcome`, p.Int())
	if err != nil {
		return nil, fmt.Errorf("switch summary %s: %w", p, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SwitchSummaryRow, error) {
		var (
			x          SwitchSummaryRow
			op, o, amt string
			p99, mx    int64
		)
		if err := r.Scan(&x.PayerProvince, &x.CallerProvince, &op, &o, &x.Calls, &amt, &p99, &mx); err != nil {
			return x, err
		}
		x.Op, x.Outcome = SwitchOp(op), SwitchOutcome(o)
		x.LatencyP99, x.LatencyMax = time.Duration(p99)*time.Microsecond, time.Duration(mx)*time.Microsecond
		var err error
		x.Amount, err = money.Parse(amt)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("switch summary %s: %w", p, err)
	}
	return out, nil
}
