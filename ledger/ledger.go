// Package ledger holds gongji's double-entry primitives: postings, entries,
// their validation, the compensating (reversing) entry and a tamper-evident
// hash chain over a sequence of entries.
//
// Both databases keep a journal built from these values: a province node's
// journal of personal-account money (provincedb) and the clearing journal
// (clearingdb). The package does no I/O, so the same rules run in the stores,
// in the export verifier and in tests.
//
// Sign convention: every posting moves Amount into Account; an entry's
// postings sum to exactly zero, so money only ever moves between accounts and
// the sum of all balances of a journal is always zero.
package ledger

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"gongji/money"
)

// Sentinel errors. Validate wraps them in a *PostingError when one posting is
// to blame; callers test with errors.Is.
var (
	ErrTooFewPostings = errors.New("ledger: an entry needs at least two postings")
	ErrZeroAmount     = errors.New("ledger: a posting amount must not be zero")
	ErrEmptyAccount   = errors.New("ledger: a posting needs an account")
	ErrOutOfRange     = errors.New("ledger: amount exceeds NUMERIC(18,2)")
	ErrUnbalanced     = errors.New("ledger: postings do not sum to zero")
	ErrEmptyKind      = errors.New("ledger: an entry needs a kind")
	ErrChainBroken    = errors.New("ledger: hash chain broken")
	ErrChainLength    = errors.New("ledger: hash chain and entries differ in length")
)

// accountLenMax bounds account names so an entry's canonical encoding (and a
// database text column) stays small; the longest gongji name is
// "quota:" + a 25-character relationship id.
const accountLenMax = 128

// Posting moves Amount (signed yuan) into Account.
type Posting struct {
	Account string
	Amount  money.Yuan
}

// Postings is the body of an entry.
type Postings []Posting

// Entry is one balanced journal movement.
type Entry struct {
	ID       int64     // position in its journal, assigned by the store (0 before insert)
	Kind     string    // what moved the money, e.g. "CREDIT", "USAGE"
	Postings Postings  // at least two, summing to zero
	At       time.Time // when it was booked; hashed at microsecond precision (PostgreSQL's)
	Ref      string    // the business key that caused it (usage key, command key, …)
}

// PostingError names the posting that broke a rule.
type PostingError struct {
	Index   int
	Account string
	Err     error
}

func (e *PostingError) Error() string {
	return fmt.Sprintf("posting %d (%q): %v", e.Index, e.Account, e.Err)
}

func (e *PostingError) Unwrap() error { return e.Err }

// Validate checks the postings of one entry: at least two, each with an
// account and a non-zero in-range amount, summing to zero. It returns the index
// of the offending posting (or -1 when the fault is the whole entry: too few
// postings, or an unbalanced sum) and an error wrapping one of the sentinels;
// (-1, nil) when the postings are valid.
func (ps Postings) Validate() (int, error) {
	if len(ps) < 2 {
		return -1, fmt.Errorf("%w (got %d)", ErrTooFewPostings, len(ps))
	}
	sum := money.Zero
	for i, p := range ps {
		switch {
		case p.Account == "" || len(p.Account) > accountLenMax:
			return i, &PostingError{Index: i, Account: p.Account, Err: ErrEmptyAccount}
		case p.Amount.IsZero():
			return i, &PostingError{Index: i, Account: p.Account, Err: ErrZeroAmount}
		case !p.Amount.InRange():
			return i, &PostingError{Index: i, Account: p.Account, Err: ErrOutOfRange}
		}
		sum = sum.Add(p.Amount)
	}
	if !sum.IsZero() {
		return -1, fmt.Errorf("%w (sum %s)", ErrUnbalanced, sum)
	}
	return -1, nil
}

// Validate checks the entry: a kind, and postings as Postings.Validate.
func (e Entry) Validate() (int, error) {
	if e.Kind == "" {
		return -1, ErrEmptyKind
	}
	return e.Postings.Validate()
}

// Reverse returns the compensating postings: same accounts, negated amounts.
func (ps Postings) Reverse() Postings {
	out := make(Postings, len(ps))
	for i, p := range ps {
		out[i] = Posting{Account: p.Account, Amount: p.Amount.Neg()}
	}
	return out
}

// Reverse returns the entry that undoes e: negated postings, the given kind,
// reference and time, and ID 0 (the store assigns it).
func (e Entry) Reverse(kind, ref string, at time.Time) Entry {
	return Entry{Kind: kind, Postings: e.Postings.Reverse(), At: at, Ref: ref}
}

// Balances returns the balance of every account touched by entries.
func Balances(entries []Entry) map[string]money.Yuan {
	out := map[string]money.Yuan{}
	for _, e := range entries {
		for _, p := range e.Postings {
			out[p.Account] = out[p.Account].Add(p.Amount)
		}
	}
	return out
}

// Net merges postings to the same account and drops accounts whose net is
// zero, sorted by account. Stores use it to update cached balances once per
// account, in a fixed lock order.
func (ps Postings) Net() Postings {
	m := map[string]money.Yuan{}
	for _, p := range ps {
		m[p.Account] = m[p.Account].Add(p.Amount)
	}
	out := make(Postings, 0, len(m))
	for a, v := range m {
		if !v.IsZero() {
			out = append(out, Posting{Account: a, Amount: v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Account < out[j].Account })
	return out
}
