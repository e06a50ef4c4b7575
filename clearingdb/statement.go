package clearingdb

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/internal/auditlog"
	"gongji/internal/pii"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// StatementExceptionsMax bounds the reconciliation exceptions returned with
// one statement (a gRPC message stays well under 4 MiB); the export lists
// all of them.
const StatementExceptionsMax = 10_000

// StatementView is one province's statement of a closed period as stored:
// the figures (cut from the period's immutable results and reconciled with
// the tier above on every read), its confirmation state, the reconciliation
// exceptions that name the province, its disputed items, and its prepay.csv
// row once the period is settled.
type StatementView struct {
	// Statement: period, province, position, regions, instructions and usage
	// tallies. Its Exceptions field is left empty: ReconExceptions lists the
	// stored exceptions with their details.
	settlement.Statement
	PeriodState settlement.PeriodState
	Status      settlement.StatementStatus
	IssuedAt    time.Time
	ConfirmBy   time.Time // the last instant an answer is in time
	AnsweredAt  time.Time // zero while ISSUED; the deadline for DEEMED_CONFIRMED
	// ReconExceptions are the recon_exceptions rows of the period naming the
	// province, at most StatementExceptionsMax, by (usage_id, kind, field).
	ReconExceptions []Exception
	Disputes        []Dispute
	Prepay          *prepay.Row // nil until the period is SETTLED
}

// Dispute is one disputed item and its resolution.
type Dispute struct {
	settlement.DisputedItem
	// ClearedAmount is the amount the record was cleared with.
	ClearedAmount money.Yuan
	PayerProvince string // locates the usages row
	DisputedAt    time.Time
	// Resolution (zero values while unresolved).
	ResolvedAt       time.Time
	Accepted         bool
	AdjustmentID     string
	AdjustmentPeriod region.Period
	AdjustmentAmount money.Yuan
}

// Resolved reports whether an operator has resolved the item.
func (d Dispute) Resolved() bool { return !d.ResolvedAt.IsZero() }

// statementConfig is the settlement timetable with the confirmation window
// stored with one statement (confirm_by − issued_at), so that a later change
// of --confirm-window never moves an issued statement's deadline.
func (s *Store) statementConfig(issuedAt, confirmBy time.Time) settlement.Config {
	c := s.cfg.Settlement
	c.ConfirmationWindow = confirmBy.Sub(issuedAt)
	return c
}

func checkProvinceArg(province string) error {
	if _, err := region.ParseProvince(province); err != nil {
		return fmt.Errorf("%w: %w", ErrBadProvince, err)
	}
	return nil
}

// GetStatement returns province's statement of period p as of now. A
// statement still ISSUED after its deadline is first marked DEEMED_CONFIRMED
// (R17: silence is confirmation), so readers always see the effective status.
// Needs no transaction. Errors: ErrBadProvince; ErrNotFound (no such period);
// ErrPeriodNotFrozen (the period is not closed: no statement yet);
// errInvariant (the stored statement does not reconcile); database errors.
func (s *Store) GetStatement(ctx context.Context, p region.Period, province string, now time.Time) (StatementView, error) {
	if err := checkProvinceArg(province); err != nil {
		return StatementView{}, err
	}
	var out StatementView
	err := s.retry(ctx, "statement "+p.String()+" "+province, func(ctx context.Context) error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			per, err := frozenPeriod(ctx, tx, p)
			if err != nil {
				return err
			}
			if _, err := s.lockStatement(ctx, tx, p, province, now); err != nil {
				return err
			}
			out, err = loadStatement(ctx, tx, per, province)
			return err
		})
	})
	if err != nil {
		return StatementView{}, err
	}
	return out, nil
}

// frozenPeriod returns p if it is CLOSED or SETTLED. Errors: ErrNotFound,
// ErrPeriodNotFrozen.
func frozenPeriod(ctx context.Context, q Querier, p region.Period) (Period, error) {
	per, err := GetPeriodTx(ctx, q, p)
	if err != nil {
		return Period{}, err
	}
	if !per.State.Frozen() {
		return Period{}, fmt.Errorf("statement of %s: %w: it is %s, statements are issued when it closes", p, ErrPeriodNotFrozen, per.State)
	}
	return per, nil
}

// statementRow is the answer state of one statement.
type statementRow struct {
	status     settlement.StatementStatus
	issuedAt   time.Time
	confirmBy  time.Time
	answerKey  string
	answerHash []byte
}

// lockStatement locks the statement row FOR UPDATE, applies a due deemed
// confirmation (settlement.Config.ExpireStatement) and returns the row.
// Errors: ErrNotFound.
func (s *Store) lockStatement(ctx context.Context, tx pgx.Tx, p region.Period, province string, now time.Time) (statementRow, error) {
	var (
		r      statementRow
		status string
		key    *string
	)
	err := tx.QueryRow(ctx, `SELECT status, issued_at, confirm_by, answer_key, answer_hash FROM statements
		WHERE setlym = $1 AND province = $2 FOR UPDATE`, p.Int(), province).Scan(&status, &r.issuedAt, &r.confirmBy, &key, &r.answerHash)
	if err != nil {
		return statementRow{}, fmt.Errorf("statement %s of %s: %w", p, province, translate(err))
	}
	r.status = settlement.StatementStatus(status)
	if key != nil {
		r.answerKey = *key
	}
	if st, expired := s.statementConfig(r.issuedAt, r.confirmBy).ExpireStatement(r.status, r.issuedAt, now); expired {
		if _, err := tx.Exec(ctx, `UPDATE statements SET status = $3, answered_at = confirm_by
			WHERE setlym = $1 AND province = $2`, p.Int(), province, string(st)); err != nil {
			return statementRow{}, fmt.Errorf("statement %s of %s: deem confirmed: %w", p, province, translate(err))
		}
		r.status = st
	}
	return r, nil
}

// ExpireStatements marks every statement still ISSUED after its deadline
// DEEMED_CONFIRMED (answered_at = the deadline) and returns how many: the
// sweep behind the lazy expiry of GetStatement. Idempotent. Errors: database
// errors.
func (s *Store) ExpireStatements(ctx context.Context, now time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE statements SET status = 'DEEMED_CONFIRMED', answered_at = confirm_by
		WHERE status = 'ISSUED' AND confirm_by < $1`, now)
	if err != nil {
		return 0, fmt.Errorf("expire statements: %w", translate(err))
	}
	return tag.RowsAffected(), nil
}

// ConfirmStatement records province's confirmation of its statement of p
// (R17), within the window. Idempotent by key: the same key replays the
// statement; a different answer under the same key is ErrKeyReused.
// Errors: ErrBadProvince, ErrBadKey, ErrNotFound, ErrPeriodNotFrozen,
// settlement.ErrAlreadyAnswered, settlement.ErrWindowClosed (the statement is
// then deemed confirmed, and that is committed), ErrKeyReused.
func (s *Store) ConfirmStatement(ctx context.Context, p region.Period, province, key string, now time.Time) (StatementView, error) {
	return s.answerStatement(ctx, p, province, key, nil, now)
}

// DisputeStatement records province's dispute of items of its statement of
// p (R17), within the window. Each item must name a record of the period in
// which the province is payer or payee. The disputed items are resolved
// later by an operator (ResolveDispute), never by editing the closed period.
// Idempotent by key as ConfirmStatement. Errors: those of ConfirmStatement
// and settlement.ErrBadDispute (no items, a malformed, repeated or unknown
// item; a usage id containing an ID number is malformed).
//
// A reason is free text that operators and the console show: every GB 11643
// identity number in it is masked (pii.MaskAll) before anything else sees
// it — the stored item, the answer's hash, the replayed answer. Masking, not
// refusing: a dispute must not be lost because a clerk quoted a resident's
// number, and the number is not needed to resolve it. A retry with the same
// items has the same masked reasons, so it is still the same answer.
func (s *Store) DisputeStatement(ctx context.Context, p region.Period, province string, items []settlement.DisputedItem, key string, now time.Time) (StatementView, error) {
	if len(items) == 0 {
		return StatementView{}, fmt.Errorf("%w: a dispute needs at least one item", settlement.ErrBadDispute)
	}
	masked := make([]settlement.DisputedItem, len(items))
	for i, it := range items {
		it.Reason = pii.MaskAll(it.Reason)
		masked[i] = it
	}
	return s.answerStatement(ctx, p, province, key, masked, now)
}

// answerHash is sha256 over the canonical answer: CONFIRM, or DISPUTE and
// the items sorted by usage id. The reasons are already masked
// (DisputeStatement): a hash over an ID number would give it away to anyone
// who tries the few million numbers its mask leaves open.
func answerHash(items []settlement.DisputedItem) []byte {
	h := sha256.New()
	if len(items) == 0 {
		h.Write([]byte("CONFIRM"))
		return h.Sum(nil)
	}
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b settlement.DisputedItem) int { return strings.Compare(a.UsageID, b.UsageID) })
	h.Write([]byte("DISPUTE"))
	for _, it := range sorted {
		fmt.Fprintf(h, "\x1e%s\x1f%s\x1f%s", it.UsageID, it.ClaimedAmount, it.Reason)
	}
	return h.Sum(nil)
}

func (s *Store) answerStatement(ctx context.Context, p region.Period, province, key string, items []settlement.DisputedItem, now time.Time) (StatementView, error) {
	if err := checkProvinceArg(province); err != nil {
		return StatementView{}, err
	}
	if !validKey(key, keyLenMax) {
		return StatementView{}, fmt.Errorf("%w: answer key must be 1..%d printable ASCII characters without spaces, containing no ID number", ErrBadKey, keyLenMax)
	}
	hash := answerHash(items)
	var (
		out       StatementView
		answerErr error // returned after the expiry (if any) is committed
	)
	err := s.retry(ctx, "answer statement "+p.String()+" "+province, func(ctx context.Context) error {
		answerErr = nil
		return s.inTx(ctx, func(tx pgx.Tx) error {
			per, err := frozenPeriod(ctx, tx, p)
			if err != nil {
				return err
			}
			row, err := s.lockStatement(ctx, tx, p, province, now)
			if err != nil {
				return err
			}
			if row.answerKey == key {
				if !bytes.Equal(row.answerHash, hash) {
					return fmt.Errorf("%w: answer key %q was used for another answer", ErrKeyReused, key)
				}
				auditlog.SetOutcome(ctx, auditlog.OutcomeReplayed)
				out, err = loadStatement(ctx, tx, per, province) // replay
				return err
			}
			status, at := row.status, now
			if status == settlement.StatusDeemedConfirmed {
				// Deemed confirmed means the window has passed: say so
				// (ErrWindowClosed), rather than "already answered": nobody
				// answered it.
				status = settlement.StatusIssued
				if !at.After(row.confirmBy) {
					at = row.confirmBy.Add(time.Microsecond)
				}
			}
			next, err := s.statementConfig(row.issuedAt, row.confirmBy).AnswerStatement(status, row.issuedAt,
				settlement.Answer{At: at, Disputes: items})
			if err != nil {
				answerErr = fmt.Errorf("statement %s of %s: %w", p, province, err)
				auditlog.SetOutcome(ctx, auditlog.Refused(answerErr.Error()))
				return nil // commit a deemed confirmation applied by lockStatement
			}
			if len(items) > 0 {
				if err := insertDisputes(ctx, tx, p, province, items, now); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `UPDATE statements SET status = $3, answered_at = $4, answer_key = $5, answer_hash = $6
				WHERE setlym = $1 AND province = $2`, p.Int(), province, string(next), now, key, hash); err != nil {
				return fmt.Errorf("statement %s of %s: %w", p, province, translate(err))
			}
			out, err = loadStatement(ctx, tx, per, province)
			return err
		})
	})
	if err != nil {
		return StatementView{}, err
	}
	if answerErr != nil {
		return StatementView{}, answerErr
	}
	return out, nil
}

// sqlFindRecords locates records of period $1 by id ($2): reported usages
// through usage_keys, the clearing service's own adjustments through
// clearing_adjustments, then the usages row by its primary key.
const sqlFindRecords = `SELECT u.usage_id, u.payer_province, u.payee_province, u.amount::text
	FROM (SELECT usage_id, setlym, row_payer_province AS payer FROM usage_keys WHERE usage_id = ANY ($2::text[])
	      UNION ALL
	      SELECT usage_id, setlym, payer_province FROM clearing_adjustments WHERE usage_id = ANY ($2::text[])) k
	JOIN usages u ON u.setlym = k.setlym AND u.payer_province = k.payer AND u.usage_id = k.usage_id
	WHERE k.setlym = $1`

// insertDisputes checks that every item names a record of period p in which
// province is payer or payee and stores the items.
func insertDisputes(ctx context.Context, tx pgx.Tx, p region.Period, province string, items []settlement.DisputedItem, now time.Time) error {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.UsageID
	}
	type found struct{ payer, payee, amount string }
	byID := map[string]found{}
	rows, err := tx.Query(ctx, sqlFindRecords, p.Int(), ids)
	if err != nil {
		return fmt.Errorf("disputed records: %w", err)
	}
	var id string
	var f found
	if _, err := pgx.ForEachRow(rows, []any{&id, &f.payer, &f.payee, &f.amount}, func() error {
		byID[id] = f
		return nil
	}); err != nil {
		return fmt.Errorf("disputed records: %w", err)
	}
	payers := make([]string, len(items))
	cleared := make([]string, len(items))
	claimed := make([]string, len(items))
	reasons := make([]string, len(items))
	for i, it := range items {
		r, ok := byID[it.UsageID]
		if !ok || (r.payer != province && r.payee != province) {
			return fmt.Errorf("%w: item %d: %s is not a record of period %s in which %s is payer or payee",
				settlement.ErrBadDispute, i, it.UsageID, p, province)
		}
		payers[i], cleared[i], claimed[i], reasons[i] = r.payer, r.amount, it.ClaimedAmount.String(), it.Reason
	}
	if _, err := tx.Exec(ctx, `INSERT INTO statement_disputes (setlym, province, usage_id, payer_province,
			cleared_amount, claimed_amount, reason, disputed_at)
		SELECT $1, $2, x.*, $8 FROM unnest($3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::text[]) AS x`,
		p.Int(), province, ids, payers, cleared, claimed, reasons, now); err != nil {
		return fmt.Errorf("store disputes: %w", translate(err))
	}
	return nil
}

// loadStatement reads the statement of province for closed period per and
// reconciles it (settlement.Statement.Reconcile) before returning it.
func loadStatement(ctx context.Context, q Querier, per Period, province string) (StatementView, error) {
	p := per.Setlym
	v := StatementView{PeriodState: per.State}
	v.Period, v.Province = p, province
	fail := func(what string, err error) (StatementView, error) {
		return StatementView{}, fmt.Errorf("statement %s of %s: %s: %w", p, province, what, err)
	}
	var (
		status   string
		answered *time.Time
		x, y, z  string
		ps, es   string
		n1, n2   int64
	)
	if err := q.QueryRow(ctx, `SELECT s.status, s.issued_at, s.confirm_by, s.answered_at,
			pp.receivable::text, pp.payable::text, pp.net::text, pp.payer_entries, pp.payer_sum::text,
			pp.payee_entries, pp.payee_sum::text
		FROM statements s JOIN period_positions pp ON pp.setlym = s.setlym AND pp.province = s.province
		WHERE s.setlym = $1 AND s.province = $2`, p.Int(), province).
		Scan(&status, &v.IssuedAt, &v.ConfirmBy, &answered, &x, &y, &z, &n1, &ps, &n2, &es); err != nil {
		return fail("header", translate(err))
	}
	v.Status = settlement.StatementStatus(status)
	if answered != nil {
		v.AnsweredAt = *answered
	}
	v.Position.Province = province
	v.Usage.AsPayer.Entries, v.Usage.AsPayee.Entries = int(n1), int(n2)
	for _, f := range []struct {
		dst *money.Yuan
		src string
	}{{&v.Position.Receivable, x}, {&v.Position.Payable, y}, {&v.Position.Net, z}, {&v.Usage.AsPayer.Sum, ps}, {&v.Usage.AsPayee.Sum, es}} {
		val, err := money.Parse(f.src)
		if err != nil {
			return fail("header", err)
		}
		*f.dst = val
	}

	rows, err := q.Query(ctx, `SELECT region, receivable::text, payable::text, net::text FROM period_allocation
		WHERE setlym = $1 AND province = $2 ORDER BY region COLLATE "C"`, p.Int(), province)
	if err != nil {
		return fail("regions", err)
	}
	var reg string
	if _, err := pgx.ForEachRow(rows, []any{&reg, &x, &y, &z}, func() error {
		r := settlement.RegionPosition{Province: province, Region: reg}
		for _, f := range []struct {
			dst *money.Yuan
			src string
		}{{&r.Receivable, x}, {&r.Payable, y}, {&r.Net, z}} {
			val, err := money.Parse(f.src)
			if err != nil {
				return err
			}
			*f.dst = val
		}
		v.Regions = append(v.Regions, r)
		return nil
	}); err != nil {
		return fail("regions", err)
	}

	rows, err = q.Query(ctx, `SELECT tier, from_code, to_code, amount::text FROM period_instructions
		WHERE setlym = $1 AND (from_code = $2 OR to_code = $2)
		ORDER BY tier COLLATE "C", from_code COLLATE "C", to_code COLLATE "C"`, p.Int(), province)
	if err != nil {
		return fail("instructions", err)
	}
	var tier, from, to string
	if _, err := pgx.ForEachRow(rows, []any{&tier, &from, &to, &x}, func() error {
		amt, err := money.Parse(x)
		v.Instructions = append(v.Instructions, settlement.Instruction{Tier: settlement.Tier(tier), From: from, To: to, Amount: amt})
		return err
	}); err != nil {
		return fail("instructions", err)
	}
	if err := v.Statement.Reconcile(); err != nil {
		return StatementView{}, fmt.Errorf("%w: %w", errInvariant, err)
	}

	rows, err = q.Query(ctx, `SELECT setlym, payer_province, payee_province, usage_id, kind, field,
			payer_value, payee_value, reporter_province, reporter_seq, provinces, detail, created_at
		FROM recon_exceptions
		WHERE setlym = $1 AND $2 = ANY (provinces)
		ORDER BY usage_id, kind, field, reporter_province, reporter_seq
		LIMIT $3`, p.Int(), province, StatementExceptionsMax)
	if err != nil {
		return fail("exceptions", err)
	}
	v.ReconExceptions, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Exception, error) {
		var e Exception
		var ym int
		if err := r.Scan(&ym, &e.PayerProvince, &e.PayeeProvince, &e.UsageID, &e.Kind, &e.Field,
			&e.PayerValue, &e.PayeeValue, &e.ReporterProvince, &e.ReporterSeq, &e.Provinces, &e.Detail, &e.CreatedAt); err != nil {
			return e, err
		}
		var err error
		e.Setlym, err = region.PeriodFromInt(ym)
		return e, err
	})
	if err != nil {
		return fail("exceptions", err)
	}

	v.Disputes, err = loadDisputes(ctx, q, p, province)
	if err != nil {
		return fail("disputes", err)
	}
	if per.State == settlement.PeriodSettled {
		rs, err := prepayRows(ctx, q, p, province)
		if err != nil {
			return fail("prepay", err)
		}
		if len(rs) != 1 {
			return StatementView{}, fmt.Errorf("%w: statement %s of %s: %d prepay rows", errInvariant, p, province, len(rs))
		}
		v.Prepay = &rs[0]
	}
	return v, nil
}

func loadDisputes(ctx context.Context, q Querier, p region.Period, province string) ([]Dispute, error) {
	rows, err := q.Query(ctx, `SELECT usage_id, claimed_amount::text, reason, cleared_amount::text, payer_province,
			disputed_at, resolved_at, coalesce(accepted, false), coalesce(adjustment_id, ''),
			coalesce(adjustment_setlym, 0), coalesce(adjustment_amount, 0)::text
		FROM statement_disputes WHERE setlym = $1 AND province = $2 ORDER BY usage_id COLLATE "C"`, p.Int(), province)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Dispute, error) {
		var (
			d                     Dispute
			claimed, cleared, adj string
			resolved              *time.Time
			adjYM                 int
		)
		if err := r.Scan(&d.UsageID, &claimed, &d.Reason, &cleared, &d.PayerProvince, &d.DisputedAt, &resolved,
			&d.Accepted, &d.AdjustmentID, &adjYM, &adj); err != nil {
			return d, err
		}
		var err error
		if d.ClaimedAmount, err = money.Parse(claimed); err != nil {
			return d, err
		}
		if d.ClearedAmount, err = money.Parse(cleared); err != nil {
			return d, err
		}
		if d.AdjustmentAmount, err = money.Parse(adj); err != nil {
			return d, err
		}
		if resolved != nil {
			d.ResolvedAt = *resolved
		}
		if adjYM != 0 {
			if d.AdjustmentPeriod, err = region.PeriodFromInt(adjYM); err != nil {
				return d, err
			}
		}
		return d, nil
	})
}

// DisputeResolution is an operator's decision on one disputed item.
type DisputeResolution struct {
	// Period, Province and UsageID name the disputed item: the statement of
	// Province for Period, and the record it disputed.
	Period   region.Period
	Province string
	UsageID  string
	// Accept: true corrects the record with an ADJUSTMENT; false rejects the
	// dispute and nothing is adjusted.
	Accept bool
	// Adjustment is the signed amount of the ADJUSTMENT as it will appear in
	// usages.csv (resolved amount − cleared amount). Nil: the province's
	// claimed amount is taken as the resolved amount. Ignored when !Accept.
	Adjustment *money.Yuan
	// Key makes the resolution idempotent (1..64 printable ASCII).
	Key string
}

// ResolvedDispute is the outcome of ResolveDispute.
type ResolvedDispute struct {
	Accepted bool
	// The ADJUSTMENT record (accepted only): its id, the open period it is
	// cleared in, and its signed amount.
	AdjustmentID     string
	AdjustmentPeriod region.Period
	AdjustmentAmount money.Yuan
}

func resolutionHash(r DisputeResolution) []byte {
	adj := "claim"
	if r.Adjustment != nil {
		adj = r.Adjustment.String()
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x1f%s\x1f%s\x1f%v\x1f%s", r.Period, r.Province, r.UsageID, r.Accept, adj))
	return h[:]
}

// AdjustmentID is the deterministic id of the ADJUSTMENT that corrects
// record usageID of period p: "ADJ-<setlym>-" + 24 hex digits of
// sha256(setlym ":" usage_id). One record is adjusted at most once. The id
// is a usage id, exported in usages.csv and disputable like any other, so
// it never contains a GB 11643 identity number: in the rare case (about one
// in 10^6) that those 24 digits would, they are taken from sha256 of the
// digest instead, and so on (pii.IDFreeHex).
func AdjustmentID(p region.Period, usageID string) string {
	h := sha256.Sum256([]byte(p.String() + ":" + usageID))
	return "ADJ-" + p.String() + "-" + pii.IDFreeHex(h[:], 24)
}

// ResolveDispute settles a disputed statement item (R17). Rejected: the item
// is closed and nothing moves. Accepted: settlement.BuildAdjustment turns it
// into an ADJUSTMENT (amount = resolved − cleared, reversal_of = the disputed
// record, same provinces, regions and pseudonyms) that is inserted as a
// usages row of the next OPEN period (the period of now, or the earliest
// later one still open; created if missing) and cleared when that period
// closes. The closed period is never edited. The target period is locked
// FOR SHARE while the row is written (clearing_lock_open_periods), so a close
// cannot start in between.
//
// Idempotent by Key: the same key and request replays the first outcome; the
// same key with another request is ErrKeyReused. Needs no transaction.
// Errors: ErrBadKey, ErrBadProvince, settlement.ErrBadDispute (bad usage id),
// ErrNotFound (no such disputed item), ErrDisputeResolved, ErrAlreadyAdjusted,
// settlement.ErrNothingToAdjust (resolved = cleared), settlement.ErrInvalidRecord
// (an adjustment out of range), settlement.ErrNoOpenPeriod,
// ErrRetriesExhausted, database errors.
func (s *Store) ResolveDispute(ctx context.Context, in DisputeResolution, now time.Time) (ResolvedDispute, error) {
	if !validKey(in.Key, keyLenMax) {
		return ResolvedDispute{}, fmt.Errorf("%w: resolution key must be 1..%d printable ASCII characters without spaces, containing no ID number", ErrBadKey, keyLenMax)
	}
	if err := checkProvinceArg(in.Province); err != nil {
		return ResolvedDispute{}, err
	}
	if !validKey(in.UsageID, keyLenMax) {
		return ResolvedDispute{}, fmt.Errorf("%w: usage id must be 1..%d printable ASCII characters, containing no ID number", settlement.ErrBadDispute, keyLenMax)
	}
	if in.Accept && in.Adjustment != nil && (in.Adjustment.IsZero() || !in.Adjustment.InRange()) {
		return ResolvedDispute{}, fmt.Errorf("%w: adjustment %s must be non-zero and within NUMERIC(18,2)", settlement.ErrNothingToAdjust, in.Adjustment)
	}
	hash := resolutionHash(in)
	var out ResolvedDispute
	err := s.retry(ctx, "resolve dispute "+in.Key, func(ctx context.Context) error {
		var target settlement.Assignment
		if in.Accept {
			var err error
			if target, err = s.OpenPeriodFor(ctx, now, now); err != nil {
				return err
			}
		}
		return s.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			out, err = resolveOnce(ctx, tx, in, hash, target.Period, now)
			return err
		})
	})
	if err != nil {
		return ResolvedDispute{}, err
	}
	return out, nil
}

func resolveOnce(ctx context.Context, tx pgx.Tx, in DisputeResolution, hash []byte, target region.Period, now time.Time) (ResolvedDispute, error) {
	var (
		ym            int
		prov, uid     string
		prevHash      []byte
		out           ResolvedDispute
		adjID, adjAmt string
		adjYM         int
	)
	err := tx.QueryRow(ctx, `SELECT setlym, province, usage_id, resolution_hash, accepted,
			coalesce(adjustment_id, ''), coalesce(adjustment_setlym, 0), coalesce(adjustment_amount, 0)::text
		FROM statement_disputes WHERE resolution_key = $1`, in.Key).
		Scan(&ym, &prov, &uid, &prevHash, &out.Accepted, &adjID, &adjYM, &adjAmt)
	switch {
	case err == nil:
		if !bytes.Equal(prevHash, hash) {
			return ResolvedDispute{}, fmt.Errorf("%w: resolution key %q resolved %06d/%s/%s", ErrKeyReused, in.Key, ym, prov, uid)
		}
		auditlog.SetOutcome(ctx, auditlog.OutcomeReplayed)
		return resolvedFrom(out.Accepted, adjID, adjYM, adjAmt)
	case !errors.Is(err, pgx.ErrNoRows):
		return ResolvedDispute{}, err
	}

	var (
		payer, cleared, claimed string
		resolvedAt              *time.Time
	)
	err = tx.QueryRow(ctx, `SELECT payer_province, cleared_amount::text, claimed_amount::text, resolved_at
		FROM statement_disputes WHERE setlym = $1 AND province = $2 AND usage_id = $3 FOR UPDATE`,
		in.Period.Int(), in.Province, in.UsageID).Scan(&payer, &cleared, &claimed, &resolvedAt)
	if err != nil {
		return ResolvedDispute{}, fmt.Errorf("disputed item %s/%s/%s: %w", in.Period, in.Province, in.UsageID, translate(err))
	}
	if resolvedAt != nil {
		return ResolvedDispute{}, fmt.Errorf("%w: %s/%s/%s was resolved at %s", ErrDisputeResolved,
			in.Period, in.Province, in.UsageID, resolvedAt.In(region.Shanghai).Format(time.RFC3339))
	}
	if !in.Accept {
		if _, err := tx.Exec(ctx, `UPDATE statement_disputes SET resolved_at = $4, accepted = false,
				resolution_key = $5, resolution_hash = $6
			WHERE setlym = $1 AND province = $2 AND usage_id = $3`,
			in.Period.Int(), in.Province, in.UsageID, now, in.Key, hash); err != nil {
			return ResolvedDispute{}, translate(err)
		}
		return ResolvedDispute{}, nil
	}

	var other string
	err = tx.QueryRow(ctx, `SELECT usage_id FROM clearing_adjustments WHERE disputed_setlym = $1 AND disputed_id = $2`,
		in.Period.Int(), in.UsageID).Scan(&other)
	switch {
	case err == nil:
		return ResolvedDispute{}, fmt.Errorf("%w: %s of %s was corrected by %s", ErrAlreadyAdjusted, in.UsageID, in.Period, other)
	case !errors.Is(err, pgx.ErrNoRows):
		return ResolvedDispute{}, err
	}
	// The target stays OPEN (and within its cut-off) until this commits;
	// GJ001 otherwise, and the caller retries with a fresh assignment.
	if _, err := tx.Exec(ctx, `SELECT clearing_lock_open_periods($1::integer[], $2)`, []int32{int32(target.Int())}, now); err != nil {
		return ResolvedDispute{}, err
	}
	disputed, err := scanUsage(tx.QueryRow(ctx, `SELECT `+usageCols+` FROM usages
		WHERE setlym = $1 AND payer_province = $2 AND usage_id = $3`, in.Period.Int(), payer, in.UsageID))
	if err != nil {
		return ResolvedDispute{}, fmt.Errorf("%w: disputed record %s of %s: %w", errInvariant, in.UsageID, in.Period, translate(err))
	}
	clearedAmt, err := money.Parse(cleared)
	if err != nil || !clearedAmt.Equal(disputed.Amount) {
		return ResolvedDispute{}, fmt.Errorf("%w: record %s of %s is %s, was cleared as %s", errInvariant, in.UsageID, in.Period, disputed.Amount, cleared)
	}
	resolved, err := money.Parse(claimed)
	if err != nil {
		return ResolvedDispute{}, fmt.Errorf("%w: claimed amount %q: %w", errInvariant, claimed, err)
	}
	if in.Adjustment != nil {
		resolved = disputed.Amount.Add(*in.Adjustment)
	}
	adj, err := settlement.BuildAdjustment(settlement.AdjustmentInput{
		Disputed:       disputed.Record,
		ResolvedAmount: resolved,
		AdjustmentID:   AdjustmentID(in.Period, in.UsageID),
		Target:         target,
		TargetState:    settlement.PeriodOpen, // locked above
		ResolvedAt:     now,
	})
	if err != nil {
		return ResolvedDispute{}, err
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO usages (setlym, payer_province, usage_id, entry_type, kind, payer_region,
			payee_province, payee_region, amount, occurred_at, late, reversal_of, sharer_ref, beneficiary_ref,
			relationship_id, payer_reported, payee_reported, first_at, both_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::numeric, $10, false, $11, $12, $13, $14, true, true, $15, $15)`,
		adj.Period.Int(), adj.PayerProvince, adj.UsageID, string(adj.Type), string(adj.Kind), adj.PayerRegion,
		adj.PayeeProvince, adj.PayeeRegion, adj.Amount.String(), adj.OccurredAt, adj.ReversalOf,
		adj.SharerRef, adj.BeneficiaryRef, disputed.RelationshipID, now)
	b.Queue(`INSERT INTO clearing_adjustments (usage_id, setlym, payer_province, disputed_setlym, disputed_id, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, adj.UsageID, adj.Period.Int(), adj.PayerProvince, in.Period.Int(), in.UsageID, now)
	b.Queue(`UPDATE statement_disputes SET resolved_at = $4, accepted = true, adjustment_id = $5,
			adjustment_setlym = $6, adjustment_amount = $7::numeric, resolution_key = $8, resolution_hash = $9
		WHERE setlym = $1 AND province = $2 AND usage_id = $3`,
		in.Period.Int(), in.Province, in.UsageID, now, adj.UsageID, adj.Period.Int(), adj.Amount.String(), in.Key, hash)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return ResolvedDispute{}, translate(err)
	}
	if err := step(ctx, "resolve:adjusted"); err != nil {
		return ResolvedDispute{}, err
	}
	return ResolvedDispute{Accepted: true, AdjustmentID: adj.UsageID, AdjustmentPeriod: adj.Period, AdjustmentAmount: adj.Amount}, nil
}

func resolvedFrom(accepted bool, id string, ym int, amount string) (ResolvedDispute, error) {
	out := ResolvedDispute{Accepted: accepted, AdjustmentID: id}
	if !accepted {
		return out, nil
	}
	var err error
	if out.AdjustmentPeriod, err = region.PeriodFromInt(ym); err != nil {
		return ResolvedDispute{}, fmt.Errorf("%w: adjustment period %d: %w", errInvariant, ym, err)
	}
	if out.AdjustmentAmount, err = money.Parse(amount); err != nil {
		return ResolvedDispute{}, fmt.Errorf("%w: adjustment amount %q: %w", errInvariant, amount, err)
	}
	return out, nil
}
