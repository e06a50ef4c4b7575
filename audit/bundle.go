package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"gongji/region"
)

// Manifest is manifest.json: what the bundle is for and what each CSV file
// holds. Its JSON is canonical (keys sorted, two-space indent, final "\n"),
// exactly as in the example bundle of DESIGN §11.
type Manifest struct {
	Period      region.Period      // "setlym"
	GeneratedAt time.Time          // "generated_at": the period's close time, +08:00
	JournalHead string             // "journal_head"
	Files       map[string]FileSum // "files": the six CSV files
	Totals      Totals             // "totals": {"gross": "…", "usages": n}
}

type jsonManifest struct {
	Files       map[string]FileSum `json:"files"`
	GeneratedAt string             `json:"generated_at"`
	JournalHead string             `json:"journal_head"`
	Setlym      string             `json:"setlym"`
	Totals      jsonTotals         `json:"totals"`
}

type jsonTotals struct {
	Gross  string `json:"gross"`
	Usages int64  `json:"usages"`
}

// Encode returns the canonical manifest.json bytes.
func (m Manifest) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(jsonManifest{
		Files: m.Files, GeneratedAt: fmtTime(m.GeneratedAt), JournalHead: m.JournalHead,
		Setlym: m.Period.String(), Totals: jsonTotals{Gross: fmtAmount(m.Totals.Gross), Usages: m.Totals.Usages},
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// DecodeManifest parses manifest.json. It checks the types and formats of the
// values, not the files they describe (that is audit/verify's job).
func DecodeManifest(b []byte) (Manifest, error) {
	var j jsonManifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return Manifest{}, fmt.Errorf("%w: %s: %v", ErrBadMeta, FileManifest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Manifest{}, fmt.Errorf("%w: %s: data after the JSON object", ErrBadMeta, FileManifest)
	}
	p, err := region.ParsePeriod(j.Setlym)
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %s setlym: %v", ErrBadMeta, FileManifest, err)
	}
	t, err := parseTime(j.GeneratedAt)
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %s generated_at: %v", ErrBadMeta, FileManifest, err)
	}
	g, err := parseAmount(j.Totals.Gross)
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %s totals.gross: %v", ErrBadMeta, FileManifest, err)
	}
	return Manifest{Period: p, GeneratedAt: t, JournalHead: j.JournalHead, Files: j.Files,
		Totals: Totals{Gross: g, Usages: j.Totals.Usages}}, nil
}

// WriteBundle writes the audit export bundle of the closed period src
// describes into dir: usages.csv, gross.csv, positions.csv, allocation.csv,
// instructions.csv, prepay.csv and manifest.json (DESIGN §11), and returns the
// manifest.
//
// dir must not exist, or be an empty directory; its parent must exist. The
// files are written into a hidden staging directory beside dir, fsynced, and
// the staging directory is renamed to dir last, so dir either holds a complete
// bundle or is untouched. On error the staging directory is removed.
//
// Every row is checked (see the package documentation) and the derived files
// are compared with what the streamed usages give; memory does not grow with
// the number of usages. A RawSource's pre-formatted rows are used where it
// offers them and checked line by line.
//
// Errors: ErrBadMeta; ErrDirNotEmpty; *RowError wrapping ErrInvalidRow,
// ErrUnsorted, ErrNotCanonical, ErrLooksLikeIDNumber or ErrControl; ErrControl
// for a missing row or wrong totals; the source's own errors; I/O errors.
// The source should read from one consistent snapshot of the closed period.
func WriteBundle(ctx context.Context, dir string, src Source) (Manifest, error) {
	meta, err := src.Meta(ctx)
	if err != nil {
		return Manifest{}, fmt.Errorf("audit: bundle metadata: %w", err)
	}
	if err := meta.validate(); err != nil {
		return Manifest{}, err
	}
	dir = filepath.Clean(dir)
	if err := checkTarget(dir); err != nil {
		return Manifest{}, err
	}
	parent := filepath.Dir(dir)
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".partial-")
	if err != nil {
		return Manifest{}, fmt.Errorf("audit: staging directory: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = os.RemoveAll(stage)
		}
	}()

	raw, _ := src.(RawSource)
	ctl := newControls(&meta)
	files := map[string]FileSum{}
	steps := []func() error{
		func() error {
			s, err := writeFile(ctx, stage, usageCodec, &meta, src.Usages, raw, ctl.usage, ctl.usageFacts)
			files[FileUsages] = s
			if err == nil {
				err = ctl.endUsages()
			}
			return err
		},
		func() error {
			s, err := writeFile(ctx, stage, grossCodec, &meta, src.Gross, raw, ctl.grossRow, nil)
			files[FileGross] = s
			return then(err, func() error { return end(grossCodec, ctl.gross, &ctl.next) })
		},
		func() error {
			s, err := writeFile(ctx, stage, positionCodec, &meta, src.Positions, raw, ctl.positionRow, nil)
			files[FilePositions] = s
			return then(err, func() error { return end(positionCodec, ctl.pos, &ctl.next) })
		},
		func() error {
			s, err := writeFile(ctx, stage, allocationCodec, &meta, src.Allocation, raw, ctl.allocationRow, nil)
			files[FileAllocation] = s
			return then(err, func() error { return end(allocationCodec, ctl.alloc, &ctl.next) })
		},
		func() error {
			s, err := writeFile(ctx, stage, instructionCodec, &meta, src.Instructions, raw, ctl.instructionRow, nil)
			files[FileInstructions] = s
			return then(err, func() error { return end(instructionCodec, ctl.instr, &ctl.next) })
		},
		func() error {
			s, err := writeFile(ctx, stage, prepayCodec, &meta, src.Prepay, raw, ctl.prepayRow, nil)
			files[FilePrepay] = s
			return then(err, ctl.endPrepay)
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return Manifest{}, err
		}
	}

	man := Manifest{Period: meta.Period, GeneratedAt: meta.ClosedAt, JournalHead: meta.JournalHead,
		Files: files, Totals: Totals{Gross: ctl.total, Usages: ctl.usages}}
	b, err := man.Encode()
	if err != nil {
		return Manifest{}, err
	}
	if err := writeSynced(filepath.Join(stage, FileManifest), b); err != nil {
		return Manifest{}, err
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return Manifest{}, err
	}
	if err := syncDir(stage); err != nil {
		return Manifest{}, err
	}
	// os.Rename refuses to replace a directory, even an empty one: remove an
	// empty target first (os.Remove fails on a non-empty one).
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Manifest{}, fmt.Errorf("%w: %s: %v", ErrDirNotEmpty, dir, err)
	}
	if err := os.Rename(stage, dir); err != nil {
		if errors.Is(err, os.ErrExist) || isNotEmpty(err) {
			return Manifest{}, fmt.Errorf("%w: %s", ErrDirNotEmpty, dir)
		}
		return Manifest{}, fmt.Errorf("audit: move bundle into place: %w", err)
	}
	done = true
	if err := syncDir(parent); err != nil {
		return man, fmt.Errorf("audit: bundle written, but syncing %s failed: %w", parent, err)
	}
	return man, nil
}

// then runs f only when err is nil.
func then(err error, f func() error) error {
	if err != nil {
		return err
	}
	return f()
}

// checkTarget refuses a dir that exists and is not an empty directory, before
// any work is done (the final rename refuses it too, atomically).
func checkTarget(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit: output directory: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: %v", ErrDirNotEmpty, dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("%w: %s", ErrDirNotEmpty, dir)
	}
	return nil
}

func writeFile[R any](ctx context.Context, dir string, c *codec[R], m *Meta,
	rows func(context.Context, func(R) error) error, raw RawSource, onRow func(*R) error, onFacts func(*usageFacts)) (FileSum, error) {
	f, err := os.OpenFile(filepath.Join(dir, c.file), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return FileSum{}, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 256<<10)
	e := newEmitter(ctx, c, m, bw, onRow)
	e.onFacts = onFacts
	done := false
	if raw != nil {
		rc, err := raw.RawCSV(ctx, c.file)
		switch {
		case err == nil:
			done = true
			err = e.copyFrom(rc)
			if cerr := rc.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("%s: raw rows: %w", c.file, cerr)
			}
			if err != nil {
				return FileSum{}, err
			}
		case errors.Is(err, ErrNoRaw):
		default:
			return FileSum{}, fmt.Errorf("%s: raw rows: %w", c.file, err)
		}
	}
	if !done {
		if err := rows(ctx, func(r R) error { return e.add(&r, nil) }); err != nil {
			return FileSum{}, err
		}
	}
	if err := bw.Flush(); err != nil {
		return FileSum{}, err
	}
	s, err := e.sum()
	if err != nil {
		return FileSum{}, err
	}
	if err := f.Sync(); err != nil {
		return FileSum{}, err
	}
	return s, f.Close()
}

func writeSynced(path string, b []byte) error {
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

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func isNotEmpty(err error) bool { return errors.Is(err, syscall.ENOTEMPTY) }
