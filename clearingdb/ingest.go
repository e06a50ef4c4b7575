package clearingdb

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"gongji/internal/auditlog"
	"gongji/region"
	"gongji/settlement"
)

// The staging table holds the rare records of a batch (refused, conflicting,
// or a second side that disagrees with the first) for the set-based
// statements that handle them. It is a session-local temporary table,
// created once per connection (on the first batch that needs it) and emptied
// at every commit or rollback: no WAL, no contention between concurrent
// batches, no catalog churn.
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
	raw, row_setlym, row_payer, row_open, agree) FROM STDIN (FORMAT binary)`

const stageCopyFields = 29

// Statuses of a record in one ingest, decided in Go from what the
// statements below return (the edge sets invalid, rel and local):
//
//	invalid   refused at the edge (reason in reject)
//	rel       relationship event        local  same-province usage, counted
//	seen      its seq is in report_receipts: a duplicate, nothing else happens
//	new       first report of its key: a new usages row
//	merge     the other side's first report: compared, and applied while the row's period is open
//	dupkey    this side already reported the key with the same payload
//	conflict  this side already reported the key with another payload: REJECTED
const (
	statusSeen     = "seen"
	statusNew      = "new"
	statusMerge    = "merge"
	statusDupKey   = "dupkey"
	statusConflict = "conflict"
)

// The ingest transaction. Most records of a batch take the common path:
// their receipts and new usages rows are written with COPY straight from Go,
// the key upsert and the second side's merge are single statements over
// arrays, and nothing is staged. Only the rare records — refused at the edge,
// conflicting, or a second side whose report differs from the first (compared
// field by field, applied, perhaps moving the row) — are copied into the
// session's staging table and handled by the set-based statements on it
// (sqlCompare … sqlRejects). @province is the caller's province, @now the
// ingest's now.
const (
	// Locks every OPEN period FOR SHARE and checks the target periods (GJ001).
	sqlLockPeriods = `SELECT clearing_lock_open_periods(@targets::integer[], @now)`

	// The periods a merge may still change (locked by sqlLockPeriods).
	sqlOpenPeriods = `SELECT setlym FROM periods WHERE state = 'OPEN'`

	// Stream dedup: the batch's seqs this node delivered before, one probe
	// of the primary key per seq. (Written as a scalar subquery per element,
	// which the planner cannot turn into a join or a filter over the
	// province's whole history: a partition's or a table's statistics lag
	// behind its growth, and with a stale estimate the plain `seq = ANY(…)`
	// form was planned as a scan of every receipt of the province.)
	sqlSeenSeqs = `SELECT s.seq FROM unnest(@seqs::bigint[]) AS s(seq)
		WHERE (SELECT true FROM report_receipts r WHERE r.province = @province AND r.seq = s.seq)`

	// Global key dedup and classification in one pass, over the candidates
	// of the batch (per key, the record with the lowest seq; sorted by key in
	// Go). The first report of a key inserts it; the other side's first
	// report claims its half (the ON CONFLICT WHERE is evaluated on the
	// locked, latest row version, so of two racing reports of one side only
	// one claims). Keys are taken in key order, so two batches racing on the
	// same keys wait for each other instead of deadlocking. RETURNING gives
	// back exactly the keys this batch inserted or claimed: first (the other
	// side still missing: a new usages row), else a merge, with whether both
	// reports' content hashes agree and where the usages row lives.
	sqlUpsertKeys = `INSERT INTO usage_keys AS k (usage_id, setlym, row_payer_province,
			payer_from, payer_seq, payer_hash, payee_from, payee_seq, payee_hash, first_at)
		SELECT c.id, c.setlym, c.payer,
			CASE WHEN c.is_payer THEN @province END, CASE WHEN c.is_payer THEN c.seq END,
			CASE WHEN c.is_payer THEN c.hash END,
			CASE WHEN NOT c.is_payer THEN @province END, CASE WHEN NOT c.is_payer THEN c.seq END,
			CASE WHEN NOT c.is_payer THEN c.hash END,
			@now
		FROM unnest(@ids::text[], @setlyms::integer[], @payers::text[], @isPayer::boolean[], @seqs::bigint[],
			@hashes::bytea[]) WITH ORDINALITY AS c(id, setlym, payer, is_payer, seq, hash, ord)
		ORDER BY c.ord
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
		RETURNING k.usage_id, k.setlym, k.row_payer_province,
			k.payer_hash IS NULL OR k.payee_hash IS NULL, coalesce(k.payer_hash = k.payee_hash, false)`

	// The stored halves of keys a record repeats (a side that had already
	// reported the key, in an earlier batch or at a lower seq in this one).
	sqlRepeatedKeys = `SELECT usage_id, coalesce(payer_from, ''), payer_seq, payer_hash, coalesce(payee_from, ''), payee_seq, payee_hash
		FROM usage_keys WHERE usage_id = ANY(@ids::text[] COLLATE "C")`

	// The second side of a row of an open period whose report agrees with the
	// first (equal content hashes: every compared field is the same, so the
	// payer's authoritative fields are already the row's and the row never
	// moves): only the side's flag and the time change, in place (HOT). Run
	// on the row's partition (%[1]s, see partitionSQL), one statement per
	// (period, payer province, reporting side). Each key is looked up by the
	// full primary key in a scalar subquery (one index probe, whatever the
	// statistics say: with a stale estimate of a growing partition the
	// planner otherwise scans all its rows of the province and compares each
	// with the whole array), and the rows are then updated by ctid. Nothing
	// else updates a usages row of an open period while this transaction
	// holds its key (it claimed the key), so the ctids stay current; a
	// mismatch fails the invariant check instead of merging wrongly.
	sqlMergeAgreedPayer = `UPDATE %[1]s SET payer_reported = true, both_at = @now
		WHERE ctid = ANY(ARRAY(SELECT (SELECT u.ctid FROM %[1]s u
			WHERE u.setlym = @setlym AND u.payer_province = @payer AND u.usage_id = m.id)
			FROM unnest(@ids::text[] COLLATE "C") AS m(id)))`
	sqlMergeAgreedPayee = `UPDATE %[1]s SET payee_reported = true, both_at = @now
		WHERE ctid = ANY(ARRAY(SELECT (SELECT u.ctid FROM %[1]s u
			WHERE u.setlym = @setlym AND u.payer_province = @payer AND u.usage_id = m.id)
			FROM unnest(@ids::text[] COLLATE "C") AS m(id)))`

	sqlRelationshipEvents = `INSERT INTO relationship_events (sharer_province, reporter_province, seq, setlym,
			relationship_id, version, status, beneficiary_province, changed_at, received_at)
		SELECT e.sharer, @province, e.seq, e.setlym, e.id, e.version, e.status, e.beneficiary, e.changed_at, @now
		FROM unnest(@sharers::text[], @seqs::bigint[], @setlyms::integer[], @ids::text[], @versions::bigint[],
			@statuses::text[], @beneficiaries::text[], @changedAts::timestamptz[])
			AS e(sharer, seq, setlym, id, version, status, beneficiary, changed_at)`

	// Local usages counted per month, type and kind (aggregated in Go, sorted
	// by the key so that concurrent batches lock the rows in one order).
	sqlLocalCounts = `INSERT INTO local_usage_counts AS c (province, setlym, entry_type, kind, records, amount)
		SELECT @province, l.setlym, l.entry_type, l.kind, l.records, l.amount_fen * 0.01
		FROM unnest(@setlyms::integer[], @entryTypes::text[], @kinds::text[], @records::bigint[], @amountFens::bigint[])
			WITH ORDINALITY AS l(setlym, entry_type, kind, records, amount_fen, ord)
		ORDER BY l.ord
		ON CONFLICT (province, setlym, entry_type, kind)
		DO UPDATE SET records = c.records + excluded.records, amount = c.amount + excluded.amount`

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
	// the distribution key and is never updated in place. (Staged: only
	// merges whose reports disagree; agreeing ones take sqlMergeAgreed.)
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

	sqlRejectedExceptions = `INSERT INTO recon_exceptions (setlym, payer_province, usage_id, kind, field,
			reporter_province, reporter_seq, payee_province, provinces, detail, created_at)
		SELECT setlym, payer_province, usage_id, 'REJECTED', '', @province, seq, payee_province,
			ARRAY(SELECT DISTINCT x FROM unnest(ARRAY[payer_province, payee_province]) AS x ORDER BY x),
			reject, @now
		FROM clearing_ingest_stage WHERE status = 'conflict'`

	// A record refused at the edge brings its JSON (raw), with every ID
	// number masked (storable); a conflicting record passed every check of
	// the edge, keys and refs included (validKey, validRef: no ID number),
	// so the row rebuilt from its staged columns holds none either.
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
)

// usagesCopyFields is the number of columns of sqlCopyUsages (encodeUsages).
const usagesCopyFields = 18

// IngestBatch stores one batch of outbox records reported by province's node
// (the ReportUsage stream) in one transaction and says what became of each.
//
// Every record is validated first (codes via region, amounts via money; a
// PAYER report's payer_province and a PAYEE report's payee_province must be
// the caller, a LOCAL report's both); an invalid record is stored in
// report_rejects and acknowledged, never applied. The rest is stored in a
// few round trips (see ingestOnce): receipts and new usages rows with binary
// COPY straight from Go, the key upsert and the merges as single statements
// over arrays, and only the rare records staged for set-based SQL:
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

// outcome is what one ingest attempt decided for a row of the batch: its
// status and, for a merge, where its usages row lives, whether that row's
// period is still OPEN and whether both reports agree; for a conflict, the
// reason it is refused.
type outcome struct {
	status    string
	rowSetlym int32
	rowPayer  string
	rowOpen   bool
	agree     bool
	reject    string
}

const (
	sqlCopyReceipts = `COPY report_receipts (province, seq, received_at) FROM STDIN (FORMAT binary)`
	// New rows go straight into their period's partition (%s).
	sqlCopyUsages = `COPY %s (setlym, payer_province, usage_id, entry_type, kind, payer_region, payee_province,
		payee_region, amount, occurred_at, late, reversal_of, sharer_ref, beneficiary_ref, relationship_id,
		payer_reported, payee_reported, first_at) FROM STDIN (FORMAT binary)`
)

// partitionSQL fills the usages partition of period setlym into a statement.
//
// The common path writes a period's partition by name, not through the
// usages parent: the parent's row routing and its statement triggers with
// transition tables (usages_guard, which copy every inserted and updated row)
// cost more than the rest of the write. The partition's own guard
// (usages_partition_guard, BEFORE each statement, FOR SHARE on its period)
// keeps a closed period immutable all the same, and the ingest transaction
// has locked every OPEN period FOR SHARE and writes only into open ones. A
// distributed engine distributes the partitions with their parent, so the
// statement is the same there (docs/partitioning.md).
func partitionSQL(format string, setlym int32) string {
	return fmt.Sprintf(format, pgx.Identifier{fmt.Sprintf("usages_p%d", setlym)}.Sanitize())
}

// encodeReceipts encodes one report_receipts row per seq for sqlCopyReceipts.
func encodeReceipts(province string, seqs []int64, now time.Time) []byte {
	c := copyBuf{b: make([]byte, 0, 32+len(seqs)*40)}
	c.b = append(c.b, copyBinHeader...)
	for _, q := range seqs {
		c.tuple(3)
		c.text(province)
		c.int8(q)
		c.timestamptz(now)
	}
	c.trailer()
	return c.b
}

// encodeUsages encodes the usages rows of the first reports at idx for
// sqlCopyUsages (the reporting side marked, first_at = now).
func encodeUsages(rows []stageRow, idx []int, now time.Time) []byte {
	c := copyBuf{b: make([]byte, 0, 32+len(idx)*300)}
	c.b = append(c.b, copyBinHeader...)
	for _, i := range idx {
		r := &rows[i]
		c.tuple(usagesCopyFields)
		c.int4(r.setlym)
		c.text(r.payerProvince)
		c.text(r.usageID)
		c.text(r.entryType)
		c.text(r.kind)
		c.text(r.payerRegion)
		c.text(r.payeeProvince)
		c.text(r.payeeRegion)
		c.numericFen(r.amountFen)
		c.timestamptz(r.occurredAt)
		c.boolean(r.late)
		if r.reversalOf != nil {
			c.text(*r.reversalOf)
		} else {
			c.null()
		}
		c.text(r.sharerRef)
		c.text(r.beneficiaryRef)
		c.text(r.relationshipID)
		c.boolean(r.role == string(RolePayer))
		c.boolean(r.role == string(RolePayee))
		c.timestamptz(now)
	}
	c.trailer()
	return c.b
}

// encodeStage encodes the rows at idx with their outcomes as a binary COPY
// stream for sqlCopyStage. An invalid row carries only seq, status, kinds,
// usage id, reason and raw JSON.
func encodeStage(rows []stageRow, out []outcome, idx []int) []byte {
	c := copyBuf{b: make([]byte, 0, 64+len(idx)*340)}
	c.b = append(c.b, copyBinHeader...)
	for _, i := range idx {
		r, o := &rows[i], &out[i]
		c.tuple(stageCopyFields)
		c.int8(r.seq)
		c.text(o.status)
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
			for range 4 { // row_setlym, row_payer, row_open, agree
				c.null()
			}
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
		if o.status == statusConflict {
			c.text(o.reject)
		} else {
			c.null()
		}
		c.null() // raw
		if o.status == statusMerge {
			c.int4(o.rowSetlym)
			c.text(o.rowPayer)
			c.boolean(o.rowOpen)
			c.boolean(o.agree)
		} else {
			for range 4 {
				c.null()
			}
		}
	}
	c.trailer()
	return c.b
}

// copyIn runs one binary COPY in tx and checks that it stored want rows.
func copyIn(ctx context.Context, tx pgx.Tx, sql string, data []byte, want int, what string) error {
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(data), sql)
	if err != nil {
		return fmt.Errorf("copy %s: %w", what, err)
	}
	if tag.RowsAffected() != int64(want) {
		return fmt.Errorf("%w: copied %d of %d %s", errInvariant, tag.RowsAffected(), want, what)
	}
	return nil
}

// ingestOnce is one attempt: one transaction of a few round trips —
//
//  1. lock the OPEN periods (checking the targets), read which periods are
//     open and which of the batch's seqs were delivered before;
//  2. COPY the receipts of the others;
//  3. the key upsert of the cross-province records (one candidate per key,
//     the lowest seq), pipelined with the relationship events and the local
//     counts; then, only when a record repeats a key, the stored halves of
//     those keys, to tell a duplicate from a conflict;
//  4. COPY the new usages rows; update the rows whose second side agrees;
//  5. only when there are rare records (refused, conflicting, disagreeing
//     second sides): stage them and run the set-based statements on them.
func (s *Store) ingestOnce(ctx context.Context, province string, rows []stageRow, targets []int32, now time.Time) (Ack, error) {
	out := make([]outcome, len(rows))
	seqs := make([]int64, len(rows))
	for i := range rows {
		seqs[i] = rows[i].seq
	}
	var ack Ack
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		clear(out)
		ack = Ack{}
		args := pgx.NamedArgs{"province": province, "now": now, "targets": targets, "seqs": seqs}

		// 1. Periods and seen seqs.
		open := map[int32]bool{}
		seen := map[int64]bool{}
		b := &pgx.Batch{}
		b.Queue(sqlLockPeriods, args)
		b.Queue(sqlOpenPeriods).Query(func(rs pgx.Rows) error {
			var p int32
			_, err := pgx.ForEachRow(rs, []any{&p}, func() error { open[p] = true; return nil })
			return err
		})
		b.Queue(sqlSeenSeqs, args).Query(func(rs pgx.Rows) error {
			var q int64
			_, err := pgx.ForEachRow(rs, []any{&q}, func() error { seen[q] = true; return nil })
			return err
		})
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		fresh := make([]int64, 0, len(rows))
		for i := range rows {
			switch r := &rows[i]; {
			case seen[r.seq]:
				out[i].status = statusSeen
			case r.status != nil:
				out[i].status = *r.status
				fresh = append(fresh, r.seq)
			default:
				fresh = append(fresh, r.seq)
			}
		}
		if len(fresh) > 0 {
			if err := s.ingestFresh(ctx, tx, province, rows, out, open, fresh, now); err != nil {
				return err
			}
		}

		// Every row must have been classified, once; anything else is a bug
		// and is not committed.
		for i := range rows {
			switch out[i].status {
			case statusNew, statusMerge, statusRel, statusLocal:
				ack.Stored++
			case statusSeen, statusDupKey:
				ack.Duplicates++
			case statusInvalid:
				ack.Rejected = append(ack.Rejected, Rejection{Seq: rows[i].seq, Reason: rows[i].reject})
			case statusConflict:
				ack.Rejected = append(ack.Rejected, Rejection{Seq: rows[i].seq, Reason: out[i].reject})
			default:
				return fmt.Errorf("%w: staged row seq %d left with status %q", errInvariant, rows[i].seq, out[i].status)
			}
		}
		slices.SortFunc(ack.Rejected, func(a, b Rejection) int { return cmp.Compare(a.Seq, b.Seq) })
		if ack.Stored == 0 && len(ack.Rejected) == 0 {
			// A resent batch: acknowledged again, nothing stored.
			auditlog.SetOutcome(ctx, auditlog.OutcomeReplayed)
		}
		return nil
	})
	return ack, err
}

// ingestFresh stores the rows whose seqs (fresh, ascending) were not
// delivered before: steps 2–5 of ingestOnce.
func (s *Store) ingestFresh(ctx context.Context, tx pgx.Tx, province string, rows []stageRow, out []outcome,
	open map[int32]bool, fresh []int64, now time.Time) error {
	slices.Sort(fresh)
	if err := copyIn(ctx, tx, sqlCopyReceipts, encodeReceipts(province, fresh, now), len(fresh), "receipts"); err != nil {
		return err
	}

	// 3. Key upsert: per key, the record with the lowest seq is the
	// candidate; every other record of a key repeats it.
	cand := map[string]int{}
	for i := range rows {
		if out[i].status != "" {
			continue
		}
		if j, ok := cand[rows[i].usageID]; !ok || rows[i].seq < rows[j].seq {
			cand[rows[i].usageID] = i
		}
	}
	b := &pgx.Batch{}
	if len(cand) > 0 {
		ids := make([]string, 0, len(cand))
		for id := range cand {
			ids = append(ids, id)
		}
		slices.Sort(ids) // byte order: the key index's order (COLLATE "C")
		setlyms, payers := make([]int32, len(ids)), make([]string, len(ids))
		isPayer, seqs, hashes := make([]bool, len(ids)), make([]int64, len(ids)), make([][]byte, len(ids))
		for n, id := range ids {
			r := &rows[cand[id]]
			setlyms[n], payers[n], isPayer[n], seqs[n], hashes[n] = r.setlym, r.payerProvince, r.role == string(RolePayer), r.seq, r.hash
		}
		b.Queue(sqlUpsertKeys, pgx.NamedArgs{"province": province, "now": now, "ids": ids, "setlyms": setlyms,
			"payers": payers, "isPayer": isPayer, "seqs": seqs, "hashes": hashes}).Query(func(rs pgx.Rows) error {
			var id, payer string
			var setlym int32
			var first, agree bool
			_, err := pgx.ForEachRow(rs, []any{&id, &setlym, &payer, &first, &agree}, func() error {
				i, ok := cand[id]
				if !ok || out[i].status != "" {
					return fmt.Errorf("%w: key upsert returned %q, not a candidate of this batch", errInvariant, id)
				}
				if first {
					out[i].status = statusNew
					return nil
				}
				out[i] = outcome{status: statusMerge, rowSetlym: setlym, rowPayer: payer, rowOpen: open[setlym], agree: agree}
				return nil
			})
			return err
		})
	}
	queueRelationshipEvents(b, province, rows, out, now)
	queueLocalCounts(b, province, rows, out)
	if b.Len() > 0 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
	}
	if err := classifyRepeats(ctx, tx, rows, out); err != nil {
		return err
	}

	// 4. New rows, and second sides that agree with the first.
	var newRows, agreed []int
	for i := range out {
		switch o := &out[i]; {
		case o.status == statusNew:
			newRows = append(newRows, i)
		case o.status == statusMerge && o.agree && o.rowOpen:
			agreed = append(agreed, i)
		}
	}
	if len(newRows) > 0 {
		// In primary-key order: the index is filled sequentially per payer.
		slices.SortFunc(newRows, func(a, b int) int {
			x, y := &rows[a], &rows[b]
			if c := cmp.Compare(x.setlym, y.setlym); c != 0 {
				return c
			}
			if c := strings.Compare(x.payerProvince, y.payerProvince); c != 0 {
				return c
			}
			return strings.Compare(x.usageID, y.usageID)
		})
		for from := 0; from < len(newRows); {
			to := from + 1
			for to < len(newRows) && rows[newRows[to]].setlym == rows[newRows[from]].setlym {
				to++
			}
			part := newRows[from:to]
			if err := copyIn(ctx, tx, partitionSQL(sqlCopyUsages, rows[part[0]].setlym), encodeUsages(rows, part, now),
				len(part), "new usages rows"); err != nil {
				return err
			}
			from = to
		}
	}
	b = &pgx.Batch{}
	slices.SortFunc(agreed, func(x, y int) int {
		if c := cmp.Compare(out[x].rowSetlym, out[y].rowSetlym); c != 0 {
			return c
		}
		if c := strings.Compare(out[x].rowPayer, out[y].rowPayer); c != 0 {
			return c
		}
		if c := strings.Compare(rows[x].role, rows[y].role); c != 0 {
			return c
		}
		return strings.Compare(rows[x].usageID, rows[y].usageID)
	})
	for from := 0; from < len(agreed); {
		o, r := &out[agreed[from]], &rows[agreed[from]]
		to := from + 1
		for to < len(agreed) && out[agreed[to]].rowSetlym == o.rowSetlym && out[agreed[to]].rowPayer == o.rowPayer &&
			rows[agreed[to]].role == r.role {
			to++
		}
		ids := make([]string, to-from)
		for n, i := range agreed[from:to] {
			ids[n] = rows[i].usageID
		}
		q := sqlMergeAgreedPayee
		if r.role == string(RolePayer) {
			q = sqlMergeAgreedPayer
		}
		b.Queue(partitionSQL(q, o.rowSetlym), pgx.NamedArgs{"now": now, "setlym": o.rowSetlym, "payer": o.rowPayer,
			"ids": ids}).Exec(func(tag pgconn.CommandTag) error {
			if tag.RowsAffected() != int64(len(ids)) {
				return fmt.Errorf("%w: merged %d of %d agreeing second sides", errInvariant, tag.RowsAffected(), len(ids))
			}
			return nil
		})
		from = to
	}

	// 5. The rare records, set-based on the staging table.
	var staged []int
	merges, rejects := false, false
	for i := range out {
		switch o := &out[i]; {
		case o.status == statusInvalid, o.status == statusConflict:
			staged = append(staged, i)
			rejects = true
		case o.status == statusMerge && !o.agree:
			staged = append(staged, i)
			merges = true
		}
	}
	if len(staged) > 0 {
		if _, err := tx.Exec(ctx, stageDDL); err != nil {
			return fmt.Errorf("staging table: %w", err)
		}
		if err := copyIn(ctx, tx, sqlCopyStage, encodeStage(rows, out, staged), len(staged), "staged rows"); err != nil {
			return err
		}
		args := pgx.NamedArgs{"province": province, "now": now}
		if merges {
			for _, q := range []string{sqlCompare, sqlApplyMerge, sqlMoveRows} {
				b.Queue(q, args)
			}
		}
		if rejects {
			b.Queue(sqlRejectedExceptions, args)
			b.Queue(sqlRejects, args)
		}
	}
	if b.Len() > 0 {
		return tx.SendBatch(ctx, b).Close()
	}
	return nil
}

// classifyRepeats decides the cross-province records the key upsert did not
// take: the same side reporting a key it had already reported (in an earlier
// batch, concurrently, or at a lower seq in this one). The same content is a
// duplicate; other content a conflict, refused (never applied).
func classifyRepeats(ctx context.Context, tx pgx.Tx, rows []stageRow, out []outcome) error {
	var ids []string
	for i := range out {
		if out[i].status == "" && !slices.Contains(ids, rows[i].usageID) {
			ids = append(ids, rows[i].usageID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	type half struct {
		from string
		seq  *int64
		hash []byte
	}
	stored := map[string][2]half{} // [payer, payee]
	rs, err := tx.Query(ctx, sqlRepeatedKeys, pgx.NamedArgs{"ids": ids})
	if err != nil {
		return err
	}
	var id string
	var h [2]half
	if _, err := pgx.ForEachRow(rs, []any{&id, &h[0].from, &h[0].seq, &h[0].hash, &h[1].from, &h[1].seq, &h[1].hash},
		func() error { stored[id] = h; return nil }); err != nil {
		return err
	}
	for i := range out {
		if out[i].status != "" {
			continue
		}
		r := &rows[i]
		k, ok := stored[r.usageID]
		if !ok {
			return fmt.Errorf("%w: usage key %s repeated but not stored", errInvariant, r.usageID)
		}
		side := k[1]
		if r.role == string(RolePayer) {
			side = k[0]
		}
		if side.hash != nil && bytes.Equal(side.hash, r.hash) {
			out[i].status = statusDupKey
			continue
		}
		seq := ""
		if side.seq != nil {
			seq = strconv.FormatInt(*side.seq, 10)
		}
		out[i] = outcome{status: statusConflict, reject: fmt.Sprintf(
			"usage %s was already reported by the %s side (%s seq %s) with a different payload",
			r.usageID, strings.ToLower(r.role), side.from, seq)}
	}
	return nil
}

// queueRelationshipEvents queues the insert of the batch's relationship
// events (one statement over arrays), if any.
func queueRelationshipEvents(b *pgx.Batch, province string, rows []stageRow, out []outcome, now time.Time) {
	var sharers, ids, statuses, beneficiaries []string
	var seqs, versions []int64
	var setlyms []int32
	var changed []time.Time
	for i := range rows {
		if out[i].status != statusRel {
			continue
		}
		r := &rows[i]
		sharers, ids, statuses, beneficiaries = append(sharers, r.payerProvince), append(ids, r.relationshipID),
			append(statuses, r.relStatus), append(beneficiaries, r.relBeneficiary)
		seqs, versions, setlyms, changed = append(seqs, r.seq), append(versions, r.relVersion), append(setlyms, r.setlym),
			append(changed, r.occurredAt)
	}
	if len(seqs) == 0 {
		return
	}
	n := len(seqs)
	b.Queue(sqlRelationshipEvents, pgx.NamedArgs{"province": province, "now": now, "sharers": sharers, "seqs": seqs,
		"setlyms": setlyms, "ids": ids, "versions": versions, "statuses": statuses, "beneficiaries": beneficiaries,
		"changedAts": changed}).Exec(func(tag pgconn.CommandTag) error {
		if tag.RowsAffected() != int64(n) {
			return fmt.Errorf("%w: stored %d of %d relationship events", errInvariant, tag.RowsAffected(), n)
		}
		return nil
	})
}

// queueLocalCounts queues the upsert of the batch's local usage counts,
// aggregated per (month, entry type, kind), if any.
func queueLocalCounts(b *pgx.Batch, province string, rows []stageRow, out []outcome) {
	type key struct {
		setlym          int32
		entryType, kind string
	}
	type sum struct{ records, fen int64 }
	sums := map[key]sum{}
	for i := range rows {
		if out[i].status != statusLocal {
			continue
		}
		r := &rows[i]
		k := key{r.setlym, r.entryType, r.kind}
		v := sums[k]
		v.records++
		v.fen += r.amountFen
		sums[k] = v
	}
	if len(sums) == 0 {
		return
	}
	keys := make([]key, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(a.setlym, b.setlym), cmp.Compare(a.entryType, b.entryType), cmp.Compare(a.kind, b.kind))
	})
	setlyms, entryTypes, kinds := make([]int32, len(keys)), make([]string, len(keys)), make([]string, len(keys))
	records, fens := make([]int64, len(keys)), make([]int64, len(keys))
	for n, k := range keys {
		setlyms[n], entryTypes[n], kinds[n], records[n], fens[n] = k.setlym, k.entryType, k.kind, sums[k].records, sums[k].fen
	}
	b.Queue(sqlLocalCounts, pgx.NamedArgs{"province": province, "setlyms": setlyms, "entryTypes": entryTypes,
		"kinds": kinds, "records": records, "amountFens": fens})
}
