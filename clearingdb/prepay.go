package clearingdb

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/internal/auditlog"
	"gongji/ledger"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
)

// PrepayMovement is an operator's movement of a province's money with the
// centre: a deposit (FundPrepay), a replenishment of what was drawn
// (ReplenishPrepay) or a payment of an outstanding shortfall (PayShortfall).
type PrepayMovement struct {
	Province string
	// Amount in yuan, > 0 (parse it with money.ParsePositive at the edge).
	Amount money.Yuan
	// Key makes the movement idempotent: the same key with the same request
	// replays, with another request is ErrKeyReused. 1..64 printable ASCII.
	Key string
}

// PrepayAccount is one province's standing with the prepayment pool.
type PrepayAccount struct {
	Province string
	// Deposit is the balance of deposit:<prov> in the journal.
	Deposit money.Yuan
	// Required is the deposit size the latest settlement asked for
	// (required_next; 0 before the first settlement).
	Required money.Yuan
	// Outstanding is the shortfall the province still owes (−receivable:<prov>).
	Outstanding money.Yuan
	// Unpaid is what the centre still owes the province as a receiver
	// (payable:<prov>), waiting for payers' shortfall payments.
	Unpaid money.Yuan
	// ReplenishDue is what was drawn from its deposit and not yet replenished.
	ReplenishDue money.Yuan
	// Warning: an emergency top-up is needed: a shortfall is outstanding, or
	// the latest settlement's draw raised a warning and the deposit is still
	// below the required size.
	Warning bool
}

// PrepayStatus is the pool as a whole.
type PrepayStatus struct {
	Accounts []PrepayAccount // code order
	// PoolTotal is Σ deposits (= −ext:bank, what came in from outside).
	PoolTotal money.Yuan
}

// validateMovement checks a movement before anything is read or written.
func validateMovement(m PrepayMovement) error {
	if _, err := region.ParseProvince(m.Province); err != nil {
		return fmt.Errorf("%w: %w", prepay.ErrUnknownProvince, err)
	}
	if !m.Amount.IsPositive() || !m.Amount.InRange() {
		return fmt.Errorf("%w: %s must be > 0 and within NUMERIC(18,2)", prepay.ErrBadAmount, m.Amount)
	}
	if !validKey(m.Key, keyLenMax) {
		return fmt.Errorf("%w: movement key must be 1..%d printable ASCII characters without spaces, containing no ID number", ErrBadKey, keyLenMax)
	}
	return nil
}

func movementHash(kind string, m PrepayMovement) []byte {
	h := sha256.Sum256([]byte(kind + "\x1f" + m.Province + "\x1f" + m.Amount.String()))
	return h[:]
}

// FundPrepay books money a province pays into its deposit (an initial
// deposit, a re-sizing, an emergency top-up): ext:bank → deposit:<prov>, one
// PREPAY_FUND entry with ref = the movement key. Idempotent by key. Returns
// the province's account after the movement (on a replay: now).
// Needs no transaction. Errors: prepay.ErrUnknownProvince, prepay.ErrBadAmount,
// ErrBadKey, ErrKeyReused, ErrRetriesExhausted, database errors.
func (s *Store) FundPrepay(ctx context.Context, m PrepayMovement, now time.Time) (PrepayAccount, error) {
	return s.movePrepay(ctx, prepay.KindFund, m, now)
}

// ReplenishPrepay books a payer restoring what settlements drew from its
// deposit: ext:bank → deposit:<prov> (PREPAY_REPLENISH), at most what is
// due. Idempotent by key. Errors: as FundPrepay, and prepay.ErrExceedsDue.
func (s *Store) ReplenishPrepay(ctx context.Context, m PrepayMovement, now time.Time) (PrepayAccount, error) {
	return s.movePrepay(ctx, prepay.KindReplenish, m, now)
}

// PayShortfall books a payer paying (part of) its outstanding shortfall and
// passes it on at once to the receivers still unpaid, pro rata to what each
// is owed (prepay.ProRata in code order), as one PREPAY_SHORTFALL_SETTLEMENT
// entry, exactly as prepay.Pool.PayShortfall. Idempotent by key. Errors: as
// FundPrepay, and prepay.ErrExceedsOutstanding.
func (s *Store) PayShortfall(ctx context.Context, m PrepayMovement, now time.Time) (PrepayAccount, error) {
	return s.movePrepay(ctx, prepay.KindShortfallSettlement, m, now)
}

func (s *Store) movePrepay(ctx context.Context, kind string, m PrepayMovement, now time.Time) (PrepayAccount, error) {
	if err := validateMovement(m); err != nil {
		return PrepayAccount{}, err
	}
	var out PrepayAccount
	op := map[string]string{prepay.KindFund: "fund", prepay.KindReplenish: "replenish",
		prepay.KindShortfallSettlement: "shortfall payment"}[kind]
	err := s.retry(ctx, fmt.Sprintf("prepay %s of %s (key %s)", op, m.Province, m.Key), func(ctx context.Context) error {
		return s.inTx(ctx, func(tx pgx.Tx) error {
			if _, err := lockJournal(ctx, tx); err != nil {
				return err
			}
			hash := movementHash(kind, m)
			var (
				prevHash []byte
				prevProv string
			)
			err := tx.QueryRow(ctx, `SELECT request_hash, province FROM prepay_movements WHERE movement_key = $1`, m.Key).Scan(&prevHash, &prevProv)
			switch {
			case err == nil && bytes.Equal(prevHash, hash):
				auditlog.SetOutcome(ctx, auditlog.OutcomeReplayed)
				var err error
				out, err = prepayAccount(ctx, tx, prevProv)
				return err
			case err == nil:
				return fmt.Errorf("%w: movement key %q was used for another movement", ErrKeyReused, m.Key)
			case !errors.Is(err, pgx.ErrNoRows):
				return err
			}
			entry, err := s.movementEntry(ctx, tx, kind, m, now)
			if err != nil {
				return err
			}
			booked, _, err := appendJournal(ctx, tx, []ledger.Entry{entry})
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO prepay_movements (movement_key, kind, province, amount, request_hash, entry_id, at)
				VALUES ($1, $2, $3, $4::numeric, $5, $6, $7)`, m.Key, kind, m.Province, m.Amount.String(), hash, booked[0].ID, now); err != nil {
				return translate(err)
			}
			if kind == prepay.KindReplenish {
				if _, err := tx.Exec(ctx, `UPDATE prepay_accounts SET replenish_due = replenish_due - $2::numeric, updated_at = $3
					WHERE province = $1`, m.Province, m.Amount.String(), now); err != nil {
					return translate(err)
				}
			}
			out, err = prepayAccount(ctx, tx, m.Province)
			return err
		})
	})
	if err != nil {
		return PrepayAccount{}, err
	}
	return out, nil
}

// movementEntry builds the journal entry of a movement after checking it
// against the current balances (the journal head is locked).
func (s *Store) movementEntry(ctx context.Context, tx pgx.Tx, kind string, m PrepayMovement, now time.Time) (ledger.Entry, error) {
	e := ledger.Entry{Kind: kind, Ref: m.Key, At: now, Postings: ledger.Postings{
		{Account: prepay.AccountBank, Amount: m.Amount.Neg()},
	}}
	switch kind {
	case prepay.KindFund:
		e.Postings = append(e.Postings, ledger.Posting{Account: prepay.DepositAccount(m.Province), Amount: m.Amount})
	case prepay.KindReplenish:
		var due string
		err := tx.QueryRow(ctx, `SELECT replenish_due::text FROM prepay_accounts WHERE province = $1 FOR UPDATE`, m.Province).Scan(&due)
		if errors.Is(err, pgx.ErrNoRows) {
			due = "0.00"
		} else if err != nil {
			return ledger.Entry{}, err
		}
		d, err := money.Parse(due)
		if err != nil {
			return ledger.Entry{}, fmt.Errorf("%w: replenish due of %s: %w", errInvariant, m.Province, err)
		}
		if m.Amount.GreaterThan(d) {
			return ledger.Entry{}, fmt.Errorf("%w: %s pays %s, due %s", prepay.ErrExceedsDue, m.Province, m.Amount, d)
		}
		e.Postings = append(e.Postings, ledger.Posting{Account: prepay.DepositAccount(m.Province), Amount: m.Amount})
	case prepay.KindShortfallSettlement:
		rec, err := journalBalances(ctx, tx, "receivable:")
		if err != nil {
			return ledger.Entry{}, err
		}
		if out := rec[prepay.ReceivableAccount(m.Province)].Neg(); m.Amount.GreaterThan(out) {
			return ledger.Entry{}, fmt.Errorf("%w: %s pays %s, outstanding %s", prepay.ErrExceedsOutstanding, m.Province, m.Amount, out)
		}
		pay, err := journalBalances(ctx, tx, "payable:")
		if err != nil {
			return ledger.Entry{}, err
		}
		var receivers []string
		var unpaid []money.Yuan
		for _, code := range region.ProvinceCodes() {
			if u := pay[prepay.PayableAccount(code)]; u.IsPositive() {
				receivers, unpaid = append(receivers, code), append(unpaid, u)
			}
		}
		shares, err := prepay.ProRata(m.Amount, unpaid)
		if err != nil {
			return ledger.Entry{}, fmt.Errorf("%w: shortfall shares: %w", errInvariant, err)
		}
		e.Postings = append(e.Postings, ledger.Posting{Account: prepay.ReceivableAccount(m.Province), Amount: m.Amount})
		for i, code := range receivers {
			if shares[i].IsZero() {
				continue
			}
			e.Postings = append(e.Postings,
				ledger.Posting{Account: prepay.PayableAccount(code), Amount: shares[i].Neg()},
				ledger.Posting{Account: prepay.AccountBank, Amount: shares[i]})
		}
	default:
		return ledger.Entry{}, fmt.Errorf("%w: unknown movement kind %q", errInvariant, kind)
	}
	return e, nil
}

// PrepayStatus returns the standing of one province (province != "") or of
// all 32 (province == ""), in one snapshot. Errors: prepay.ErrUnknownProvince;
// database errors.
func (s *Store) PrepayStatus(ctx context.Context, province string) (PrepayStatus, error) {
	codes := region.ProvinceCodes()
	if province != "" {
		if _, err := region.ParseProvince(province); err != nil {
			return PrepayStatus{}, fmt.Errorf("%w: %w", prepay.ErrUnknownProvince, err)
		}
		codes = []string{province}
	}
	var out PrepayStatus
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		for _, code := range codes {
			a, err := prepayAccount(ctx, tx, code)
			if err != nil {
				return err
			}
			out.Accounts = append(out.Accounts, a)
		}
		deposits, err := journalBalances(ctx, tx, "deposit:")
		if err != nil {
			return err
		}
		for _, d := range deposits {
			out.PoolTotal = out.PoolTotal.Add(d)
		}
		return nil
	})
	if err != nil {
		return PrepayStatus{}, fmt.Errorf("prepay status: %w", err)
	}
	return out, nil
}

// prepayAccount reads one province's account inside q.
func prepayAccount(ctx context.Context, q Querier, province string) (PrepayAccount, error) {
	a := PrepayAccount{Province: province}
	var dep, rec, pay, due, req string
	var lastWarning bool
	err := q.QueryRow(ctx, `SELECT
			coalesce((SELECT balance FROM journal_balances WHERE account = $2), 0)::text,
			coalesce((SELECT balance FROM journal_balances WHERE account = $3), 0)::text,
			coalesce((SELECT balance FROM journal_balances WHERE account = $4), 0)::text,
			coalesce((SELECT replenish_due FROM prepay_accounts WHERE province = $1), 0)::text,
			coalesce((SELECT required FROM prepay_accounts WHERE province = $1), 0)::text,
			coalesce((SELECT warning FROM prepay_rows WHERE province = $1 ORDER BY setlym DESC LIMIT 1), false)`,
		province, prepay.DepositAccount(province), prepay.ReceivableAccount(province), prepay.PayableAccount(province)).
		Scan(&dep, &rec, &pay, &due, &req, &lastWarning)
	if err != nil {
		return PrepayAccount{}, fmt.Errorf("prepay account %s: %w", province, err)
	}
	for _, f := range []struct {
		dst *money.Yuan
		src string
	}{{&a.Deposit, dep}, {&a.Outstanding, rec}, {&a.Unpaid, pay}, {&a.ReplenishDue, due}, {&a.Required, req}} {
		v, err := money.Parse(f.src)
		if err != nil {
			return PrepayAccount{}, fmt.Errorf("%w: prepay account %s: %w", errInvariant, province, err)
		}
		*f.dst = v
	}
	a.Outstanding = a.Outstanding.Neg()
	a.Warning = a.Outstanding.IsPositive() || lastWarning && a.Deposit.LessThan(a.Required)
	return a, nil
}
