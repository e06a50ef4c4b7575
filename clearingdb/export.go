package clearingdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shopspring/decimal"

	"gongji/audit"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// The audit export (DESIGN §11) of one closed and settled period, national or
// scoped to one province. Memory stays flat whatever the number of rows: every
// file is streamed, never collected.
//
// The usages table holds each person's person_ref (the federation-wide
// pseudonym the nodes report, never an ID number); an export must carry
// audit.Pseudonym(export key, person_ref) instead. PostgreSQL could compute
// that HMAC itself only with pgcrypto, which the clearing migrations do not
// install — and COPY takes no bind parameters, so the key would have to be
// spliced into the statement text, where pg_stat_activity and the server log
// can show it. The key therefore never leaves this process, and usages.csv
// has two paths, both producing the same bytes (TestExportCopyAndTypedPaths):
//
//   - COPY (CopyCSV): COPY (SELECT …) TO STDOUT formats every column in the
//     canonical form of audit/doc.go — the same work as a bare COPY of the
//     rows — and only the last two fields of each line are rewritten in Go
//     (pseudonymizer, one keyed HMAC reset per value), in the COPY's own
//     goroutine. This is what WriteBundle uses for every file of the national
//     and the province bundles (RawCSV): package audit checks each line once,
//     in one pass over its bytes (audit/fast.go), while the COPY and the
//     pseudonyms run on. BenchmarkExport and make bench measured ≈ 2 µs of Go
//     CPU per row, against 10–13 µs for the typed path as it was, with flat
//     memory; the export keeps pace with the bare COPY (bench/README.md).
//   - typed (Usages): pgx scans native columns into audit.UsageRow and
//     package audit checks and formats them. It is the audit.Source method
//     (for any reader of typed rows) and the cross-check of the COPY path;
//     each row costs several times the Go CPU of a COPY line (scanning into
//     Go values, money parsing, formatting again).
//
// The derived files come with COPY from the period's result tables, frozen at
// close (period_gross, period_positions, period_allocation,
// period_instructions), and from the settlement's prepay_rows; WriteBundle
// recomputes them from the streamed usages and refuses any difference.

// Errors of the export, besides ErrNotFound and ErrPeriodNotFrozen.
var (
	// ErrExportNotSettled: the period is CLOSED but not SETTLED. prepay.csv
	// is the settlement's record (deposits drawn, outstanding), so there is
	// no complete bundle before the settlement; and an export made from
	// today's deposits could differ from one made after a deposit moved,
	// which would break reproducibility.
	ErrExportNotSettled = errors.New("clearingdb: period is closed but not settled yet: prepay.csv comes from the settlement")
	// ErrExportNoJournalHead: the clearing journal was empty when the period
	// closed (nothing had ever moved), so there is no journal head for the
	// manifest to attest.
	ErrExportNoJournalHead = errors.New("clearingdb: the clearing journal was empty when the period closed: no journal head to attest")
	// ErrExportKey: ExportOptions.Key is not set.
	ErrExportKey = errors.New("clearingdb: export pseudonym key is required")
	// ErrExportFormat: a COPY line did not have the shape the export SQL
	// produces, or a stored person_ref is not one (a bug or a tampered row).
	ErrExportFormat = errors.New("clearingdb: unexpected export row")
)

// exportLineMax bounds one COPY line of the export (a usages line is under
// 600 bytes even with two 128-byte ids); the pseudonymizer refuses longer.
const exportLineMax = 16 << 10

// ExportOptions configure an export source.
type ExportOptions struct {
	// Key turns each stored person_ref into the bundle's sharer_ref and
	// beneficiary_ref (audit.Pseudonym). Required.
	Key audit.PseudonymKey
	// WarningThreshold is the prepayment warning threshold the settlement
	// used (clearing --prepay-threshold); WriteBundle checks prepay.csv's
	// warning column with it. Zero: prepay.DefaultWarningThreshold (0.70).
	WarningThreshold decimal.Decimal
	// Province, when not "", scopes the export to one provincial unit (see
	// ExportSource.WriteBundle): usages where it is payer or payee, its
	// positions, allocation, instructions and prepay rows only.
	Province string
}

// ExportSource is the audit.Source and audit.RawSource of one CLOSED and
// SETTLED period, national or scoped to one province. Build it with
// Store.ExportSource. A closed period is immutable (its usages partition and
// result tables refuse every change), so each method reads on its own
// connection without a shared snapshot. Safe for one export at a time; make
// one source per export.
type ExportSource struct {
	pool     *pgxpool.Pool
	period   region.Period
	province string
	key      audit.PseudonymKey
	meta     audit.Meta
}

var (
	_ audit.Source    = (*ExportSource)(nil)
	_ audit.RawSource = (*ExportSource)(nil)
)

// ExportSource checks that period p can be exported and returns its source:
// the period must be SETTLED (ErrPeriodNotFrozen while OPEN or CLOSING,
// ErrExportNotSettled while CLOSED). Meta is read here, in one read-only
// snapshot: ClosedAt is the period's closed_at (its cut-off), JournalHead the
// chain head recorded by the close, Totals the close's own tallies (for a
// province: its entries and sums as payer and as payee), so that the writer
// checks the streamed rows against what the close counted.
//
// Needs no transaction. Errors: ErrExportKey; ErrBadProvince for a bad
// opts.Province; ErrNotFound (no such period); ErrPeriodNotFrozen;
// ErrExportNotSettled; ErrExportNoJournalHead; errInvariant when the stored
// summary is malformed; database errors.
func (s *Store) ExportSource(ctx context.Context, p region.Period, opts ExportOptions) (*ExportSource, error) {
	if opts.Key.IsZero() {
		return nil, ErrExportKey
	}
	if opts.Province != "" {
		if err := checkProvinceArg(opts.Province); err != nil {
			return nil, err
		}
	}
	thr := opts.WarningThreshold
	if thr.IsZero() {
		thr = prepay.DefaultWarningThreshold
	}
	x := &ExportSource{pool: s.pool, period: p, province: opts.Province, key: opts.Key}
	err := s.readOnly(ctx, func(tx pgx.Tx) error {
		per, err := GetPeriodTx(ctx, tx, p)
		if err != nil {
			return err
		}
		switch per.State {
		case settlement.PeriodSettled:
		case settlement.PeriodClosed:
			return fmt.Errorf("export %s: %w (run the settlement first)", p, ErrExportNotSettled)
		default:
			return fmt.Errorf("export %s: %w: it is %s; only a closed and settled period can be exported", p, ErrPeriodNotFrozen, per.State)
		}
		var (
			head          []byte
			count         int64
			gross         string
			pe, ee        int64
			psum, esum    string
			closedAtClose time.Time
		)
		if err := tx.QueryRow(ctx, `SELECT journal_head, usage_count, gross_total::text, closed_at
			FROM period_close WHERE setlym = $1`, p.Int()).Scan(&head, &count, &gross, &closedAtClose); err != nil {
			return fmt.Errorf("%w: export %s: close summary: %w", errInvariant, p, err)
		}
		if !closedAtClose.Equal(per.ClosedAt) {
			return fmt.Errorf("%w: export %s: close summary says closed at %s, period says %s", errInvariant, p, closedAtClose, per.ClosedAt)
		}
		if len(head) == 0 {
			return fmt.Errorf("export %s: %w", p, ErrExportNoJournalHead)
		}
		if len(head) != 32 {
			return fmt.Errorf("%w: export %s: journal head of %d bytes", errInvariant, p, len(head))
		}
		if opts.Province != "" {
			if err := tx.QueryRow(ctx, `SELECT payer_entries, payer_sum::text, payee_entries, payee_sum::text
				FROM period_positions WHERE setlym = $1 AND province = $2`, p.Int(), opts.Province).
				Scan(&pe, &psum, &ee, &esum); err != nil {
				return fmt.Errorf("%w: export %s: position of %s: %w", errInvariant, p, opts.Province, err)
			}
			ps, err1 := money.Parse(psum)
			es, err2 := money.Parse(esum)
			if err := errors.Join(err1, err2); err != nil {
				return fmt.Errorf("%w: export %s: %w", errInvariant, p, err)
			}
			count, gross = pe+ee, ps.Add(es).String()
		}
		g, err := money.Parse(gross)
		if err != nil {
			return fmt.Errorf("%w: export %s: gross total: %w", errInvariant, p, err)
		}
		x.meta = audit.Meta{Period: p, ClosedAt: per.ClosedAt, JournalHead: JournalHead{Hash: head}.String(),
			Totals: audit.Totals{Gross: g, Usages: count}, WarningThreshold: thr}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return x, nil
}

// Period is the exported period.
func (x *ExportSource) Period() region.Period { return x.period }

// Province is the province the export is scoped to, "" for the national bundle.
func (x *ExportSource) Province() string { return x.province }

// Meta returns the metadata read by Store.ExportSource.
func (x *ExportSource) Meta(context.Context) (audit.Meta, error) { return x.meta, nil }

// ---- SQL ---------------------------------------------------------------------

// exportSelect returns the SELECT of one bundle file in the canonical text of
// audit/doc.go, scoped to province when it is not "". setlym and province are
// validated codes spliced as literals (COPY takes no parameters): setlym an
// integer, province six digits (checkProvinceArg).
func exportSelect(file string, setlym int, province string) (string, error) {
	scope := func(cond string) string {
		if province == "" {
			return ""
		}
		return " AND " + fmt.Sprintf(cond, "'"+province+"'")
	}
	switch file {
	case audit.FileUsages:
		// sharer_ref and beneficiary_ref must stay the last two columns:
		// the pseudonymizer rewrites them.
		return fmt.Sprintf(`SELECT usage_id, setlym::text, entry_type, kind,
			payer_province, payer_region, payee_province, payee_region, amount::text,
			to_char(occurred_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD"T"HH24:MI:SS') || '+08:00',
			CASE WHEN late THEN 'true' ELSE 'false' END,
			reversal_of, sharer_ref, beneficiary_ref
			FROM usages WHERE setlym = %d%s
			ORDER BY usage_id COLLATE "C"`, setlym, scope("(payer_province = %[1]s OR payee_province = %[1]s)")), nil
	case audit.FileGross:
		return fmt.Sprintf(`SELECT payer_province, payee_province, amount::text
			FROM period_gross WHERE setlym = %d%s
			ORDER BY payer_province COLLATE "C", payee_province COLLATE "C"`,
			setlym, scope("(payer_province = %[1]s OR payee_province = %[1]s)")), nil
	case audit.FilePositions:
		return fmt.Sprintf(`SELECT province, receivable::text, payable::text, net::text
			FROM period_positions WHERE setlym = %d%s
			ORDER BY province COLLATE "C"`, setlym, scope("province = %s")), nil
	case audit.FileAllocation:
		return fmt.Sprintf(`SELECT province, region, receivable::text, payable::text, net::text
			FROM period_allocation WHERE setlym = %d%s
			ORDER BY province COLLATE "C", region COLLATE "C"`, setlym, scope("province = %s")), nil
	case audit.FileInstructions:
		// A PROVINCE-tier instruction always has its province on one side,
		// so "from or to is the province" is its NATIONAL instruction and
		// every instruction with its regions (as the statement lists them).
		return fmt.Sprintf(`SELECT tier, from_code, to_code, amount::text
			FROM period_instructions WHERE setlym = %d%s
			ORDER BY tier COLLATE "C", from_code COLLATE "C", to_code COLLATE "C"`,
			setlym, scope("(from_code = %[1]s OR to_code = %[1]s)")), nil
	case audit.FilePrepay:
		return fmt.Sprintf(`SELECT province, deposit_before::text, drawn::text, outstanding::text,
			deposit_after::text, required_next::text, CASE WHEN warning THEN 'true' ELSE 'false' END
			FROM prepay_rows WHERE setlym = %d%s
			ORDER BY province COLLATE "C"`, setlym, scope("province = %s")), nil
	}
	return "", fmt.Errorf("clearingdb: %q is not a CSV file of the bundle", file)
}

func copyStatement(sel string) string {
	return "COPY (" + sel + ") TO STDOUT WITH (FORMAT csv, HEADER false)"
}

// ---- raw rows (COPY) -----------------------------------------------------------

// RawCSV is the audit.RawSource of WriteBundle: every file's body from
// CopyCSV, usages.csv included (the fastest path, see the comment at the top
// of this file); the writer checks every line.
func (x *ExportSource) RawCSV(ctx context.Context, file string) (io.ReadCloser, error) {
	return x.CopyCSV(ctx, file)
}

// CopyCSV streams the body of one bundle file (no header, canonical form of
// audit/doc.go) with COPY … TO STDOUT on a connection of its own, through a
// bounded queue (chunkPipe): the COPY runs at most ≈ 1 MiB ahead of the
// caller, so memory does not grow with the rows. For usages.csv the last two
// fields of every line are rewritten to the keyed pseudonyms. Close ends the COPY (if still running),
// releases the connection and returns once both are done. Errors while
// streaming (wrapping ErrExportFormat for a malformed stored person_ref)
// surface from Read. Errors: an unknown file; database errors acquiring a
// connection; a session whose client_encoding is not UTF8.
func (x *ExportSource) CopyCSV(ctx context.Context, file string) (io.ReadCloser, error) {
	sel, err := exportSelect(file, x.period.Int(), x.province)
	if err != nil {
		return nil, err
	}
	var wrap func(io.Writer) io.Writer
	if file == audit.FileUsages {
		wrap = func(w io.Writer) io.Writer { return newPseudonymizer(w, x.key) }
	}
	return startCopy(ctx, x.pool, copyStatement(sel), wrap)
}

// copyReader is the read end of a running COPY.
type copyReader struct {
	*chunkPipe
	cancel context.CancelFunc
	done   chan struct{}
}

// Close stops the COPY if it is still running and waits until its goroutine
// has released the connection.
func (r *copyReader) Close() error {
	r.closeRead() // a COPY still writing fails at once
	r.cancel()
	<-r.done
	return nil
}

// startCopy runs sql (a COPY … TO STDOUT) on its own connection and returns
// the read end of a chunkPipe its output is written to, through wrap when not
// nil.
func startCopy(ctx context.Context, pool *pgxpool.Pool, sql string, wrap func(io.Writer) io.Writer) (io.ReadCloser, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if enc := conn.Conn().PgConn().ParameterStatus("client_encoding"); enc != "UTF8" {
		conn.Release()
		return nil, fmt.Errorf("export: client_encoding is %q, the bundle is UTF-8", enc)
	}
	ctx, cancel := context.WithCancel(ctx)
	p := newChunkPipe()
	r := &copyReader{chunkPipe: p, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer conn.Release()
		var w io.Writer = p
		var z *pseudonymizer
		if wrap != nil {
			w = wrap(p)
			z, _ = w.(*pseudonymizer)
		}
		_, err := conn.Conn().PgConn().CopyTo(ctx, w, sql)
		if err == nil && z != nil {
			err = z.finish()
		}
		if err != nil {
			err = fmt.Errorf("export COPY: %w", err)
		}
		p.closeWrite(err) // nil: the reader sees io.EOF after the last byte
	}()
	return r, nil
}

// pseudonymizer rewrites COPY output of the usages SELECT line by line: the
// last two fields (sharer_ref, beneficiary_ref: stored person_refs, which
// ingest restricted to [0-9A-Za-z_-], so never quoted and never holding a
// comma) become audit.Pseudonym(key, ref). Everything before them, quoted
// usage ids included, passes through byte for byte. Memory: one line.
type pseudonymizer struct {
	w       io.Writer
	hmac    *audit.Pseudonymizer
	partial []byte // the start of a line split across writes
	out     []byte
	line    int64
}

func newPseudonymizer(w io.Writer, key audit.PseudonymKey) *pseudonymizer {
	return &pseudonymizer{w: w, hmac: audit.NewPseudonymizer(key)}
}

// Write accepts any split of the stream (PostgreSQL sends one CopyData
// message per row, but nothing here relies on it).
func (z *pseudonymizer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(z.partial)+len(p) > exportLineMax {
				return 0, fmt.Errorf("%w: usages line %d longer than %d bytes", ErrExportFormat, z.line+1, exportLineMax)
			}
			z.partial = append(z.partial, p...)
			break
		}
		line := p[:i]
		if len(z.partial) > 0 {
			z.partial = append(z.partial, line...)
			line = z.partial
		}
		if err := z.rewrite(line); err != nil {
			return 0, err
		}
		z.partial = z.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

// finish reports a last line without its "\n" (COPY never writes one).
func (z *pseudonymizer) finish() error {
	if len(z.partial) > 0 {
		return fmt.Errorf("%w: usages output ends inside line %d", ErrExportFormat, z.line+1)
	}
	return nil
}

func (z *pseudonymizer) rewrite(line []byte) error {
	z.line++
	j := bytes.LastIndexByte(line, ',')
	i := -1
	if j > 0 {
		i = bytes.LastIndexByte(line[:j], ',')
	}
	if i < 0 {
		return fmt.Errorf("%w: usages line %d has no sharer_ref/beneficiary_ref fields", ErrExportFormat, z.line)
	}
	sharer, beneficiary := line[i+1:j], line[j+1:]
	if !validRefBytes(sharer) || !validRefBytes(beneficiary) {
		return fmt.Errorf("%w: usages line %d: stored person_ref is not 1..%d characters of [0-9A-Za-z_-]",
			ErrExportFormat, z.line, refLenMax)
	}
	z.out = append(z.out[:0], line[:i+1]...)
	z.out = z.hmac.Append(z.out, sharer)
	z.out = append(z.out, ',')
	z.out = z.hmac.Append(z.out, beneficiary)
	z.out = append(z.out, '\n')
	_, err := z.w.Write(z.out)
	return err
}

func validRefBytes(b []byte) bool {
	if len(b) == 0 || len(b) > refLenMax {
		return false
	}
	// Branch-free: a per-character branch mispredicts on random refs.
	var bad byte
	for _, c := range b {
		bad |= notRefChar[c]
	}
	return bad == 0
}

// notRefChar[c] is 1 unless c is in [0-9A-Za-z_-].
var notRefChar = func() (t [256]byte) {
	for i := range t {
		if !(i >= '0' && i <= '9' || i >= 'a' && i <= 'z' || i >= 'A' && i <= 'Z' || i == '_' || i == '-') {
			t[i] = 1
		}
	}
	return t
}()

// ---- typed rows ------------------------------------------------------------------

// sqlExportUsages is the typed path of usages.csv (Source.Usages): native
// columns, formatted in Go by package audit.
const sqlExportUsages = `SELECT usage_id, setlym, entry_type, kind, payer_province, payer_region,
		payee_province, payee_region, amount::text, occurred_at, late, coalesce(reversal_of, ''),
		sharer_ref, beneficiary_ref
	FROM usages WHERE setlym = $1 AND ($2 = '' OR payer_province = $2 OR payee_province = $2)
	ORDER BY usage_id COLLATE "C"`

// Usages streams usages.csv rows in usage_id order with the keyed
// pseudonyms (the typed path; WriteBundle takes the COPY path). Memory: one
// row.
func (x *ExportSource) Usages(ctx context.Context, fn func(audit.UsageRow) error) error {
	rows, err := x.pool.Query(ctx, sqlExportUsages, x.period.Int(), x.province)
	if err != nil {
		return fmt.Errorf("export usages of %s: %w", x.period, err)
	}
	defer rows.Close()
	var (
		r                audit.UsageRow
		ym               int32
		entry, kind, amt string
		sharer, benef    string
		z                = audit.NewPseudonymizer(x.key)
		buf              []byte
	)
	for rows.Next() {
		if err := rows.Scan(&r.UsageID, &ym, &entry, &kind, &r.PayerProvince, &r.PayerRegion,
			&r.PayeeProvince, &r.PayeeRegion, &amt, &r.OccurredAt, &r.Late, &r.ReversalOf,
			&sharer, &benef); err != nil {
			return fmt.Errorf("export usages of %s: %w", x.period, err)
		}
		if int(ym) != x.period.Int() {
			return fmt.Errorf("%w: usage %s has setlym %d in period %s", errInvariant, r.UsageID, ym, x.period)
		}
		r.Period, r.EntryType, r.Kind = x.period, audit.EntryType(entry), audit.Kind(kind)
		if r.Amount, err = money.Parse(amt); err != nil {
			return fmt.Errorf("%w: usage %s amount: %w", errInvariant, r.UsageID, err)
		}
		if !validRef(sharer) || !validRef(benef) {
			return fmt.Errorf("%w: usage %s: stored person_ref is malformed", ErrExportFormat, r.UsageID)
		}
		buf = z.Append(buf[:0], []byte(sharer))
		r.SharerRef = string(buf)
		buf = z.Append(buf[:0], []byte(benef))
		r.BeneficiaryRef = string(buf)
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("export usages of %s: %w", x.period, err)
	}
	return nil
}

// eachText runs the SELECT of file and calls fn with each row's text fields.
func (x *ExportSource) eachText(ctx context.Context, file string, fn func(f []string) error) error {
	sel, err := exportSelect(file, x.period.Int(), x.province)
	if err != nil {
		return err
	}
	rows, err := x.pool.Query(ctx, sel, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return fmt.Errorf("export %s of %s: %w", file, x.period, err)
	}
	defer rows.Close()
	var f []string
	for rows.Next() {
		vals := rows.RawValues()
		f = f[:0]
		for _, v := range vals {
			f = append(f, string(v))
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("export %s of %s: %w", file, x.period, err)
	}
	return nil
}

func parseYuans(f []string, dst ...*money.Yuan) error {
	for i, d := range dst {
		y, err := money.Parse(f[i])
		if err != nil {
			return fmt.Errorf("%w: %w", errInvariant, err)
		}
		*d = y
	}
	return nil
}

// Gross streams gross.csv rows (period_gross).
func (x *ExportSource) Gross(ctx context.Context, fn func(audit.GrossRow) error) error {
	return x.eachText(ctx, audit.FileGross, func(f []string) error {
		r := audit.GrossRow{PayerProvince: f[0], PayeeProvince: f[1]}
		if err := parseYuans(f[2:], &r.Amount); err != nil {
			return err
		}
		return fn(r)
	})
}

// Positions streams positions.csv rows (period_positions).
func (x *ExportSource) Positions(ctx context.Context, fn func(audit.PositionRow) error) error {
	return x.eachText(ctx, audit.FilePositions, func(f []string) error {
		r := audit.PositionRow{ProvinceCode: f[0]}
		if err := parseYuans(f[1:], &r.Receivable, &r.Payable, &r.Net); err != nil {
			return err
		}
		return fn(r)
	})
}

// Allocation streams allocation.csv rows (period_allocation).
func (x *ExportSource) Allocation(ctx context.Context, fn func(audit.AllocationRow) error) error {
	return x.eachText(ctx, audit.FileAllocation, func(f []string) error {
		r := audit.AllocationRow{ProvinceCode: f[0], RegionCode: f[1]}
		if err := parseYuans(f[2:], &r.Receivable, &r.Payable, &r.Net); err != nil {
			return err
		}
		return fn(r)
	})
}

// Instructions streams instructions.csv rows (period_instructions).
func (x *ExportSource) Instructions(ctx context.Context, fn func(audit.InstructionRow) error) error {
	return x.eachText(ctx, audit.FileInstructions, func(f []string) error {
		r := audit.InstructionRow{Tier: audit.Tier(f[0]), FromCode: f[1], ToCode: f[2]}
		if err := parseYuans(f[3:], &r.Amount); err != nil {
			return err
		}
		return fn(r)
	})
}

// Prepay streams prepay.csv rows (prepay_rows of the settlement).
func (x *ExportSource) Prepay(ctx context.Context, fn func(audit.PrepayRow) error) error {
	return x.eachText(ctx, audit.FilePrepay, func(f []string) error {
		r := audit.PrepayRow{ProvinceCode: f[0], Warning: f[6] == "true"}
		if err := parseYuans(f[1:6], &r.DepositBefore, &r.Drawn, &r.Outstanding, &r.DepositAfter, &r.RequiredNext); err != nil {
			return err
		}
		return fn(r)
	})
}
