package provincedb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/money"
	"gongji/sharing"
)

const personCols = `person_ref, masked_id, province_code, region_code, scheme, mode, status, insured, version, created_at, updated_at`

// personColsP is personCols qualified for a join on alias p.
const personColsP = `p.person_ref, p.masked_id, p.province_code, p.region_code, p.scheme, p.mode, p.status, p.insured,
	p.version, p.created_at, p.updated_at`

func scanPerson(row pgx.Row) (sharing.Person, error) {
	var p sharing.Person
	var scheme, mode, status string
	err := row.Scan(&p.Ref, &p.MaskedID, &p.Province, &p.Region, &scheme, &mode, &status, &p.Insured, &p.Version, &p.CreatedAt, &p.UpdatedAt)
	p.Scheme, p.Mode, p.Status = sharing.Scheme(scheme), sharing.Mode(mode), sharing.PersonStatus(status)
	p.CreatedAt, p.UpdatedAt = p.CreatedAt.UTC(), p.UpdatedAt.UTC()
	return p, err
}

// getPerson reads a person; lock is "", "FOR SHARE" or "FOR UPDATE".
func getPerson(ctx context.Context, q Querier, ref, lock string) (sharing.Person, error) {
	p, err := scanPerson(q.QueryRow(ctx, `SELECT `+personCols+` FROM persons WHERE person_ref = $1 `+lock, ref))
	if errors.Is(err, pgx.ErrNoRows) {
		return p, fmt.Errorf("person %s: %w", ref, sharing.ErrNotFound)
	}
	return p, err
}

// RegisterPerson implements sharing.Store. One transaction: the person and
// their (zero) personal account, or — for a person registered already — the
// person locked and the enrollment change applied.
func (s *Store) RegisterPerson(ctx context.Context, p sharing.Person, now time.Time) (sharing.RegisterResult, error) {
	var out sharing.RegisterResult
	err := s.inTx(ctx, "register person", func(tx pgx.Tx) error {
		out = sharing.RegisterResult{}
		tag, err := tx.Exec(ctx, `
			INSERT INTO persons (`+personCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			ON CONFLICT (person_ref) DO NOTHING`,
			p.Ref, p.MaskedID, p.Province, p.Region, string(p.Scheme), string(p.Mode), string(p.Status), p.Insured,
			p.Version, p.CreatedAt, p.UpdatedAt)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			out.Created, out.Person = true, p
			_, err = tx.Exec(ctx, `INSERT INTO accounts (name) VALUES ($1)`, sharing.AccountPerson(p.Ref))
			return err
		}
		old, err := getPerson(ctx, tx, p.Ref, "FOR UPDATE")
		if err != nil {
			return err
		}
		if old.MaskedID != p.MaskedID || old.Province != p.Province {
			return fmt.Errorf("person %s registered as %s in %s: %w", p.Ref, old.MaskedID, old.Province, sharing.ErrPersonExists)
		}
		out.EnrollmentResult, err = changeEnrollment(ctx, tx, old,
			sharing.EnrollmentChange{PersonRef: p.Ref, Enrollment: p.Enrollment}, p.Province, now)
		return err
	})
	return out, err
}

// GetPerson implements sharing.Store. One statement.
func (s *Store) GetPerson(ctx context.Context, ref string) (sharing.Person, error) {
	p, err := getPerson(ctx, s.pool, ref, "")
	return p, translate("get person", err)
}

// ChangeEnrollment implements sharing.Store. One transaction: the person
// (locked), then every live relationship of theirs (locked, by id). A change
// with a key stores its answer under it (commands), so a retry gets the first
// answer even after later changes, and the key reused for another change is
// ErrKeyReused.
func (s *Store) ChangeEnrollment(ctx context.Context, ch sharing.EnrollmentChange, province string, now time.Time) (sharing.EnrollmentResult, error) {
	var res sharing.EnrollmentResult
	err := s.inTx(ctx, "change enrollment", func(tx pgx.Tx) error {
		var hash []byte
		if ch.Key != "" {
			hash = ch.Hash()
			found, err := lookupCommand(ctx, tx, province, ch.Key, hash, &res)
			if err != nil || found {
				res.Replayed = found
				return err
			}
		}
		old, err := getPerson(ctx, tx, ch.PersonRef, "FOR UPDATE")
		if err != nil {
			return err
		}
		if res, err = changeEnrollment(ctx, tx, old, ch, province, now); err != nil {
			return err
		}
		if ch.Key != "" {
			return saveCommand(ctx, tx, province, ch.Key, "ENROLLMENT", hash, res, now)
		}
		return nil
	})
	return res, err
}

// changeEnrollment applies ch to old (locked FOR UPDATE by the caller) and
// the R6/R7 consequences. Needs a transaction.
func changeEnrollment(ctx context.Context, tx pgx.Tx, old sharing.Person, ch sharing.EnrollmentChange, province string, now time.Time) (sharing.EnrollmentResult, error) {
	res := sharing.EnrollmentResult{Person: old}
	target := ch.Target(old.Enrollment)
	if err := target.Validate(province); err != nil {
		return res, err
	}
	if old.Enrollment == target {
		return res, nil
	}
	p := old
	p.Enrollment = target
	p.Version++
	p.UpdatedAt = now
	if _, err := tx.Exec(ctx, `
		UPDATE persons SET region_code = $2, scheme = $3, mode = $4, status = $5, insured = $6, version = $7, updated_at = $8
		WHERE person_ref = $1`, p.Ref, p.Region, string(p.Scheme), string(p.Mode), string(p.Status), p.Insured, p.Version, p.UpdatedAt); err != nil {
		return res, err
	}
	res.Person = p
	reason, ends := sharing.AutoDissolveReason(old, p, ch.Event)
	if !ends {
		return res, nil
	}
	res.Reason = reason
	rels, err := queryRels(ctx, tx, `
		SELECT `+relCols+` FROM relationships
		WHERE (sharer_ref = $1 OR beneficiary_ref = $1) AND status IN ('PENDING', 'ACTIVE')
		ORDER BY id FOR UPDATE`, p.Ref)
	if err != nil {
		return res, err
	}
	for _, r := range rels {
		if !r.authority {
			// Only a beneficiary can be here without being the authority: ask
			// the sharer's node, durably, in this transaction.
			cmd := sharing.Command{
				Key: "auto-dissolve:" + r.ID, Origin: province, Kind: sharing.CommandDissolve,
				RelationshipID: r.ID, By: sharing.SideBeneficiary, Reason: reason,
			}
			if err := relay(ctx, tx, sharing.RelayDissolve, r.SharerProvince, cmd.Key, cmd, now); err != nil {
				return res, err
			}
			res.Forwarded = append(res.Forwarded, cmd)
			continue
		}
		after, ps, err := r.Dissolve(reason, now)
		if err != nil {
			return res, err
		}
		if err := commitRel(ctx, tx, r.Relationship, after, sharing.EntryQuotaReturn, ps, now); err != nil {
			return res, err
		}
		res.Dissolved = append(res.Dissolved, after)
	}
	return res, nil
}

// Credit implements sharing.Store. One transaction.
func (s *Store) Credit(ctx context.Context, m sharing.MovementRequest, province string, now time.Time) (sharing.Movement, error) {
	return s.move(ctx, "credit", sharing.EntryCredit, m, province, now)
}

// SpendOwn implements sharing.Store. One transaction.
func (s *Store) SpendOwn(ctx context.Context, m sharing.MovementRequest, province string, now time.Time) (sharing.Movement, error) {
	return s.move(ctx, "spend own", sharing.EntryOwnSpend, m, province, now)
}

func (s *Store) move(ctx context.Context, op, kind string, m sharing.MovementRequest, province string, now time.Time) (sharing.Movement, error) {
	var out sharing.Movement
	err := s.inTx(ctx, op, func(tx pgx.Tx) error {
		hash := m.Hash(kind)
		if found, err := lookupCommand(ctx, tx, province, m.Key, hash, &out); err != nil || found {
			return err
		}
		p, err := getPerson(ctx, tx, m.PersonRef, "FOR SHARE")
		if err != nil {
			return err
		}
		if p.Status != sharing.PersonActive {
			return fmt.Errorf("%w: %s is %s", sharing.ErrPersonInactive, p.Ref, p.Status)
		}
		acct := sharing.AccountPerson(p.Ref)
		var ps = sharing.CreditPostings(p.Ref, m.Amount)
		if kind == sharing.EntryCredit {
			if !p.HasPersonalAccount() {
				return fmt.Errorf("%w: %s is %s/%s", sharing.ErrNoPersonalAccount, p.Ref, p.Scheme, p.Mode)
			}
		} else {
			avail, err := balance(ctx, tx, acct, true)
			if err != nil {
				return err
			}
			if m.Amount.GreaterThan(avail) {
				return fmt.Errorf("%w: available %s, asked %s (earmarked quota cannot be spent)", sharing.ErrInsufficientBalance, avail, m.Amount)
			}
			ps = sharing.OwnSpendPostings(p.Ref, m.Amount)
		}
		id, err := book(ctx, tx, kind, m.Key, now, ps)
		if err != nil {
			return err
		}
		avail, err := balance(ctx, tx, acct, false)
		if err != nil {
			return err
		}
		out = sharing.Movement{Key: m.Key, Kind: kind, PersonRef: p.Ref, Amount: m.Amount, Available: avail, EntryID: id, At: now}
		return saveCommand(ctx, tx, province, m.Key, kind, hash, out, now)
	})
	return out, err
}

// GetAccount implements sharing.Store. One statement.
func (s *Store) GetAccount(ctx context.Context, ref string) (sharing.Account, error) {
	a := sharing.Account{PersonRef: ref}
	var earmarked money.Yuan
	err := s.pool.QueryRow(ctx, `
		SELECT a.balance,
		       (SELECT coalesce(sum(q.balance), 0) FROM relationships r JOIN accounts q ON q.name = 'quota:' || r.id
		        WHERE r.authority AND r.sharer_ref = $1 AND r.status IN ('PENDING', 'ACTIVE'))
		FROM persons p JOIN accounts a ON a.name = 'person:' || p.person_ref
		WHERE p.person_ref = $1`, ref).Scan(&a.Available, &earmarked)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("person %s: %w", ref, sharing.ErrNotFound)
	}
	a.Earmarked = earmarked
	return a, translate("get account", err)
}
