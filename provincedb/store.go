// Package provincedb is the PostgreSQL adapter of a province node: it
// implements sharing.Store (people, personal accounts, relationships, quotas,
// usages, reversals, the double-entry journal), the outbox reader
// (sharing.OutboxReader) and the relay queue (sharing.RelayQueue) on the
// schema of migrations/province.
//
// Every public method owns its transaction (begin, defer rollback, commit);
// lower-case helpers take a Querier so that they compose inside it. Rules are
// decided by the sharing package's pure functions, under row locks taken in
// one global order — person row, relationship rows (by id), usage row,
// account rows (by name) — so that concurrent operations serialise where they
// touch the same money and deadlocks stay rare. Serialization failures and
// deadlocks (40001, 40P01) are retried a bounded number of times with
// exponential backoff and full jitter.
//
// Hot rows, sized on paper: every cross-province debit updates the cached
// balance of due:clearing and every credit that of ext:funding. A row lock
// held to commit (~1–2 ms) allows several hundred such transactions a second
// per node, while the largest province's share of 50 million cross-province
// usages a month (DESIGN §6) averages a few per second. If that ever changes,
// split the ext:/due: rows into shards; the conservation check sums them.
//
// The province journal is not hash-chained: a chain head would serialise every
// transaction of the node. The clearing journal, which is written by one
// writer at period close, carries the chain (ledger.Hash).
package provincedb

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"gongji/internal/auditlog"
	"gongji/money"
	"gongji/sharing"
)

// Options tune a Store. The zero value gets the defaults.
type Options struct {
	// RetryAttemptsMax bounds the attempts of one transaction on 40001/40P01
	// and idempotency-key races. Default 8.
	RetryAttemptsMax int
	// RetryBackoffBase is the first backoff; it doubles per attempt, with full
	// jitter. Default 5 ms.
	RetryBackoffBase time.Duration
	// RetryBackoffMax caps one backoff. Default 250 ms.
	RetryBackoffMax time.Duration
	// RelayLease is how long DueRelay hides a leased message before it comes
	// due again if the worker neither acknowledges nor reschedules it.
	// Default 30 s.
	RelayLease time.Duration
	// OutboxBatchRowsMax caps PendingOutbox and AckOutbox. Default 1000.
	OutboxBatchRowsMax int
}

// WithDefaults fills unset fields.
func (o Options) WithDefaults() Options {
	if o.RetryAttemptsMax == 0 {
		o.RetryAttemptsMax = 8
	}
	if o.RetryBackoffBase == 0 {
		o.RetryBackoffBase = 5 * time.Millisecond
	}
	if o.RetryBackoffMax == 0 {
		o.RetryBackoffMax = 250 * time.Millisecond
	}
	if o.RelayLease == 0 {
		o.RelayLease = 30 * time.Second
	}
	if o.OutboxBatchRowsMax == 0 {
		o.OutboxBatchRowsMax = 1000
	}
	return o
}

// Validate reports unusable options.
func (o Options) Validate() error {
	if o.RetryAttemptsMax < 1 || o.RetryAttemptsMax > 100 || o.RetryBackoffBase <= 0 ||
		o.RetryBackoffMax < o.RetryBackoffBase || o.RelayLease <= 0 || o.OutboxBatchRowsMax < 1 {
		return errors.New("provincedb: options: retry attempts 1..100, positive backoffs (max ≥ base), positive lease and batch")
	}
	return nil
}

// Store is a province node's database.
type Store struct {
	pool *pgxpool.Pool
	opts Options

	retries  atomic.Int64 // transactions re-run after 40001/40P01 or a key race
	conflict atomic.Int64 // of which serialization failures and deadlocks

	// beforeCommit, when set (tests only), runs after a transaction's work and
	// before its commit; op names the public method.
	beforeCommit func(ctx context.Context, op string)
}

// New returns a Store over a pool on a database migrated to the latest
// migrations/province version. opts gets WithDefaults and must Validate.
func New(pool *pgxpool.Pool, opts Options) (*Store, error) {
	if pool == nil {
		return nil, errors.New("provincedb: nil pool")
	}
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Store{pool: pool, opts: opts}, nil
}

var (
	_ sharing.Store        = (*Store)(nil)
	_ sharing.OutboxReader = (*Store)(nil)
	_ sharing.RelayQueue   = (*Store)(nil)
)

// Querier is what the helpers need: a pool, a connection or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// BindProvince records which province this database serves on first use and
// refuses a different one afterwards (node_info.province_code never changes).
// One statement; no transaction needed.
func (s *Store) BindProvince(ctx context.Context, province string) error {
	var got *string
	err := s.pool.QueryRow(ctx, `
		UPDATE node_info SET province_code = coalesce(province_code, $1)
		WHERE singleton RETURNING province_code`, province).Scan(&got)
	if err != nil {
		return fmt.Errorf("provincedb: bind province: %w", err)
	}
	if got == nil || *got != province {
		return fmt.Errorf("provincedb: database serves %v, not %s", deref(got), province)
	}
	return nil
}

func deref(p *string) string {
	if p == nil {
		return "<none>"
	}
	return *p
}

// Stats are counters for monitoring.
type Stats struct {
	Retries   int64 // transactions re-run (all causes)
	Conflicts int64 // re-runs caused by serialization failures (40001) and deadlocks (40P01)
}

// Stats returns the counters since the Store was created.
func (s *Store) Stats() Stats {
	return Stats{Retries: s.retries.Load(), Conflicts: s.conflict.Load()}
}

// errRetry makes inTx run the transaction again: a concurrent transaction won
// the race to an idempotency key, whose answer the next attempt replays.
var errRetry = errors.New("provincedb: retry")

// inTx runs fn in a READ COMMITTED transaction (row locks give the
// serialisation the rules need), retrying on serialization failure, deadlock
// and errRetry up to RetryAttemptsMax attempts, and translates the final error.
func (s *Store) inTx(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	backoff := s.opts.RetryBackoffBase
	for attempt := 1; ; attempt++ {
		err := s.tryTx(ctx, op, fn)
		if err == nil {
			return nil
		}
		if !retryable(err) || attempt >= s.opts.RetryAttemptsMax {
			return translate(op, err)
		}
		s.retries.Add(1)
		if !errors.Is(err, errRetry) {
			s.conflict.Add(1)
		}
		// Full jitter: a random wait in [0, backoff) spreads out the racers.
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("provincedb: %s: %w (after %d attempts: %v)", op, ctx.Err(), attempt, err)
		case <-t.C:
		}
		backoff = min(2*backoff, s.opts.RetryBackoffMax)
	}
}

// tryTx is one attempt of inTx. When ctx carries an audited call
// (internal/auditlog) whose row is not committed yet, the row is inserted
// after fn's work and before COMMIT, so it commits or rolls back with the
// change (auditOutcome says how the outcome of a stored refusal is found).
func (s *Store) tryTx(ctx context.Context, op string, fn func(tx pgx.Tx) error) (err error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return err
	}
	audit := auditlog.Begin(ctx)
	defer func() {
		audit.End(err)
		// Rollback after commit is a no-op. A cancelled ctx would make pgx
		// close the connection instead of rolling back; give it its own.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if err := audit.InsertOutcomeFrom(ctx, tx, auditOutcome[op]); err != nil {
		return err
	}
	if s.beforeCommit != nil {
		s.beforeCommit(ctx, op)
	}
	return tx.Commit(ctx)
}

// auditOutcome is, per operation of inTx, the SQL that finds the outcome of
// a call from what its transaction stored, folded into the audit row's
// INSERT (no extra round trip). Authorize stores a refused usage (R9: over
// quota, relationship not active, sharer unable) as a row with its refusal,
// and commits it: the audit row then says "refused: <REFUSAL>" instead of
// "ok". The call's ref is the usage key (Spend and Debit name it so). The
// ref is written cleaned (auditlog.Clean masks ID numbers), so this lookup
// relies on no usage key ever containing an ID number: sharing refuses such
// keys before any transaction (a masked ref would find nothing, and a
// refusal stored under the clear key would be audited "ok").
var auditOutcome = map[string]string{
	"authorize": `(SELECT 'refused: ' || refusal FROM usages WHERE usage_key = {ref} AND NOT approved)`,
}

// readTx runs fn in a read-only REPEATABLE READ transaction: one snapshot.
func (s *Store) readTx(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return translate(op, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	if err := fn(tx); err != nil {
		return translate(op, err)
	}
	return translate(op, tx.Commit(ctx))
}

// PostgreSQL error codes the adapter acts on.
const (
	codeSerializationFailure = "40001"
	codeDeadlock             = "40P01"
	codeUniqueViolation      = "23505"
	codeNumericOverflow      = "22003"
	codeCheckViolation       = "23514"
)

func pgCode(err error) (string, string) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, pe.ConstraintName
	}
	return "", ""
}

func retryable(err error) bool {
	if errors.Is(err, errRetry) {
		return true
	}
	code, _ := pgCode(err)
	return code == codeSerializationFailure || code == codeDeadlock
}

// translate maps driver errors to domain sentinels; domain errors pass as is.
func translate(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", op, sharing.ErrNotFound)
	}
	code, constraint := pgCode(err)
	switch {
	case code == codeUniqueViolation && constraint == "relationships_one_live_pair":
		return fmt.Errorf("%s: %w", op, sharing.ErrDuplicateRelationship)
	case code == codeNumericOverflow:
		return &sharing.FieldError{Field: "amount", Err: fmt.Errorf("%w: a balance would leave NUMERIC(18,2)", money.ErrOutOfRange)}
	case code == codeCheckViolation && constraint == "accounts_not_negative":
		// The rules check balances under lock first; this is the backstop.
		return fmt.Errorf("%s: %w (database check)", op, sharing.ErrInsufficientBalance)
	case errors.Is(err, errRetry):
		return fmt.Errorf("provincedb: %s: idempotency race not settled after retries", op)
	}
	return err
}
