package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shopspring/decimal"

	"gongji/audit"
	"gongji/money"
)

func TestPseudonym(t *testing.T) {
	t.Parallel()
	// Vector computed independently:
	// printf '%s' a1b2…8f90 | openssl dgst -sha256 -hmac gongji-test-export-key-0123456789abcdef
	got := audit.Pseudonym(fxExportKey, "a1b2c3d4e5f60718293a4b5c6d7e8f90")
	if want := "34f96ce454f48eed22fddf2a1f401ed355268b39fd3c4233d6fc511c29b0ecf4"; got != want {
		t.Fatalf("Pseudonym = %s, want %s", got, want)
	}
	if audit.Pseudonym(fxPersonKey, "a1b2c3d4e5f60718293a4b5c6d7e8f90") == got {
		t.Fatal("two keys give the same pseudonym")
	}
	secret := "gongji-test-export-key-0123456789abcdef"
	for _, s := range []string{fmt.Sprint(fxExportKey), fmt.Sprintf("%v %+v %#v %s %q %x", fxExportKey, fxExportKey, fxExportKey, fxExportKey, fxExportKey, fxExportKey)} {
		if strings.Contains(s, secret) || strings.Contains(s, fmt.Sprintf("%x", secret)) {
			t.Fatalf("key printed: %s", s)
		}
	}
	if b, err := json.Marshal(struct{ K audit.PseudonymKey }{fxExportKey}); err == nil {
		t.Fatalf("key marshalled to JSON: %s", b)
	}
	if _, err := audit.NewPseudonymKey([]byte("short")); !errors.Is(err, audit.ErrWeakKey) {
		t.Fatalf("short key: %v", err)
	}
	k, hexText, err := audit.GeneratePseudonymKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := audit.ParsePseudonymKey(hexText + "\n")
	if err != nil || audit.Pseudonym(k, "x") != audit.Pseudonym(k2, "x") {
		t.Fatalf("ParsePseudonymKey: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a zero key did not panic")
		}
	}()
	audit.Pseudonym(audit.PseudonymKey{}, "x")
}

// failing is a source whose prepay rows fail, to prove no half bundle stays.
type failing struct{ *audit.MemSource }

var errBoom = errors.New("database went away")

func (failing) Prepay(context.Context, func(audit.PrepayRow) error) error { return errBoom }

// assertNothingLeft checks that a failed write left neither dir nor staging.
func assertNothingLeft(t *testing.T, parent string) {
	t.Helper()
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind after a failed write: %s", e.Name())
	}
}

func TestWriteBundleRefuses(t *testing.T) {
	t.Parallel()
	type tc struct {
		name   string
		edit   func(s *audit.MemSource)
		is     error
		file   string
		line   int64
		column string
	}
	usage := func(id string) func(s *audit.MemSource) *audit.UsageRow {
		return func(s *audit.MemSource) *audit.UsageRow {
			for i := range s.UsageRows {
				if s.UsageRows[i].UsageID == id {
					return &s.UsageRows[i]
				}
			}
			panic(id)
		}
	}
	u1 := usage("U202608-0001")
	cases := []tc{
		{"rows out of order", func(s *audit.MemSource) { s.UsageRows[1], s.UsageRows[2] = s.UsageRows[2], s.UsageRows[1] }, audit.ErrUnsorted, audit.FileUsages, 4, ""},
		{"duplicate usage id", func(s *audit.MemSource) { s.UsageRows[2].UsageID = s.UsageRows[1].UsageID }, audit.ErrUnsorted, audit.FileUsages, 4, ""},
		{"negative USAGE", func(s *audit.MemSource) { u1(s).Amount = money.MustParse("-1000.00") }, audit.ErrInvalidRow, audit.FileUsages, 6, "amount"},
		{"positive REVERSAL", func(s *audit.MemSource) { s.UsageRows[1].Amount = money.MustParse("50.50") }, audit.ErrInvalidRow, audit.FileUsages, 3, "amount"},
		{"same province", func(s *audit.MemSource) { u1(s).PayeeProvince, u1(s).PayeeRegion = "440000", "440300" }, audit.ErrInvalidRow, audit.FileUsages, 6, "payee_province"},
		{"region of another province", func(s *audit.MemSource) { u1(s).PayerRegion = "510100" }, audit.ErrInvalidRow, audit.FileUsages, 6, "payer_region"},
		{"late row in its own month", func(s *audit.MemSource) { u1(s).Late = true }, audit.ErrInvalidRow, audit.FileUsages, 6, "occurred_at"},
		{"USAGE naming another", func(s *audit.MemSource) { u1(s).ReversalOf = "U1" }, audit.ErrInvalidRow, audit.FileUsages, 6, "reversal_of"},
		{"REVERSAL naming none", func(s *audit.MemSource) { s.UsageRows[1].ReversalOf = "" }, audit.ErrInvalidRow, audit.FileUsages, 3, "reversal_of"},
		{"ID number as usage id", func(s *audit.MemSource) { u1(s).UsageID = "U-11010519491231002X" }, audit.ErrLooksLikeIDNumber, audit.FileUsages, 6, "usage_id"},
		{"ID number as sharer_ref", func(s *audit.MemSource) { u1(s).SharerRef = "11010519491231002X" }, audit.ErrInvalidRow, audit.FileUsages, 6, "sharer_ref"},
		{"line break in id", func(s *audit.MemSource) { u1(s).UsageID = "U202608-0001\n" }, audit.ErrInvalidRow, audit.FileUsages, 6, "usage_id"},
		{"wrong period", func(s *audit.MemSource) { u1(s).Period = u1(s).Period.Next() }, audit.ErrInvalidRow, audit.FileUsages, 6, "setlym"},
		{"totals disagree", func(s *audit.MemSource) { s.Info.Totals.Usages = 11 }, audit.ErrControl, "", 0, ""},
		{"usage amount the derived files do not reflect", func(s *audit.MemSource) {
			u1(s).Amount = money.MustParse("1000.01")
			s.Info.Totals.Gross = money.MustParse("3595.26")
		}, audit.ErrControl, audit.FileGross, 5, "amount"},
		{"gross amount altered", func(s *audit.MemSource) { s.GrossRows[0].Amount = money.MustParse("-120.01") }, audit.ErrControl, audit.FileGross, 2, "amount"},
		{"gross row missing", func(s *audit.MemSource) { s.GrossRows = s.GrossRows[:6] }, audit.ErrControl, "", 0, ""},
		{"zero gross pair listed", func(s *audit.MemSource) {
			s.GrossRows = append([]audit.GrossRow{{PayerProvince: "110000", PayeeProvince: "310000", Amount: money.Zero}}, s.GrossRows...)
		}, audit.ErrInvalidRow, audit.FileGross, 2, "amount"},
		{"position net inconsistent", func(s *audit.MemSource) { s.PositionRows[0].Net = money.MustParse("1.00") }, audit.ErrInvalidRow, audit.FilePositions, 2, "net"},
		{"a province missing from positions", func(s *audit.MemSource) { s.PositionRows = s.PositionRows[1:] }, audit.ErrControl, audit.FilePositions, 2, "province_code"},
		{"allocation moved between regions", func(s *audit.MemSource) {
			s.AllocationRows[2].Receivable = money.MustParse("379.00")
			s.AllocationRows[2].Net = money.MustParse("-621.00")
		}, audit.ErrControl, audit.FileAllocation, 4, "receivable"},
		{"instruction amount", func(s *audit.MemSource) { s.InstructionRows[2].Amount = money.MustParse("941.00") }, audit.ErrControl, audit.FileInstructions, 4, "amount"},
		{"prepay shortfall hidden", func(s *audit.MemSource) {
			for i := range s.PrepayRows {
				if s.PrepayRows[i].ProvinceCode == "510000" {
					s.PrepayRows[i].Outstanding = money.Zero
				}
			}
		}, audit.ErrControl, audit.FilePrepay, 24, "outstanding"},
		{"prepay warning wrong", func(s *audit.MemSource) {
			for i := range s.PrepayRows {
				if s.PrepayRows[i].ProvinceCode == "440000" {
					s.PrepayRows[i].Warning = false
				}
			}
		}, audit.ErrControl, audit.FilePrepay, 20, "warning"},
		{"closed before the period ended", func(s *audit.MemSource) { s.Info.ClosedAt = at("2026-08-31T12:00:00+08:00") }, audit.ErrBadMeta, "", 0, ""},
		{"no warning threshold", func(s *audit.MemSource) { s.Info.WarningThreshold = decimal.Zero }, audit.ErrBadMeta, "", 0, ""},
		{"bad journal head", func(s *audit.MemSource) { s.Info.JournalHead = "XYZ" }, audit.ErrBadMeta, "", 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			src := fixture()
			c.edit(src)
			parent := t.TempDir()
			_, err := audit.WriteBundle(context.Background(), filepath.Join(parent, "bundle"), src)
			if !errors.Is(err, c.is) {
				t.Fatalf("error %v, want %v", err, c.is)
			}
			if c.file != "" {
				var re *audit.RowError
				if !errors.As(err, &re) || re.File != c.file || re.Line != c.line || re.Column != c.column {
					t.Fatalf("error %v, want %s line %d column %q", err, c.file, c.line, c.column)
				}
			}
			assertNothingLeft(t, parent)
		})
	}
	t.Run("source error", func(t *testing.T) {
		t.Parallel()
		parent := t.TempDir()
		_, err := audit.WriteBundle(context.Background(), filepath.Join(parent, "bundle"), failing{fixture()})
		if !errors.Is(err, errBoom) {
			t.Fatalf("error %v", err)
		}
		assertNothingLeft(t, parent)
	})
	t.Run("cancelled", func(t *testing.T) {
		t.Parallel()
		parent := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := audit.WriteBundle(ctx, filepath.Join(parent, "bundle"), fixture()); !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v", err)
		}
		assertNothingLeft(t, parent)
	})
}

func TestWriteBundleTarget(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	empty := filepath.Join(parent, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.WriteBundle(context.Background(), empty, fixture()); err != nil {
		t.Fatalf("an existing empty directory: %v", err)
	}
	if _, err := audit.WriteBundle(context.Background(), empty, fixture()); !errors.Is(err, audit.ErrDirNotEmpty) {
		t.Fatalf("writing over a bundle: %v", err)
	}
	if _, err := audit.WriteBundle(context.Background(), filepath.Join(parent, "no", "parent"), fixture()); err == nil {
		t.Fatal("a missing parent was accepted")
	}
	ents, _ := os.ReadDir(parent)
	if len(ents) != 1 {
		t.Fatalf("parent holds %d entries, want only the bundle", len(ents))
	}
}

// rawUsages serves usages.csv from pre-formatted text, as a COPY would.
type rawUsages struct {
	*audit.MemSource
	body string
}

func (r rawUsages) RawCSV(_ context.Context, file string) (io.ReadCloser, error) {
	if file != audit.FileUsages {
		return nil, audit.ErrNoRaw
	}
	return io.NopCloser(strings.NewReader(r.body)), nil
}

func goldenBody(t *testing.T, name string) string {
	t.Helper()
	b := string(readFile(t, filepath.Join(goldenDir, name)))
	return b[strings.IndexByte(b, '\n')+1:]
}

// TestRawUsages: a RawSource's pre-formatted usages give the same bundle as
// the typed rows; WriteRawCSV counts and hashes in the same pass.
func TestRawUsages(t *testing.T) {
	t.Parallel()
	src := fixture()
	dir := writeFixture(t, rawUsages{src, goldenBody(t, audit.FileUsages)})
	for _, name := range bundleFiles {
		if !bytes.Equal(readFile(t, filepath.Join(dir, name)), readFile(t, filepath.Join(goldenDir, name))) {
			t.Errorf("%s differs from the golden file", name)
		}
	}
	var buf bytes.Buffer
	sum, err := audit.WriteRawCSV(context.Background(), &buf, audit.FileUsages, src.Info, strings.NewReader(goldenBody(t, audit.FileUsages)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), readFile(t, filepath.Join(goldenDir, audit.FileUsages))) {
		t.Fatal("WriteRawCSV output differs from the golden usages.csv")
	}
	man, err := audit.DecodeManifest(readFile(t, filepath.Join(goldenDir, audit.FileManifest)))
	if err != nil {
		t.Fatal(err)
	}
	if sum != man.Files[audit.FileUsages] {
		t.Fatalf("sum %+v, manifest %+v", sum, man.Files[audit.FileUsages])
	}
}

// TestRawRefusesNonCanonical: every deviation from the formatting contract
// the SQL side could make is refused, naming the line.
func TestRawRefusesNonCanonical(t *testing.T) {
	t.Parallel()
	body := goldenBody(t, audit.FileUsages)
	first := body[:strings.IndexByte(body, '\n')+1] // A202608-0001, line 2
	rest := body[len(first):]
	cases := []struct {
		name, from, to string
		is             error
		line           int64
	}{
		{"COPY boolean", ",false,U202607-0042,", ",f,U202607-0042,", audit.ErrInvalidRow, 2},
		{"one decimal", ",35.25,", ",35.2,", audit.ErrInvalidRow, 2},
		{"plus sign", ",35.25,", ",+35.25,", audit.ErrInvalidRow, 2},
		{"timestamptz default output", "2026-08-20T15:30:00+08:00", "2026-08-20 15:30:00+08", audit.ErrInvalidRow, 2},
		{"UTC time", "2026-08-20T15:30:00+08:00", "2026-08-20T07:30:00Z", audit.ErrInvalidRow, 2},
		{"fractional seconds", "2026-08-20T15:30:00+08:00", "2026-08-20T15:30:00.5+08:00", audit.ErrInvalidRow, 2},
		{"CRLF", "\n", "\r\n", audit.ErrNotCanonical, 2},
		{"unneeded quotes", "A202608-0001,", `"A202608-0001",`, audit.ErrNotCanonical, 2},
		{"empty string instead of NULL", "", "", audit.ErrNotCanonical, 6},
		{"short code", ",510000,510100,", ",51000,510100,", audit.ErrInvalidRow, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := strings.Replace(first, c.from, c.to, 1) + rest
			if c.name == "empty string instead of NULL" {
				b = first + strings.Replace(rest, ",false,,", `,false,"",`, 1) // the first USAGE, line 6
			}
			_, err := audit.WriteRawCSV(context.Background(), io.Discard, audit.FileUsages, fixture().Info, strings.NewReader(b))
			var re *audit.RowError
			if !errors.Is(err, c.is) || !errors.As(err, &re) || re.Line != c.line {
				t.Fatalf("error %v, want %v on line %d", err, c.is, c.line)
			}
		})
	}
	t.Run("no final newline", func(t *testing.T) {
		t.Parallel()
		_, err := audit.WriteRawCSV(context.Background(), io.Discard, audit.FileUsages, fixture().Info, strings.NewReader(strings.TrimSuffix(body, "\n")))
		if !errors.Is(err, audit.ErrNotCanonical) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("header in body", func(t *testing.T) {
		t.Parallel()
		full := string(readFile(t, filepath.Join(goldenDir, audit.FileUsages)))
		_, err := audit.WriteRawCSV(context.Background(), io.Discard, audit.FileUsages, fixture().Info, strings.NewReader(full))
		var re *audit.RowError
		if !errors.As(err, &re) || re.Line != 2 {
			t.Fatalf("error %v", err)
		}
	})
}

// TestReadBundleRefusesTampering: ReadBundle checks rows and manifest sums.
func TestReadBundleRefusesTampering(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, name := range bundleFiles {
		b := readFile(t, filepath.Join(exampleDir, name))
		if name == audit.FileGross {
			b = bytes.Replace(b, []byte("2153.00"), []byte("2153.01"), 1)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := audit.ReadBundle(dir, threshold070); !errors.Is(err, audit.ErrControl) {
		t.Fatalf("error %v", err)
	}
}
