package prepay

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"gongji/ledger"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// Sentinel errors of Pool operations.
var (
	// ErrAlreadySettled: the period's prepayment settlement was already booked.
	ErrAlreadySettled = errors.New("prepay: period already settled")
	// ErrExceedsDue: a replenishment larger than what was drawn and not yet
	// replenished (use Fund for re-sizing top-ups).
	ErrExceedsDue = errors.New("prepay: replenishment exceeds what is due")
	// ErrExceedsOutstanding: a shortfall payment larger than the province's
	// outstanding shortfall.
	ErrExceedsOutstanding = errors.New("prepay: payment exceeds the outstanding shortfall")
	// ErrUnknownProvince: not one of the 32 provincial units.
	ErrUnknownProvince = errors.New("prepay: unknown provincial unit")
)

// Pool is the in-memory reference model of the prepayment ledger: the
// journal of every prepayment movement, the replenishment each payer still
// owes and the periods already settled. The clearing database keeps the same
// state in tables; the adapter's tests run the same operation sequences
// against both and compare balances. Not safe for concurrent use.
type Pool struct {
	cfg      Config
	journal  []ledger.Entry
	balances map[string]money.Yuan
	due      map[string]money.Yuan // drawn, not yet replenished
	settled  map[region.Period]bool
}

// NewPool returns an empty pool with cfg (WithDefaults applied).
// Errors: those of Config.Validate.
func NewPool(cfg Config) (*Pool, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Pool{cfg: cfg, balances: map[string]money.Yuan{}, due: map[string]money.Yuan{}, settled: map[region.Period]bool{}}, nil
}

// book validates and appends an entry, updating the cached balances.
func (p *Pool) book(e ledger.Entry) (ledger.Entry, error) {
	if _, err := e.Validate(); err != nil {
		return ledger.Entry{}, fmt.Errorf("%w: %s: %w", ErrInconsistent, e.Kind, err)
	}
	e.ID = int64(len(p.journal) + 1)
	p.journal = append(p.journal, e)
	for _, ps := range e.Postings {
		p.balances[ps.Account] = p.balances[ps.Account].Add(ps.Amount)
	}
	return e, nil
}

func checkProvince(code string) error {
	if _, err := region.ParseProvince(code); err != nil {
		return fmt.Errorf("%w: %w", ErrUnknownProvince, err)
	}
	return nil
}

func checkPositive(amount money.Yuan) error {
	if !amount.IsPositive() || !amount.InRange() {
		return fmt.Errorf("%w: %s must be > 0 and within NUMERIC(18,2)", ErrBadAmount, amount)
	}
	return nil
}

// Fund books money a province pays into its deposit: an initial deposit, a
// re-sizing or an emergency top-up. ext:bank → deposit:<prov>.
// Errors: ErrUnknownProvince, ErrBadAmount.
func (p *Pool) Fund(province string, amount money.Yuan, at time.Time, ref string) (ledger.Entry, error) {
	if err := checkProvince(province); err != nil {
		return ledger.Entry{}, err
	}
	if err := checkPositive(amount); err != nil {
		return ledger.Entry{}, err
	}
	return p.book(ledger.Entry{Kind: KindFund, Ref: ref, At: at, Postings: ledger.Postings{
		{Account: AccountBank, Amount: amount.Neg()},
		{Account: DepositAccount(province), Amount: amount},
	}})
}

// Settle books one period's prepayment settlement from the pool's current
// deposits (Config.Settle) and records each payer's drawn amount as due for
// replenishment. Errors: ErrAlreadySettled, and those of Config.Settle.
func (p *Pool) Settle(period region.Period, positions []settlement.Position, priorPayables map[string][]money.Yuan, at time.Time) (Settlement, error) {
	if p.settled[period] {
		return Settlement{}, fmt.Errorf("%w: %s", ErrAlreadySettled, period)
	}
	deposits := map[string]money.Yuan{}
	for _, code := range region.ProvinceCodes() {
		deposits[code] = p.balances[DepositAccount(code)]
	}
	s, err := p.cfg.Settle(SettleInput{Period: period, Positions: positions, DepositsBefore: deposits, PriorPayables: priorPayables, At: at})
	if err != nil {
		return Settlement{}, err
	}
	// Validate every entry before booking any, so a failure books nothing.
	for _, e := range s.Entries {
		if _, err := e.Validate(); err != nil {
			return Settlement{}, fmt.Errorf("%w: %s: %w", ErrInconsistent, e.Kind, err)
		}
	}
	for i, e := range s.Entries {
		booked, err := p.book(e)
		if err != nil { // cannot happen: validated above
			return Settlement{}, err
		}
		s.Entries[i] = booked
	}
	for _, r := range s.Rows {
		if r.Drawn.IsPositive() {
			p.due[r.Province] = p.due[r.Province].Add(r.Drawn)
		}
	}
	p.settled[period] = true
	return s, nil
}

// Replenish books a payer restoring what was drawn from its deposit.
// ext:bank → deposit:<prov>. Errors: ErrUnknownProvince, ErrBadAmount,
// ErrExceedsDue (more than drawn and not yet replenished).
func (p *Pool) Replenish(province string, amount money.Yuan, at time.Time, ref string) (ledger.Entry, error) {
	if err := checkProvince(province); err != nil {
		return ledger.Entry{}, err
	}
	if err := checkPositive(amount); err != nil {
		return ledger.Entry{}, err
	}
	if amount.GreaterThan(p.due[province]) {
		return ledger.Entry{}, fmt.Errorf("%w: %s pays %s, due %s", ErrExceedsDue, province, amount, p.due[province])
	}
	e, err := p.book(ledger.Entry{Kind: KindReplenish, Ref: ref, At: at, Postings: ledger.Postings{
		{Account: AccountBank, Amount: amount.Neg()},
		{Account: DepositAccount(province), Amount: amount},
	}})
	if err != nil {
		return ledger.Entry{}, err
	}
	p.due[province] = p.due[province].Sub(amount)
	return e, nil
}

// PayShortfall books a payer paying (part of) its outstanding shortfall and
// passes the money on at once to the receivers still unpaid, pro rata to what
// each is owed (ProRata in province code order). One entry:
// ext:bank → receivable:<payer>, then payable:<receiver> → ext:bank for each.
// Errors: ErrUnknownProvince, ErrBadAmount, ErrExceedsOutstanding,
// ErrInconsistent (unpaid and outstanding totals differ: a bug).
func (p *Pool) PayShortfall(province string, amount money.Yuan, at time.Time, ref string) (ledger.Entry, error) {
	if err := checkProvince(province); err != nil {
		return ledger.Entry{}, err
	}
	if err := checkPositive(amount); err != nil {
		return ledger.Entry{}, err
	}
	if out := p.Outstanding(province); amount.GreaterThan(out) {
		return ledger.Entry{}, fmt.Errorf("%w: %s pays %s, outstanding %s", ErrExceedsOutstanding, province, amount, out)
	}
	var receivers []string
	var unpaid []money.Yuan
	for _, code := range region.ProvinceCodes() {
		if u := p.Unpaid(code); u.IsPositive() {
			receivers, unpaid = append(receivers, code), append(unpaid, u)
		}
	}
	shares, err := ProRata(amount, unpaid)
	if err != nil {
		return ledger.Entry{}, fmt.Errorf("%w: %w", ErrInconsistent, err)
	}
	ps := ledger.Postings{
		{Account: AccountBank, Amount: amount.Neg()},
		{Account: ReceivableAccount(province), Amount: amount},
	}
	for i, code := range receivers {
		if shares[i].IsZero() {
			continue
		}
		ps = append(ps,
			ledger.Posting{Account: PayableAccount(code), Amount: shares[i].Neg()},
			ledger.Posting{Account: AccountBank, Amount: shares[i]},
		)
	}
	return p.book(ledger.Entry{Kind: KindShortfallSettlement, Ref: ref, At: at, Postings: ps})
}

// Balance is an account's balance.
func (p *Pool) Balance(account string) money.Yuan { return p.balances[account] }

// Deposit is the province's deposit balance.
func (p *Pool) Deposit(province string) money.Yuan { return p.balances[DepositAccount(province)] }

// Outstanding is the shortfall the province still owes (≥ 0).
func (p *Pool) Outstanding(province string) money.Yuan {
	return p.balances[ReceivableAccount(province)].Neg()
}

// Unpaid is what the centre still owes the receiver province (≥ 0).
func (p *Pool) Unpaid(province string) money.Yuan { return p.balances[PayableAccount(province)] }

// ReplenishDue is what the province has had drawn and not yet replenished.
func (p *Pool) ReplenishDue(province string) money.Yuan { return p.due[province] }

// Journal returns a copy of the booked entries, oldest first.
func (p *Pool) Journal() []ledger.Entry { return slices.Clone(p.journal) }

// Check verifies the pool's conservation invariants and names the first
// violation (wrapping ErrInconsistent): every entry balanced; each cached
// balance equals the sum of its postings; deposits, payables and replenishment
// dues ≥ 0, receivables ≤ 0, centre:pool = 0; −Σ receivable = Σ payable; and
// so −ext:bank = Σ deposit (what came in from outside is what the deposits
// hold).
func (p *Pool) Check() error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: pool: %s", ErrInconsistent, fmt.Sprintf(format, args...))
	}
	for i, e := range p.journal {
		if _, err := e.Validate(); err != nil {
			return fail("entry %d: %v", i, err)
		}
	}
	derived := ledger.Balances(p.journal)
	for acct, b := range p.balances {
		if !derived[acct].Equal(b) {
			return fail("%s cached %s, journal says %s", acct, b, derived[acct])
		}
	}
	for acct, b := range derived {
		if !p.balances[acct].Equal(b) {
			return fail("%s cached %s, journal says %s", acct, p.balances[acct], b)
		}
	}
	deposits, receivables, payables := money.Zero, money.Zero, money.Zero
	for acct, b := range derived {
		switch {
		case strings.HasPrefix(acct, "deposit:"):
			if b.IsNegative() {
				return fail("%s is %s", acct, b)
			}
			deposits = deposits.Add(b)
		case strings.HasPrefix(acct, "receivable:"):
			if b.IsPositive() {
				return fail("%s is %s", acct, b)
			}
			receivables = receivables.Add(b)
		case strings.HasPrefix(acct, "payable:"):
			if b.IsNegative() {
				return fail("%s is %s", acct, b)
			}
			payables = payables.Add(b)
		case acct == AccountPool:
			if !b.IsZero() {
				return fail("centre:pool holds %s between operations", b)
			}
		case acct == AccountBank:
		default:
			return fail("unexpected account %s", acct)
		}
	}
	for prov, d := range p.due {
		if d.IsNegative() {
			return fail("replenishment due of %s is %s", prov, d)
		}
	}
	if !receivables.Neg().Equal(payables) {
		return fail("payers owe %s, receivers are owed %s", receivables.Neg(), payables)
	}
	if !derived[AccountBank].Neg().Equal(deposits) {
		return fail("net inflow %s ≠ deposits %s", derived[AccountBank].Neg(), deposits)
	}
	return nil
}
