package clearingdb

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"gongji/audit"
	"gongji/region"
)

// A province-scoped bundle (ExportOptions.Province = P) is the national
// bundle cut to one provincial unit, for that province's node and auditors:
//
//	usages.csv        rows where payer_province = P or payee_province = P
//	gross.csv         pairs where P is payer or payee (all that usages.csv gives)
//	positions.csv     the row of P
//	allocation.csv    the rows of P's pooling regions
//	instructions.csv  P's NATIONAL instruction and the PROVINCE tier inside P
//	prepay.csv        the row of P
//	manifest.json     the national manifest's keys plus "province": P; files,
//	                  rows and sha256 describe the scoped files, totals the
//	                  scoped usages
//
// Every file keeps the national header, canonical form and key order, and
// every row is byte-for-byte the national bundle's row: a scoped file is the
// national file filtered. Each derived row of P follows from the scoped
// usages alone, because every usage that moves P's (or its regions') figures
// involves P. VerifyProvinceBundle checks a scoped bundle three ways (see its
// documentation): by itself, against P's statement, and against the national
// bundle. The national verifier (audit/verify) refuses a scoped bundle at
// manifest.json's "province" key, so one cannot pass for the other.

// FileProvinceManifest is the manifest name of a scoped bundle (the same as
// the national one; its "province" key tells them apart).
const FileProvinceManifest = audit.FileManifest

// ExportManifest is what an export wrote: the manifest, and for a scoped
// bundle its province ("" for the national bundle).
type ExportManifest struct {
	audit.Manifest
	Province string
}

// WriteBundle writes the source's bundle into dir: the national bundle with
// audit.WriteBundle (which recomputes every derived file from the streamed
// usages and refuses a difference), or, for a province-scoped source, the
// scoped bundle described above, written the same way (hidden staging folder
// beside dir, fsync, rename; dir must be missing or empty) and checked with
// VerifyProvinceBundle before it is moved into place. Two exports of the same
// period and scope are byte-identical.
//
// Needs no transaction. Errors: those of audit.WriteBundle
// (audit.ErrDirNotEmpty, *audit.RowError, audit.ErrControl, …); for a scoped
// bundle a failed self-check wraps audit.ErrControl; database and I/O errors.
func (x *ExportSource) WriteBundle(ctx context.Context, dir string) (ExportManifest, error) {
	if x.province == "" {
		m, err := audit.WriteBundle(ctx, dir, x)
		return ExportManifest{Manifest: m}, err
	}
	return x.writeProvinceBundle(ctx, dir)
}

func (x *ExportSource) writeProvinceBundle(ctx context.Context, dir string) (ExportManifest, error) {
	dir = filepath.Clean(dir)
	if err := checkExportTarget(dir); err != nil {
		return ExportManifest{}, err
	}
	parent := filepath.Dir(dir)
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".partial-")
	if err != nil {
		return ExportManifest{}, fmt.Errorf("export: staging directory: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = os.RemoveAll(stage)
		}
	}()
	files := map[string]audit.FileSum{}
	for _, name := range audit.CSVFiles {
		s, err := x.writeRawFile(ctx, stage, name)
		if err != nil {
			return ExportManifest{}, err
		}
		files[name] = s
	}
	man := ExportManifest{Province: x.province, Manifest: audit.Manifest{Period: x.period, GeneratedAt: x.meta.ClosedAt,
		JournalHead: x.meta.JournalHead, Files: files, Totals: x.meta.Totals}}
	b, err := man.Encode()
	if err != nil {
		return ExportManifest{}, err
	}
	if err := writeFileSynced(filepath.Join(stage, FileProvinceManifest), b); err != nil {
		return ExportManifest{}, err
	}
	// The control: the scoped bundle must verify as its receiver will verify
	// it (recomputed from its usages, totals = the close's tallies of P).
	if err := VerifyProvinceBundle(ctx, os.DirFS(stage), ProvinceVerifyOptions{
		WarningThreshold: x.meta.WarningThreshold, JournalHead: x.meta.JournalHead, Province: x.province,
	}); err != nil {
		return ExportManifest{}, fmt.Errorf("%w: province %s bundle of %s: %w", audit.ErrControl, x.province, x.period, err)
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return ExportManifest{}, err
	}
	if err := syncPath(stage); err != nil {
		return ExportManifest{}, err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return ExportManifest{}, fmt.Errorf("%w: %s: %v", audit.ErrDirNotEmpty, dir, err)
	}
	if err := os.Rename(stage, dir); err != nil {
		if errors.Is(err, os.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			return ExportManifest{}, fmt.Errorf("%w: %s", audit.ErrDirNotEmpty, dir)
		}
		return ExportManifest{}, fmt.Errorf("export: move bundle into place: %w", err)
	}
	done = true
	if err := syncPath(parent); err != nil {
		return man, fmt.Errorf("export: bundle written, but syncing %s failed: %w", parent, err)
	}
	return man, nil
}

// writeRawFile writes one file of a scoped bundle from its COPY stream
// (CopyCSV: audit.WriteRawCSV takes pre-formatted lines only),
// checked line by line by audit.WriteRawCSV (canonical form, row rules, key
// order, no ID number).
func (x *ExportSource) writeRawFile(ctx context.Context, dir, name string) (audit.FileSum, error) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return audit.FileSum{}, err
	}
	defer f.Close()
	rc, err := x.CopyCSV(ctx, name)
	if err != nil {
		return audit.FileSum{}, fmt.Errorf("%s: %w", name, err)
	}
	bw := bufio.NewWriterSize(f, 256<<10)
	s, err := audit.WriteRawCSV(ctx, bw, name, x.meta, rc)
	_ = rc.Close()
	if err != nil {
		return audit.FileSum{}, err
	}
	if err := bw.Flush(); err != nil {
		return audit.FileSum{}, err
	}
	if err := f.Sync(); err != nil {
		return audit.FileSum{}, err
	}
	return s, f.Close()
}

// checkExportTarget refuses a dir that exists and is not an empty directory.
func checkExportTarget(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("export: output directory: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: %v", audit.ErrDirNotEmpty, dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("%w: %s", audit.ErrDirNotEmpty, dir)
	}
	return nil
}

func writeFileSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncPath(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ---- manifest ------------------------------------------------------------------

// provinceManifestDoc is the JSON of a scoped manifest. Fields are declared in
// key order, so encoding/json writes them sorted, like the national manifest.
type provinceManifestDoc struct {
	Files       map[string]audit.FileSum `json:"files"`
	GeneratedAt string                   `json:"generated_at"`
	JournalHead string                   `json:"journal_head"`
	Province    string                   `json:"province"`
	Setlym      string                   `json:"setlym"`
	Totals      provinceManifestTotals   `json:"totals"`
}

type provinceManifestTotals struct {
	Gross  string `json:"gross"`
	Usages int64  `json:"usages"`
}

// Encode returns the canonical manifest.json bytes: the national encoding
// (audit.Manifest.Encode) for Province "", else the same layout with the
// "province" key (keys sorted, two-space indent, final "\n").
func (m ExportManifest) Encode() ([]byte, error) {
	if m.Province == "" {
		return m.Manifest.Encode()
	}
	return encodeProvinceManifest(provinceManifestDoc{
		Files: m.Files, GeneratedAt: fmtBundleTime(m.GeneratedAt), JournalHead: m.JournalHead, Province: m.Province,
		Setlym: m.Period.String(), Totals: provinceManifestTotals{Gross: m.Totals.Gross.String(), Usages: m.Totals.Usages},
	})
}

func encodeProvinceManifest(d provinceManifestDoc) ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// fmtBundleTime is the bundle's time text: whole seconds, +08:00.
func fmtBundleTime(t time.Time) string {
	return t.Truncate(time.Second).In(region.Shanghai).Format(time.RFC3339)
}

// manifestLenMax bounds a manifest read back (the real one is about 1 KiB).
const manifestLenMax = 64 << 10

// BundleProvince reads manifest.json of the bundle in fsys and returns its
// "province" key: the province of a scoped bundle, "" for a national bundle
// (which has no such key). It checks nothing else; verify the bundle with
// verify.VerifyFS or VerifyProvinceBundle. Errors: I/O errors, invalid JSON,
// a "province" that is not a string.
func BundleProvince(fsys fs.FS) (string, error) {
	raw, err := readManifest(fsys)
	if err != nil {
		return "", err
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return "", fmt.Errorf("%s: %w", audit.FileManifest, err)
	}
	p, ok := keys["province"]
	if !ok {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(p, &s); err != nil {
		return "", fmt.Errorf("%s: province: %w", audit.FileManifest, err)
	}
	if s == "" {
		return "", fmt.Errorf("%s: province is empty", audit.FileManifest)
	}
	return s, nil
}

func readManifest(fsys fs.FS) ([]byte, error) {
	f, err := fsys.Open(audit.FileManifest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, manifestLenMax+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > manifestLenMax {
		return nil, fmt.Errorf("%s: larger than %d bytes", audit.FileManifest, manifestLenMax)
	}
	return raw, nil
}

// lineOfKey is the 1-based line of the first `"key":` in a manifest, 0 if
// absent (for the line numbers of differences).
func lineOfKey(raw []byte, key string) int64 {
	i := bytes.Index(raw, []byte(`"`+key+`":`))
	if i < 0 {
		return 0
	}
	return int64(bytes.Count(raw[:i], []byte("\n"))) + 1
}
