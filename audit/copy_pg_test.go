package audit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"gongji/audit"
	"gongji/internal/pgtest"
)

// TestMain lets the PostgreSQL test below share one server; tests that do not
// ask for a database start none.
func TestMain(m *testing.M) { pgtest.Main(m) }

// usagesCopySQL is the statement the package documentation gives the clearing
// database, for a table with the columns and types of the clearing usages
// table: text codes, NUMERIC(18,2) amounts, timestamptz, boolean, NULL
// reversal_of for a USAGE.
const usagesCopySQL = `COPY (
  SELECT usage_id, setlym::text, entry_type, kind,
         payer_province, payer_region, payee_province, payee_region,
         amount::text,
         to_char(occurred_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD"T"HH24:MI:SS') || '+08:00',
         CASE WHEN late THEN 'true' ELSE 'false' END,
         reversal_of, sharer_ref, beneficiary_ref
  FROM usages WHERE setlym = %d
  ORDER BY usage_id COLLATE "C"
) TO STDOUT WITH (FORMAT csv, HEADER false)`

// pgUsages is a RawSource whose usages.csv body comes from COPY TO STDOUT.
type pgUsages struct {
	*audit.MemSource
	pool  *pgxpool.Pool
	query string
}

func (s pgUsages) RawCSV(ctx context.Context, file string) (io.ReadCloser, error) {
	if file != audit.FileUsages {
		return nil, audit.ErrNoRaw
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		defer conn.Release()
		_, err := conn.Conn().PgConn().CopyTo(ctx, pw, s.query)
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// TestCopyFormattingContract loads the round-trip period into a real
// PostgreSQL — with a session time zone and date style chosen to differ from
// the export's, a fraction of a second on one row, and a usage_id that needs
// quoting — and checks that the documented COPY statement produces the golden
// usages.csv byte for byte, and that a naive COPY is refused.
func TestCopyFormattingContract(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewEmpty(t, "")
	// A hostile session on every connection: another time zone and date style.
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["timezone"] = "America/New_York"
	cfg.ConnConfig.RuntimeParams["datestyle"] = "SQL, DMY"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	_, err = pool.Exec(ctx, `
		CREATE TABLE usages (
			usage_id text PRIMARY KEY, setlym integer NOT NULL, entry_type text NOT NULL, kind text NOT NULL,
			payer_province text NOT NULL, payer_region text NOT NULL,
			payee_province text NOT NULL, payee_region text NOT NULL,
			amount numeric(18,2) NOT NULL, occurred_at timestamptz NOT NULL, late boolean NOT NULL,
			reversal_of text, sharer_ref text NOT NULL, beneficiary_ref text NOT NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	src := fixture()
	for i, u := range src.UsageRows {
		var rev any
		if u.ReversalOf != "" {
			rev = u.ReversalOf
		}
		when := u.OccurredAt
		if i == 0 {
			when = when.Add(750 * time.Millisecond) // the export truncates to whole seconds
		}
		_, err := pool.Exec(ctx, `INSERT INTO usages VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::numeric,$10,$11,$12,$13,$14)`,
			u.UsageID, u.Period.Int(), string(u.EntryType), string(u.Kind), u.PayerProvince, u.PayerRegion,
			u.PayeeProvince, u.PayeeRegion, u.Amount.String(), when, u.Late, rev, u.SharerRef, u.BeneficiaryRef)
		if err != nil {
			t.Fatal(err)
		}
	}

	dir := filepath.Join(t.TempDir(), "bundle")
	raw := pgUsages{MemSource: src, pool: pool, query: fmt.Sprintf(usagesCopySQL, src.Info.Period.Int())}
	if _, err := audit.WriteBundle(ctx, dir, raw); err != nil {
		t.Fatal(err)
	}
	for _, name := range bundleFiles {
		if !bytes.Equal(readFile(t, filepath.Join(dir, name)), readFile(t, filepath.Join(goldenDir, name))) {
			t.Errorf("%s from COPY differs from the golden file", name)
		}
	}

	// A naive COPY (t/f booleans, the session's timestamptz format, '' vs NULL
	// aside) is refused on its first line, not silently rewritten.
	naive := pgUsages{MemSource: src, pool: pool, query: fmt.Sprintf(
		`COPY (SELECT * FROM usages WHERE setlym = %d ORDER BY usage_id COLLATE "C") TO STDOUT WITH (FORMAT csv)`,
		src.Info.Period.Int())}
	_, err = audit.WriteBundle(ctx, filepath.Join(t.TempDir(), "naive"), naive)
	var re *audit.RowError
	if !errors.As(err, &re) || re.File != audit.FileUsages || re.Line != 2 {
		t.Fatalf("naive COPY: %v", err)
	}
	t.Logf("naive COPY refused as expected: %v", err)
}
