package auditlog

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Record is one stored row of audit_records.
type Record struct {
	ID        int64
	At        time.Time
	Actor     string
	Method    string
	RequestID string
	Outcome   string
	Ref       string // "" when the row has none
}

// Lister runs a query: a pool or a transaction.
type Lister interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Filter selects rows for List; empty fields match everything.
type Filter struct {
	RequestID string
	Method    string
	AfterID   int64 // rows with a larger id only (keyset pagination)
	// Limit bounds the rows returned. Default (0) and maximum ListLimitMax.
	Limit int
}

// ListLimitMax bounds one List.
const ListLimitMax = 10_000

// List returns the rows matching f in id order (the order they committed
// in, give or take concurrent transactions). One statement.
func List(ctx context.Context, q Lister, f Filter) ([]Record, error) {
	if f.Limit <= 0 || f.Limit > ListLimitMax {
		f.Limit = ListLimitMax
	}
	rows, err := q.Query(ctx, `SELECT id, at, actor, method, request_id, outcome, coalesce(ref, '')
		FROM audit_records
		WHERE ($1 = '' OR request_id = $1) AND ($2 = '' OR method = $2) AND id > $3
		ORDER BY id LIMIT $4`, f.RequestID, f.Method, f.AfterID, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("audit records: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Record, error) {
		var rec Record
		err := r.Scan(&rec.ID, &rec.At, &rec.Actor, &rec.Method, &rec.RequestID, &rec.Outcome, &rec.Ref)
		return rec, err
	})
	if err != nil {
		return nil, fmt.Errorf("audit records: %w", err)
	}
	return out, nil
}
