package clearingdb_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/shopspring/decimal"

	"gongji/audit"
	"gongji/audit/verify"
	"gongji/clearingdb"
	"gongji/internal/pii"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
	"gongji/settlement"
)

// exBundleNames are the seven files of a bundle.
var exBundleNames = append(append([]string(nil), audit.CSVFiles...), audit.FileManifest)

func exReadBundle(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	if len(out) != len(exBundleNames) {
		t.Fatalf("%s holds %d files, want the %d of a bundle", dir, len(out), len(exBundleNames))
	}
	return out
}

func exWrite(t testing.TB, src *clearingdb.ExportSource) (string, clearingdb.ExportManifest) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bundle")
	m, err := src.WriteBundle(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

// TestExportNationalBundle: a settled period exports to a bundle that the
// independent verifier accepts, with the close's cut-off, journal head and
// totals, keyed pseudonyms, and the same bytes on every export.
func TestExportNationalBundle(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, false)
	dir, man := exWrite(t, f.source(t, ""))

	status, err := f.store.PeriodStatus(f.ctx, f.period)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify.VerifyFS(f.ctx, os.DirFS(dir), verify.Options{JournalHead: status.JournalHead.String()}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !man.GeneratedAt.Equal(f.closedAt) {
		t.Errorf("generated_at %s, want the cut-off %s", man.GeneratedAt, f.closedAt)
	}
	if man.JournalHead != status.JournalHead.String() || len(man.JournalHead) != 64 {
		t.Errorf("journal_head %q, want %q", man.JournalHead, status.JournalHead)
	}
	if man.Totals.Usages != 8 || man.Totals.Gross.String() != "2397.35" || !man.Totals.Gross.Equal(status.Gross) {
		t.Errorf("totals %+v, want 8 rows summing to 2397.35 (status %s)", man.Totals, status.Gross)
	}

	src, err := audit.ReadBundle(dir, decimal.RequireFromString(verify.DefaultWarningThreshold))
	if err != nil {
		t.Fatal(err)
	}
	key := exportKey(t)
	byID := map[string]audit.UsageRow{}
	for _, u := range src.UsageRows {
		byID[u.UsageID] = u
	}
	u := byID[`440000-PH,7"x`]
	if u.SharerRef != audit.Pseudonym(key, f.refs[2]) || u.BeneficiaryRef != audit.Pseudonym(key, f.refs[0]) {
		t.Errorf("quoted row refs %s/%s are not the keyed pseudonyms of its person_refs", u.SharerRef, u.BeneficiaryRef)
	}
	if l := byID["110000-L0001"]; !l.Late || l.Period.String() != exPeriod {
		t.Errorf("late row: %+v", l)
	}
	if r := byID["410000-R0001"]; r.EntryType != audit.EntryReversal || r.Amount.String() != "-50.50" || r.ReversalOf != "410000-U0002" {
		t.Errorf("reversal row: %+v", r)
	}
	if len(src.PositionRows) != 32 || len(src.PrepayRows) != 32 {
		t.Errorf("%d positions, %d prepay rows, want 32 each", len(src.PositionRows), len(src.PrepayRows))
	}

	// Reproducible: a second export of the same period, byte for byte.
	dir2, _ := exWrite(t, f.source(t, ""))
	a, b := exReadBundle(t, dir), exReadBundle(t, dir2)
	for _, n := range exBundleNames {
		if !bytes.Equal(a[n], b[n]) {
			t.Errorf("%s differs between two exports", n)
		}
	}
	// The operator workbook too.
	wb1, wb2 := filepath.Join(t.TempDir(), "a.xlsx"), filepath.Join(t.TempDir(), "b.xlsx")
	for _, p := range []string{wb1, wb2} {
		if err := audit.WriteWorkbook(f.ctx, p, f.source(t, "")); err != nil {
			t.Fatal(err)
		}
	}
	if x, y := exRead(t, wb1), exRead(t, wb2); !bytes.Equal(x, y) {
		t.Error("two workbooks of the same period differ")
	}
}

func exRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// exCopySource takes usages.csv from the COPY path (CopyCSV) instead of the
// typed rows WriteBundle uses.
type exCopySource struct{ *clearingdb.ExportSource }

func (s exCopySource) RawCSV(ctx context.Context, file string) (io.ReadCloser, error) {
	return s.CopyCSV(ctx, file)
}

// exHideRaw hides the RawSource: every file from the typed row methods.
type exHideRaw struct{ audit.Source }

// TestExportCopyAndTypedPaths: usages.csv formatted by PostgreSQL (COPY,
// pseudonyms spliced in Go) and by package audit (typed rows), and the
// derived files from COPY or typed rows, give the same bundle.
func TestExportCopyAndTypedPaths(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, false)
	prod, _ := exWrite(t, f.source(t, ""))
	a := exReadBundle(t, prod)
	for name, src := range map[string]audit.Source{
		"copy": exCopySource{f.source(t, "")}, "typed": exHideRaw{f.source(t, "")},
	} {
		dir := filepath.Join(t.TempDir(), name)
		if _, err := audit.WriteBundle(f.ctx, dir, src); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b := exReadBundle(t, dir)
		for _, n := range exBundleNames {
			if !bytes.Equal(a[n], b[n]) {
				t.Errorf("%s: %s differs from the production path:\n%s\n---\n%s", name, n, b[n], a[n])
			}
		}
	}
}

// TestExportRefusals: only a settled period can be exported.
func TestExportRefusals(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, true) // CLOSED, not settled
	key := exportKey(t)
	_, err := f.store.ExportSource(f.ctx, f.period, clearingdb.ExportOptions{Key: key})
	if !errors.Is(err, clearingdb.ErrExportNotSettled) {
		t.Errorf("CLOSED period: %v, want ErrExportNotSettled", err)
	}
	// An OPEN period: August, opened by a record.
	aug := f.period.Next()
	if _, err := f.store.EnsurePeriod(f.ctx, aug, t0); err != nil {
		t.Fatal(err)
	}
	_, err = f.store.ExportSource(f.ctx, aug, clearingdb.ExportOptions{Key: key})
	if !errors.Is(err, clearingdb.ErrPeriodNotFrozen) || !strings.Contains(err.Error(), "OPEN") {
		t.Errorf("OPEN period: %v, want ErrPeriodNotFrozen naming OPEN", err)
	}
	_, err = f.store.ExportSource(f.ctx, mustPeriod(t, "202501"), clearingdb.ExportOptions{Key: key})
	if !errors.Is(err, clearingdb.ErrNotFound) {
		t.Errorf("unknown period: %v, want ErrNotFound", err)
	}
	_, err = f.store.ExportSource(f.ctx, f.period, clearingdb.ExportOptions{})
	if !errors.Is(err, clearingdb.ErrExportKey) {
		t.Errorf("no key: %v, want ErrExportKey", err)
	}
	_, err = f.store.ExportSource(f.ctx, f.period, clearingdb.ExportOptions{Key: key, Province: "410100"})
	if !errors.Is(err, clearingdb.ErrBadProvince) {
		t.Errorf("region as province: %v, want ErrBadProvince", err)
	}
}

// exIDCandidate finds runs of 17 digits and a check character standing alone.
var exIDCandidate = regexp.MustCompile(`[0-9]{17}[0-9Xx]`)

// exScanClear fails when b holds any of needles, or an 18-character sequence
// that is a valid resident ID number (GB 11643 check character) not inside a
// longer run of letters and digits.
func exScanClear(t *testing.T, name string, b []byte, needles []string) {
	t.Helper()
	for _, n := range needles {
		if bytes.Contains(bytes.ToLower(b), bytes.ToLower([]byte(n))) {
			t.Errorf("%s contains %q in clear", name, n)
		}
	}
	for _, loc := range exIDCandidate.FindAllIndex(b, -1) {
		i, j := loc[0], loc[1]
		if i > 0 && exIsAlnum(b[i-1]) || j < len(b) && exIsAlnum(b[j]) {
			continue
		}
		if pii.Validate(string(b[i:j])) == nil {
			t.Errorf("%s contains a valid ID number at byte %d", name, i)
		}
	}
}

func exIsAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// TestExportNoPersonalDataInClear scans every file of the national and a
// scoped bundle and every part of the workbooks for the fixture's ID numbers,
// their person_refs, the export key, and anything shaped like a valid ID
// number.
func TestExportNoPersonalDataInClear(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, false)
	needles := append(append([]string{exExportKeyHex}, f.people...), f.refs...)
	for _, prov := range []string{"", exHenan} {
		dir, _ := exWrite(t, f.source(t, prov))
		for name, b := range exReadBundle(t, dir) {
			exScanClear(t, prov+"/"+name, b, needles)
		}
		wb := filepath.Join(t.TempDir(), "wb.xlsx")
		if err := audit.WriteWorkbook(f.ctx, wb, f.source(t, prov)); err != nil {
			t.Fatal(err)
		}
		zr, err := zip.OpenReader(wb)
		if err != nil {
			t.Fatal(err)
		}
		for _, zf := range zr.File {
			rc, err := zf.Open()
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			exScanClear(t, prov+"/workbook/"+zf.Name, b, needles)
		}
		zr.Close()
	}
	// The scan itself can fail: a file with a person_ref or an ID is caught.
	if !exContainsClear([]byte("x,"+f.refs[0]+"\n"), needles) || !exContainsClear([]byte("a,"+f.people[1]+",b"), needles) {
		t.Fatal("the scan does not find what it looks for")
	}
}

// exContainsClear is exScanClear as a predicate, for checking the scan itself.
func exContainsClear(b []byte, needles []string) bool {
	for _, n := range needles {
		if bytes.Contains(bytes.ToLower(b), bytes.ToLower([]byte(n))) {
			return true
		}
	}
	for _, loc := range exIDCandidate.FindAllIndex(b, -1) {
		if pii.Validate(string(b[loc[0]:loc[1]])) == nil {
			return true
		}
	}
	return false
}

// ---- tampering ---------------------------------------------------------------

// exTamper is one change made to a bundle on disk.
type exTamper struct {
	name string
	file string // the file the verifier must name
	do   func(t *testing.T, dir string)
}

func exEdit(t *testing.T, path string, fn func([]byte) []byte) {
	t.Helper()
	b := exRead(t, path)
	if err := os.WriteFile(path, fn(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

// exFlipByte changes the middle byte of a body line of file (not a line end).
func exFlipByte(file string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		exEdit(t, filepath.Join(dir, file), func(b []byte) []byte {
			i := len(b) / 2
			for b[i] == '\n' {
				i++
			}
			b[i] ^= 0x01
			if b[i] == '\n' {
				b[i] = 'Z'
			}
			return b
		})
	}
}

// exDropLine removes body line n (1 = first row) of file.
func exDropLine(file string, n int) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		exEdit(t, filepath.Join(dir, file), func(b []byte) []byte {
			lines := bytes.SplitAfter(b, []byte("\n"))
			return bytes.Join(append(lines[:n:n], lines[n+1:]...), nil)
		})
	}
}

// exReplaceOnce replaces the first old in file.
func exReplaceOnce(file, old, new string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		exEdit(t, filepath.Join(dir, file), func(b []byte) []byte {
			if !bytes.Contains(b, []byte(old)) {
				t.Fatalf("%s has no %q", file, old)
			}
			return bytes.Replace(b, []byte(old), []byte(new), 1)
		})
	}
}

// exRefreshManifest recomputes the rows and sha256 of file in manifest.json,
// as a careful forger would (province bundles and national alike).
func exRefreshManifest(file string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		b := exRead(t, filepath.Join(dir, file))
		sum := audit.FileSum{Rows: int64(bytes.Count(b, []byte("\n")) - 1), SHA256: exSHA256(b)}
		exEdit(t, filepath.Join(dir, audit.FileManifest), func(m []byte) []byte {
			re := regexp.MustCompile(`("` + regexp.QuoteMeta(file) + `": \{\n\s+"rows": )\d+(,\n\s+"sha256": ")[0-9a-f]{64}`)
			return re.ReplaceAll(m, []byte("${1}"+exItoa(sum.Rows)+"${2}"+sum.SHA256))
		})
	}
}

func exBoth(fns ...func(t *testing.T, dir string)) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		for _, fn := range fns {
			fn(t, dir)
		}
	}
}

func exCopyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range exReadBundle(t, src) {
		if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestExportTamperDetected: any single changed byte, a changed amount (with
// or without a refreshed manifest), or a dropped row makes verification fail
// and name the file, for the national bundle (audit/verify) and for a
// province bundle (VerifyProvinceBundle).
func TestExportTamperDetected(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, false)
	national, _ := exWrite(t, f.source(t, ""))
	scoped, _ := exWrite(t, f.source(t, exHenan))
	if err := verify.Verify(national); err != nil {
		t.Fatal(err)
	}
	if err := clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(scoped), clearingdb.ProvinceVerifyOptions{}); err != nil {
		t.Fatal(err)
	}

	common := []exTamper{
		{"amount in usages.csv", audit.FileUsages, exReplaceOnce(audit.FileUsages, ",1000.00,", ",1000.01,")},
		{"amount in usages.csv, manifest refreshed", audit.FileManifest, exBoth(
			exReplaceOnce(audit.FileUsages, ",1000.00,", ",1000.01,"), exRefreshManifest(audit.FileUsages))},
		{"amount in positions.csv, manifest refreshed", audit.FilePositions, exBoth(
			exReplaceOnce(audit.FilePositions, "410000,", "410000,1"), exRefreshManifest(audit.FilePositions))},
		{"instruction amount", audit.FileInstructions, exReplaceOnce(audit.FileInstructions, "NATIONAL,410000,000000,", "NATIONAL,410000,000000,1")},
		{"allocation row dropped", audit.FileAllocation, exDropLine(audit.FileAllocation, 1)},
		{"allocation row dropped, manifest refreshed", audit.FileAllocation, exBoth(
			exDropLine(audit.FileAllocation, 1), exRefreshManifest(audit.FileAllocation))},
		{"usage row dropped", audit.FileUsages, exDropLine(audit.FileUsages, 2)},
		{"usage row dropped, manifest refreshed", audit.FileManifest, exBoth(
			exDropLine(audit.FileUsages, 2), exRefreshManifest(audit.FileUsages))},
		{"prepay deposit changed, manifest refreshed", audit.FilePrepay, exBoth(
			exReplaceOnce(audit.FilePrepay, "410000,1000.00,", "410000,1001.00,"), exRefreshManifest(audit.FilePrepay))},
		{"gross row dropped", audit.FileGross, exDropLine(audit.FileGross, 1)},
		{"manifest totals", audit.FileManifest, exReplaceOnce(audit.FileManifest, `"usages": `, `"usages": 1`)},
		{"manifest extra space", audit.FileManifest, exReplaceOnce(audit.FileManifest, `"setlym": "`, `"setlym":  "`)},
	}
	for _, name := range audit.CSVFiles {
		common = append(common, exTamper{"one byte of " + name, name, exFlipByte(name)})
	}
	for _, bundle := range []struct {
		name   string
		dir    string
		verify func(dir string) error
	}{
		{"national", national, verify.Verify},
		{"province", scoped, func(dir string) error {
			return clearingdb.VerifyProvinceBundle(context.Background(), os.DirFS(dir), clearingdb.ProvinceVerifyOptions{})
		}},
	} {
		for _, tc := range common {
			t.Run(bundle.name+"/"+tc.name, func(t *testing.T) {
				dir := exCopyDir(t, bundle.dir)
				tc.do(t, dir)
				err := bundle.verify(dir)
				var d *verify.Difference
				if !errors.As(err, &d) {
					t.Fatalf("verify passed or failed without a difference: %v", err)
				}
				if d.File != tc.file {
					t.Errorf("difference names %s, want %s: %v", d.File, tc.file, d)
				}
			})
		}
	}
}

// ---- province scope ------------------------------------------------------------

// exFilterLines keeps the header and the body lines of a canonical CSV file
// whose fields satisfy keep (this test's own filter, independent of the
// package's).
func exFilterLines(t *testing.T, b []byte, keep func(f []string) bool) []byte {
	t.Helper()
	lines := bytes.SplitAfter(b, []byte("\n"))
	out := append([]byte(nil), lines[0]...)
	for _, l := range lines[1:] {
		if len(l) == 0 {
			continue
		}
		f := exSplitCSV(t, string(l[:len(l)-1]))
		if keep(f) {
			out = append(out, l...)
		}
	}
	return out
}

// exSplitCSV splits one RFC 4180 line.
func exSplitCSV(t *testing.T, s string) []string {
	var out []string
	for {
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i++
						continue
					}
					break
				}
				b.WriteByte(s[i])
			}
			out = append(out, b.String())
			s = s[i+1:]
			if s == "" {
				return out
			}
			s = s[1:] // the comma
			continue
		}
		i := strings.IndexByte(s, ',')
		if i < 0 {
			return append(out, s)
		}
		out = append(out, s[:i])
		s = s[i+1:]
	}
}

// TestExportProvinceScope: the scoped bundle of 河南 verifies by itself,
// against its statement and against the national bundle; each of its files is
// the national file filtered to 河南 (checked here with the test's own
// filter); the national verifier refuses it; a province with no activity
// gets a valid bundle of zeros.
func TestExportProvinceScope(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, false)
	national, _ := exWrite(t, f.source(t, ""))
	scoped, man := exWrite(t, f.source(t, exHenan))
	if man.Province != exHenan {
		t.Fatalf("manifest province %q", man.Province)
	}
	view, err := f.store.GetStatement(f.ctx, f.period, exHenan, f.settledAt)
	if err != nil {
		t.Fatal(err)
	}
	status, err := f.store.PeriodStatus(f.ctx, f.period)
	if err != nil {
		t.Fatal(err)
	}
	opts := clearingdb.ProvinceVerifyOptions{Province: exHenan, JournalHead: status.JournalHead.String(),
		Statement: &view.Statement, Prepay: view.Prepay, National: os.DirFS(national)}
	if err := clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(scoped), opts); err != nil {
		t.Fatalf("scoped bundle: %v", err)
	}

	nat, sc := exReadBundle(t, national), exReadBundle(t, scoped)
	p := exHenan
	filters := map[string]func(f []string) bool{
		audit.FileUsages:       func(f []string) bool { return f[4] == p || f[6] == p },
		audit.FileGross:        func(f []string) bool { return f[0] == p || f[1] == p },
		audit.FilePositions:    func(f []string) bool { return f[0] == p },
		audit.FileAllocation:   func(f []string) bool { return strings.HasPrefix(f[1], "41") },
		audit.FileInstructions: func(f []string) bool { return f[1] == p || f[2] == p },
		audit.FilePrepay:       func(f []string) bool { return f[0] == p },
	}
	for name, keep := range filters {
		if want := exFilterLines(t, nat[name], keep); !bytes.Equal(sc[name], want) {
			t.Errorf("%s: scoped file is not the national file filtered to %s:\n%s\n--- want\n%s", name, p, sc[name], want)
		}
	}
	// 河南's figures as hand-computed: receivable 380.00 + 100.00 + 42.10,
	// payable 1000.00 + 250.50 − 50.50.
	if got := string(sc[audit.FilePositions]); got != "province_code,receivable,payable,net\n410000,522.10,1200.00,-677.90\n" {
		t.Errorf("positions.csv:\n%s", got)
	}
	if man.Totals.Usages != 6 || man.Totals.Gross.String() != "1722.10" {
		t.Errorf("scoped totals %+v, want 6 rows summing to 1722.10", man.Totals)
	}
	if got, want := view.Position.Net, money.MustParse("-677.90"); !got.Equal(want) {
		t.Errorf("statement net %s, want %s", got, want)
	}

	// The national verifier refuses a scoped bundle at its manifest.
	var d *verify.Difference
	if err := verify.Verify(scoped); !errors.As(err, &d) || d.File != audit.FileManifest {
		t.Errorf("national verify of a scoped bundle: %v", err)
	}
	// The scoped verifier refuses the national bundle.
	if err := clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(national), clearingdb.ProvinceVerifyOptions{}); !errors.As(err, &d) || d.File != audit.FileManifest {
		t.Errorf("scoped verify of the national bundle: %v", err)
	}
	if got, err := clearingdb.BundleProvince(os.DirFS(scoped)); err != nil || got != exHenan {
		t.Errorf("BundleProvince(scoped) = %q, %v", got, err)
	}
	if got, err := clearingdb.BundleProvince(os.DirFS(national)); err != nil || got != "" {
		t.Errorf("BundleProvince(national) = %q, %v", got, err)
	}

	// Reproducible.
	again, _ := exWrite(t, f.source(t, exHenan))
	for n, b := range exReadBundle(t, again) {
		if !bytes.Equal(b, sc[n]) {
			t.Errorf("%s differs between two scoped exports", n)
		}
	}

	// Another province's statement, a wrong tally, another province asked.
	bj, err := f.store.GetStatement(f.ctx, f.period, exBeijing, f.settledAt)
	if err != nil {
		t.Fatal(err)
	}
	wrong := view.Statement
	wrong.Usage.AsPayer.Entries++
	for _, tc := range []struct {
		name string
		opts clearingdb.ProvinceVerifyOptions
		file string
	}{
		{"another province's statement", clearingdb.ProvinceVerifyOptions{Statement: &bj.Statement}, audit.FileManifest},
		{"a tally the bundle does not match", clearingdb.ProvinceVerifyOptions{Statement: &wrong}, audit.FileUsages},
		{"bundle of another province", clearingdb.ProvinceVerifyOptions{Province: exBeijing}, audit.FileManifest},
		{"another journal head", clearingdb.ProvinceVerifyOptions{JournalHead: strings.Repeat("0", 64)}, audit.FileManifest},
	} {
		err := clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(scoped), tc.opts)
		if !errors.As(err, &d) || d.File != tc.file {
			t.Errorf("%s: %v, want a difference in %s", tc.name, err, tc.file)
		}
	}

	// A scoped bundle whose usages.csv was altered where nothing recomputes
	// it (a pseudonym) and whose manifest was refreshed passes on its own,
	// and fails against the national bundle.
	forged := exCopyDir(t, scoped)
	exEdit(t, filepath.Join(forged, audit.FileUsages), func(b []byte) []byte {
		first := bytes.IndexByte(b, '\n')                     // end of the header
		end := first + 1 + bytes.IndexByte(b[first+1:], '\n') // end of line 2
		if b[end-1] == '0' {                                  // last hex character of beneficiary_ref
			b[end-1] = '1'
		} else {
			b[end-1] = '0'
		}
		return b
	})
	exRefreshManifest(audit.FileUsages)(t, forged)
	if err := clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(forged), clearingdb.ProvinceVerifyOptions{}); err != nil {
		t.Fatalf("forged bundle should pass on its own: %v", err)
	}
	err = clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(forged), clearingdb.ProvinceVerifyOptions{National: os.DirFS(national)})
	if !errors.As(err, &d) || d.File != audit.FileUsages || d.Line != 2 {
		t.Errorf("forged scoped bundle against the national one: %v, want a difference at usages.csv line 2", err)
	}

	// A province with no cross-province activity: a valid bundle of zeros.
	quiet, _ := exWrite(t, f.source(t, "650000"))
	if err := clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(quiet), clearingdb.ProvinceVerifyOptions{
		Province: "650000", National: os.DirFS(national)}); err != nil {
		t.Errorf("quiet province: %v", err)
	}
	q := exReadBundle(t, quiet)
	if string(q[audit.FilePositions]) != "province_code,receivable,payable,net\n650000,0.00,0.00,0.00\n" ||
		bytes.Count(q[audit.FileUsages], []byte("\n")) != 1 {
		t.Errorf("quiet province bundle:\n%s\n%s", q[audit.FilePositions], q[audit.FileUsages])
	}
}

func exItoa(n int64) string { return strconv.FormatInt(n, 10) }

func exSHA256(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestExportEveryByteMatters flips every single byte of a national and a
// province bundle (in memory) and checks that verification fails, naming the
// CSV file when the byte is in one. The only bytes exempt are the value of
// generated_at: the close time is attested by the clearing service, not
// derivable from the files, so a verifier checks only its form and that it
// is after the period and every occurred_at (audit/verify's documentation).
// journal_head is covered because the verifier is given the journal's head.
func TestExportEveryByteMatters(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, false)
	status, err := f.store.PeriodStatus(f.ctx, f.period)
	if err != nil {
		t.Fatal(err)
	}
	head := status.JournalHead.String()
	for _, prov := range []string{"", exHenan} {
		dir, _ := exWrite(t, f.source(t, prov))
		files := exReadBundle(t, dir)
		check := func(fsys fs.FS) error {
			if prov == "" {
				return verify.VerifyFS(f.ctx, fsys, verify.Options{JournalHead: head})
			}
			return clearingdb.VerifyProvinceBundle(f.ctx, fsys, clearingdb.ProvinceVerifyOptions{JournalHead: head})
		}
		base := fstest.MapFS{}
		for n, b := range files {
			base[n] = &fstest.MapFile{Data: b}
		}
		if err := check(base); err != nil {
			t.Fatalf("%q: untouched bundle: %v", prov, err)
		}
		flips := 0
		for _, name := range exBundleNames {
			orig := files[name]
			skipFrom, skipTo := -1, -1
			if name == audit.FileManifest {
				i := bytes.Index(orig, []byte(`"generated_at": "`)) + len(`"generated_at": "`)
				skipFrom, skipTo = i, i+len("2026-08-06T00:00:00+08:00")
			}
			for i := range orig {
				if i >= skipFrom && i < skipTo {
					continue
				}
				mod := bytes.Clone(orig)
				mod[i] ^= 0x01
				fsys := maps.Clone(base)
				fsys[name] = &fstest.MapFile{Data: mod}
				err := check(fsys)
				var d *verify.Difference
				if !errors.As(err, &d) {
					t.Fatalf("%q: byte %d of %s flipped (%q → %q): verify says %v", prov, i, name, orig[i], mod[i], err)
				}
				if name != audit.FileManifest && d.File != name {
					t.Fatalf("%q: byte %d of %s flipped: difference names %s: %v", prov, i, name, d.File, d)
				}
				flips++
			}
		}
		t.Logf("bundle %q: %d single-byte changes, every one detected", prov, flips)
	}
}

// TestExportAdjustment: a disputed 202607 record corrected by an ADJUSTMENT
// cleared in 202608 exports with entry_type ADJUSTMENT, its signed amount,
// reversal_of naming the disputed record and the same pseudonyms, in the
// national and in both provinces' bundles.
func TestExportAdjustment(t *testing.T) {
	t.Parallel()
	f := newExportFixture(t, false)
	now := f.settledAt.Add(time.Hour)
	if _, err := f.store.DisputeStatement(f.ctx, f.period, exHenan, []settlement.DisputedItem{
		{UsageID: "410000-U0001", ClaimedAmount: money.MustParse("900.00"), Reason: "refund not booked"},
	}, "dispute-1", now); err != nil {
		t.Fatal(err)
	}
	res, err := f.store.ResolveDispute(f.ctx, clearingdb.DisputeResolution{Period: f.period, Province: exHenan,
		UsageID: "410000-U0001", Accept: true, Key: "resolve-1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	aug := f.period.Next()
	if res.AdjustmentPeriod != aug || res.AdjustmentAmount.String() != "-100.00" {
		t.Fatalf("resolution %+v", res)
	}
	closeAt := aug.CutOff(f.store.Config().Settlement.CutOffGrace).Add(time.Hour)
	if _, err := f.store.ClosePeriod(f.ctx, aug, closeAt); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.SettlePeriod(f.ctx, aug, prepay.Config{}, closeAt); err != nil {
		t.Fatal(err)
	}
	key := exportKey(t)
	for _, prov := range []string{"", exHenan, exBeijing} {
		src, err := f.store.ExportSource(f.ctx, aug, clearingdb.ExportOptions{Key: key, Province: prov})
		if err != nil {
			t.Fatal(err)
		}
		dir, man := exWrite(t, src)
		if prov == "" {
			err = verify.Verify(dir)
		} else {
			err = clearingdb.VerifyProvinceBundle(f.ctx, os.DirFS(dir), clearingdb.ProvinceVerifyOptions{Province: prov})
		}
		if err != nil {
			t.Fatalf("%q: %v", prov, err)
		}
		want := res.AdjustmentID + ",202608,ADJUSTMENT,MEDICAL,410000,410100,110000,110100,-100.00," +
			exFmtTime(now) + ",false,410000-U0001," + audit.Pseudonym(key, f.refs[0]) + "," + audit.Pseudonym(key, f.refs[1]) + "\n"
		if got := string(exReadBundle(t, dir)[audit.FileUsages]); !strings.HasSuffix(got, "\n"+want) || man.Totals.Usages != 1 {
			t.Errorf("%q usages.csv:\n%s\nwant the row\n%s", prov, got, want)
		}
	}
}

func exFmtTime(t time.Time) string {
	return t.Truncate(time.Second).In(region.Shanghai).Format(time.RFC3339)
}
