package provincedb

import (
	"context"
	"fmt"
	"sort"
	"time"

	"gongji/sharing"
)

// PendingOutbox returns up to limit unacknowledged outbox rows in seq order
// (1 ≤ limit ≤ OutboxBatchRowsMax). It reads by acked_at IS NULL, not by a
// cursor: a row that committed late under a lower seq is still returned.
// One statement (partial index outbox_unacked).
func (s *Store) PendingOutbox(ctx context.Context, limit int) ([]sharing.OutboxRecord, error) {
	if limit < 1 || limit > s.opts.OutboxBatchRowsMax {
		return nil, &sharing.FieldError{Field: "limit", Err: fmt.Errorf("must be 1..%d", s.opts.OutboxBatchRowsMax)}
	}
	rows, err := s.pool.Query(ctx, `
		SELECT seq, kind, role, cross_province, record_key, payload, created_at
		FROM outbox WHERE acked_at IS NULL ORDER BY seq LIMIT $1`, limit)
	if err != nil {
		return nil, translate("pending outbox", err)
	}
	defer rows.Close()
	var out []sharing.OutboxRecord
	for rows.Next() {
		var r sharing.OutboxRecord
		var kind, role string
		if err := rows.Scan(&r.Seq, &kind, &role, &r.CrossProvince, &r.Key, &r.Payload, &r.CreatedAt); err != nil {
			return nil, translate("pending outbox", err)
		}
		r.Kind, r.Role, r.CreatedAt = sharing.OutboxKind(kind), sharing.Role(role), r.CreatedAt.UTC()
		out = append(out, r)
	}
	return out, translate("pending outbox", rows.Err())
}

// AckOutbox marks exactly these seqs acknowledged (at most
// OutboxBatchRowsMax; already acknowledged or unknown seqs are ignored, so a
// repeated acknowledgement is harmless). One statement.
func (s *Store) AckOutbox(ctx context.Context, seqs []int64) error {
	if len(seqs) > s.opts.OutboxBatchRowsMax {
		return &sharing.FieldError{Field: "seqs", Err: fmt.Errorf("at most %d", s.opts.OutboxBatchRowsMax)}
	}
	if len(seqs) == 0 {
		return nil
	}
	_, err := s.pool.Exec(ctx, `UPDATE outbox SET acked_at = now() WHERE seq = ANY($1::bigint[]) AND acked_at IS NULL`, seqs)
	return translate("ack outbox", err)
}

// DueRelay leases up to limit undelivered relay messages due at now, oldest
// first: in one statement each is taken with FOR UPDATE SKIP LOCKED (two
// workers never get the same message), its attempts incremented and its next
// attempt moved to now + RelayLease. A worker that crashes before RelayDone or
// RelayRetry therefore sees the message again after the lease (at least once).
func (s *Store) DueRelay(ctx context.Context, now time.Time, limit int) ([]sharing.RelayMessage, error) {
	if limit < 1 || limit > s.opts.OutboxBatchRowsMax {
		return nil, &sharing.FieldError{Field: "limit", Err: fmt.Errorf("must be 1..%d", s.opts.OutboxBatchRowsMax)}
	}
	rows, err := s.pool.Query(ctx, `
		UPDATE relay_queue q SET attempts = q.attempts + 1, next_attempt_at = $2
		FROM (SELECT id FROM relay_queue
		      WHERE delivered_at IS NULL AND next_attempt_at <= $1
		      ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) d
		WHERE q.id = d.id
		RETURNING q.id, q.kind, q.target_province, q.message_key, q.payload, q.attempts, q.next_attempt_at, q.created_at`,
		now, now.Add(s.opts.RelayLease), limit)
	if err != nil {
		return nil, translate("due relay", err)
	}
	defer rows.Close()
	var out []sharing.RelayMessage
	for rows.Next() {
		var m sharing.RelayMessage
		var kind string
		if err := rows.Scan(&m.ID, &kind, &m.TargetProvince, &m.Key, &m.Payload, &m.Attempts, &m.NextAttemptAt, &m.CreatedAt); err != nil {
			return nil, translate("due relay", err)
		}
		m.Kind, m.NextAttemptAt, m.CreatedAt = sharing.RelayKind(kind), m.NextAttemptAt.UTC(), m.CreatedAt.UTC()
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, translate("due relay", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// RelayDone marks a message delivered; repeating it is harmless. ErrNotFound
// for an unknown id. One statement.
func (s *Store) RelayDone(ctx context.Context, id int64) error {
	var delivered bool
	err := s.pool.QueryRow(ctx, `
		WITH u AS (UPDATE relay_queue SET delivered_at = now() WHERE id = $1 AND delivered_at IS NULL RETURNING id)
		SELECT EXISTS (SELECT 1 FROM u) OR EXISTS (SELECT 1 FROM relay_queue WHERE id = $1)`, id).Scan(&delivered)
	if err == nil && !delivered {
		err = fmt.Errorf("relay message %d: %w", id, sharing.ErrNotFound)
	}
	return translate("relay done", err)
}

// RelayRetry schedules the next attempt of an undelivered message.
// ErrNotFound for an unknown or already delivered id. One statement.
func (s *Store) RelayRetry(ctx context.Context, id int64, next time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE relay_queue SET next_attempt_at = $2 WHERE id = $1 AND delivered_at IS NULL`, id, next)
	if err == nil && tag.RowsAffected() != 1 {
		err = fmt.Errorf("undelivered relay message %d: %w", id, sharing.ErrNotFound)
	}
	return translate("relay retry", err)
}
