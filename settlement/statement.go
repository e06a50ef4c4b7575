package settlement

import (
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
)

// Sentinel errors of statements, confirmation and disputes.
var (
	// ErrStatementMismatch: the usage tallies given to BuildStatements do not
	// add up to the Result's positions (Internal: the two came from different data).
	ErrStatementMismatch = errors.New("settlement: statement does not reconcile with the period's figures")
	// ErrAlreadyAnswered: the statement was already confirmed, disputed or
	// deemed confirmed (FailedPrecondition).
	ErrAlreadyAnswered = errors.New("settlement: statement already answered")
	// ErrWindowClosed: the confirmation window has passed; the statement is
	// deemed confirmed (FailedPrecondition).
	ErrWindowClosed = errors.New("settlement: confirmation window has passed")
	// ErrBadDispute: a disputed item is malformed or repeated (InvalidArgument).
	ErrBadDispute = errors.New("settlement: invalid disputed item")
	// ErrNothingToAdjust: the resolved amount equals the cleared amount.
	ErrNothingToAdjust = errors.New("settlement: resolved amount equals the cleared amount, no adjustment")
	// ErrAdjustmentPeriod: the adjustment's target period is not after the
	// disputed record's period (FailedPrecondition). A target that is not OPEN
	// returns ErrPeriodClosed instead.
	ErrAdjustmentPeriod = errors.New("settlement: adjustment must go to a later period")
)

// Tally counts a province's cleared entries on one side and sums their
// signed amounts.
type Tally struct {
	Entries int
	Sum     money.Yuan
}

// Tallies is one province's activity in a period: as payer the sum equals its
// payable, as payee its receivable.
type Tallies struct {
	AsPayer Tally
	AsPayee Tally
}

// CountTallies is the reference computation of each province's tallies from
// the period's rows (the SQL adapter does the same with GROUP BY).
func CountTallies(rows []Row) map[string]Tallies {
	out := map[string]Tallies{}
	for _, r := range rows {
		t := out[r.PayerProvince]
		t.AsPayer.Entries++
		t.AsPayer.Sum = t.AsPayer.Sum.Add(r.Amount)
		out[r.PayerProvince] = t
		t = out[r.PayeeProvince]
		t.AsPayee.Entries++
		t.AsPayee.Sum = t.AsPayee.Sum.Add(r.Amount)
		out[r.PayeeProvince] = t
	}
	return out
}

// Statement is what one province receives for a closed period (R16, R17):
// its national position, its pooling regions' allocation, every instruction
// it is party to (its NATIONAL instruction and the PROVINCE tier inside it),
// its usage tallies and the reconciliation exceptions that name it.
type Statement struct {
	Period       region.Period
	Province     string
	Position     Position
	Regions      []RegionPosition
	Instructions []Instruction
	Usage        Tallies
	Exceptions   []Exception
}

// BuildStatements cuts a checked Result into one statement per provincial
// unit (all 32, in code order, zero positions included: a province confirms
// that it owes nothing, too). tallies are per province (absent = none);
// exceptions go to every province they name.
//
// Before it returns, each statement is reconciled with the tier above
// (moov-style recomputation): the tallies must equal the position (payer sum =
// payable, payee sum = receivable), the regions must sum to the position and
// the instructions must net to it. Errors: ErrStatementMismatch, or the
// CheckResult error when res itself is inconsistent.
func BuildStatements(period region.Period, res Result, tallies map[string]Tallies, exceptions []Exception) ([]Statement, error) {
	if err := CheckResult(res); err != nil {
		return nil, err
	}
	out := make([]Statement, 0, len(res.Positions))
	for _, p := range res.Positions {
		st := Statement{Period: period, Province: p.Province, Position: p, Usage: tallies[p.Province]}
		for _, r := range res.Allocation {
			if r.Province == p.Province {
				st.Regions = append(st.Regions, r)
			}
		}
		for _, in := range res.Instructions {
			if in.From == p.Province || in.To == p.Province {
				st.Instructions = append(st.Instructions, in)
			}
		}
		for _, e := range exceptions {
			if slices.Contains(e.Provinces, p.Province) {
				st.Exceptions = append(st.Exceptions, e)
			}
		}
		if err := st.Reconcile(); err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Reconcile checks that the statement agrees with itself and with the tier
// above: usage tallies equal the position; region rows sum to the position;
// the NATIONAL instruction carries the net; the PROVINCE instructions pay out
// exactly what the province nets nationally. Errors wrap ErrStatementMismatch.
// A province's node can run the same check on what it received.
func (s Statement) Reconcile() error {
	p := s.Position
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s %s: %s", ErrStatementMismatch, s.Period, s.Province, fmt.Sprintf(format, args...))
	}
	if !s.Usage.AsPayer.Sum.Equal(p.Payable) {
		return fail("usages as payer sum to %s, payable is %s", s.Usage.AsPayer.Sum, p.Payable)
	}
	if !s.Usage.AsPayee.Sum.Equal(p.Receivable) {
		return fail("usages as payee sum to %s, receivable is %s", s.Usage.AsPayee.Sum, p.Receivable)
	}
	rec, pay := money.Zero, money.Zero
	for _, r := range s.Regions {
		rec, pay = rec.Add(r.Receivable), pay.Add(r.Payable)
	}
	if !rec.Equal(p.Receivable) || !pay.Equal(p.Payable) {
		return fail("regions sum to receivable %s, payable %s; position has %s, %s", rec, pay, p.Receivable, p.Payable)
	}
	national, provinceOut := money.Zero, money.Zero
	for _, in := range s.Instructions {
		switch {
		case in.Tier == TierNational && in.To == s.Province:
			national = national.Add(in.Amount)
		case in.Tier == TierNational && in.From == s.Province:
			national = national.Sub(in.Amount)
		case in.Tier == TierProvince && in.From == s.Province:
			provinceOut = provinceOut.Add(in.Amount)
		case in.Tier == TierProvince && in.To == s.Province:
			provinceOut = provinceOut.Sub(in.Amount)
		}
	}
	if !national.Equal(p.Net) {
		return fail("national instructions net %s, position net is %s", national, p.Net)
	}
	if !provinceOut.Equal(national) {
		return fail("province tier pays regions %s net, national tier brings %s", provinceOut, national)
	}
	return nil
}

// StatementStatus is the confirmation state of a statement (R17).
type StatementStatus string

const (
	// StatusIssued: sent to the province, awaiting its answer.
	StatusIssued StatementStatus = "ISSUED"
	// StatusConfirmed: the province confirmed it within the window.
	StatusConfirmed StatementStatus = "CONFIRMED"
	// StatusDisputed: the province disputed one or more items within the window.
	StatusDisputed StatementStatus = "DISPUTED"
	// StatusDeemedConfirmed: the window passed without an answer.
	StatusDeemedConfirmed StatementStatus = "DEEMED_CONFIRMED"
)

// DisputeReasonLenMax bounds a dispute reason (bytes).
const DisputeReasonLenMax = 500

// DisputedItemsMax bounds the items of one dispute.
const DisputedItemsMax = 10000

// DisputedItem is one record a province disputes: the usage id, the amount the
// province claims is right (signed like the record; 0 means "should not have
// been cleared at all") and why.
type DisputedItem struct {
	UsageID       string
	ClaimedAmount money.Yuan
	Reason        string
}

// Answer is a province's reply to a statement: no items confirms it, one or
// more items dispute it.
type Answer struct {
	At       time.Time
	Disputes []DisputedItem
}

// ConfirmationDeadline is the last instant at which a statement issued at
// issuedAt may be answered.
func (c Config) ConfirmationDeadline(issuedAt time.Time) time.Time {
	return issuedAt.Add(c.ConfirmationWindow)
}

// AnswerStatement applies a province's answer to a statement in status and
// returns the new status: CONFIRMED without items, DISPUTED with items.
// An answer exactly at the deadline is in time.
// Errors: ErrAlreadyAnswered when status is not ISSUED; ErrWindowClosed when
// a.At is after the deadline (the statement is deemed confirmed, see
// ExpireStatement); ErrBadDispute for a usage id that is not 1..64
// printable ASCII characters or contains an ID number, an empty or too long reason or one that is not
// text (control characters, U+FFFD, invalid UTF-8), a claimed amount out of
// range, a repeated usage id, or too many items.
func (c Config) AnswerStatement(status StatementStatus, issuedAt time.Time, a Answer) (StatementStatus, error) {
	if status != StatusIssued {
		return status, fmt.Errorf("%w: status %s", ErrAlreadyAnswered, status)
	}
	if a.At.After(c.ConfirmationDeadline(issuedAt)) {
		return status, fmt.Errorf("%w: deadline was %s", ErrWindowClosed, c.ConfirmationDeadline(issuedAt).In(region.Shanghai).Format(time.RFC3339))
	}
	if len(a.Disputes) == 0 {
		return StatusConfirmed, nil
	}
	if len(a.Disputes) > DisputedItemsMax {
		return status, fmt.Errorf("%w: %d items, at most %d", ErrBadDispute, len(a.Disputes), DisputedItemsMax)
	}
	seen := make(map[string]bool, len(a.Disputes))
	for i, d := range a.Disputes {
		switch {
		case !validUsageID(d.UsageID):
			return status, fmt.Errorf("%w: item %d: usage id must have 1..%d printable ASCII characters, containing no ID number", ErrBadDispute, i, UsageIDLenMax)
		case seen[d.UsageID]:
			return status, fmt.Errorf("%w: item %d: usage %s disputed twice", ErrBadDispute, i, d.UsageID)
		case d.Reason == "" || len(d.Reason) > DisputeReasonLenMax:
			return status, fmt.Errorf("%w: item %d: reason must have 1..%d bytes", ErrBadDispute, i, DisputeReasonLenMax)
		case !validText(d.Reason):
			return status, fmt.Errorf("%w: item %d: reason must be UTF-8 text without control characters", ErrBadDispute, i)
		case !d.ClaimedAmount.InRange():
			return status, fmt.Errorf("%w: item %d: claimed amount out of range", ErrBadDispute, i)
		}
		seen[d.UsageID] = true
	}
	return StatusDisputed, nil
}

// validUsageID: 1..UsageIDLenMax printable ASCII characters without spaces,
// the form of every key a node makes (and all the database can compare),
// and no GB 11643 identity number in it (pii.ContainsID): usage ids are
// keys, and no key containing one is ever accepted, so such an id names no
// record; it is refused before it could be stored or quoted.
func validUsageID(s string) bool {
	if s == "" || len(s) > UsageIDLenMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return !pii.ContainsID(s)
}

// validText: valid UTF-8 without control characters other than tab and
// newline, and without U+FFFD (what a transport leaves of invalid bytes).
// PostgreSQL text cannot hold NUL at all.
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r == utf8.RuneError || (unicode.IsControl(r) && r != '\t' && r != '\n') {
			return false
		}
	}
	return true
}

// ExpireStatement returns DEEMED_CONFIRMED and true when a statement still
// ISSUED is past its deadline at now; otherwise status unchanged and false.
func (c Config) ExpireStatement(status StatementStatus, issuedAt, now time.Time) (StatementStatus, bool) {
	if status == StatusIssued && now.After(c.ConfirmationDeadline(issuedAt)) {
		return StatusDeemedConfirmed, true
	}
	return status, false
}

// AdjustmentInput is a resolved dispute item, ready to become an ADJUSTMENT.
type AdjustmentInput struct {
	// Disputed is the cleared record the province disputed (in a closed period).
	Disputed Record
	// ResolvedAmount is the amount found right at resolution (signed like the
	// record; 0 means the record should not have been cleared at all).
	ResolvedAmount money.Yuan
	// AdjustmentID is the new record's unique id.
	AdjustmentID string
	// Target is the period the adjustment is cleared in and TargetState its
	// current state: it must be OPEN and after Disputed.Period.
	Target      region.Period
	TargetState PeriodState
	// ResolvedAt is when the dispute was resolved: the adjustment's occurred_at.
	ResolvedAt time.Time
}

// BuildAdjustment turns a resolved dispute into the ADJUSTMENT record that
// corrects it in a later open period (R17: a closed period is never edited).
// The adjustment copies the disputed record's kind, provinces, regions and
// pseudonyms, names it in ReversalOf, and carries ResolvedAmount − the
// disputed amount: negative when the payee must give money back, positive
// when the payer owes more. It is never late (it is placed by the resolution,
// not by arrival).
//
// Errors: ErrPeriodClosed when the target is not OPEN; ErrAdjustmentPeriod
// when the target is not after the disputed record's period;
// ErrNothingToAdjust when the amounts are equal; ErrInvalidRecord (via
// Record.Validate) for a bad id, a missing time or an out-of-range amount.
func BuildAdjustment(in AdjustmentInput) (Record, error) {
	if !in.TargetState.AcceptsRecords() {
		return Record{}, fmt.Errorf("adjust %s in %s (%s): %w", in.Disputed.UsageID, in.Target, in.TargetState, ErrPeriodClosed)
	}
	if !in.Disputed.Period.Before(in.Target) {
		return Record{}, fmt.Errorf("%w: %s is in %s, target %s", ErrAdjustmentPeriod, in.Disputed.UsageID, in.Disputed.Period, in.Target)
	}
	delta := in.ResolvedAmount.Sub(in.Disputed.Amount)
	if delta.IsZero() {
		return Record{}, fmt.Errorf("%w: %s stays %s", ErrNothingToAdjust, in.Disputed.UsageID, in.Disputed.Amount)
	}
	adj := Record{
		UsageID:        in.AdjustmentID,
		Period:         in.Target,
		Type:           EntryAdjustment,
		Kind:           in.Disputed.Kind,
		Row:            in.Disputed.Row,
		OccurredAt:     in.ResolvedAt,
		ReversalOf:     in.Disputed.UsageID,
		SharerRef:      in.Disputed.SharerRef,
		BeneficiaryRef: in.Disputed.BeneficiaryRef,
	}
	adj.Amount = delta
	if err := adj.Validate(); err != nil {
		return Record{}, fmt.Errorf("adjust %s: %w", in.Disputed.UsageID, err)
	}
	return adj, nil
}
