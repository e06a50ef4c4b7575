package clearingdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	"gongji/money"
	"gongji/region"
)

// Sentinel errors of closing, settling, statements and the prepayment pool
// (part 2). clearingapi maps them: ErrPeriodNotFrozen and
// ErrEarlierPeriodUnsettled, ErrDisputeResolved and ErrAlreadyAdjusted →
// FailedPrecondition; ErrKeyReused → AlreadyExists; ErrBadKey →
// InvalidArgument.
var (
	// ErrPeriodNotFrozen: the period is not CLOSED or SETTLED yet, so it has no
	// figures and no statements (settle it, read a statement after the close).
	ErrPeriodNotFrozen = errors.New("clearingdb: period is not closed yet")
	// ErrEarlierPeriodUnsettled: periods are settled in calendar order, since
	// each settlement draws from the deposits the previous one left.
	ErrEarlierPeriodUnsettled = errors.New("clearingdb: an earlier closed period is not settled yet")
	// ErrKeyReused: an idempotency key (movement, answer or resolution key)
	// was used before for a different request.
	ErrKeyReused = errors.New("clearingdb: idempotency key already used for a different request")
	// ErrBadKey: an idempotency key is empty, too long or not printable ASCII.
	ErrBadKey = errors.New("clearingdb: invalid idempotency key")
	// ErrDisputeResolved: the disputed item was already resolved under
	// another key.
	ErrDisputeResolved = errors.New("clearingdb: disputed item already resolved")
	// ErrAlreadyAdjusted: the disputed record was already adjusted through
	// another province's dispute of it; a record is corrected at most once.
	ErrAlreadyAdjusted = errors.New("clearingdb: disputed record already adjusted")
)

// IsInvariantViolation reports whether err says that a post-condition of the
// adapter failed (figures that do not check, a journal entry that does not
// balance, a statement that does not reconcile): a bug, never the caller's
// fault. Nothing was committed. The API maps it to Internal before looking
// at any sentinel it may also wrap.
func IsInvariantViolation(err error) bool { return errors.Is(err, errInvariant) }

// PeriodStatus is what an operator sees of a period (AdminService).
type PeriodStatus struct {
	Period
	// UsageCount is the number of rows stored in the period (usages,
	// reversals, adjustments); LateCount those marked late.
	UsageCount int64
	LateCount  int64
	// Gross is Σ of the period's signed amounts (= Σ of the gross matrix).
	Gross money.Yuan
	// ExceptionCount: reconciliation exceptions filed in the period, plus,
	// while the period is OPEN or CLOSING, its usages still reported by only
	// one side (they become ONE_SIDED exceptions at close).
	ExceptionCount int64
	// Closed-period figures (zero until the period is CLOSED):
	// NettingEfficiency (settlement.Result.NettingEfficiency) and the
	// journal head right after the close (manifest.json journal_head).
	NettingEfficiency decimal.Decimal
	JournalHead       JournalHead
	// OneSidedAtClose is the number of ONE_SIDED exceptions the close filed.
	OneSidedAtClose int64
}

// Frozen reports whether the status carries a closed period's figures.
func (ps PeriodStatus) Frozen() bool { return ps.State.Frozen() }

// PeriodStatus returns period p's status: counted live from the usages
// partition while the period is OPEN or CLOSING, from the close's summary
// once it is CLOSED. Runs in one snapshot. Errors: ErrNotFound.
func (s *Store) PeriodStatus(ctx context.Context, p region.Period) (PeriodStatus, error) {
	var out PeriodStatus
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		per, err := GetPeriodTx(ctx, tx, p)
		if err != nil {
			return err
		}
		out, err = periodStatus(ctx, tx, per)
		return err
	})
	if err != nil {
		return PeriodStatus{}, err
	}
	return out, nil
}

// PeriodStatuses returns the status of every period, oldest first, in one
// snapshot. Errors: database errors.
func (s *Store) PeriodStatuses(ctx context.Context) ([]PeriodStatus, error) {
	var out []PeriodStatus
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+periodCols+` FROM periods ORDER BY setlym`)
		if err != nil {
			return err
		}
		periods, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Period, error) { return scanPeriod(r) })
		if err != nil {
			return translate(err)
		}
		for _, per := range periods {
			st, err := periodStatus(ctx, tx, per)
			if err != nil {
				return err
			}
			out = append(out, st)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("period statuses: %w", err)
	}
	return out, nil
}

func periodStatus(ctx context.Context, q Querier, per Period) (PeriodStatus, error) {
	out := PeriodStatus{Period: per}
	p := per.Setlym
	if err := q.QueryRow(ctx, `SELECT count(*) FROM recon_exceptions WHERE setlym = $1`, p.Int()).Scan(&out.ExceptionCount); err != nil {
		return PeriodStatus{}, fmt.Errorf("status of %s: %w", p, err)
	}
	if !per.State.Frozen() {
		var (
			gross    string
			oneSided int64
		)
		if err := q.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE late), coalesce(sum(amount), 0)::text,
				count(*) FILTER (WHERE entry_type <> 'ADJUSTMENT' AND NOT (payer_reported AND payee_reported))
			FROM usages WHERE setlym = $1`, p.Int()).Scan(&out.UsageCount, &out.LateCount, &gross, &oneSided); err != nil {
			return PeriodStatus{}, fmt.Errorf("status of %s: %w", p, err)
		}
		var err error
		if out.Gross, err = money.Parse(gross); err != nil {
			return PeriodStatus{}, fmt.Errorf("%w: status of %s: gross %q: %w", errInvariant, p, gross, err)
		}
		out.ExceptionCount += oneSided
		return out, nil
	}
	var gross, eff string
	if err := q.QueryRow(ctx, `SELECT usage_count, late_count, gross_total::text, netting_efficiency::text,
			one_sided_at_close, journal_head_id, journal_head
		FROM period_close WHERE setlym = $1`, p.Int()).Scan(&out.UsageCount, &out.LateCount, &gross, &eff,
		&out.OneSidedAtClose, &out.JournalHead.LastID, &out.JournalHead.Hash); err != nil {
		return PeriodStatus{}, fmt.Errorf("%w: status of closed period %s: %w", errInvariant, p, translate(err))
	}
	var err error
	if out.Gross, err = money.Parse(gross); err != nil {
		return PeriodStatus{}, fmt.Errorf("%w: status of %s: gross %q: %w", errInvariant, p, gross, err)
	}
	if out.NettingEfficiency, err = decimal.NewFromString(eff); err != nil {
		return PeriodStatus{}, fmt.Errorf("%w: status of %s: efficiency %q: %w", errInvariant, p, eff, err)
	}
	return out, nil
}
