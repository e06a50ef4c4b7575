package provincedb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/money"
	"gongji/sharing"
)

const usageCols = `usage_key, request_hash, role, approved, coalesce(refusal, ''), relationship_id, kind, amount, reversed,
	payer_province, payer_region, payee_province, payee_region, sharer_ref, beneficiary_ref, cross_province,
	occurred_at, recorded_at, quota_remaining`

// usageRow is a stored answer to a usage key.
type usageRow struct {
	sharing.UsageResult
	hash []byte
}

func scanUsage(row pgx.Row) (usageRow, error) {
	var r usageRow
	u := &r.Usage
	var role, refusal, kind string
	err := row.Scan(&u.Key, &r.hash, &role, &r.Approved, &refusal, &u.RelationshipID, &kind, &u.Amount, &u.Reversed,
		&u.PayerProvince, &u.PayerRegion, &u.PayeeProvince, &u.PayeeRegion, &u.SharerRef, &u.BeneficiaryRef,
		&u.CrossProvince, &u.OccurredAt, &u.RecordedAt, &r.Remaining)
	u.Role, u.Kind, r.Refusal = sharing.Role(role), sharing.Kind(kind), sharing.Refusal(refusal)
	u.OccurredAt, u.RecordedAt = u.OccurredAt.UTC(), u.RecordedAt.UTC()
	return r, err
}

func getUsage(ctx context.Context, q Querier, key string, forUpdate bool) (usageRow, error) {
	sql := `SELECT ` + usageCols + ` FROM usages WHERE usage_key = $1`
	if forUpdate {
		sql += ` FOR UPDATE`
	}
	r, err := scanUsage(q.QueryRow(ctx, sql, key))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("usage %s: %w", key, sharing.ErrNotFound)
	}
	return r, err
}

// lookupUsage returns the stored answer under key; ErrKeyReused on a
// different request hash.
func lookupUsage(ctx context.Context, q Querier, key string, hash []byte) (sharing.UsageResult, bool, error) {
	r, err := getUsage(ctx, q, key, false)
	if errors.Is(err, sharing.ErrNotFound) {
		return sharing.UsageResult{}, false, nil
	}
	if err != nil {
		return sharing.UsageResult{}, false, err
	}
	res, err := replayUsage(r, key, hash)
	return res, err == nil, err
}

// replayUsage is the stored answer r given again: ErrKeyReused when the
// request's hash differs from the stored one.
func replayUsage(r usageRow, key string, hash []byte) (sharing.UsageResult, error) {
	if !bytes.Equal(r.hash, hash) {
		return sharing.UsageResult{}, fmt.Errorf("usage %s: %w", key, sharing.ErrKeyReused)
	}
	// The answer as first given: nothing was reversed yet.
	r.Usage.Reversed = money.Zero
	r.Replayed = true
	return r.UsageResult, nil
}

// insertUsage stores an answer. A concurrent transaction that stored the same
// key first makes this one retry (and the retry replays).
func insertUsage(ctx context.Context, q Querier, res sharing.UsageResult, hash []byte) error {
	b := &pgx.Batch{}
	queueInsertUsage(b, res, hash, false)
	return usageConflict(q.SendBatch(ctx, b).Close())
}

// queueInsertUsage queues insertUsage's row on b; withEntry: its entry is the
// one queueBook queued before it in the same batch. Map the batch's error with
// usageConflict.
func queueInsertUsage(b *pgx.Batch, res sharing.UsageResult, hash []byte, withEntry bool) {
	u := res.Usage
	entry := "NULL"
	if withEntry {
		entry = entryIDSQL
	}
	b.Queue(`
		INSERT INTO usages (usage_key, request_hash, role, approved, refusal, relationship_id, kind, amount,
			payer_province, payer_region, payee_province, payee_region, sharer_ref, beneficiary_ref, cross_province,
			occurred_at, recorded_at, quota_remaining, entry_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, `+entry+`)`,
		u.Key, hash, string(u.Role), res.Approved, nullString(string(res.Refusal)), u.RelationshipID, string(u.Kind),
		u.Amount, u.PayerProvince, u.PayerRegion, u.PayeeProvince, u.PayeeRegion, u.SharerRef, u.BeneficiaryRef,
		u.CrossProvince, u.OccurredAt, u.RecordedAt, res.Remaining)
}

// usageConflict turns the unique violation of a concurrent transaction that
// stored the same usage key first into errRetry (the retry replays).
func usageConflict(err error) error {
	if code, constraint := pgCode(err); code == codeUniqueViolation && constraint == "usages_pkey" {
		return errRetry
	}
	return err
}

// Authorize implements sharing.Store. One transaction: the relationship row
// locked FOR UPDATE first, so racing usages of one quota are decided one after
// the other and can never together exceed it (R9).
func (s *Store) Authorize(ctx context.Context, req sharing.UsageRequest, role sharing.Role, now time.Time) (sharing.UsageResult, error) {
	var out sharing.UsageResult
	if role != sharing.RoleLocal && role != sharing.RolePayer {
		return out, fmt.Errorf("provincedb: authorize in role %s", role)
	}
	err := s.inTx(ctx, "authorize", func(tx pgx.Tx) error {
		hash := req.Hash()
		// One round trip for what the decision needs: a stored answer under
		// the key, the relationship locked (R9) and its sharer.
		var (
			stored    usageRow
			storedErr error
			r         relRow
			relErr    error
			sharer    sharing.Person
			sharerErr error
		)
		b := &pgx.Batch{}
		b.Queue(`SELECT `+usageCols+` FROM usages WHERE usage_key = $1`, req.Key).QueryRow(func(row pgx.Row) error {
			stored, storedErr = scanUsage(row)
			return nil
		})
		b.Queue(`SELECT `+relCols+` FROM relationships WHERE id = $1 FOR UPDATE`, req.RelationshipID).QueryRow(func(row pgx.Row) error {
			r, relErr = scanRel(row)
			return nil
		})
		b.Queue(`SELECT `+personColsP+` FROM relationships r JOIN persons p ON p.person_ref = r.sharer_ref WHERE r.id = $1`,
			req.RelationshipID).QueryRow(func(row pgx.Row) error {
			sharer, sharerErr = scanPerson(row)
			return nil
		})
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		switch {
		case storedErr == nil:
			res, err := replayUsage(stored, req.Key, hash)
			out = res
			return err
		case !errors.Is(storedErr, pgx.ErrNoRows):
			return storedErr
		case errors.Is(relErr, pgx.ErrNoRows):
			return fmt.Errorf("relationship %s: %w", req.RelationshipID, sharing.ErrNotFound)
		case relErr != nil:
			return relErr
		case sharerErr != nil:
			return fmt.Errorf("sharer of relationship %s: %w", req.RelationshipID, sharerErr)
		}
		if !r.authority {
			return fmt.Errorf("%w: relationship %s is a replica here", sharing.ErrWrongProvince, r.ID)
		}
		u := sharing.NewUsage(req, r.Relationship, role, now)
		refusal := r.Authorize(req.Amount)
		if refusal == sharing.RefusalNone {
			// Defence in depth: an ACTIVE relationship implies an able sharer
			// (R6 dissolves it otherwise), but the money is checked at the source.
			switch err := sharer.CanShare(); {
			case errors.Is(err, sharing.ErrNoPersonalAccount):
				refusal = sharing.RefusalNoPersonalAccount
			case err != nil:
				refusal = sharing.RefusalSharerInactive
			}
		}
		if refusal != sharing.RefusalNone {
			out = sharing.UsageResult{Approved: false, Refusal: refusal, Usage: u, Remaining: r.Remaining()}
			return insertUsage(ctx, tx, out, hash)
		}
		// One round trip for every write: the entry, the quota's use, the
		// answer and the outbox row.
		kind, ps := sharing.UsagePostings(u)
		w := &pgx.Batch{}
		if _, err := queueBook(w, kind, u.Key, now, ps); err != nil {
			return err
		}
		after := r.WithUsage(u.Amount)
		w.Queue(`UPDATE relationships SET used = $2 WHERE id = $1`, r.ID, after.Used)
		out = sharing.UsageResult{Approved: true, Usage: u, Remaining: after.Remaining()}
		queueInsertUsage(w, out, hash, true)
		if err := queueOutbox(w, sharing.OutboxUsage, u.Role, u.CrossProvince, u.Key, u, now); err != nil {
			return err
		}
		return usageConflict(tx.SendBatch(ctx, w).Close())
	})
	return out, err
}

// RecordPayeeUsage implements sharing.Store. One transaction.
func (s *Store) RecordPayeeUsage(ctx context.Context, in sharing.UsageResult) (sharing.UsageResult, error) {
	var out sharing.UsageResult
	u := in.Usage
	err := s.inTx(ctx, "record payee usage", func(tx pgx.Tx) error {
		hash := u.Request().Hash()
		res, found, err := lookupUsage(ctx, tx, u.Key, hash)
		if err != nil {
			return err
		}
		if found {
			if !res.Approved || res.Usage.Role != sharing.RolePayee {
				return fmt.Errorf("%w: usage %s is already recorded here as %s", sharing.ErrKeyReused, u.Key, res.Usage.Role)
			}
			out = res
			return nil
		}
		kind, ps := sharing.UsagePostings(u)
		w := &pgx.Batch{}
		if _, err := queueBook(w, kind, u.Key, u.RecordedAt, ps); err != nil {
			return err
		}
		out = sharing.UsageResult{Approved: true, Usage: u, Remaining: in.Remaining}
		queueInsertUsage(w, out, hash, true)
		if err := queueOutbox(w, sharing.OutboxUsage, sharing.RolePayee, u.CrossProvince, u.Key, u, u.RecordedAt); err != nil {
			return err
		}
		return usageConflict(tx.SendBatch(ctx, w).Close())
	})
	return out, err
}

const reversalCols = `v.reversal_key, v.request_hash, v.role, v.amount, v.occurred_at, v.recorded_at,
	v.reversed_total, v.quota_remaining, ` + usageColsU

// usageColsU is usageCols qualified for a join on alias u.
const usageColsU = `u.usage_key, u.request_hash, u.role, u.approved, coalesce(u.refusal, ''), u.relationship_id, u.kind,
	u.amount, u.reversed, u.payer_province, u.payer_region, u.payee_province, u.payee_region, u.sharer_ref,
	u.beneficiary_ref, u.cross_province, u.occurred_at, u.recorded_at`

func scanReversal(row pgx.Row) (sharing.ReversalResult, []byte, error) {
	var res sharing.ReversalResult
	rev := &res.Reversal
	var hash []byte
	var role string
	var u usageRow
	uu := &u.Usage
	var urole, refusal, kind string
	err := row.Scan(&rev.Key, &hash, &role, &rev.Amount, &rev.OccurredAt, &rev.RecordedAt, &res.ReversedTotal, &res.Remaining,
		&uu.Key, &u.hash, &urole, &u.Approved, &refusal, &uu.RelationshipID, &kind, &uu.Amount, &uu.Reversed,
		&uu.PayerProvince, &uu.PayerRegion, &uu.PayeeProvince, &uu.PayeeRegion, &uu.SharerRef, &uu.BeneficiaryRef,
		&uu.CrossProvince, &uu.OccurredAt, &uu.RecordedAt)
	if err != nil {
		return res, nil, err
	}
	uu.Kind, uu.Role = sharing.Kind(kind), sharing.Role(urole)
	res.Reversal = sharing.NewReversal(sharing.ReversalRequest{Key: rev.Key, Amount: rev.Amount, OccurredAt: rev.OccurredAt},
		*uu, sharing.Role(role), rev.RecordedAt.UTC())
	return res, hash, nil
}

func lookupReversal(ctx context.Context, q Querier, key string, hash []byte) (sharing.ReversalResult, bool, error) {
	res, stored, err := scanReversal(q.QueryRow(ctx, `
		SELECT `+reversalCols+` FROM reversals v JOIN usages u ON u.usage_key = v.usage_key
		WHERE v.reversal_key = $1`, key))
	if errors.Is(err, pgx.ErrNoRows) {
		return sharing.ReversalResult{}, false, nil
	}
	if err != nil {
		return sharing.ReversalResult{}, false, err
	}
	if !bytes.Equal(stored, hash) {
		return sharing.ReversalResult{}, false, fmt.Errorf("reversal %s: %w", key, sharing.ErrKeyReused)
	}
	res.Replayed = true
	return res, true, nil
}

// Reverse implements sharing.Store. One transaction: the usage row locked,
// then its relationship, then the accounts.
func (s *Store) Reverse(ctx context.Context, req sharing.ReversalRequest, now time.Time) (sharing.ReversalResult, error) {
	var out sharing.ReversalResult
	err := s.inTx(ctx, "reverse", func(tx pgx.Tx) error {
		hash := req.Hash()
		res, found, err := lookupReversal(ctx, tx, req.Key, hash)
		if err != nil || found {
			out = res
			return err
		}
		ur, err := getUsage(ctx, tx, req.UsageKey, true)
		if err != nil {
			return err
		}
		u := ur.Usage
		if !ur.Approved {
			return fmt.Errorf("usage %s was refused: %w", u.Key, sharing.ErrNotFound)
		}
		if u.Role == sharing.RolePayee {
			return fmt.Errorf("%w: usage %s is a payee record; the payer reverses it", sharing.ErrWrongProvince, u.Key)
		}
		if err := sharing.CheckReversal(u, req.Amount); err != nil {
			return err
		}
		r, err := getRel(ctx, tx, u.RelationshipID, true)
		if err != nil {
			return err
		}
		after, toQuota := r.WithReversal(req.Amount)
		kind, ps := sharing.ReversalPostings(u, req.Amount, toQuota)
		w := &pgx.Batch{}
		if _, err := queueBook(w, kind, req.Key, now, ps); err != nil {
			return err
		}
		w.Queue(`UPDATE relationships SET used = $2, returned = $3 WHERE id = $1`, r.ID, after.Used, after.Returned)
		out = sharing.ReversalResult{
			Reversal:      sharing.NewReversal(req, u, u.Role, now),
			ReversedTotal: u.Reversed.Add(req.Amount),
			Remaining:     after.Remaining(),
		}
		if err := queueInsertReversal(w, out, hash); err != nil {
			return err
		}
		return reversalConflict(tx.SendBatch(ctx, w).Close())
	})
	return out, err
}

// queueInsertReversal queues the reversal's row, the usage's reversed total
// and the outbox row on b, after the entry queueBook queued. Map the batch's
// error with reversalConflict.
func queueInsertReversal(b *pgx.Batch, res sharing.ReversalResult, hash []byte) error {
	rev := res.Reversal
	b.Queue(`UPDATE usages SET reversed = reversed + $2 WHERE usage_key = $1`, rev.UsageKey, rev.Amount)
	b.Queue(`
		INSERT INTO reversals (reversal_key, request_hash, usage_key, role, amount, reversed_total, quota_remaining,
			occurred_at, recorded_at, entry_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, `+entryIDSQL+`)`,
		rev.Key, hash, rev.UsageKey, string(rev.Role), rev.Amount, res.ReversedTotal, res.Remaining,
		rev.OccurredAt, rev.RecordedAt)
	return queueOutbox(b, sharing.OutboxReversal, rev.Role, rev.CrossProvince, rev.Key, rev, rev.RecordedAt)
}

// reversalConflict turns the unique violation of a concurrent transaction
// that stored the same reversal key first into errRetry (the retry replays).
func reversalConflict(err error) error {
	if code, constraint := pgCode(err); code == codeUniqueViolation && constraint == "reversals_pkey" {
		return errRetry
	}
	return err
}

// RecordPayeeReversal implements sharing.Store. One transaction.
func (s *Store) RecordPayeeReversal(ctx context.Context, in sharing.ReversalResult) (sharing.ReversalResult, error) {
	var out sharing.ReversalResult
	r := in.Reversal
	err := s.inTx(ctx, "record payee reversal", func(tx pgx.Tx) error {
		req := r.Request()
		hash := req.Hash()
		res, found, err := lookupReversal(ctx, tx, r.Key, hash)
		if err != nil || found {
			out = res
			return err
		}
		ur, err := getUsage(ctx, tx, r.UsageKey, true)
		if err != nil {
			return err
		}
		u := ur.Usage
		if !ur.Approved || u.Role != sharing.RolePayee {
			return fmt.Errorf("%w: usage %s is not a payee record here", sharing.ErrWrongProvince, u.Key)
		}
		if err := sharing.CheckReversal(u, r.Amount); err != nil {
			return err
		}
		kind, ps := sharing.ReversalPostings(u, r.Amount, true)
		w := &pgx.Batch{}
		if _, err := queueBook(w, kind, r.Key, r.RecordedAt, ps); err != nil {
			return err
		}
		out = sharing.ReversalResult{
			Reversal:      sharing.NewReversal(req, u, sharing.RolePayee, r.RecordedAt),
			ReversedTotal: u.Reversed.Add(r.Amount),
			Remaining:     in.Remaining,
		}
		if err := queueInsertReversal(w, out, hash); err != nil {
			return err
		}
		return reversalConflict(tx.SendBatch(ctx, w).Close())
	})
	return out, err
}

// LookupUsage implements sharing.Store. One statement.
func (s *Store) LookupUsage(ctx context.Context, key string, hash []byte) (sharing.UsageResult, bool, error) {
	res, found, err := lookupUsage(ctx, s.pool, key, hash)
	return res, found, translate("lookup usage", err)
}

// PrepareUsage implements sharing.Store. One round trip (a pipelined batch,
// one implicit transaction, so the three reads see one snapshot): the answer
// under key, the relationship, and its beneficiary joined through it.
func (s *Store) PrepareUsage(ctx context.Context, key string, hash []byte, relationshipID string, withBeneficiary bool) (sharing.UsagePrep, error) {
	var (
		out       sharing.UsagePrep
		stored    usageRow
		storedErr error
		r         relRow
		relErr    error
		ben       sharing.Person
		benErr    error
	)
	b := &pgx.Batch{}
	b.Queue(`SELECT `+usageCols+` FROM usages WHERE usage_key = $1`, key).QueryRow(func(row pgx.Row) error {
		stored, storedErr = scanUsage(row)
		return nil
	})
	b.Queue(`SELECT `+relCols+` FROM relationships WHERE id = $1`, relationshipID).QueryRow(func(row pgx.Row) error {
		r, relErr = scanRel(row)
		return nil
	})
	if withBeneficiary {
		b.Queue(`SELECT `+personColsP+` FROM relationships r JOIN persons p ON p.person_ref = r.beneficiary_ref WHERE r.id = $1`,
			relationshipID).QueryRow(func(row pgx.Row) error {
			ben, benErr = scanPerson(row)
			return nil
		})
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return out, translate("prepare usage", err)
	}
	switch {
	case storedErr == nil:
		res, err := replayUsage(stored, key, hash)
		out.Found, out.Answer = err == nil, res
		return out, translate("prepare usage", err)
	case !errors.Is(storedErr, pgx.ErrNoRows):
		return out, translate("prepare usage", storedErr)
	case errors.Is(relErr, pgx.ErrNoRows):
		return out, fmt.Errorf("relationship %s: %w", relationshipID, sharing.ErrNotFound)
	case relErr != nil:
		return out, translate("prepare usage", relErr)
	}
	out.Relationship = r.Relationship
	switch {
	case withBeneficiary && benErr == nil:
		out.Beneficiary = &ben
	case withBeneficiary && !errors.Is(benErr, pgx.ErrNoRows):
		return out, translate("prepare usage", benErr)
	}
	return out, nil
}

// LookupReversal implements sharing.Store. One statement.
func (s *Store) LookupReversal(ctx context.Context, key string, hash []byte) (sharing.ReversalResult, bool, error) {
	res, found, err := lookupReversal(ctx, s.pool, key, hash)
	return res, found, translate("lookup reversal", err)
}

// GetUsage implements sharing.Store. One statement.
func (s *Store) GetUsage(ctx context.Context, key string) (sharing.Usage, error) {
	r, err := getUsage(ctx, s.pool, key, false)
	if err == nil && !r.Approved {
		err = fmt.Errorf("usage %s was refused: %w", key, sharing.ErrNotFound)
	}
	return r.Usage, translate("get usage", err)
}

// GetReversal implements sharing.Store. One statement.
func (s *Store) GetReversal(ctx context.Context, key string) (sharing.Reversal, error) {
	res, _, err := scanReversal(s.pool.QueryRow(ctx, `
		SELECT `+reversalCols+` FROM reversals v JOIN usages u ON u.usage_key = v.usage_key
		WHERE v.reversal_key = $1`, key))
	if errors.Is(err, pgx.ErrNoRows) {
		err = fmt.Errorf("reversal %s: %w", key, sharing.ErrNotFound)
	}
	return res.Reversal, translate("get reversal", err)
}

// ListUsages implements sharing.Store. One statement.
func (s *Store) ListUsages(ctx context.Context, f sharing.UsageFilter) ([]sharing.Usage, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT `+usageCols+` FROM usages
		WHERE relationship_id = $1 AND approved AND usage_key > $2
		ORDER BY usage_key LIMIT $3`, f.RelationshipID, f.AfterKey, f.Limit)
	if err != nil {
		return nil, translate("list usages", err)
	}
	defer rows.Close()
	var out []sharing.Usage
	for rows.Next() {
		r, err := scanUsage(rows)
		if err != nil {
			return nil, translate("list usages", err)
		}
		out = append(out, r.Usage)
	}
	return out, translate("list usages", rows.Err())
}
