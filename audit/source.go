package audit

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/shopspring/decimal"

	"gongji/money"
	"gongji/region"
)

// Meta describes the closed period a bundle is for.
type Meta struct {
	Period region.Period
	// ClosedAt is the period's close time; it becomes manifest generated_at, so
	// that the bundle does not depend on when it was exported. Must not be
	// before the end of the period.
	ClosedAt time.Time
	// JournalHead is the hash at the end of the clearing journal's hash chain at
	// close: 64 lowercase hex characters.
	JournalHead string
	// Totals are the source's own control totals (for a database: count(*) and
	// sum(amount) of the period's cleared usages). WriteBundle refuses the
	// bundle when the streamed rows add up to anything else.
	Totals Totals
	// WarningThreshold is the prepayment warning threshold the settlement
	// used (config.PrepayWarningThreshold, 0.70 by default): warning is true
	// when deposit_before > 0 and drawn ≥ threshold × deposit_before. It is
	// not written to the bundle; it is needed to check prepay.csv. Must be in
	// (0, 1].
	WarningThreshold decimal.Decimal
}

// Totals are the manifest totals: usages is the number of rows of usages.csv,
// gross the sum of their amounts (equal to the sum of gross.csv).
type Totals struct {
	Gross  money.Yuan
	Usages int64
}

func (m *Meta) validate() error {
	if m.Period.Int() == 0 {
		return fmt.Errorf("%w: period not set", ErrBadMeta)
	}
	if _, err := region.ParsePeriod(m.Period.String()); err != nil {
		return fmt.Errorf("%w: %v", ErrBadMeta, err)
	}
	if m.ClosedAt.Before(m.Period.End()) {
		return fmt.Errorf("%w: closed at %s, before the end of period %s", ErrBadMeta, fmtTime(m.ClosedAt), m.Period)
	}
	if len(m.JournalHead) != 64 || !isLowerHex(m.JournalHead) {
		return fmt.Errorf("%w: journal head must be 64 lowercase hex characters", ErrBadMeta)
	}
	if m.Totals.Usages < 0 || !m.Totals.Gross.InRange() {
		return fmt.Errorf("%w: totals out of range", ErrBadMeta)
	}
	if !m.WarningThreshold.IsPositive() || m.WarningThreshold.GreaterThan(decimal.NewFromInt(1)) {
		return fmt.Errorf("%w: warning threshold must be in (0, 1], got %s", ErrBadMeta, m.WarningThreshold)
	}
	return nil
}

// Source supplies one closed period's figures. The clearing database adapter
// implements it; MemSource is the in-memory implementation.
//
// Each row method calls fn once per row, in strictly ascending key order (see
// the package documentation), and returns the first error fn returns (wrapped
// or not) without calling fn again. The rows of one call must come from one
// consistent snapshot of the closed period; a closed period is immutable, so
// separate read-only transactions are enough.
type Source interface {
	Meta(ctx context.Context) (Meta, error)
	Usages(ctx context.Context, fn func(UsageRow) error) error
	Gross(ctx context.Context, fn func(GrossRow) error) error
	Positions(ctx context.Context, fn func(PositionRow) error) error
	Allocation(ctx context.Context, fn func(AllocationRow) error) error
	Instructions(ctx context.Context, fn func(InstructionRow) error) error
	Prepay(ctx context.Context, fn func(PrepayRow) error) error
}

// RawSource is implemented by a Source that can also hand over a file's body
// rows already formatted as CSV — typically PostgreSQL's
// COPY (SELECT …) TO STDOUT WITH (FORMAT csv) piped through an io.Pipe.
// RawCSV returns ErrNoRaw (wrapped or not) for a file it does not provide; the
// writer then uses the typed method. The body must follow the canonical form of
// the package documentation; WriteBundle checks every line.
type RawSource interface {
	RawCSV(ctx context.Context, file string) (io.ReadCloser, error)
}

// MemSource is a Source over slices held in memory, for tests and small
// periods. The slices are streamed as they are: call Sort first if they are
// not already in key order.
type MemSource struct {
	Info            Meta
	UsageRows       []UsageRow
	GrossRows       []GrossRow
	PositionRows    []PositionRow
	AllocationRows  []AllocationRow
	InstructionRows []InstructionRow
	PrepayRows      []PrepayRow
}

var _ Source = (*MemSource)(nil)

// Sort puts every slice in its file's key order.
func (m *MemSource) Sort() {
	slices.SortStableFunc(m.UsageRows, func(a, b UsageRow) int { return usageCodec.cmp(&a, &b) })
	slices.SortStableFunc(m.GrossRows, func(a, b GrossRow) int { return grossCodec.cmp(&a, &b) })
	slices.SortStableFunc(m.PositionRows, func(a, b PositionRow) int { return positionCodec.cmp(&a, &b) })
	slices.SortStableFunc(m.AllocationRows, func(a, b AllocationRow) int { return allocationCodec.cmp(&a, &b) })
	slices.SortStableFunc(m.InstructionRows, func(a, b InstructionRow) int { return instructionCodec.cmp(&a, &b) })
	slices.SortStableFunc(m.PrepayRows, func(a, b PrepayRow) int {
		return cmp.Compare(a.ProvinceCode, b.ProvinceCode)
	})
}

// Meta returns Info. The row methods stream the slices in their order.
func (m *MemSource) Meta(context.Context) (Meta, error) { return m.Info, nil }

func (m *MemSource) Usages(ctx context.Context, fn func(UsageRow) error) error {
	return each(ctx, m.UsageRows, fn)
}
func (m *MemSource) Gross(ctx context.Context, fn func(GrossRow) error) error {
	return each(ctx, m.GrossRows, fn)
}
func (m *MemSource) Positions(ctx context.Context, fn func(PositionRow) error) error {
	return each(ctx, m.PositionRows, fn)
}
func (m *MemSource) Allocation(ctx context.Context, fn func(AllocationRow) error) error {
	return each(ctx, m.AllocationRows, fn)
}
func (m *MemSource) Instructions(ctx context.Context, fn func(InstructionRow) error) error {
	return each(ctx, m.InstructionRows, fn)
}
func (m *MemSource) Prepay(ctx context.Context, fn func(PrepayRow) error) error {
	return each(ctx, m.PrepayRows, fn)
}

func each[R any](ctx context.Context, rows []R, fn func(R) error) error {
	for i, r := range rows {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}
