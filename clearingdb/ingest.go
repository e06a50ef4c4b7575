package clearingdb

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"gongji/region"
	"gongji/settlement"
)

// The staging table is a session-local temporary table, created once per
// connection and emptied at every commit or rollback: no WAL, no contention
// between concurrent batches, no catalog churn.
const stageDDL = `CREATE TEMP TABLE IF NOT EXISTS clearing_ingest_stage (
	seq bigint NOT NULL,
	status text,
	rec_kind text,
	role text,
	usage_id text,
	reversal_of text,
	kind text,
	entry_type text,
	payer_province text,
	payer_region text,
	payee_province text,
	payee_region text,
	amount_fen bigint,
	amount numeric(18,2) GENERATED ALWAYS AS (amount_fen * 0.01) STORED,
	occurred_at timestamptz,
	setlym integer,
	late boolean,
	sharer_ref text,
	beneficiary_ref text,
	relationship_id text,
	rel_version bigint,
	rel_status text,
	rel_beneficiary_province text,
	hash bytea,
	reject text,
	raw text,
	row_setlym integer,
	row_payer text,
	row_open boolean,
	agree boolean
) ON COMMIT DELETE ROWS`

// sqlCopyStage names the columns encodeStage writes, in its order.
const sqlCopyStage = `COPY clearing_ingest_stage (seq, status, rec_kind, role, usage_id, reversal_of, kind,
	entry_type, payer_province, payer_region, payee_province, payee_region, amount_fen, occurred_at, setlym, late,
	sharer_ref, beneficiary_ref, relationship_id, rel_version, rel_status, rel_beneficiary_province, hash, reject,
	raw) FROM STDIN (FORMAT binary)`

const stageCopyFields = 25

// The set-based pipeline, sent in one round trip after the COPY. @province is the
// caller's province, @now the ingest's now. Statuses of stage rows:
//
//	invalid   refused at the edge (reason in reject)
//	rel       relationship event        local  same-province usage, counted
//	NULL      a cross-province usage or reversal, classified by sqlUpsertKeys
//	          and sqlClassifyRepeats:
//	new       first report of its key: a new usages row
//	merge     the other side's first report: compared, and applied while the row's period is open
//	dupkey    this side already reported the key with the same payload
//	conflict  this side already reported the key with another payload: REJECTED
const (
	// Locks every OPEN period FOR SHARE and checks the target periods (GJ001).
	sqlLockPeriods = `SELECT clearing_lock_open_periods(@targets::integer[], @now)`

	// Stream dedup: seqs this node delivered before. The probe is limited to
	// the batch's seq range, so a batch of new, contiguous seqs (the normal
	// case) costs one short index range scan whatever the node's history.
	sqlDropSeenSeqs = `DELETE FROM clearing_ingest_stage s USING report_receipts r
		WHERE r.province = @province AND r.seq BETWEEN @seqMin AND @seqMax AND r.seq = s.seq`

	// Receipts of everything left, in the same transaction as its effect. A
	// plain INSERT: it is half the cost of a speculative (ON CONFLICT) one, and
	// a concurrent delivery of the same seq (a node with two streams) is rare:
	// it fails here (23505) and the batch is retried, seeing the duplicate.
	sqlReceipts = `INSERT INTO report_receipts (province, seq, received_at)
		SELECT @province, seq, @now FROM clearing_ingest_stage ORDER BY seq`

	sqlRelationshipEvents = `INSERT INTO relationship_events (sharer_province, reporter_province, seq, setlym,
			relationship_id, version, status, beneficiary_province, changed_at, received_at)
		SELECT payer_province, @province, seq, setlym, relationship_id, rel_version, rel_status,
			rel_beneficiary_province, occurred_at, @now
		FROM clearing_ingest_stage WHERE status = 'rel'`

	sqlLocalCounts = `INSERT INTO local_usage_counts AS c (province, setlym, entry_type, kind, records, amount)
		SELECT @province, setlym, entry_type, kind, count(*), sum(amount)
		FROM clearing_ingest_stage WHERE status = 'local'
		GROUP BY setlym, entry_type, kind
		ORDER BY setlym, entry_type, kind
		ON CONFLICT (province, setlym, entry_type, kind)
		DO UPDATE SET records = c.records + excluded.records, amount = c.amount + excluded.amount`

	// Global key dedup and classification in one pass. The first report of a
	// key inserts it; the other side's first report claims its half (the
	// ON CONFLICT WHERE is evaluated on the locked, latest row version, so of
	// two racing reports of one side only one claims). Keys are taken in key
	// order (the lowest seq of a key repeated in the batch), so two batches
	// racing on the same keys wait for each other instead of deadlocking.
	// RETURNING gives back exactly the rows this batch inserted or claimed:
	// "new" when the other side is still missing, else "merge", with whether
	// both reports' content hashes agree, where the usages row lives, and
	// whether its period is still OPEN (locked FOR SHARE until commit).
	sqlUpsertKeys = `WITH k AS (
			INSERT INTO usage_keys AS k (usage_id, setlym, row_payer_province,
				payer_from, payer_seq, payer_hash, payee_from, payee_seq, payee_hash, first_at)
			SELECT DISTINCT ON (usage_id) usage_id, setlym, payer_province,
				CASE WHEN role = 'PAYER' THEN @province END, CASE WHEN role = 'PAYER' THEN seq END,
				CASE WHEN role = 'PAYER' THEN hash END,
				CASE WHEN role = 'PAYEE' THEN @province END, CASE WHEN role = 'PAYEE' THEN seq END,
				CASE WHEN role = 'PAYEE' THEN hash END,
				@now
			FROM clearing_ingest_stage WHERE status IS NULL
			ORDER BY usage_id, seq
			ON CONFLICT (usage_id) DO UPDATE SET
				payer_from = coalesce(k.payer_from, excluded.payer_from),
				payer_seq  = coalesce(k.payer_seq, excluded.payer_seq),
				payer_hash = coalesce(k.payer_hash, excluded.payer_hash),
				payee_from = coalesce(k.payee_from, excluded.payee_from),
				payee_seq  = coalesce(k.payee_seq, excluded.payee_seq),
				payee_hash = coalesce(k.payee_hash, excluded.payee_hash),
				both_at = excluded.first_at
			WHERE (excluded.payer_hash IS NOT NULL AND k.payer_hash IS NULL)
			   OR (excluded.payee_hash IS NOT NULL AND k.payee_hash IS NULL)
			RETURNING k.usage_id, k.setlym, k.row_payer_province, k.payer_seq, k.payee_seq,
				k.payer_hash IS NULL OR k.payee_hash IS NULL AS first,
				k.payer_hash = k.payee_hash AS agree
		)
		UPDATE clearing_ingest_stage s SET
			status = CASE WHEN k.first THEN 'new' ELSE 'merge' END,
			agree = k.agree,
			row_setlym = k.setlym,
			row_payer = k.row_payer_province,
			row_open = p.setlym IS NOT NULL
		FROM k
		LEFT JOIN (SELECT setlym FROM periods WHERE state = 'OPEN' FOR SHARE) p ON p.setlym = k.setlym
		WHERE s.status IS NULL AND s.usage_id = k.usage_id
		  AND s.seq = CASE WHEN s.role = 'PAYER' THEN k.payer_seq ELSE k.payee_seq END`

	// What is left is a report of a side that had already reported the key
	// (in an earlier batch, or at a lower seq in this one): a duplicate when
	// the content is the same, else a conflict, REJECTED and never applied.
	sqlClassifyRepeats = `UPDATE clearing_ingest_stage s SET
			status = CASE WHEN CASE WHEN s.role = 'PAYER' THEN k.payer_hash ELSE k.payee_hash END = s.hash
			              THEN 'dupkey' ELSE 'conflict' END,
			reject = CASE WHEN CASE WHEN s.role = 'PAYER' THEN k.payer_hash ELSE k.payee_hash END = s.hash THEN NULL
				ELSE format('usage %s was already reported by the %s side (%s seq %s) with a different payload',
					s.usage_id, lower(s.role),
					CASE WHEN s.role = 'PAYER' THEN k.payer_from ELSE k.payee_from END,
					CASE WHEN s.role = 'PAYER' THEN k.payer_seq ELSE k.payee_seq END) END
		FROM usage_keys k
		WHERE s.status IS NULL AND k.usage_id = s.usage_id`

	sqlInsertUsages = `INSERT INTO usages (setlym, payer_province, usage_id, entry_type, kind, payer_region,
			payee_province, payee_region, amount, occurred_at, late, reversal_of, sharer_ref, beneficiary_ref,
			relationship_id, payer_reported, payee_reported, first_at)
		SELECT setlym, payer_province, usage_id, entry_type, kind, payer_region,
			payee_province, payee_region, amount, occurred_at, late, reversal_of, sharer_ref, beneficiary_ref,
			relationship_id, role = 'PAYER', role = 'PAYEE', @now
		FROM clearing_ingest_stage WHERE status = 'new'
		ORDER BY setlym, payer_province, usage_id`

	// Field-by-field comparison of the second side's report with the stored
	// row (the first side's), before anything is applied: one exception per
	// differing field with both values in canonical text. Filed in the row's
	// period while it is open, else in the period the report was assigned to.
	sqlCompare = `INSERT INTO recon_exceptions (setlym, payer_province, usage_id, kind, field,
			reporter_province, reporter_seq, payee_province, provinces, payer_value, payee_value, detail, created_at)
		SELECT CASE WHEN d.row_open THEN d.row_setlym ELSE d.setlym END,
			d.auth_payer, d.usage_id,
			CASE WHEN f.field = 'amount' THEN 'AMOUNT_DIFFERS' ELSE 'FIELD_DIFFERS' END,
			f.field, @province, d.seq, d.auth_payee, d.provinces,
			CASE WHEN d.role = 'PAYER' THEN f.sv ELSE f.uv END,
			CASE WHEN d.role = 'PAYER' THEN f.uv ELSE f.sv END,
			format('%s differs: payer reported %s, payee reported %s%s', f.field,
				coalesce(nullif(CASE WHEN d.role = 'PAYER' THEN f.sv ELSE f.uv END, ''), '(none)'),
				coalesce(nullif(CASE WHEN d.role = 'PAYER' THEN f.uv ELSE f.sv END, ''), '(none)'),
				CASE WHEN d.row_open THEN ''
				     ELSE format(' (the usage is in period %s, no longer open: not applied)', d.row_setlym) END),
			@now
		FROM (
			SELECT s.seq, s.usage_id, s.setlym, s.row_setlym, s.row_open, s.role,
				CASE WHEN s.role = 'PAYER' THEN s.payer_province ELSE u.payer_province END AS auth_payer,
				CASE WHEN s.role = 'PAYER' THEN s.payee_province ELSE u.payee_province END AS auth_payee,
				ARRAY(SELECT DISTINCT x FROM unnest(ARRAY[s.payer_province, s.payee_province,
					u.payer_province, u.payee_province]) AS x ORDER BY x) AS provinces,
				ARRAY[s.amount::text, s.entry_type, s.kind, s.payer_province, s.payer_region, s.payee_province,
					s.payee_region,
					to_char(s.occurred_at AT TIME ZONE INTERVAL '+08:00', 'YYYY-MM-DD"T"HH24:MI:SS.US"+08:00"'),
					coalesce(s.reversal_of, ''), s.sharer_ref, s.beneficiary_ref, s.relationship_id] AS sv,
				ARRAY[u.amount::text, u.entry_type, u.kind, u.payer_province, u.payer_region, u.payee_province,
					u.payee_region,
					to_char(u.occurred_at AT TIME ZONE INTERVAL '+08:00', 'YYYY-MM-DD"T"HH24:MI:SS.US"+08:00"'),
					coalesce(u.reversal_of, ''), u.sharer_ref, u.beneficiary_ref, u.relationship_id] AS uv
			FROM clearing_ingest_stage s
			JOIN usages u ON u.setlym = s.row_setlym AND u.payer_province = s.row_payer AND u.usage_id = s.usage_id
			WHERE s.status = 'merge' AND NOT s.agree
			  AND (s.amount, s.entry_type, s.kind, s.payer_province, s.payer_region, s.payee_province,
			       s.payee_region, s.occurred_at, s.reversal_of, s.sharer_ref, s.beneficiary_ref, s.relationship_id)
			      IS DISTINCT FROM
			      (u.amount, u.entry_type, u.kind, u.payer_province, u.payer_region, u.payee_province,
			       u.payee_region, u.occurred_at, u.reversal_of, u.sharer_ref, u.beneficiary_ref, u.relationship_id)
		) d
		CROSS JOIN LATERAL unnest(
			ARRAY['amount', 'entry_type', 'kind', 'payer_province', 'payer_region', 'payee_province',
			      'payee_region', 'occurred_at', 'reversal_of', 'sharer_ref', 'beneficiary_ref', 'relationship_id'],
			d.sv, d.uv) AS f(field, sv, uv)
		WHERE f.sv IS DISTINCT FROM f.uv`

	// Apply the second side to a row of an open period: the payer's report is
	// authoritative (DESIGN §4), so a payer arriving second overwrites the
	// payee's fields; a payee arriving second only marks its side. A payer
	// with another payer_province moves the row (sqlMove*): payer_province is
	// the distribution key and is never updated in place.
	sqlApplyMerge = `UPDATE usages u SET
			entry_type      = CASE WHEN s.role = 'PAYER' THEN s.entry_type ELSE u.entry_type END,
			kind            = CASE WHEN s.role = 'PAYER' THEN s.kind ELSE u.kind END,
			payer_region    = CASE WHEN s.role = 'PAYER' THEN s.payer_region ELSE u.payer_region END,
			payee_province  = CASE WHEN s.role = 'PAYER' THEN s.payee_province ELSE u.payee_province END,
			payee_region    = CASE WHEN s.role = 'PAYER' THEN s.payee_region ELSE u.payee_region END,
			amount          = CASE WHEN s.role = 'PAYER' THEN s.amount ELSE u.amount END,
			occurred_at     = CASE WHEN s.role = 'PAYER' THEN s.occurred_at ELSE u.occurred_at END,
			reversal_of     = CASE WHEN s.role = 'PAYER' THEN s.reversal_of ELSE u.reversal_of END,
			sharer_ref      = CASE WHEN s.role = 'PAYER' THEN s.sharer_ref ELSE u.sharer_ref END,
			beneficiary_ref = CASE WHEN s.role = 'PAYER' THEN s.beneficiary_ref ELSE u.beneficiary_ref END,
			relationship_id = CASE WHEN s.role = 'PAYER' THEN s.relationship_id ELSE u.relationship_id END,
			payer_reported  = u.payer_reported OR s.role = 'PAYER',
			payee_reported  = u.payee_reported OR s.role = 'PAYEE',
			both_at = @now
		FROM clearing_ingest_stage s
		WHERE s.status = 'merge' AND s.row_open
		  AND (s.role = 'PAYEE' OR s.payer_province = s.row_payer)
		  AND u.setlym = s.row_setlym AND u.payer_province = s.row_payer AND u.usage_id = s.usage_id`

	// A payer whose payer_province differs from the row's moves the row: the
	// old row is deleted and the merged one inserted under the payer's
	// province (the distribution key is never updated in place), and the key
	// follows it.
	sqlMoveRows = `WITH mv AS (
			SELECT * FROM clearing_ingest_stage
			WHERE status = 'merge' AND row_open AND role = 'PAYER' AND payer_province <> row_payer
		), del AS (
			DELETE FROM usages u USING mv
			WHERE u.setlym = mv.row_setlym AND u.payer_province = mv.row_payer AND u.usage_id = mv.usage_id
			RETURNING u.setlym, u.late, u.payee_reported, u.first_at, mv.payer_province, mv.usage_id,
				mv.entry_type, mv.kind, mv.payer_region, mv.payee_province, mv.payee_region, mv.amount,
				mv.occurred_at, mv.reversal_of, mv.sharer_ref, mv.beneficiary_ref, mv.relationship_id
		), key AS (
			UPDATE usage_keys k SET row_payer_province = mv.payer_province FROM mv WHERE k.usage_id = mv.usage_id
		)
		INSERT INTO usages (setlym, payer_province, usage_id, entry_type, kind, payer_region,
			payee_province, payee_region, amount, occurred_at, late, reversal_of, sharer_ref, beneficiary_ref,
			relationship_id, payer_reported, payee_reported, first_at, both_at)
		SELECT setlym, payer_province, usage_id, entry_type, kind, payer_region,
			payee_province, payee_region, amount, occurred_at, late, reversal_of, sharer_ref,
			beneficiary_ref, relationship_id, true, payee_reported, first_at, @now
		FROM del`

	// Planner settings for the join of two unindexed, batch-sized row sets
	// (the key upsert's RETURNING with the staging table): a hash join, never
	// a nested loop. Everywhere else the staged batch probes indexes of
	// large tables, which is exactly what a nested loop does. SET LOCAL
	// semantics: the transaction's end restores the session's value.
	sqlNestLoopOff = `SELECT set_config('enable_nestloop', 'off', true)`
	sqlNestLoopOn  = `SELECT set_config('enable_nestloop', 'on', true)`

	sqlRejectedExceptions = `INSERT INTO recon_exceptions (setlym, payer_province, usage_id, kind, field,
			reporter_province, reporter_seq, payee_province, provinces, detail, created_at)
		SELECT setlym, payer_province, usage_id, 'REJECTED', '', @province, seq, payee_province,
			ARRAY(SELECT DISTINCT x FROM unnest(ARRAY[payer_province, payee_province]) AS x ORDER BY x),
			reject, @now
		FROM clearing_ingest_stage WHERE status = 'conflict'`

	sqlRejects = `INSERT INTO report_rejects (province, seq, usage_id, reason, record, received_at)
		SELECT @province, seq, coalesce(usage_id, ''), reject,
			CASE WHEN raw IS NOT NULL THEN raw::jsonb ELSE jsonb_build_object(
				'Seq', seq, 'Kind', rec_kind, 'Role', role, 'UsageKey', usage_id,
				'ReversalOf', coalesce(reversal_of, ''), 'UsageKind', kind,
				'PayerProvince', payer_province, 'PayerRegion', payer_region,
				'PayeeProvince', payee_province, 'PayeeRegion', payee_region,
				'Amount', abs(amount)::text, 'OccurredAt', occurred_at,
				'SharerRef', sharer_ref, 'BeneficiaryRef', beneficiary_ref,
				'RelationshipID', relationship_id) END,
			@now
		FROM clearing_ingest_stage WHERE status IN ('invalid', 'conflict')`

	sqlOutcome = `SELECT coalesce(status, ''), count(*) FROM clearing_ingest_stage GROUP BY status`

	sqlRejected = `SELECT seq, reject FROM clearing_ingest_stage
		WHERE status IN ('invalid', 'conflict') ORDER BY seq`
)

// IngestBatch stores one batch of outbox records reported by province's node
// (the ReportUsage stream) in one transaction and says what became of each.
//
// Every record is validated first (codes via region, amounts via money; a
// PAYER report's payer_province and a PAYEE report's payee_province must be
// the caller, a LOCAL report's both); an invalid record is stored in
// report_rejects and acknowledged, never applied. The rest is bulk-loaded
// with COPY into a temporary staging table and applied with set-based SQL
// in one round trip:
//   - seqs already in report_receipts are duplicates; the others get a receipt;
//   - each cross-province usage or reversal is assigned its period (R14, R12:
//     the Asia/Shanghai month of occurred_at, or the earliest later OPEN
//     period whose cut-off has not passed, marked late; periods and partitions
//     are created on demand);
//   - a new usage key becomes a usages row; the other side's first report of
//     a key is compared field by field (differences → recon_exceptions) and,
//     while the row's period is open, applied: the payer's report is
//     authoritative; the same side again with the same payload is a
//     duplicate, with another payload a REJECTED exception (never applied);
//   - RELATIONSHIP records are stored as relationship_events, LOCAL ones
//     counted in local_usage_counts.
//
// Retried on conflicts (see package doc). Needs no transaction from the
// caller. Errors: ErrBadProvince, ErrBatchTooLarge, ErrBadSeq (nothing
// stored), settlement.ErrNoOpenPeriod, ErrRetriesExhausted, database errors.
func (s *Store) IngestBatch(ctx context.Context, province string, recs []Record, now time.Time) (Ack, error) {
	if _, err := region.ParseProvince(province); err != nil {
		return Ack{}, fmt.Errorf("%w: %w", ErrBadProvince, err)
	}
	if len(recs) > s.cfg.BatchRowsMax {
		return Ack{}, fmt.Errorf("%w: %d records, at most %d", ErrBatchTooLarge, len(recs), s.cfg.BatchRowsMax)
	}
	seen := make(map[int64]struct{}, len(recs))
	rows := make([]stageRow, 0, len(recs))
	var seqDups int64
	h := newHash()
	for i := range recs {
		seq := recs[i].Seq
		if seq <= 0 {
			return Ack{}, fmt.Errorf("%w: record %d has seq %d", ErrBadSeq, i, seq)
		}
		if _, dup := seen[seq]; dup {
			seqDups++
			continue
		}
		seen[seq] = struct{}{}
		rows = append(rows, validateRecord(province, &recs[i], now, s.cfg.FutureSkewMax, h))
	}
	seqs := make([]int64, 0, len(seen))
	for q := range seen {
		seqs = append(seqs, q)
	}
	slices.Sort(seqs)
	if len(rows) == 0 {
		return Ack{Seqs: seqs}, nil
	}

	var ack Ack
	err := s.retry(ctx, "ingest batch of "+province, func(ctx context.Context) error {
		targets, err := s.assignRows(ctx, rows, now)
		if err != nil {
			return err
		}
		ack, err = s.ingestOnce(ctx, province, rows, targets, now)
		return err
	})
	if err != nil {
		return Ack{}, err
	}
	ack.Seqs = seqs
	ack.Duplicates += seqDups
	return ack, nil
}

// assignRows sets setlym/late of every cleared row from the current period
// states, creates missing target periods and partitions, and returns the
// target periods (the ingest transaction locks and re-checks them).
func (s *Store) assignRows(ctx context.Context, rows []stageRow, now time.Time) ([]int32, error) {
	var minOwn region.Period
	for i := range rows {
		if rows[i].needsAssignment && (minOwn == (region.Period{}) || rows[i].own.Before(minOwn)) {
			minOwn = rows[i].own
		}
	}
	if minOwn == (region.Period{}) {
		return nil, nil
	}
	known, err := s.loadPeriods(ctx, minOwn)
	if err != nil {
		return nil, err
	}
	byOwn := map[region.Period]settlement.Assignment{}
	var targets []int32
	for i := range rows {
		r := &rows[i]
		if !r.needsAssignment {
			continue
		}
		a, ok := byOwn[r.own]
		if !ok {
			if a, err = s.assign(r.own, now, known); err != nil {
				return nil, err
			}
			byOwn[r.own] = a
			if !slices.Contains(targets, int32(a.Period.Int())) {
				targets = append(targets, int32(a.Period.Int()))
				if err := s.ensureUsagePartition(ctx, a.Period, now); err != nil {
					return nil, err
				}
			}
		}
		r.setlym, r.late = int32(a.Period.Int()), a.Late
	}
	slices.Sort(targets)
	return targets, nil
}

// encodeStage encodes rows as a binary COPY stream for sqlCopyStage. An
// invalid row carries only seq, status, kinds, usage id, reason and raw JSON.
func encodeStage(rows []stageRow) []byte {
	c := copyBuf{b: make([]byte, 0, 64+len(rows)*320)}
	c.b = append(c.b, copyBinHeader...)
	for i := range rows {
		r := &rows[i]
		c.tuple(stageCopyFields)
		c.int8(r.seq)
		if r.status != nil {
			c.text(*r.status)
		} else {
			c.null()
		}
		c.text(r.recKind)
		c.text(r.role)
		c.textOrNull(r.usageID)
		if r.reversalOf != nil {
			c.text(*r.reversalOf)
		} else {
			c.null()
		}
		if r.raw != nil {
			for range 17 { // kind … rel_beneficiary_province, hash
				c.null()
			}
			c.text(r.reject)
			c.text(string(r.raw))
			continue
		}
		c.text(r.kind)
		c.text(r.entryType)
		c.text(r.payerProvince)
		c.text(r.payerRegion)
		c.text(r.payeeProvince)
		c.text(r.payeeRegion)
		if r.recKind != string(RecordRelationship) {
			c.int8(r.amountFen)
		} else {
			c.null()
		}
		c.timestamptz(r.occurredAt)
		c.int4(r.setlym)
		c.boolean(r.late)
		c.text(r.sharerRef)
		c.text(r.beneficiaryRef)
		c.text(r.relationshipID)
		if r.recKind == string(RecordRelationship) {
			c.int8(r.relVersion)
			c.text(r.relStatus)
			c.text(r.relBeneficiary)
		} else {
			c.null()
			c.null()
			c.null()
		}
		c.bytes(r.hash)
		c.null() // reject
		c.null() // raw
	}
	c.trailer()
	return c.b
}

// ingestOnce is one attempt: one transaction.
func (s *Store) ingestOnce(ctx context.Context, province string, rows []stageRow, targets []int32, now time.Time) (Ack, error) {
	seqMin, seqMax := rows[0].seq, rows[0].seq
	for i := range rows {
		seqMin, seqMax = min(seqMin, rows[i].seq), max(seqMax, rows[i].seq)
	}
	var ack Ack
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, stageDDL); err != nil {
			return fmt.Errorf("staging table: %w", err)
		}
		tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(encodeStage(rows)), sqlCopyStage)
		if err != nil {
			return fmt.Errorf("copy to staging table: %w", err)
		}
		if tag.RowsAffected() != int64(len(rows)) {
			return fmt.Errorf("%w: copied %d of %d staged rows", errInvariant, tag.RowsAffected(), len(rows))
		}

		// Named arguments: each statement is sent only the parameters it uses.
		args := pgx.NamedArgs{"province": province, "now": now, "targets": targets, "seqMin": seqMin, "seqMax": seqMax}
		b := &pgx.Batch{}
		b.Queue(sqlLockPeriods, args)
		var dupSeqs int64
		b.Queue(sqlDropSeenSeqs, args).Exec(func(tag pgconn.CommandTag) error { dupSeqs = tag.RowsAffected(); return nil })
		for _, q := range []string{sqlReceipts, sqlNestLoopOff, sqlUpsertKeys, sqlNestLoopOn, sqlRelationshipEvents,
			sqlLocalCounts, sqlClassifyRepeats, sqlInsertUsages, sqlCompare, sqlApplyMerge, sqlMoveRows,
			sqlRejectedExceptions, sqlRejects} {
			b.Queue(q, args)
		}
		counts := map[string]int64{}
		b.Queue(sqlOutcome).Query(func(rs pgx.Rows) error {
			var st string
			var c int64
			_, err := pgx.ForEachRow(rs, []any{&st, &c}, func() error { counts[st] = c; return nil })
			return err
		})
		b.Queue(sqlRejected).Query(func(rs pgx.Rows) error {
			var rj Rejection
			_, err := pgx.ForEachRow(rs, []any{&rj.Seq, &rj.Reason}, func() error {
				ack.Rejected = append(ack.Rejected, rj)
				return nil
			})
			return err
		})
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}

		// Every staged row must have been classified, and the counts must add
		// up to what was staged; anything else is a bug and is not committed.
		var total int64
		for st, c := range counts {
			switch st {
			case "new", "merge", "rel", "local":
				ack.Stored += c
			case "dupkey":
				ack.Duplicates += c
			case statusInvalid, "conflict":
			default:
				return fmt.Errorf("%w: %d staged rows left with status %q", errInvariant, c, st)
			}
			total += c
		}
		if total+dupSeqs != int64(len(rows)) || int64(len(ack.Rejected)) != counts[statusInvalid]+counts["conflict"] {
			return fmt.Errorf("%w: staged %d, classified %d, seen before %d", errInvariant, len(rows), total, dupSeqs)
		}
		ack.Duplicates += dupSeqs
		return nil
	})
	return ack, err
}
