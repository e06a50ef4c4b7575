package clearingdb

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/internal/auditlog"
	"gongji/region"
	"gongji/settlement"
)

// Period is one row of periods. Zero times are "not yet".
type Period struct {
	Setlym    region.Period
	State     settlement.PeriodState
	CutOff    time.Time // records arriving later go to a later period, marked late
	CreatedAt time.Time
	ClosingAt time.Time
	ClosedAt  time.Time
	SettledAt time.Time
}

// periodInfo is what assignment needs to know of an existing period.
type periodInfo struct {
	state  settlement.PeriodState
	cutOff time.Time
}

const periodCols = `setlym, state, cut_off, created_at, closing_at, closed_at, settled_at`

func scanPeriod(row pgx.Row) (Period, error) {
	var (
		ym                    int
		state                 string
		p                     Period
		closing, closed, sett *time.Time
	)
	if err := row.Scan(&ym, &state, &p.CutOff, &p.CreatedAt, &closing, &closed, &sett); err != nil {
		return Period{}, err
	}
	var err error
	if p.Setlym, err = region.PeriodFromInt(ym); err != nil {
		return Period{}, fmt.Errorf("%w: periods.setlym %d: %w", errInvariant, ym, err)
	}
	if p.State, err = settlement.ParsePeriodState(state); err != nil {
		return Period{}, fmt.Errorf("%w: periods.state: %w", errInvariant, err)
	}
	for _, x := range []struct {
		src *time.Time
		dst *time.Time
	}{{closing, &p.ClosingAt}, {closed, &p.ClosedAt}, {sett, &p.SettledAt}} {
		if x.src != nil {
			*x.dst = *x.src
		}
	}
	return p, nil
}

// EnsurePeriod creates period p (OPEN, cut-off = month end + the configured
// CutOffGrace, created_at = now) and its usages partition if either is
// missing, and returns the period as stored. Idempotent and safe to call
// concurrently; an existing period is returned unchanged, whatever its state.
// Runs its own short transaction (never call it inside an ingest
// transaction: attaching a partition waits for conflicting DDL).
// Errors: ErrRetriesExhausted, database errors.
func (s *Store) EnsurePeriod(ctx context.Context, p region.Period, now time.Time) (Period, error) {
	var out Period
	// Not audited as the caller's change: a period is created on demand by
	// whatever needs it (an ingest batch, a dispute resolution), whose own
	// transaction carries the call's audit row.
	err := s.retry(auditlog.Without(ctx), "ensure period "+p.String(), func(ctx context.Context) error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO periods (setlym, state, cut_off, created_at)
				VALUES ($1, 'OPEN', $2, $3) ON CONFLICT (setlym) DO NOTHING`,
				p.Int(), s.cfg.Settlement.CutOff(p), now); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `SELECT clearing_ensure_usage_partition($1)`, p.Int()); err != nil {
				return err
			}
			var err error
			out, err = scanPeriod(tx.QueryRow(ctx, `SELECT `+periodCols+` FROM periods WHERE setlym = $1`, p.Int()))
			return err
		})
	})
	if err != nil {
		return Period{}, err
	}
	s.usageParts.Store(p.Int(), struct{}{})
	return out, nil
}

// GetPeriod returns period p. Errors: ErrNotFound.
func (s *Store) GetPeriod(ctx context.Context, p region.Period) (Period, error) {
	return GetPeriodTx(ctx, s.pool, p)
}

// GetPeriodTx is GetPeriod inside the caller's transaction (or on a pool).
func GetPeriodTx(ctx context.Context, q Querier, p region.Period) (Period, error) {
	out, err := scanPeriod(q.QueryRow(ctx, `SELECT `+periodCols+` FROM periods WHERE setlym = $1`, p.Int()))
	if err != nil {
		return Period{}, fmt.Errorf("get period %s: %w", p, translate(err))
	}
	return out, nil
}

// ListPeriods returns every period, oldest first.
func (s *Store) ListPeriods(ctx context.Context) ([]Period, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+periodCols+` FROM periods ORDER BY setlym`)
	if err != nil {
		return nil, fmt.Errorf("list periods: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Period, error) { return scanPeriod(r) })
	if err != nil {
		return nil, fmt.Errorf("list periods: %w", translate(err))
	}
	return out, nil
}

// OpenPeriodFor assigns a record that occurred at occurredAt and arrives at
// now to its clearing period (R14, R12): its own Asia/Shanghai month if that
// period is OPEN (or not created yet) and now is not after its cut-off;
// otherwise the earliest later period for which the same holds, with Late
// set. The chosen period is created (EnsurePeriod) if missing. The answer is
// a snapshot: IngestBatch re-checks it under a lock in its own transaction.
// Errors: settlement.ErrNoOpenPeriod, database errors.
func (s *Store) OpenPeriodFor(ctx context.Context, occurredAt, now time.Time) (settlement.Assignment, error) {
	own := region.PeriodOf(occurredAt)
	known, err := s.loadPeriods(ctx, own)
	if err != nil {
		return settlement.Assignment{}, err
	}
	a, err := s.assign(own, now, known)
	if err != nil {
		return settlement.Assignment{}, err
	}
	if _, err := s.EnsurePeriod(ctx, a.Period, now); err != nil {
		return settlement.Assignment{}, err
	}
	return a, nil
}

// loadPeriods reads the state and cut-off of every period from `from` on.
func (s *Store) loadPeriods(ctx context.Context, from region.Period) (map[int]periodInfo, error) {
	rows, err := s.pool.Query(ctx, `SELECT setlym, state, cut_off FROM periods WHERE setlym >= $1`, from.Int())
	if err != nil {
		return nil, fmt.Errorf("load periods: %w", err)
	}
	defer rows.Close()
	out := map[int]periodInfo{}
	for rows.Next() {
		var (
			ym    int
			state string
			info  periodInfo
		)
		if err := rows.Scan(&ym, &state, &info.cutOff); err != nil {
			return nil, fmt.Errorf("load periods: %w", err)
		}
		info.state = settlement.PeriodState(state)
		out[ym] = info
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load periods: %w", err)
	}
	return out, nil
}

// assign is settlement.Config.Assign with the cut-off stored with each
// existing period (it was fixed when the period was created, so a later change
// of CutOffGrace never moves a period's cut-off); a period not created yet
// accepts records until month end + CutOffGrace. A period accepts a record
// when it is OPEN and now is not after its cut-off.
func (s *Store) assign(own region.Period, now time.Time, known map[int]periodInfo) (settlement.Assignment, error) {
	p := own
	for range settlement.AssignSearchMonthsMax + 1 {
		accepts := !now.After(s.cfg.Settlement.CutOff(p))
		if info, ok := known[p.Int()]; ok {
			accepts = info.state.AcceptsRecords() && !now.After(info.cutOff)
		}
		if accepts {
			return settlement.Assignment{Period: p, Late: p != own}, nil
		}
		p = p.Next()
	}
	return settlement.Assignment{}, fmt.Errorf("%w: own month %s, arrived %s", settlement.ErrNoOpenPeriod,
		own, now.In(region.Shanghai).Format(time.RFC3339))
}

// ensureUsagePartition makes sure the period row and usages partition of p
// exist, using the cache first.
func (s *Store) ensureUsagePartition(ctx context.Context, p region.Period, now time.Time) error {
	if _, ok := s.usageParts.Load(p.Int()); ok {
		return nil
	}
	_, err := s.EnsurePeriod(ctx, p, now)
	return err
}
