// Package clearingdb is the pgx adapter of the national clearing service's
// database, part 1: report ingest (the hot path of the ReportUsage stream),
// the switch log and clearing periods.
//
// Every public method owns its transaction (begin, defer rollback, commit)
// unless it takes a Querier, in which case it runs inside the caller's.
// PostgreSQL errors are translated here: a frozen period (trigger, SQLSTATE
// GJ002) becomes ErrPeriodClosed, an illegal period move (GJ003)
// settlement.ErrBadTransition, pgx.ErrNoRows ErrNotFound; serialization
// failures, deadlocks, a period that stopped accepting records meanwhile
// (GJ001) and a concurrent delivery of the same outbox sequence are retried
// a bounded number of times with jittered exponential backoff.
//
// The schema (migrations/clearing/00002–00006) and how it maps to a
// distributed PostgreSQL engine are described in docs/partitioning.md.
package clearingdb

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"gongji/internal/auditlog"
	"gongji/settlement"
)

// Sentinel errors. Callers test with errors.Is; clearingapi maps them to gRPC
// codes (ErrNotFound → NotFound, ErrBatchTooLarge/ErrBadProvince/ErrBadSeq/
// ErrBadRecord → InvalidArgument, ErrPeriodClosed/ErrPeriodNotClosing →
// FailedPrecondition, ErrRetriesExhausted → Unavailable).
var (
	ErrNotFound = errors.New("clearingdb: not found")
	// ErrPeriodClosed also matches settlement.ErrPeriodClosed.
	ErrPeriodClosed = fmt.Errorf("clearingdb: %w", settlement.ErrPeriodClosed)
	// ErrPeriodNotClosing: OneSidedAtClose needs the period to be CLOSING.
	ErrPeriodNotClosing = errors.New("clearingdb: period is not CLOSING")
	// ErrBatchTooLarge: a batch has more than Config.BatchRowsMax records.
	ErrBatchTooLarge = errors.New("clearingdb: report batch too large")
	// ErrBadProvince: the caller's province code is not a provincial unit.
	ErrBadProvince = errors.New("clearingdb: caller is not a provincial unit")
	// ErrBadSeq: a record's outbox sequence number is not positive, so it
	// cannot be acknowledged; the whole batch is refused.
	ErrBadSeq = errors.New("clearingdb: outbox sequence number must be > 0")
	// ErrBadRecord: an argument of a non-ingest call (a switch log entry) is invalid.
	ErrBadRecord = errors.New("clearingdb: invalid record")
	// ErrRetriesExhausted: the transaction still conflicted after
	// Config.RetryMax attempts; the caller may try again later.
	ErrRetriesExhausted = errors.New("clearingdb: transaction retries exhausted")
	// errInvariant: a post-condition of a statement did not hold. A bug:
	// nothing is committed.
	errInvariant = errors.New("clearingdb: invariant violated")
)

// SQLSTATEs raised by the clearing schema's own functions and triggers.
const (
	sqlstatePeriodMoved  = "GJ001" // clearing_lock_open_periods: a target period stopped accepting records
	sqlstatePeriodFrozen = "GJ002" // usages or a period row of a CLOSED/SETTLED period
	sqlstateBadMove      = "GJ003" // illegal period transition, insert or delete
)

// Limits and defaults of Config.
const (
	DefaultBatchRowsMax  = 10_000
	BatchRowsMaxLimit    = 100_000
	DefaultFutureSkewMax = 10 * time.Minute
	FutureSkewMaxLimit   = 24 * time.Hour
	DefaultRetryMax      = 6
	RetryMaxLimit        = 20
	DefaultRetryBackoff  = 10 * time.Millisecond
	RetryBackoffMax      = time.Second
)

// Config of the clearing database adapter. Build it in cmd/, then
// WithDefaults and Validate (New does both).
type Config struct {
	// Settlement is the clearing timetable. Ingest uses CutOffGrace (default
	// 5 days after month end) as the cut-off of every period it creates.
	Settlement settlement.Config
	// BatchRowsMax bounds the records of one IngestBatch call. Default
	// 10 000, range [1, 100 000]. The node's streamer sends smaller batches.
	BatchRowsMax int
	// FutureSkewMax: a record whose occurred_at is more than this after the
	// ingest's now is rejected (a node clock far ahead would otherwise open
	// future periods). Default 10 minutes, range (0, 24 h].
	FutureSkewMax time.Duration
	// RetryMax is the number of attempts of one transaction on a
	// serialization failure, deadlock, concurrent delivery of the same
	// sequence or a period that stopped accepting records meanwhile.
	// Default 6, range [1, 20].
	RetryMax int
	// RetryBackoff is the wait before the second attempt; it doubles each
	// attempt up to 1 s, with full jitter. Default 10 ms, range (0, 1 s].
	RetryBackoff time.Duration
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Settlement = c.Settlement.WithDefaults()
	if c.BatchRowsMax == 0 {
		c.BatchRowsMax = DefaultBatchRowsMax
	}
	if c.FutureSkewMax == 0 {
		c.FutureSkewMax = DefaultFutureSkewMax
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	return c
}

// Validate reports the first field outside its range (errors wrap
// settlement.ErrBadConfig).
func (c Config) Validate() error {
	if err := c.Settlement.Validate(); err != nil {
		return err
	}
	switch {
	case c.BatchRowsMax < 1 || c.BatchRowsMax > BatchRowsMaxLimit:
		return fmt.Errorf("%w: BatchRowsMax %d not in [1, %d]", settlement.ErrBadConfig, c.BatchRowsMax, BatchRowsMaxLimit)
	case c.FutureSkewMax <= 0 || c.FutureSkewMax > FutureSkewMaxLimit:
		return fmt.Errorf("%w: FutureSkewMax %s not in (0, %s]", settlement.ErrBadConfig, c.FutureSkewMax, FutureSkewMaxLimit)
	case c.RetryMax < 1 || c.RetryMax > RetryMaxLimit:
		return fmt.Errorf("%w: RetryMax %d not in [1, %d]", settlement.ErrBadConfig, c.RetryMax, RetryMaxLimit)
	case c.RetryBackoff <= 0 || c.RetryBackoff > RetryBackoffMax:
		return fmt.Errorf("%w: RetryBackoff %s not in (0, %s]", settlement.ErrBadConfig, c.RetryBackoff, RetryBackoffMax)
	}
	return nil
}

// Querier is what both a *pgxpool.Pool and a pgx.Tx offer; helpers that run
// inside a caller's transaction take one.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	_ Querier = (*pgxpool.Pool)(nil)
	_ Querier = pgx.Tx(nil)
)

// Store is the clearing database adapter. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	cfg  Config

	// Partitions known to exist (setlym int → struct{}); partitions are never
	// dropped, so a cached entry stays true and saves the hot path a
	// round trip.
	usageParts  sync.Map
	switchParts sync.Map
}

// New returns a Store on pool (migrated to migrations.Clearing). Errors: the
// config's Validate error.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Store{pool: pool, cfg: cfg}, nil
}

// Config returns the effective configuration (defaults applied).
func (s *Store) Config() Config { return s.cfg }

// Pool returns the pool the Store uses, for callers composing transactions
// with the Querier helpers.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "40001", "40P01", sqlstatePeriodMoved:
		return true
	case "23505":
		// Two deliveries of the same (province, seq) raced: the loser sees it as
		// a duplicate on the next attempt.
		return pe.ConstraintName == "report_receipts_pkey"
	}
	return false
}

// translate maps database errors to the package's sentinels at the edge.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	switch pgCode(err) {
	case sqlstatePeriodFrozen:
		return fmt.Errorf("%w: %w", ErrPeriodClosed, err)
	case sqlstateBadMove:
		return fmt.Errorf("%w: %w", settlement.ErrBadTransition, err)
	}
	return err
}

// retry runs fn up to RetryMax times while it fails with a retryable error,
// sleeping a jittered, doubling backoff between attempts (not after the last).
// It stops early when ctx ends. Errors: fn's last error, translated; when
// every attempt conflicted, ErrRetriesExhausted wrapping it.
func (s *Store) retry(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	backoff := s.cfg.RetryBackoff
	var err error
	for attempt := 1; attempt <= s.cfg.RetryMax; attempt++ {
		err = fn(ctx)
		if err == nil {
			return nil
		}
		if !retryable(err) {
			return fmt.Errorf("%s: %w", op, translate(err))
		}
		if attempt == s.cfg.RetryMax {
			break
		}
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %w)", op, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, RetryBackoffMax)
	}
	return fmt.Errorf("%s: %w after %d attempts: %w", op, ErrRetriesExhausted, s.cfg.RetryMax, translate(err))
}

// inTx runs fn in one transaction (begin, deferred rollback, commit). When
// ctx carries an audited call (internal/auditlog) whose row is not committed
// yet, the row is inserted after fn's work and before COMMIT, so it commits
// or rolls back with the change. Transactions that are not the change a call
// makes (a period created on demand, the CLOSING marker of a close) run
// under auditlog.Without.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) (err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	audit := auditlog.Begin(ctx)
	defer func() {
		audit.End(err)
		_ = tx.Rollback(context.WithoutCancel(ctx))
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if err := audit.Insert(ctx, tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
