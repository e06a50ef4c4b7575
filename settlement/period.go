package settlement

import (
	"errors"
	"fmt"
	"time"

	"gongji/region"
)

// Sentinel errors of the period lifecycle and of period assignment. Callers
// test with errors.Is; the clearing API maps ErrPeriodClosed, ErrBadTransition,
// ErrBeforeCutOff and ErrEarlierPeriodOpen to FailedPrecondition and
// ErrBadState and ErrBadConfig to InvalidArgument.
var (
	// ErrBadState: a period state that is not OPEN, CLOSING, CLOSED or SETTLED.
	ErrBadState = errors.New("settlement: unknown period state")
	// ErrBadTransition: the lifecycle does not allow this move.
	ErrBadTransition = errors.New("settlement: illegal period transition")
	// ErrPeriodClosed: the period is CLOSED or SETTLED and therefore
	// immutable; also returned when something tries to write into a period that
	// no longer accepts records.
	ErrPeriodClosed = errors.New("settlement: period is closed")
	// ErrBeforeCutOff: a period may not close before its cut-off, because
	// records may still arrive for it in time.
	ErrBeforeCutOff = errors.New("settlement: period cut-off has not passed")
	// ErrEarlierPeriodOpen: periods close in calendar order, so that a late
	// record always has a later open period to go to.
	ErrEarlierPeriodOpen = errors.New("settlement: an earlier period is still open")
	// ErrNoOpenPeriod: no period accepting records was found within
	// AssignSearchMonthsMax months after the record's own month.
	ErrNoOpenPeriod = errors.New("settlement: no open period to assign the record to")
	// ErrBadConfig: a Config field is out of its documented range.
	ErrBadConfig = errors.New("settlement: invalid config")
)

// PeriodState is the lifecycle state of one clearing period (R14).
//
//	OPEN ──close starts──▶ CLOSING ──figures frozen──▶ CLOSED ──money moved──▶ SETTLED
//	  ▲                        │
//	  └────── close aborted ───┘
//
// OPEN accepts records. CLOSING accepts none: the clearing service is
// computing the matrix; if the computation fails its checks the close is
// aborted back to OPEN (nothing was frozen yet). CLOSED: gross matrix,
// positions, allocation, instructions and statements are written and immutable.
// SETTLED: prepayment draws and payments of the period were executed; final.
type PeriodState string

const (
	PeriodOpen    PeriodState = "OPEN"
	PeriodClosing PeriodState = "CLOSING"
	PeriodClosed  PeriodState = "CLOSED"
	PeriodSettled PeriodState = "SETTLED"
)

// PeriodStates lists every state in lifecycle order.
var PeriodStates = []PeriodState{PeriodOpen, PeriodClosing, PeriodClosed, PeriodSettled}

// ParsePeriodState reads a state name. Errors wrap ErrBadState.
func ParsePeriodState(s string) (PeriodState, error) {
	st := PeriodState(s)
	if !st.Valid() {
		return "", fmt.Errorf("%w: %q", ErrBadState, s)
	}
	return st, nil
}

// Valid reports whether s is one of the four states.
func (s PeriodState) Valid() bool {
	switch s {
	case PeriodOpen, PeriodClosing, PeriodClosed, PeriodSettled:
		return true
	}
	return false
}

// AcceptsRecords reports whether usages, reversals and adjustments may still be
// assigned to a period in this state: only OPEN.
func (s PeriodState) AcceptsRecords() bool { return s == PeriodOpen }

// Frozen reports whether the period's figures are immutable (CLOSED or SETTLED).
func (s PeriodState) Frozen() bool { return s == PeriodClosed || s == PeriodSettled }

// Transition checks the move from → to. It returns nil for the four legal
// moves (OPEN→CLOSING, CLOSING→CLOSED, CLOSING→OPEN, CLOSED→SETTLED).
// Errors: ErrBadState for an unknown state; for any other move ErrBadTransition,
// and when from is CLOSED or SETTLED the error also matches ErrPeriodClosed
// (a closed period is never reopened or edited). A move to the same state is
// illegal too: the caller decides whether a repeated request is a no-op.
func Transition(from, to PeriodState) error {
	if !from.Valid() {
		return fmt.Errorf("%w: %q", ErrBadState, from)
	}
	if !to.Valid() {
		return fmt.Errorf("%w: %q", ErrBadState, to)
	}
	switch {
	case from == PeriodOpen && to == PeriodClosing,
		from == PeriodClosing && to == PeriodClosed,
		from == PeriodClosing && to == PeriodOpen,
		from == PeriodClosed && to == PeriodSettled:
		return nil
	}
	if from.Frozen() {
		return fmt.Errorf("%w: %w: %s → %s", ErrBadTransition, ErrPeriodClosed, from, to)
	}
	return fmt.Errorf("%w: %s → %s", ErrBadTransition, from, to)
}

// Defaults of Config (DESIGN §8; docs/architecture.md "Defaults" is the table
// that explains them).
const (
	// DefaultCutOffGrace: records arriving up to 5 days after month end still
	// belong to the month, as the cross-province medical settlement timetable
	// issues its data early in the next month.
	DefaultCutOffGrace = 5 * 24 * time.Hour
	// DefaultConfirmationWindow: a province has 10 days after a statement is
	// issued to confirm or dispute it; silence then counts as confirmation.
	DefaultConfirmationWindow = 10 * 24 * time.Hour

	// CutOffGraceMax keeps the cut-off inside the following month (the
	// shortest month has 28 days), so a record is never late for two
	// consecutive months at once by configuration alone.
	CutOffGraceMax = 27 * 24 * time.Hour
	// ConfirmationWindowMax bounds how long a statement may stay unanswered.
	ConfirmationWindowMax = 90 * 24 * time.Hour
	// AssignSearchMonthsMax bounds the search for an open period after a
	// record's own month (ten years).
	AssignSearchMonthsMax = 120
)

// Config holds the settlement timetable. Build it in cmd/, call WithDefaults
// then Validate at startup.
type Config struct {
	// CutOffGrace is the time after month end (Asia/Shanghai) during which
	// records still count for that month; later ones go to the next open
	// period and are marked late. Default 5 days. Range (0, 27 days].
	CutOffGrace time.Duration
	// ConfirmationWindow is the time after a statement is issued within which
	// a province confirms or disputes it; afterwards it is deemed confirmed.
	// Default 10 days. Range (0, 90 days].
	ConfirmationWindow time.Duration
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.CutOffGrace == 0 {
		c.CutOffGrace = DefaultCutOffGrace
	}
	if c.ConfirmationWindow == 0 {
		c.ConfirmationWindow = DefaultConfirmationWindow
	}
	return c
}

// Validate reports the first field outside its range. Errors wrap ErrBadConfig.
func (c Config) Validate() error {
	if c.CutOffGrace <= 0 || c.CutOffGrace > CutOffGraceMax {
		return fmt.Errorf("%w: CutOffGrace %s not in (0, %s]", ErrBadConfig, c.CutOffGrace, CutOffGraceMax)
	}
	if c.ConfirmationWindow <= 0 || c.ConfirmationWindow > ConfirmationWindowMax {
		return fmt.Errorf("%w: ConfirmationWindow %s not in (0, %s]", ErrBadConfig, c.ConfirmationWindow, ConfirmationWindowMax)
	}
	return nil
}

// CutOff is the instant after which a record of period p counts as late.
func (c Config) CutOff(p region.Period) time.Time { return p.CutOff(c.CutOffGrace) }

// CheckClose tells whether period p, now in state, may start closing at now.
// earlierPeriodOpen must be true when any period before p is still OPEN or
// CLOSING. Errors: those of Transition(state, CLOSING); ErrBeforeCutOff when
// now is not after p's cut-off; ErrEarlierPeriodOpen.
//
// Closing only after the cut-off keeps the two definitions of "late" equal: a
// record is placed outside its own month exactly when it arrived after that
// month's cut-off (DESIGN §11 `late`).
func (c Config) CheckClose(p region.Period, state PeriodState, now time.Time, earlierPeriodOpen bool) error {
	if err := Transition(state, PeriodClosing); err != nil {
		return fmt.Errorf("close %s: %w", p, err)
	}
	if !now.After(c.CutOff(p)) {
		return fmt.Errorf("%w: %s cut-off is %s", ErrBeforeCutOff, p, c.CutOff(p).In(region.Shanghai).Format(time.RFC3339))
	}
	if earlierPeriodOpen {
		return fmt.Errorf("close %s: %w", p, ErrEarlierPeriodOpen)
	}
	return nil
}

// ClosedPeriods tells which periods no longer accept records (state CLOSING,
// CLOSED or SETTLED). A period it does not know is open.
type ClosedPeriods interface {
	Closed(p region.Period) bool
}

// StateMap is a ClosedPeriods built from known period states; a period absent
// from the map has not been created yet and is open.
type StateMap map[region.Period]PeriodState

// Closed implements ClosedPeriods.
func (m StateMap) Closed(p region.Period) bool {
	st, ok := m[p]
	return ok && !st.AcceptsRecords()
}

// Assignment is the period a record is cleared in.
type Assignment struct {
	Period region.Period
	// Late is true when the record is cleared in a period after its own
	// month because it arrived after the cut-off or its month was closed.
	Late bool
}

// Assign places a usage or a reversal in its clearing period (R14, R12).
//
// The record's own month is the Asia/Shanghai month of occurredAt. For a
// reversal occurredAt is the time the reversal happened, never the time of the
// usage it reverses: a reversal is cleared in the period in which it happens,
// even when its usage's period is long closed. The record stays in its own
// month unless that month no longer accepts records or arrivedAt is after the
// month's cut-off; then it goes to the earliest later period that both accepts
// records and whose own cut-off arrivedAt has not passed, and Late is true.
// (A period whose cut-off has passed but that is not closed yet is skipped:
// a record arriving now would be late for it as well.)
//
// Adjustments are not placed here: BuildAdjustment puts them in the open
// period chosen when the dispute is resolved.
//
// Errors: ErrNoOpenPeriod when no candidate is found within
// AssignSearchMonthsMax months.
func (c Config) Assign(occurredAt, arrivedAt time.Time, closed ClosedPeriods) (Assignment, error) {
	own := region.PeriodOf(occurredAt)
	if !closed.Closed(own) && !arrivedAt.After(c.CutOff(own)) {
		return Assignment{Period: own}, nil
	}
	p := own
	for range AssignSearchMonthsMax {
		p = p.Next()
		if !closed.Closed(p) && !arrivedAt.After(c.CutOff(p)) {
			return Assignment{Period: p, Late: true}, nil
		}
	}
	return Assignment{}, fmt.Errorf("%w: occurred %s, arrived %s", ErrNoOpenPeriod,
		occurredAt.In(region.Shanghai).Format(time.RFC3339), arrivedAt.In(region.Shanghai).Format(time.RFC3339))
}
