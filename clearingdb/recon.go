package clearingdb

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// Exception kinds of recon_exceptions.
const (
	ExcOneSided      = "ONE_SIDED"      // only one side had reported when the period closed
	ExcAmountDiffers = "AMOUNT_DIFFERS" // the two reports' amounts differ (the payer's is cleared)
	ExcFieldDiffers  = "FIELD_DIFFERS"  // another field differs (one row per field)
	ExcRejected      = "REJECTED"       // a side reported the key again with another payload
)

// Exception is one recon_exceptions row.
type Exception struct {
	Setlym        region.Period
	PayerProvince string // the authoritative (payer's) payer province
	PayeeProvince string
	UsageID       string
	Kind          string // ExcOneSided, ExcAmountDiffers, ExcFieldDiffers, ExcRejected
	// Field and the two reports' values in canonical text (amount "-12.30",
	// times RFC 3339 with +08:00) for AMOUNT_DIFFERS and FIELD_DIFFERS.
	Field      string
	PayerValue string
	PayeeValue string
	// The report that revealed it ("" and 0 for ONE_SIDED).
	ReporterProvince string
	ReporterSeq      int64
	// Provinces whose statements list it: every province either report names.
	Provinces []string
	Detail    string
	CreatedAt time.Time
}

// StoredUsage is one usages row: the usages.csv record plus the reporting state.
type StoredUsage struct {
	settlement.Record
	RelationshipID string
	PayerReported  bool
	PayeeReported  bool
	FirstAt        time.Time // arrival of the first report
	BothAt         time.Time // arrival of the second side's report (zero: one-sided)
}

// KeyState is the global dedup entry of one usage key.
type KeyState struct {
	UsageID       string
	Setlym        region.Period // where its usages row lives
	PayerProvince string        // the row's payer_province
	PayerFrom     string        // the province and seq of the accepted PAYER report ("" / 0: none yet)
	PayerSeq      int64
	PayeeFrom     string
	PayeeSeq      int64
	FirstAt       time.Time
	BothAt        time.Time
}

// RejectedRecord is one report_rejects row.
type RejectedRecord struct {
	Province   string
	Seq        int64
	UsageID    string
	Reason     string
	Record     json.RawMessage
	ReceivedAt time.Time
}

// LocalCount is one local_usage_counts row.
type LocalCount struct {
	Province  string
	Setlym    region.Period
	EntryType string
	Kind      string
	Records   int64
	Amount    money.Yuan // signed sum
}

const sqlOneSided = `INSERT INTO recon_exceptions (setlym, payer_province, usage_id, kind, field,
		reporter_province, reporter_seq, payee_province, provinces, detail, created_at)
	SELECT u.setlym, u.payer_province, u.usage_id, 'ONE_SIDED', '', '', 0, u.payee_province,
		ARRAY(SELECT DISTINCT x FROM unnest(ARRAY[u.payer_province, u.payee_province]) AS x ORDER BY x),
		CASE WHEN u.payer_reported
			THEN format('only the payer (%s) had reported %s when period %s closed', u.payer_province, u.usage_id, u.setlym)
			ELSE format('only the payee (%s) had reported %s when period %s closed', u.payee_province, u.usage_id, u.setlym)
		END,
		$2
	FROM usages u
	WHERE u.setlym = $1 AND u.entry_type <> 'ADJUSTMENT' AND NOT (u.payer_reported AND u.payee_reported)
	ORDER BY u.payer_province, u.usage_id
	ON CONFLICT DO NOTHING`

// OneSidedAtClose records a ONE_SIDED exception for every usage or reversal
// of period p still reported by only one side, and returns how many it added.
// Idempotent (a second call adds none). The period must be CLOSING: then no
// ingest can complete a row of it any more, so the list is final; the period
// row is locked FOR SHARE until the caller's transaction ends. Runs in q
// (the close's transaction). Errors: ErrNotFound, ErrPeriodNotClosing.
func OneSidedAtClose(ctx context.Context, q Querier, p region.Period, at time.Time) (int64, error) {
	var state string
	if err := q.QueryRow(ctx, `SELECT state FROM periods WHERE setlym = $1 FOR SHARE`, p.Int()).Scan(&state); err != nil {
		return 0, fmt.Errorf("one-sided at close of %s: %w", p, translate(err))
	}
	if settlement.PeriodState(state) != settlement.PeriodClosing {
		return 0, fmt.Errorf("one-sided at close of %s: %w (it is %s)", p, ErrPeriodNotClosing, state)
	}
	tag, err := q.Exec(ctx, sqlOneSided, p.Int(), at)
	if err != nil {
		return 0, fmt.Errorf("one-sided at close of %s: %w", p, translate(err))
	}
	return tag.RowsAffected(), nil
}

// OneSidedAtClose is the package function in its own transaction.
func (s *Store) OneSidedAtClose(ctx context.Context, p region.Period, at time.Time) (int64, error) {
	var n int64
	err := s.retry(ctx, "one-sided at close", func(ctx context.Context) error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			n, err = OneSidedAtClose(ctx, tx, p, at)
			return err
		})
	})
	return n, err
}

// Exceptions lists the exceptions of period p, all of them when province is
// "", else those that name province, sorted by (usage_id, kind, field,
// reporter).
func (s *Store) Exceptions(ctx context.Context, p region.Period, province string) ([]Exception, error) {
	rows, err := s.pool.Query(ctx, `SELECT setlym, payer_province, payee_province, usage_id, kind, field,
			payer_value, payee_value, reporter_province, reporter_seq, provinces, detail, created_at
		FROM recon_exceptions
		WHERE setlym = $1 AND ($2 = '' OR $2 = ANY (provinces))
		ORDER BY usage_id, kind, field, reporter_province, reporter_seq`, p.Int(), province)
	if err != nil {
		return nil, fmt.Errorf("exceptions of %s: %w", p, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Exception, error) {
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
		return nil, fmt.Errorf("exceptions of %s: %w", p, err)
	}
	return out, nil
}

const usageCols = `setlym, payer_province, usage_id, entry_type, kind, payer_region, payee_province,
	payee_region, amount::text, occurred_at, late, coalesce(reversal_of, ''), sharer_ref, beneficiary_ref,
	relationship_id, payer_reported, payee_reported, first_at, both_at`

func scanUsage(r pgx.Row) (StoredUsage, error) {
	var (
		u          StoredUsage
		ym         int
		amt        string
		entry, knd string
		both       *time.Time
	)
	if err := r.Scan(&ym, &u.PayerProvince, &u.UsageID, &entry, &knd, &u.PayerRegion, &u.PayeeProvince,
		&u.PayeeRegion, &amt, &u.OccurredAt, &u.Late, &u.ReversalOf, &u.SharerRef, &u.BeneficiaryRef,
		&u.RelationshipID, &u.PayerReported, &u.PayeeReported, &u.FirstAt, &both); err != nil {
		return u, err
	}
	var err error
	if u.Period, err = region.PeriodFromInt(ym); err != nil {
		return u, err
	}
	if u.Amount, err = money.Parse(amt); err != nil {
		return u, err
	}
	u.Type, u.Kind = settlement.EntryType(entry), settlement.Kind(knd)
	if both != nil {
		u.BothAt = *both
	}
	return u, nil
}

// ForEachUsage streams the usages rows of period p in usage_id order (the
// order of usages.csv) to fn, stopping at fn's first error, which it returns.
// Runs in q, so an export reads one snapshot inside its own transaction.
func ForEachUsage(ctx context.Context, q Querier, p region.Period, fn func(StoredUsage) error) error {
	rows, err := q.Query(ctx, `SELECT `+usageCols+` FROM usages WHERE setlym = $1 ORDER BY usage_id, payer_province`, p.Int())
	if err != nil {
		return fmt.Errorf("usages of %s: %w", p, err)
	}
	defer rows.Close()
	for rows.Next() {
		u, err := scanUsage(rows)
		if err != nil {
			return fmt.Errorf("usages of %s: %w", p, err)
		}
		if err := fn(u); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("usages of %s: %w", p, err)
	}
	return nil
}

// Usages collects the rows of period p (for modest periods and tests; use
// ForEachUsage to stream a national month).
func (s *Store) Usages(ctx context.Context, p region.Period) ([]StoredUsage, error) {
	var out []StoredUsage
	err := ForEachUsage(ctx, s.pool, p, func(u StoredUsage) error { out = append(out, u); return nil })
	return out, err
}

// GetUsage returns the stored row of a usage key, wherever it lives.
// Errors: ErrNotFound.
func (s *Store) GetUsage(ctx context.Context, usageID string) (StoredUsage, error) {
	// Reported usages are located by their key; the clearing service's own
	// ADJUSTMENT rows (accepted disputes) have no report and are located by
	// clearing_adjustments.
	u, err := scanUsage(s.pool.QueryRow(ctx, `SELECT `+usageCols+` FROM usages u
		WHERE (u.setlym, u.payer_province, u.usage_id) =
		      (SELECT k.setlym, k.row_payer_province, k.usage_id FROM usage_keys k WHERE k.usage_id = $1
		       UNION ALL
		       SELECT a.setlym, a.payer_province, a.usage_id FROM clearing_adjustments a WHERE a.usage_id = $1
		       LIMIT 1)`, usageID))
	if err != nil {
		return StoredUsage{}, fmt.Errorf("usage %s: %w", usageID, translate(err))
	}
	return u, nil
}

// GetKey returns the dedup entry of a usage key. Errors: ErrNotFound.
func (s *Store) GetKey(ctx context.Context, usageID string) (KeyState, error) {
	var (
		k      KeyState
		ym     int
		pf, ef *string
		ps, es *int64
		both   *time.Time
	)
	err := s.pool.QueryRow(ctx, `SELECT usage_id, setlym, row_payer_province, payer_from, payer_seq,
			payee_from, payee_seq, first_at, both_at FROM usage_keys WHERE usage_id = $1`, usageID).
		Scan(&k.UsageID, &ym, &k.PayerProvince, &pf, &ps, &ef, &es, &k.FirstAt, &both)
	if err != nil {
		return KeyState{}, fmt.Errorf("usage key %s: %w", usageID, translate(err))
	}
	if k.Setlym, err = region.PeriodFromInt(ym); err != nil {
		return KeyState{}, err
	}
	if pf != nil {
		k.PayerFrom, k.PayerSeq = *pf, *ps
	}
	if ef != nil {
		k.PayeeFrom, k.PayeeSeq = *ef, *es
	}
	if both != nil {
		k.BothAt = *both
	}
	return k, nil
}

// Rejects lists the records refused from province ("" for every province),
// by (province, seq).
func (s *Store) Rejects(ctx context.Context, province string) ([]RejectedRecord, error) {
	rows, err := s.pool.Query(ctx, `SELECT province, seq, usage_id, reason, record, received_at
		FROM report_rejects WHERE $1 = '' OR province = $1 ORDER BY province, seq`, province)
	if err != nil {
		return nil, fmt.Errorf("rejects: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (RejectedRecord, error) {
		var x RejectedRecord
		var raw []byte
		err := r.Scan(&x.Province, &x.Seq, &x.UsageID, &x.Reason, &raw, &x.ReceivedAt)
		x.Record = raw
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("rejects: %w", err)
	}
	return out, nil
}

// LocalCounts lists the counted same-province usages of period p.
func (s *Store) LocalCounts(ctx context.Context, p region.Period) ([]LocalCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT province, setlym, entry_type, kind, records, amount::text
		FROM local_usage_counts WHERE setlym = $1 ORDER BY province, entry_type, kind`, p.Int())
	if err != nil {
		return nil, fmt.Errorf("local counts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (LocalCount, error) {
		var (
			c   LocalCount
			ym  int
			amt string
		)
		if err := r.Scan(&c.Province, &ym, &c.EntryType, &c.Kind, &c.Records, &amt); err != nil {
			return c, err
		}
		var err error
		if c.Setlym, err = region.PeriodFromInt(ym); err != nil {
			return c, err
		}
		c.Amount, err = money.Parse(amt)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("local counts: %w", err)
	}
	return out, nil
}

// RelationshipEvents counts the relationship changes reported for period p.
func (s *Store) RelationshipEvents(ctx context.Context, p region.Period) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM relationship_events WHERE setlym = $1`, p.Int()).Scan(&n); err != nil {
		return 0, fmt.Errorf("relationship events: %w", err)
	}
	return n, nil
}
