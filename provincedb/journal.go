package provincedb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/ledger"
	"gongji/money"
	"gongji/sharing"
)

// book writes one balanced entry and updates the cached balances of its
// accounts, locking those rows in name order. It validates the entry first
// (a violation is a bug: nothing is written) and re-checks that no personal
// or quota balance went negative. Needs a transaction. One round trip.
func book(ctx context.Context, q Querier, kind, ref string, at time.Time, ps ledger.Postings) (int64, error) {
	b := &pgx.Batch{}
	id, err := queueBook(b, kind, ref, at, ps)
	if err != nil {
		return 0, err
	}
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return 0, err
	}
	return *id, nil
}

// queueBook queues book's statements on b, to be sent with what else the
// transaction writes in one round trip (the cached balance rows stay locked
// for one round trip and the commit, not one per statement — these rows are
// a province's hottest). The entry's id is in *id once the batch is closed
// without error; statements queued after it can name it as entryIDSQL.
func queueBook(b *pgx.Batch, kind, ref string, at time.Time, ps ledger.Postings) (*int64, error) {
	e := ledger.Entry{Kind: kind, Ref: ref, At: at, Postings: ps}
	if i, err := e.Validate(); err != nil {
		return nil, fmt.Errorf("provincedb: refusing unbalanced %s entry %s (posting %d): %w", kind, ref, i, err)
	}
	net := ps.Net()
	names := make([]string, len(net))
	deltas := make([]string, len(net))
	for i, p := range net {
		names[i], deltas[i] = p.Account, p.Amount.String()
	}
	// Lock the balance rows first, in name order, before anything else touches
	// them: the postings' foreign-key checks take KEY SHARE locks on the same
	// rows, and a FOR UPDATE taken after them by two transactions deadlocks.
	// NO KEY UPDATE is the lock the balance UPDATE needs, and it does not
	// conflict with other transactions' foreign-key checks.
	b.Queue(`SELECT 1 FROM accounts WHERE name = ANY($1::text[]) ORDER BY name FOR NO KEY UPDATE`, names)
	accts := make([]string, len(ps))
	amts := make([]string, len(ps))
	for i, p := range ps {
		accts[i], amts[i] = p.Account, p.Amount.String()
	}
	id := new(int64)
	b.Queue(`
		WITH e AS (INSERT INTO journal_entries (kind, ref, at) VALUES ($1, $2, $3) RETURNING id),
		p AS (
			INSERT INTO journal_postings (entry_id, idx, account, amount)
			SELECT e.id, t.i - 1, t.a, t.m::numeric
			FROM e, unnest($4::text[], $5::text[]) WITH ORDINALITY AS t(a, m, i))
		SELECT id FROM e`, kind, ref, at, accts, amts).QueryRow(func(row pgx.Row) error { return row.Scan(id) })
	b.Queue(`
		UPDATE accounts a SET balance = a.balance + d.delta::numeric
		FROM unnest($1::text[], $2::text[]) AS d(name, delta)
		WHERE a.name = d.name
		RETURNING a.name, a.balance < 0`, names, deltas).Query(func(rows pgx.Rows) error {
		updated := 0
		for rows.Next() {
			var name string
			var negative bool
			if err := rows.Scan(&name, &negative); err != nil {
				return err
			}
			updated++
			if negative && (strings.HasPrefix(name, "person:") || strings.HasPrefix(name, "quota:")) {
				return fmt.Errorf("provincedb: entry %s would make %s negative: %w", ref, name, sharing.ErrInsufficientBalance)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if updated != len(net) {
			return fmt.Errorf("provincedb: entry %s names %d accounts, %d exist", ref, len(net), updated)
		}
		return nil
	})
	return id, nil
}

// entryIDSQL names, in a statement queued after queueBook in the same batch,
// the id of the entry it inserted (the session's last value of the journal's
// sequence).
const entryIDSQL = `currval('journal_entries_id_seq')`

// balance reads an account's cached balance, locking the row when forUpdate.
func balance(ctx context.Context, q Querier, account string, forUpdate bool) (b money.Yuan, err error) {
	sql := `SELECT balance FROM accounts WHERE name = $1`
	if forUpdate {
		sql += ` FOR NO KEY UPDATE`
	}
	err = q.QueryRow(ctx, sql, account).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return b, fmt.Errorf("account %s: %w", account, sharing.ErrNotFound)
	}
	return b, err
}

// outbox writes one outbox row (same transaction as the change it reports).
func outbox(ctx context.Context, q Querier, kind sharing.OutboxKind, role sharing.Role, cross bool, key string, payload any, now time.Time) error {
	b := &pgx.Batch{}
	if err := queueOutbox(b, kind, role, cross, key, payload, now); err != nil {
		return err
	}
	return q.SendBatch(ctx, b).Close()
}

// queueOutbox queues outbox's row on b.
func queueOutbox(b *pgx.Batch, kind sharing.OutboxKind, role sharing.Role, cross bool, key string, payload any, now time.Time) error {
	j, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("provincedb: encode outbox %s %s: %w", kind, key, err)
	}
	b.Queue(`
		INSERT INTO outbox (kind, role, cross_province, record_key, payload, created_at)
		VALUES ($1, $2, $3, $4, $5::jsonb, $6)`, string(kind), string(role), cross, key, string(j), now)
	return nil
}

// relay queues a durable message for another province, once per
// (kind, target, key): re-queuing the same snapshot version or command is a no-op.
func relay(ctx context.Context, q Querier, kind sharing.RelayKind, target, key string, payload any, now time.Time) error {
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("provincedb: encode relay %s %s: %w", kind, key, err)
	}
	_, err = q.Exec(ctx, `
		INSERT INTO relay_queue (kind, target_province, message_key, payload, next_attempt_at, created_at)
		VALUES ($1, $2, $3, $4::jsonb, $5, $5)
		ON CONFLICT (kind, target_province, message_key) DO NOTHING`, string(kind), target, key, string(b), now)
	return err
}

// lookupCommand returns the stored answer of (origin, key) decoded into out.
// ErrKeyReused when the stored request hash differs.
func lookupCommand(ctx context.Context, q Querier, origin, key string, hash []byte, out any) (bool, error) {
	var stored []byte
	var result []byte
	err := q.QueryRow(ctx, `SELECT request_hash, result FROM commands WHERE origin_province = $1 AND command_key = $2`,
		origin, key).Scan(&stored, &result)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !bytes.Equal(stored, hash) {
		return false, fmt.Errorf("command %s from %s: %w", key, origin, sharing.ErrKeyReused)
	}
	if err := json.Unmarshal(result, out); err != nil {
		return false, fmt.Errorf("provincedb: decode stored answer of %s: %w", key, err)
	}
	return true, nil
}

// saveCommand stores the answer of (origin, key). A concurrent transaction
// that stored it first makes this one retry, and the retry replays its answer.
func saveCommand(ctx context.Context, q Querier, origin, key, kind string, hash []byte, result any, now time.Time) error {
	b, err := json.Marshal(result)
	if err != nil {
		return fmt.Errorf("provincedb: encode answer of %s: %w", key, err)
	}
	tag, err := q.Exec(ctx, `
		INSERT INTO commands (origin_province, command_key, kind, request_hash, result, created_at)
		VALUES ($1, $2, $3, $4, $5::jsonb, $6)
		ON CONFLICT (origin_province, command_key) DO NOTHING`, origin, key, kind, hash, string(b), now)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return errRetry
	}
	return nil
}
