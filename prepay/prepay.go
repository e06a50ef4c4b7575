// Package prepay holds the prepayment pool (预付金, R18): each provincial
// unit's deposit with the national centre, the draws that meet net payers'
// obligations at settlement so that net receivers are paid on time, the
// shortfall that stays outstanding against a payer until it pays, the
// replenishment of what was drawn, the re-sizing of deposits from recent
// volume, and warnings with emergency top-up requests.
//
// Like settlement, the package is pure: the clearing database adapter loads
// the 32 deposits and positions, calls Config.Settle, and writes the rows and
// the journal entries it returns. Pool is the in-memory reference model of the
// prepayment ledger that the tests (and the adapter's tests) drive with random
// operation sequences to show that money is conserved.
//
// DESIGN §11 prepay.csv, per provincial unit:
//
//	drawn         = min(deposit_before, −net) for a net payer, else 0
//	outstanding   = −net − drawn (shown, never hidden), else 0
//	deposit_after = deposit_before − drawn (replenishment is a later movement)
//	required_next = the re-sized deposit (RequiredNext)
//	warning       = deposit_before > 0 and drawn ≥ threshold × deposit_before
//
// Decisions where the brief is silent:
//
//   - A payer's deposit covers only its own obligations; other provinces'
//     deposits are never used for it. What the pool can pay receivers in a
//     period is therefore Σ drawn.
//   - When Σ drawn < Σ positive nets, receivers are paid pro rata to their nets
//     (ProRata: floor to the fen, the remaining fen to the largest remainders,
//     ties to the lower province code). The rest stays unpaid (payable:<prov>),
//     matched by the payers' outstanding (receivable:<prov>).
//   - A payer's later shortfall payment is passed on at once to the receivers
//     still unpaid, pro rata to what each is still owed (whatever period it
//     came from).
//   - warning is false when deposit_before is 0: a zero deposit cannot be
//     "mostly used"; a payer without deposit shows its whole obligation as
//     outstanding, and that (outstanding > 0) raises the emergency top-up
//     request instead. The §11 example bundle agrees (310000: deposit 0,
//     outstanding 2233.42, warning false).
package prepay

import (
	"errors"
	"fmt"
	"math/big"

	"github.com/shopspring/decimal"

	"gongji/money"
)

// Sentinel errors. Callers test with errors.Is.
var (
	// ErrBadConfig: a Config field is outside its documented range.
	ErrBadConfig = errors.New("prepay: invalid config")
	// ErrNegativeDeposit: a deposit balance below zero (a bug upstream).
	ErrNegativeDeposit = errors.New("prepay: deposit is negative")
	// ErrBadAmount: an amount that must be > 0 (or ≥ 0) is not, or is out of range.
	ErrBadAmount = errors.New("prepay: invalid amount")
	// ErrBadPositions: the positions are not the 32 provincial units in code
	// order with net = receivable − payable and nets summing to zero.
	ErrBadPositions = errors.New("prepay: invalid positions")
	// ErrInconsistent: a settlement breaks an invariant (CheckSettlement).
	ErrInconsistent = errors.New("prepay: inconsistent settlement")
)

// Defaults of Config (DESIGN §8, §10).
var (
	// DefaultWarningThreshold: warn when a draw uses 70 % or more of a
	// deposit, the threshold commonly quoted for cross-province medical
	// settlement.
	DefaultWarningThreshold = decimal.RequireFromString("0.70")
	// DefaultMultiple: a deposit of about two months of volume.
	DefaultMultiple = decimal.NewFromInt(2)
)

const (
	// DefaultTrailingMonths: the average is taken over the last 3 months.
	DefaultTrailingMonths = 3
	// TrailingMonthsMax bounds the sizing window (two years).
	TrailingMonthsMax = 24
	// MultipleMax bounds the deposit multiple (a year of volume).
	MultipleMax = 12
)

// Config is the prepayment policy. Build it in cmd/, call WithDefaults then
// Validate at startup.
type Config struct {
	// WarningThreshold: a draw raises a warning when drawn ≥ threshold ×
	// deposit_before (exact decimal product, no rounding). Default 0.70.
	// Range (0, 1].
	WarningThreshold decimal.Decimal
	// Multiple: the re-sized deposit is Multiple × the average monthly
	// payable. Default 2. Range (0, 12].
	Multiple decimal.Decimal
	// TrailingMonths: how many months (the settled one included) the average
	// covers. Default 3. Range [1, 24].
	TrailingMonths int
	// Floor: the re-sized deposit is never below this. Default 0.00: a
	// province without cross-province payables needs no deposit (this is also
	// what the §11 example bundle shows). Range [0, NUMERIC(18,2)].
	Floor money.Yuan
}

// WithDefaults returns c with every zero field set to its default. Floor's
// default is zero, so a zero Floor stays zero.
func (c Config) WithDefaults() Config {
	if c.WarningThreshold.IsZero() {
		c.WarningThreshold = DefaultWarningThreshold
	}
	if c.Multiple.IsZero() {
		c.Multiple = DefaultMultiple
	}
	if c.TrailingMonths == 0 {
		c.TrailingMonths = DefaultTrailingMonths
	}
	return c
}

// Validate reports the first field outside its range. Errors wrap ErrBadConfig.
func (c Config) Validate() error {
	one := decimal.NewFromInt(1)
	if !c.WarningThreshold.IsPositive() || c.WarningThreshold.GreaterThan(one) {
		return fmt.Errorf("%w: WarningThreshold %s not in (0, 1]", ErrBadConfig, c.WarningThreshold)
	}
	if !c.Multiple.IsPositive() || c.Multiple.GreaterThan(decimal.NewFromInt(MultipleMax)) {
		return fmt.Errorf("%w: Multiple %s not in (0, %d]", ErrBadConfig, c.Multiple, MultipleMax)
	}
	if c.TrailingMonths < 1 || c.TrailingMonths > TrailingMonthsMax {
		return fmt.Errorf("%w: TrailingMonths %d not in [1, %d]", ErrBadConfig, c.TrailingMonths, TrailingMonthsMax)
	}
	if c.Floor.IsNegative() || !c.Floor.InRange() {
		return fmt.Errorf("%w: Floor %s must be ≥ 0 and within NUMERIC(18,2)", ErrBadConfig, c.Floor)
	}
	return nil
}

// Draw is one province's row of a settlement's draws (see the package doc).
type Draw struct {
	DepositBefore money.Yuan
	Drawn         money.Yuan
	Outstanding   money.Yuan
	DepositAfter  money.Yuan
	Warning       bool
}

// Draw meets a province's obligation from its deposit. For a net payer
// (net < 0): drawn = min(depositBefore, −net), outstanding = −net − drawn;
// otherwise both are 0. deposit_after = depositBefore − drawn. Warning as in
// the package doc. Errors: ErrNegativeDeposit; ErrBadAmount for an amount
// outside NUMERIC(18,2).
func (c Config) Draw(depositBefore, net money.Yuan) (Draw, error) {
	if depositBefore.IsNegative() {
		return Draw{}, fmt.Errorf("%w: %s", ErrNegativeDeposit, depositBefore)
	}
	if !depositBefore.InRange() || !net.InRange() {
		return Draw{}, fmt.Errorf("%w: deposit %s, net %s", ErrBadAmount, depositBefore, net)
	}
	d := Draw{DepositBefore: depositBefore, DepositAfter: depositBefore}
	if !net.IsNegative() {
		return d, nil
	}
	obligation := net.Neg()
	d.Drawn = depositBefore.Min(obligation)
	d.Outstanding = obligation.Sub(d.Drawn)
	d.DepositAfter = depositBefore.Sub(d.Drawn)
	d.Warning = c.warns(depositBefore, d.Drawn)
	return d, nil
}

// warns: drawn ≥ threshold × deposit_before, exactly, and only for a deposit
// that exists.
func (c Config) warns(depositBefore, drawn money.Yuan) bool {
	if !depositBefore.IsPositive() {
		return false
	}
	return drawn.Decimal().GreaterThanOrEqual(depositBefore.Decimal().Mul(c.WarningThreshold))
}

// RequiredNext re-sizes a deposit from recent volume: Multiple × the average
// of the last TrailingMonths monthly payables (oldest first, the month just
// settled last; fewer months average over what there is), rounded half-even
// to the fen in one step (Σ × Multiple ÷ n, exactly), and never below Floor.
// No history gives Floor. Payables are the provinces' gross monthly payables
// (positions.csv payable), signed: a month whose reversals outweighed its
// usages lowers the average. Errors: ErrBadAmount for an amount out of range.
//
// With the defaults and one month of history this is 2 × that month's
// payable, as in the §11 example bundle (130000: 2 × 4257.56 = 8515.12).
func (c Config) RequiredNext(trailingPayables []money.Yuan) (money.Yuan, error) {
	if len(trailingPayables) > c.TrailingMonths {
		trailingPayables = trailingPayables[len(trailingPayables)-c.TrailingMonths:]
	}
	if len(trailingPayables) == 0 {
		return c.Floor, nil
	}
	sum := money.Zero
	for _, p := range trailingPayables {
		if !p.InRange() {
			return money.Zero, fmt.Errorf("%w: payable %s", ErrBadAmount, p)
		}
		sum = sum.Add(p)
	}
	req, err := money.FromDecimal(divHalfEven(sum.Decimal().Mul(c.Multiple), int64(len(trailingPayables))))
	if err != nil {
		return money.Zero, fmt.Errorf("%w: required deposit: %w", ErrBadAmount, err)
	}
	return req.Max(c.Floor), nil
}

// divHalfEven returns num ÷ den rounded half-even to two places, exactly (no
// intermediate rounding), for den > 0.
func divHalfEven(num decimal.Decimal, den int64) decimal.Decimal {
	// num = coef × 10^exp; num × 100 ÷ den = coef × 10^(exp+2) ÷ den.
	coef := new(big.Int).Set(num.Coefficient())
	exp := int64(num.Exponent()) + 2
	divisor := big.NewInt(den)
	if exp >= 0 {
		coef.Mul(coef, new(big.Int).Exp(big.NewInt(10), big.NewInt(exp), nil))
	} else {
		divisor.Mul(divisor, new(big.Int).Exp(big.NewInt(10), big.NewInt(-exp), nil))
	}
	q, r := new(big.Int).QuoRem(coef, divisor, new(big.Int)) // truncated toward zero
	twice := new(big.Int).Abs(r)
	twice.Lsh(twice, 1)
	switch c := twice.Cmp(divisor); {
	case c > 0, c == 0 && q.Bit(0) == 1:
		if r.Sign() < 0 {
			q.Sub(q, big.NewInt(1))
		} else {
			q.Add(q, big.NewInt(1))
		}
	}
	return decimal.NewFromBigInt(q, -2)
}

// ProRata splits total (≥ 0) over weights (each ≥ 0) in proportion, to the
// fen, so that the shares sum exactly to total: each share is first floored
// to the fen, then the fen left over go one each to the shares with the
// largest remainders, ties to the lower index (callers order by province
// code). total must not exceed Σ weights, so that no share exceeds its weight.
// Errors: ErrBadAmount for a negative total or weight, or total > Σ weights.
func ProRata(total money.Yuan, weights []money.Yuan) ([]money.Yuan, error) {
	if total.IsNegative() {
		return nil, fmt.Errorf("%w: total %s", ErrBadAmount, total)
	}
	sumW := new(big.Int)
	ws := make([]*big.Int, len(weights))
	for i, w := range weights {
		if w.IsNegative() {
			return nil, fmt.Errorf("%w: weight %d is %s", ErrBadAmount, i, w)
		}
		ws[i] = big.NewInt(w.Fen())
		sumW.Add(sumW, ws[i])
	}
	t := big.NewInt(total.Fen())
	if t.Cmp(sumW) > 0 {
		return nil, fmt.Errorf("%w: total %s exceeds Σ weights %s", ErrBadAmount, total, money.FromFen(sumW.Int64()))
	}
	out := make([]money.Yuan, len(weights))
	if t.Sign() == 0 {
		return out, nil
	}
	shares := make([]int64, len(weights))
	rems := make([]*big.Int, len(weights))
	left := total.Fen()
	for i, w := range ws {
		q, r := new(big.Int).QuoRem(new(big.Int).Mul(t, w), sumW, new(big.Int))
		shares[i], rems[i] = q.Int64(), r
		left -= shares[i]
	}
	// left < len(weights): hand out one fen each by largest remainder.
	for ; left > 0; left-- {
		best := -1
		for i := range rems {
			if rems[i].Sign() > 0 && (best < 0 || rems[i].Cmp(rems[best]) > 0) {
				best = i
			}
		}
		shares[best]++
		rems[best] = new(big.Int) // each share gets at most one extra fen
	}
	for i, s := range shares {
		out[i] = money.FromFen(s)
	}
	return out, nil
}
