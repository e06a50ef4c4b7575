package clearingdb

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/ledger"
	"gongji/money"
	"gongji/prepay"
)

// The clearing journal (migrations/clearing/00010_journal.sql) books every
// movement of money of the clearing service as a balanced, hash-chained,
// append-only entry. Besides the prepayment accounts of package prepay
// (ext:bank, centre:pool, deposit:<prov>, receivable:<prov>, payable:<prov>)
// it holds the cleared obligations of closed periods:
//
//	clearing:receivable:<prov>  what a net payer owes the centre for a closed,
//	                            not yet settled period (≤ 0: a claim on it)
//	clearing:payable:<prov>     what the centre owes a net receiver (≥ 0)
//
// Close books one CLEARING_CLOSE entry per period (ref = setlym): each
// province's net into its clearing account. Settle books one
// CLEARING_DISCHARGE entry per province with a non-zero net (ref =
// setlym:province) that moves the obligation into centre:pool, followed by
// package prepay's draw and payout entries that empty the pool again. So after
// every committed operation centre:pool is 0, the clearing accounts sum to 0
// and are 0 for every settled period, and −ext:bank = Σ deposits.
const (
	// KindClearingClose: a period's cleared net obligations (ref = setlym).
	KindClearingClose = "CLEARING_CLOSE"
	// KindClearingDischarge: a province's obligation handed to the pool at
	// settlement (ref = setlym:province).
	KindClearingDischarge = "CLEARING_DISCHARGE"

	accountClearingReceivable = "clearing:receivable:"
	accountClearingPayable    = "clearing:payable:"

	// journalReadBatch bounds the entries VerifyJournal holds in memory at once.
	journalReadBatch = 1000
	// journalAppendMax bounds the entries of one append (a settlement books at
	// most 2 × 32 + 1).
	journalAppendMax = 1000
)

// ClearingReceivableAccount is "clearing:receivable:<prov>".
func ClearingReceivableAccount(province string) string { return accountClearingReceivable + province }

// ClearingPayableAccount is "clearing:payable:<prov>".
func ClearingPayableAccount(province string) string { return accountClearingPayable + province }

// JournalEntry is one booked entry: the ledger entry (ID assigned) and its
// chain hash.
type JournalEntry struct {
	ledger.Entry
	Hash []byte
}

// JournalHead is the end of the hash chain: the last entry's id and hash
// (0 and an empty hash for an empty journal).
type JournalHead struct {
	LastID int64
	Hash   []byte
}

// String is the head hash in lower-case hex ("" for an empty journal).
func (h JournalHead) String() string { return hex.EncodeToString(h.Hash) }

// JournalHead returns the current end of the chain. Errors: database errors.
func (s *Store) JournalHead(ctx context.Context) (JournalHead, error) {
	var h JournalHead
	if err := s.pool.QueryRow(ctx, `SELECT last_id, hash FROM journal_head`).Scan(&h.LastID, &h.Hash); err != nil {
		return JournalHead{}, fmt.Errorf("journal head: %w", translate(err))
	}
	return h, nil
}

// lockJournal locks the head row FOR UPDATE and returns it. Every appending
// transaction takes this lock (always after any period row it locks), which
// serialises appends and gives readers of balances in the same transaction a
// stable view of the accounts.
func lockJournal(ctx context.Context, tx pgx.Tx) (JournalHead, error) {
	var h JournalHead
	if err := tx.QueryRow(ctx, `SELECT last_id, hash FROM journal_head WHERE singleton FOR UPDATE`).Scan(&h.LastID, &h.Hash); err != nil {
		return JournalHead{}, fmt.Errorf("lock journal: %w", translate(err))
	}
	return h, nil
}

// appendJournal books entries, in order, at the end of the chain inside tx:
// it locks the head, validates every entry (ledger.Entry.Validate) before
// writing any, assigns consecutive ids, chains the hashes (ledger.Hash over
// the previous hash), inserts entries and postings in two statements, updates
// the cached balances (one upsert, accounts in sorted order) and the head.
// At is truncated to microseconds (PostgreSQL's precision) so that a re-read
// entry hashes the same. Errors: errInvariant wrapping the ledger error of an
// invalid entry; a unique violation when an entry's (kind, ref) was booked
// before (the caller's idempotency check failed: a bug); database errors.
func appendJournal(ctx context.Context, tx pgx.Tx, entries []ledger.Entry) ([]JournalEntry, JournalHead, error) {
	if len(entries) > journalAppendMax {
		return nil, JournalHead{}, fmt.Errorf("%w: %d journal entries in one append, at most %d", errInvariant, len(entries), journalAppendMax)
	}
	head, err := lockJournal(ctx, tx)
	if err != nil {
		return nil, JournalHead{}, err
	}
	if len(entries) == 0 {
		return nil, head, nil
	}
	var (
		ids                []int64
		kinds, refs        []string
		ats                []time.Time
		hashes             [][]byte
		pIDs               []int64
		pIdx               []int32
		pAccounts, pAmount []string
		all                ledger.Postings
	)
	out := make([]JournalEntry, len(entries))
	prev := head.Hash
	for i, e := range entries {
		if _, err := e.Validate(); err != nil {
			return nil, JournalHead{}, fmt.Errorf("%w: journal entry %s %s: %w", errInvariant, e.Kind, e.Ref, err)
		}
		e.ID = head.LastID + int64(i) + 1
		e.At = e.At.Truncate(time.Microsecond)
		e.Postings = slices.Clone(e.Postings)
		h := ledger.Hash(prev, e)
		prev = h
		out[i] = JournalEntry{Entry: e, Hash: h}
		ids, kinds, refs, ats, hashes = append(ids, e.ID), append(kinds, e.Kind), append(refs, e.Ref), append(ats, e.At), append(hashes, h)
		for j, p := range e.Postings {
			pIDs, pIdx = append(pIDs, e.ID), append(pIdx, int32(j))
			pAccounts, pAmount = append(pAccounts, p.Account), append(pAmount, p.Amount.String())
		}
		all = append(all, e.Postings...)
	}
	net := all.Net()
	balAccounts := make([]string, len(net))
	balAmounts := make([]string, len(net))
	for i, p := range net {
		balAccounts[i], balAmounts[i] = p.Account, p.Amount.String()
	}
	newHead := JournalHead{LastID: out[len(out)-1].ID, Hash: prev}

	b := &pgx.Batch{}
	b.Queue(`INSERT INTO journal_entries (id, kind, ref, at, hash)
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::bytea[])`,
		ids, kinds, refs, ats, hashes)
	b.Queue(`INSERT INTO journal_postings (entry_id, idx, account, amount)
		SELECT * FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::numeric[])`,
		pIDs, pIdx, pAccounts, pAmount)
	if len(net) > 0 {
		b.Queue(`INSERT INTO journal_balances AS b (account, balance)
			SELECT * FROM unnest($1::text[], $2::numeric[]) ORDER BY 1
			ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance`, balAccounts, balAmounts)
	}
	b.Queue(`UPDATE journal_head SET last_id = $1, hash = $2 WHERE singleton`, newHead.LastID, newHead.Hash)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, JournalHead{}, fmt.Errorf("append %d journal entries: %w", len(entries), translate(err))
	}
	return out, newHead, nil
}

// journalBalances reads cached balances of the accounts starting with
// prefix ("" for all) inside q.
func journalBalances(ctx context.Context, q Querier, prefix string) (map[string]money.Yuan, error) {
	rows, err := q.Query(ctx, `SELECT account, balance::text FROM journal_balances
		WHERE starts_with(account, $1) ORDER BY account`, prefix)
	if err != nil {
		return nil, fmt.Errorf("journal balances: %w", err)
	}
	out := map[string]money.Yuan{}
	var (
		acct, bal string
	)
	_, err = pgx.ForEachRow(rows, []any{&acct, &bal}, func() error {
		y, err := money.Parse(bal)
		if err != nil {
			return fmt.Errorf("%w: balance of %s: %w", errInvariant, acct, err)
		}
		out[acct] = y
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("journal balances: %w", err)
	}
	return out, nil
}

// JournalBalances returns the cached balance of every account whose name
// starts with prefix ("" for all accounts ever posted to). VerifyJournal
// checks the cache against the postings. Errors: database errors.
func (s *Store) JournalBalances(ctx context.Context, prefix string) (map[string]money.Yuan, error) {
	return journalBalances(ctx, s.pool, prefix)
}

// readJournal returns up to limit entries with id > after, in id order, with
// their postings in posting order. An entry whose postings are missing
// comes back with fewer (or no) postings, so validation fails on it.
func readJournal(ctx context.Context, q Querier, after int64, limit int) ([]JournalEntry, error) {
	rows, err := q.Query(ctx, `SELECT e.id, e.kind, e.ref, e.at, e.hash,
			coalesce(array_agg(p.idx ORDER BY p.idx) FILTER (WHERE p.idx IS NOT NULL), '{}'),
			coalesce(array_agg(p.account ORDER BY p.idx) FILTER (WHERE p.idx IS NOT NULL), '{}'),
			coalesce(array_agg(p.amount::text ORDER BY p.idx) FILTER (WHERE p.idx IS NOT NULL), '{}')
		FROM journal_entries e LEFT JOIN journal_postings p ON p.entry_id = e.id
		WHERE e.id > $1
		GROUP BY e.id ORDER BY e.id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	var out []JournalEntry
	var (
		e        JournalEntry
		idx      []int32
		accounts []string
		amounts  []string
	)
	_, err = pgx.ForEachRow(rows, []any{&e.ID, &e.Kind, &e.Ref, &e.At, &e.Hash, &idx, &accounts, &amounts}, func() error {
		je := JournalEntry{Entry: ledger.Entry{ID: e.ID, Kind: e.Kind, Ref: e.Ref, At: e.At}, Hash: slices.Clone(e.Hash)}
		for i := range accounts {
			if int(idx[i]) != i {
				return &postingGapError{entryID: e.ID, idx: i}
			}
			y, err := money.Parse(amounts[i])
			if err != nil {
				return fmt.Errorf("%w: entry %d posting %d: %w", errInvariant, e.ID, i, err)
			}
			je.Postings = append(je.Postings, ledger.Posting{Account: accounts[i], Amount: y})
		}
		out = append(out, je)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	return out, nil
}

// postingGapError: an entry's postings are not numbered 0..n-1 (one was
// removed behind the journal's back).
type postingGapError struct {
	entryID int64
	idx     int
}

func (e *postingGapError) Error() string {
	return fmt.Sprintf("entry %d: posting %d is missing", e.entryID, e.idx)
}

// JournalEntries returns up to limit (≤ 1000) booked entries with id > after,
// oldest first. Errors: database errors.
func (s *Store) JournalEntries(ctx context.Context, after int64, limit int) ([]JournalEntry, error) {
	limit = min(max(limit, 1), journalReadBatch)
	return readJournal(ctx, s.pool, after, limit)
}

// JournalCheck is the outcome of VerifyJournal.
type JournalCheck struct {
	// OK: the chain, every entry, the head row and the cached balances agree
	// and the balances satisfy the conservation invariants.
	OK bool
	// Entries is the number of entries read and verified.
	Entries int64
	// Head is the recomputed chain head (up to the last verified entry).
	Head JournalHead
	// BadEntryID names the first entry that failed (0 when the problem is not
	// one entry, e.g. a cached balance).
	BadEntryID int64
	// Problem describes the first failure ("" when OK).
	Problem string
}

// VerifyJournal recomputes the clearing journal from its rows, in one
// REPEATABLE READ snapshot, and reports the first problem:
//   - ids are 1, 2, 3, … without gaps; each entry is valid (a kind, at least
//     two postings, non-zero amounts, summing to zero) and its stored hash
//     equals ledger.Hash(previous hash, entry): an edited kind, ref, time,
//     account or amount, and a removed or added posting, all break the chain
//     at that entry;
//   - the head row names the last entry and its hash;
//   - every cached balance equals the sum of its postings;
//   - conservation: the balances sum to zero, centre:pool is 0, deposits and
//     payables ≥ 0, receivables ≤ 0, −Σ receivable = Σ payable, the clearing
//     obligation accounts have the right signs and sum to zero, hence
//     −ext:bank = Σ deposits; no account outside these families exists.
//
// A broken journal is not an error: the JournalCheck says what is wrong
// (BadEntryID names the entry). Errors: database errors only.
func (s *Store) VerifyJournal(ctx context.Context) (JournalCheck, error) {
	var out JournalCheck
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = verifyJournal(ctx, tx)
		return err
	})
	if err != nil {
		return JournalCheck{}, fmt.Errorf("verify journal: %w", err)
	}
	return out, nil
}

// readOnly runs fn in a REPEATABLE READ, READ ONLY transaction: one snapshot.
func (s *Store) readOnly(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func verifyJournal(ctx context.Context, tx pgx.Tx) (JournalCheck, error) {
	var out JournalCheck
	fail := func(id int64, format string, args ...any) (JournalCheck, error) {
		out.BadEntryID, out.Problem = id, fmt.Sprintf(format, args...)
		return out, nil
	}
	derived := map[string]money.Yuan{}
	var prev []byte
	var last int64
	for {
		batch, err := readJournal(ctx, tx, last, journalReadBatch)
		var gap *postingGapError
		if errors.As(err, &gap) {
			return fail(gap.entryID, "entry %d: its postings are not numbered 0..n-1 (posting %d missing)", gap.entryID, gap.idx)
		}
		if err != nil {
			return JournalCheck{}, err
		}
		for _, e := range batch {
			if e.ID != last+1 {
				return fail(last+1, "entry %d is missing (next stored id is %d)", last+1, e.ID)
			}
			head, err := ledger.VerifyChain(prev, []ledger.Entry{e.Entry}, [][]byte{e.Hash})
			if err != nil {
				var ce *ledger.ChainError
				if errors.As(err, &ce) {
					err = ce.Err
				}
				return fail(e.ID, "entry %d (%s %s): %v", e.ID, e.Kind, e.Ref, err)
			}
			prev, last = head, e.ID
			out.Entries++
			out.Head = JournalHead{LastID: e.ID, Hash: head}
			for _, p := range e.Postings {
				derived[p.Account] = derived[p.Account].Add(p.Amount)
			}
		}
		if len(batch) < journalReadBatch {
			break
		}
	}
	var stored JournalHead
	if err := tx.QueryRow(ctx, `SELECT last_id, hash FROM journal_head`).Scan(&stored.LastID, &stored.Hash); err != nil {
		return JournalCheck{}, translate(err)
	}
	if stored.LastID != out.Head.LastID || !bytes.Equal(stored.Hash, out.Head.Hash) {
		return fail(0, "head row says entry %d hash %s; the chain ends at entry %d hash %s",
			stored.LastID, stored, out.Head.LastID, out.Head)
	}
	cached, err := journalBalances(ctx, tx, "")
	if err != nil {
		return JournalCheck{}, err
	}
	accounts := make([]string, 0, len(derived)+len(cached))
	for a := range derived {
		accounts = append(accounts, a)
	}
	for a := range cached {
		if _, ok := derived[a]; !ok {
			accounts = append(accounts, a)
		}
	}
	slices.Sort(accounts)
	for _, a := range accounts {
		if !cached[a].Equal(derived[a]) {
			return fail(0, "cached balance of %s is %s, its postings sum to %s", a, cached[a], derived[a])
		}
	}
	if problem := conservationProblem(derived); problem != "" {
		return fail(0, "%s", problem)
	}
	out.OK = true
	return out, nil
}

// conservationProblem checks the money invariants of the clearing journal's
// balances (see VerifyJournal) and describes the first violation, or "".
func conservationProblem(bal map[string]money.Yuan) string {
	accounts := make([]string, 0, len(bal))
	for a := range bal {
		accounts = append(accounts, a)
	}
	slices.Sort(accounts)
	total, deposits, receivables, payables, clearing := money.Zero, money.Zero, money.Zero, money.Zero, money.Zero
	for _, a := range accounts {
		b := bal[a]
		total = total.Add(b)
		switch {
		case a == prepay.AccountBank:
		case a == prepay.AccountPool:
			if !b.IsZero() {
				return fmt.Sprintf("%s holds %s between operations, want 0.00", a, b)
			}
		case strings.HasPrefix(a, "deposit:"):
			if b.IsNegative() {
				return fmt.Sprintf("%s is %s, a deposit cannot be negative", a, b)
			}
			deposits = deposits.Add(b)
		case strings.HasPrefix(a, "receivable:"):
			if b.IsPositive() {
				return fmt.Sprintf("%s is %s, a shortfall claim is ≤ 0", a, b)
			}
			receivables = receivables.Add(b)
		case strings.HasPrefix(a, "payable:"):
			if b.IsNegative() {
				return fmt.Sprintf("%s is %s, an unpaid amount is ≥ 0", a, b)
			}
			payables = payables.Add(b)
		case strings.HasPrefix(a, accountClearingReceivable):
			if b.IsPositive() {
				return fmt.Sprintf("%s is %s, a cleared obligation of a payer is ≤ 0", a, b)
			}
			clearing = clearing.Add(b)
		case strings.HasPrefix(a, accountClearingPayable):
			if b.IsNegative() {
				return fmt.Sprintf("%s is %s, what the centre owes a receiver is ≥ 0", a, b)
			}
			clearing = clearing.Add(b)
		default:
			return fmt.Sprintf("unexpected account %q in the clearing journal", a)
		}
	}
	switch {
	case !total.IsZero():
		return fmt.Sprintf("balances sum to %s, want 0.00", total)
	case !receivables.Neg().Equal(payables):
		return fmt.Sprintf("payers owe %s in shortfalls, receivers are owed %s", receivables.Neg(), payables)
	case !clearing.IsZero():
		return fmt.Sprintf("cleared obligations sum to %s, want 0.00", clearing)
	case !bal[prepay.AccountBank].Neg().Equal(deposits):
		return fmt.Sprintf("net inflow from outside %s ≠ deposits %s", bal[prepay.AccountBank].Neg(), deposits)
	}
	return ""
}
