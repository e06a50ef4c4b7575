package provincedb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/ledger"
	"gongji/money"
	"gongji/sharing"
)

const relCols = `id, authority, sharer_ref, sharer_province, sharer_region, beneficiary_ref, beneficiary_province,
	relation, proposed_by, status, coalesce(dissolve_reason, ''), quota, used, returned, version,
	proposed_at, expires_at, activated_at, ended_at, updated_at`

// relRow is a relationship row: the domain value plus whether this node is
// its authority.
type relRow struct {
	sharing.Relationship
	authority bool
}

func scanRel(row pgx.Row) (relRow, error) {
	var r relRow
	var relation, by, status, reason string
	var activated, ended *time.Time
	err := row.Scan(&r.ID, &r.authority, &r.SharerRef, &r.SharerProvince, &r.SharerRegion, &r.BeneficiaryRef,
		&r.BeneficiaryProvince, &relation, &by, &status, &reason, &r.Quota, &r.Used, &r.Returned, &r.Version,
		&r.ProposedAt, &r.ExpiresAt, &activated, &ended, &r.UpdatedAt)
	if err != nil {
		return r, err
	}
	r.Relation, r.ProposedBy, r.Status = sharing.Relation(relation), sharing.Side(by), sharing.Status(status)
	r.DissolveReason = sharing.DissolveReason(reason)
	r.ProposedAt, r.ExpiresAt, r.UpdatedAt = r.ProposedAt.UTC(), r.ExpiresAt.UTC(), r.UpdatedAt.UTC()
	if activated != nil {
		r.ActivatedAt = activated.UTC()
	}
	if ended != nil {
		r.EndedAt = ended.UTC()
	}
	return r, nil
}

func queryRels(ctx context.Context, q Querier, sql string, args ...any) ([]relRow, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []relRow
	for rows.Next() {
		r, err := scanRel(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func getRel(ctx context.Context, q Querier, id string, forUpdate bool) (relRow, error) {
	sql := `SELECT ` + relCols + ` FROM relationships WHERE id = $1`
	if forUpdate {
		sql += ` FOR UPDATE`
	}
	r, err := scanRel(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("relationship %s: %w", id, sharing.ErrNotFound)
	}
	return r, err
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func insertRel(ctx context.Context, q Querier, r sharing.Relationship, authority bool) error {
	_, err := q.Exec(ctx, `
		INSERT INTO relationships (id, authority, sharer_ref, sharer_province, sharer_region, beneficiary_ref,
			beneficiary_province, relation, proposed_by, status, dissolve_reason, quota, used, returned, version,
			proposed_at, expires_at, activated_at, ended_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)`,
		r.ID, authority, r.SharerRef, r.SharerProvince, r.SharerRegion, r.BeneficiaryRef, r.BeneficiaryProvince,
		string(r.Relation), string(r.ProposedBy), string(r.Status), nullString(string(r.DissolveReason)),
		r.Quota, r.Used, r.Returned, r.Version, r.ProposedAt, r.ExpiresAt, nullTime(r.ActivatedAt),
		nullTime(r.EndedAt), r.UpdatedAt)
	return err
}

// commitRel persists an authority's change of a relationship it holds
// locked: the money (one entry, when postings are given), the row (checked
// against the version read), and — when the state or quota changed (version
// bumped) — the outbox row and, for a cross-province relationship, the
// snapshot for the replica. Needs a transaction.
func commitRel(ctx context.Context, q Querier, before, after sharing.Relationship, entryKind string, ps ledger.Postings, now time.Time) error {
	ref := fmt.Sprintf("%s@%d", after.ID, after.Version)
	if len(ps) > 0 {
		if _, err := book(ctx, q, entryKind, ref, now, ps); err != nil {
			return err
		}
	}
	tag, err := q.Exec(ctx, `
		UPDATE relationships SET status = $3, dissolve_reason = $4, quota = $5, used = $6, returned = $7,
			version = $8, activated_at = $9, ended_at = $10, updated_at = $11
		WHERE id = $1 AND version = $2 AND authority`,
		after.ID, before.Version, string(after.Status), nullString(string(after.DissolveReason)), after.Quota,
		after.Used, after.Returned, after.Version, nullTime(after.ActivatedAt), nullTime(after.EndedAt), after.UpdatedAt)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("provincedb: relationship %s changed under its lock (version %d)", after.ID, before.Version)
	}
	if after.Version == before.Version {
		return nil
	}
	return reportRel(ctx, q, after, now)
}

// reportRel writes a relationship change to the outbox and, when the
// beneficiary is in another province, queues its snapshot for the replica.
func reportRel(ctx context.Context, q Querier, r sharing.Relationship, now time.Time) error {
	key := fmt.Sprintf("%s@%d", r.ID, r.Version)
	if err := outbox(ctx, q, sharing.OutboxRelationship, sharing.RoleLocal, r.CrossProvince(), key, r, now); err != nil {
		return err
	}
	if r.CrossProvince() {
		return relay(ctx, q, sharing.RelaySnapshot, r.BeneficiaryProvince, key, r, now)
	}
	return nil
}

// Propose implements sharing.Store. One transaction: the sharer (and a local
// beneficiary) locked FOR SHARE against a concurrent enrollment change.
func (s *Store) Propose(ctx context.Context, p sharing.Proposal, ttl time.Duration, now time.Time) (sharing.Relationship, error) {
	var out sharing.Relationship
	err := s.inTx(ctx, "propose", func(tx pgx.Tx) error {
		hash := p.Hash()
		if found, err := lookupCommand(ctx, tx, p.Origin, p.Key, hash, &out); err != nil || found {
			return err
		}
		sharer, err := getPerson(ctx, tx, p.SharerRef, "FOR SHARE")
		if err != nil {
			return err
		}
		if p.BeneficiaryProvince == sharer.Province {
			ben, err := getPerson(ctx, tx, p.BeneficiaryRef, "FOR SHARE")
			if err != nil {
				return err
			}
			if err := ben.CanBeProposedTo(); err != nil {
				return err
			}
		}
		r, err := sharing.NewRelationship(p, sharer, now, ttl)
		if err != nil {
			return err
		}
		var live string
		err = tx.QueryRow(ctx, `
			SELECT id FROM relationships
			WHERE authority AND sharer_ref = $1 AND beneficiary_ref = $2 AND status IN ('PENDING', 'ACTIVE')`,
			r.SharerRef, r.BeneficiaryRef).Scan(&live)
		switch {
		case err == nil:
			return fmt.Errorf("%w: %s", sharing.ErrDuplicateRelationship, live)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if err := insertRel(ctx, tx, r, true); err != nil {
			if code, constraint := pgCode(err); code == codeUniqueViolation && constraint == "relationships_pkey" {
				return errRetry // the same proposal racing: replay its answer
			}
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO accounts (name) VALUES ($1)`, sharing.AccountQuota(r.ID)); err != nil {
			return err
		}
		if err := reportRel(ctx, tx, r, now); err != nil {
			return err
		}
		out = r
		return saveCommand(ctx, tx, p.Origin, p.Key, "PROPOSE", hash, r, now)
	})
	return out, err
}

// ApplyCommand implements sharing.Store. One transaction: the relationship
// locked, then (to raise a quota) the sharer's account.
func (s *Store) ApplyCommand(ctx context.Context, c sharing.Command, now time.Time) (sharing.Relationship, error) {
	var out sharing.Relationship
	err := s.inTx(ctx, "relationship command", func(tx pgx.Tx) error {
		hash := c.Hash()
		if found, err := lookupCommand(ctx, tx, c.Origin, c.Key, hash, &out); err != nil || found {
			return err
		}
		r, err := getRel(ctx, tx, c.RelationshipID, true)
		if err != nil {
			return err
		}
		if !r.authority {
			return fmt.Errorf("%w: relationship %s is a replica here", sharing.ErrWrongProvince, r.ID)
		}
		available := money.Zero
		if c.Kind == sharing.CommandSetQuota {
			if available, err = balance(ctx, tx, sharing.AccountPerson(r.SharerRef), true); err != nil {
				return err
			}
		}
		after, ps, err := r.Apply(c, available, now)
		if err != nil {
			return err
		}
		kind := sharing.EntryQuotaReturn
		if c.Kind == sharing.CommandSetQuota {
			kind = sharing.QuotaEntryKind(after.Quota.Sub(r.Quota))
		}
		if err := commitRel(ctx, tx, r.Relationship, after, kind, ps, now); err != nil {
			return err
		}
		out = after
		return saveCommand(ctx, tx, c.Origin, c.Key, string(c.Kind), hash, after, now)
	})
	return out, err
}

// ExpireProposals implements sharing.Store. One transaction; rows another
// transaction holds are skipped (the next sweep takes them).
func (s *Store) ExpireProposals(ctx context.Context, now time.Time, limit int) ([]sharing.Relationship, error) {
	var out []sharing.Relationship
	err := s.inTx(ctx, "expire proposals", func(tx pgx.Tx) error {
		out = nil
		rels, err := queryRels(ctx, tx, `
			SELECT `+relCols+` FROM relationships
			WHERE authority AND status = 'PENDING' AND expires_at <= $1
			ORDER BY expires_at, id LIMIT $2 FOR UPDATE SKIP LOCKED`, now, limit)
		if err != nil {
			return err
		}
		for _, r := range rels {
			after, err := r.Expire(now)
			if err != nil {
				return err
			}
			if err := commitRel(ctx, tx, r.Relationship, after, "", nil, now); err != nil {
				return err
			}
			out = append(out, after)
		}
		return nil
	})
	return out, err
}

// ApplyReplica implements sharing.Store. One statement in a transaction.
func (s *Store) ApplyReplica(ctx context.Context, r sharing.Relationship) (bool, error) {
	applied := false
	err := s.inTx(ctx, "apply replica", func(tx pgx.Tx) error {
		var authority bool
		err := tx.QueryRow(ctx, `
			INSERT INTO relationships AS x (id, authority, sharer_ref, sharer_province, sharer_region, beneficiary_ref,
				beneficiary_province, relation, proposed_by, status, dissolve_reason, quota, used, returned, version,
				proposed_at, expires_at, activated_at, ended_at, updated_at)
			VALUES ($1, false, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
			ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, dissolve_reason = EXCLUDED.dissolve_reason,
				quota = EXCLUDED.quota, used = EXCLUDED.used, returned = EXCLUDED.returned, version = EXCLUDED.version,
				activated_at = EXCLUDED.activated_at, ended_at = EXCLUDED.ended_at, updated_at = EXCLUDED.updated_at
			WHERE NOT x.authority AND x.version < EXCLUDED.version
				AND x.sharer_ref = EXCLUDED.sharer_ref AND x.beneficiary_ref = EXCLUDED.beneficiary_ref
			RETURNING x.authority`,
			r.ID, r.SharerRef, r.SharerProvince, r.SharerRegion, r.BeneficiaryRef, r.BeneficiaryProvince,
			string(r.Relation), string(r.ProposedBy), string(r.Status), nullString(string(r.DissolveReason)),
			r.Quota, r.Used, r.Returned, r.Version, r.ProposedAt, r.ExpiresAt, nullTime(r.ActivatedAt),
			nullTime(r.EndedAt), r.UpdatedAt).Scan(&authority)
		if err == nil {
			applied = true
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		held, err := getRel(ctx, tx, r.ID, false)
		if err != nil {
			return err
		}
		if held.authority {
			return fmt.Errorf("%w: this node is the authority of %s", sharing.ErrWrongProvince, r.ID)
		}
		if held.SharerRef != r.SharerRef || held.BeneficiaryRef != r.BeneficiaryRef {
			return &sharing.FieldError{Field: "relationship_id", Err: fmt.Errorf("snapshot of %s names other parties", r.ID)}
		}
		return nil // stale or repeated snapshot: nothing to do
	})
	return applied, err
}

// GetRelationship implements sharing.Store. One statement.
func (s *Store) GetRelationship(ctx context.Context, id string) (sharing.Relationship, error) {
	r, err := getRel(ctx, s.pool, id, false)
	return r.Relationship, translate("get relationship", err)
}

// ListRelationships implements sharing.Store. One statement.
func (s *Store) ListRelationships(ctx context.Context, f sharing.RelationshipFilter) ([]sharing.Relationship, error) {
	where := `(sharer_ref = $1 OR beneficiary_ref = $1)`
	switch f.Side {
	case sharing.SideSharer:
		where = `sharer_ref = $1`
	case sharing.SideBeneficiary:
		where = `beneficiary_ref = $1`
	}
	statuses := make([]string, len(f.Statuses))
	for i, st := range f.Statuses {
		statuses[i] = string(st)
	}
	rels, err := queryRels(ctx, s.pool, `
		SELECT `+relCols+` FROM relationships
		WHERE `+where+` AND (cardinality($2::text[]) = 0 OR status = ANY($2::text[])) AND id > $3
		ORDER BY id LIMIT $4`, f.PersonRef, statuses, f.AfterID, f.Limit)
	if err != nil {
		return nil, translate("list relationships", err)
	}
	out := make([]sharing.Relationship, len(rels))
	for i, r := range rels {
		out[i] = r.Relationship
	}
	return out, nil
}
