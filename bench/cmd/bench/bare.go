package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"gongji/money"
	"gongji/region"
	"gongji/sharing"
)

// The baselines of rows 2 and 6: the same writes as a usage, done by a bare
// PostgreSQL transaction as a pgbench script would do them — one statement
// per round trip (prepared, as pgx caches them), no reads before the
// transaction, no idempotency lookup, no domain checks, no gRPC — on the same
// tables (with their constraints and triggers) of the same databases.

// bareSide is one node's part of a usage: the relationship row lock (payer
// or local side only), the balanced entry with its two postings and the two
// cached balances, the relationship's used amount, the usage row and the
// outbox row.
type bareSide struct {
	role      sharing.Role
	entryKind string
	from, to  string // accounts: from is debited, to credited
	relID     string // "" on the payee side: nothing to lock there
	usage     sharing.Usage
}

// usageFor is a complete usage of relationship rel, as the domain would
// record it (for the usage and outbox rows).
func usageFor(key string, rel benchRel, role sharing.Role, payer, payee string, amount money.Yuan, at time.Time) sharing.Usage {
	pp, _ := region.ParseProvince(payer)
	return sharing.Usage{Key: key, RelationshipID: rel.id, Kind: sharing.KindPharmacy, Amount: amount, Reversed: money.Zero,
		Role: role, PayerProvince: payer, PayerRegion: pp.Regions[0].Code, PayeeProvince: payee, PayeeRegion: rel.benRegion,
		SharerRef: "0123456789abcdef0123456789abcdef", BeneficiaryRef: "fedcba9876543210fedcba9876543210",
		CrossProvince: payer != payee, OccurredAt: at, RecordedAt: at}
}

func (b bareSide) run(ctx context.Context, pool *pgxpool.Pool) error {
	u := b.usage
	payload, err := json.Marshal(u)
	if err != nil {
		return err
	}
	hash := sha256.Sum256([]byte(u.Key))
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if b.relID != "" {
		var used money.Yuan
		if err := tx.QueryRow(ctx, `SELECT used FROM relationships WHERE id = $1 FOR UPDATE`, b.relID).Scan(&used); err != nil {
			return fmt.Errorf("lock relationship: %w", err)
		}
	}
	var entry int64
	if err := tx.QueryRow(ctx, `INSERT INTO journal_entries (kind, ref, at) VALUES ($1, $2, $3) RETURNING id`,
		b.entryKind, u.Key, u.RecordedAt).Scan(&entry); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO journal_postings (entry_id, idx, account, amount) VALUES ($1, 0, $2, $3), ($1, 1, $4, $5)`,
		entry, b.from, u.Amount.Neg(), b.to, u.Amount); err != nil {
		return err
	}
	first, second := b.from, b.to
	d1, d2 := u.Amount.Neg(), u.Amount
	if second < first { // balances locked in name order, as the store does
		first, second, d1, d2 = second, first, d2, d1
	}
	for _, a := range []struct {
		name  string
		delta money.Yuan
	}{{first, d1}, {second, d2}} {
		if _, err := tx.Exec(ctx, `UPDATE accounts SET balance = balance + $2 WHERE name = $1`, a.name, a.delta); err != nil {
			return err
		}
	}
	if b.relID != "" {
		if _, err := tx.Exec(ctx, `UPDATE relationships SET used = used + $2 WHERE id = $1`, b.relID, u.Amount); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO usages (usage_key, request_hash, role, approved, relationship_id, kind, amount,
			payer_province, payer_region, payee_province, payee_region, sharer_ref, beneficiary_ref, cross_province,
			occurred_at, recorded_at, entry_id, quota_remaining)
		VALUES ($1, $2, $3, true, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0)`,
		u.Key, hash[:], string(b.role), u.RelationshipID, string(u.Kind), u.Amount, u.PayerProvince, u.PayerRegion,
		u.PayeeProvince, u.PayeeRegion, u.SharerRef, u.BeneficiaryRef, u.CrossProvince, u.OccurredAt, u.RecordedAt, entry); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO outbox (kind, role, cross_province, record_key, payload, created_at)
		VALUES ('USAGE', $1, $2, $3, $4::jsonb, $5)`, string(b.role), u.CrossProvince, u.Key, string(payload), u.RecordedAt); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// bareSwitchLog is the clearing service's part of a cross-province usage:
// its switch log row, one INSERT in its own transaction.
func bareSwitchLog(ctx context.Context, pool *pgxpool.Pool, u sharing.Usage, started time.Time) error {
	p := region.PeriodOf(started)
	_, err := pool.Exec(ctx, `INSERT INTO switch_log (setlym, payer_province, op, caller_province, target_province, key,
			reversal_of, outcome, code, detail, amount, kind, payer_region, payee_province, payee_region, occurred_at,
			relationship_id, started_at, finished_at, latency_us)
		VALUES ($1, $2, 'AUTHORIZE', $3, $2, $4, '', 'APPROVED', '', '', $5, $6, $7, $3, $8, $9, $10, $11, $12, $13)`,
		p.Int(), u.PayerProvince, u.PayeeProvince, u.Key, u.Amount, string(u.Kind), u.PayerRegion, u.PayeeRegion,
		u.OccurredAt, u.RelationshipID, started, time.Now(), time.Since(started).Microseconds())
	return err
}
