package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/shopspring/decimal"
)

// memRowsMax bounds what ReadBundle holds in memory (all files together).
const memRowsMax = 2_000_000

// ReadBundle loads a bundle written in the canonical form into a MemSource,
// for tests, re-exports of small periods and WriteWorkbook from a bundle on
// disk. Every file is parsed strictly (header, canonical lines, row rules,
// key order) and its row count and sha256 are compared with manifest.json.
// It does not recompute the derived files: use audit/verify for that.
// warningThreshold is not in the bundle and becomes Info.WarningThreshold;
// Info.Totals are the manifest totals.
//
// Errors: ErrBadMeta for a bad manifest; *RowError as WriteRawCSV;
// ErrTooManyRows past 2,000,000 rows; ErrControl when a file does not match
// its manifest entry; I/O errors.
func ReadBundle(dir string, warningThreshold decimal.Decimal) (*MemSource, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileManifest))
	if err != nil {
		return nil, err
	}
	man, err := DecodeManifest(b)
	if err != nil {
		return nil, err
	}
	src := &MemSource{Info: Meta{Period: man.Period, ClosedAt: man.GeneratedAt, JournalHead: man.JournalHead,
		Totals: man.Totals, WarningThreshold: warningThreshold}}
	if err := src.Info.validate(); err != nil {
		return nil, err
	}
	n := 0
	keep := func() error {
		n++
		if n > memRowsMax {
			return fmt.Errorf("%w: more than %d", ErrTooManyRows, memRowsMax)
		}
		return nil
	}
	m := &src.Info
	for _, err := range []error{
		readFile(dir, usageCodec, m, man, func(r *UsageRow) error { src.UsageRows = append(src.UsageRows, *r); return keep() }),
		readFile(dir, grossCodec, m, man, func(r *GrossRow) error { src.GrossRows = append(src.GrossRows, *r); return keep() }),
		readFile(dir, positionCodec, m, man, func(r *PositionRow) error { src.PositionRows = append(src.PositionRows, *r); return keep() }),
		readFile(dir, allocationCodec, m, man, func(r *AllocationRow) error {
			src.AllocationRows = append(src.AllocationRows, *r)
			return keep()
		}),
		readFile(dir, instructionCodec, m, man, func(r *InstructionRow) error {
			src.InstructionRows = append(src.InstructionRows, *r)
			return keep()
		}),
		readFile(dir, prepayCodec, m, man, func(r *PrepayRow) error { src.PrepayRows = append(src.PrepayRows, *r); return keep() }),
	} {
		if err != nil {
			return nil, err
		}
	}
	return src, nil
}

func readFile[R any](dir string, c *codec[R], m *Meta, man Manifest, onRow func(*R) error) error {
	f, err := os.Open(filepath.Join(dir, c.file))
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, lineLenMax)
	head, err := br.ReadSlice('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: header: %w", c.file, err)
	}
	if want := appendLine(nil, c.header); !bytes.Equal(head, want) {
		return &RowError{File: c.file, Line: 1, Err: fmt.Errorf("%w: header want %q, got %q", ErrNotCanonical, want, head)}
	}
	e := newEmitter(context.Background(), c, m, io.Discard, onRow)
	if err := e.copyFrom(br); err != nil {
		return err
	}
	s, err := e.sum()
	if err != nil {
		return err
	}
	if w, ok := man.Files[c.file]; !ok || w != s {
		return fmt.Errorf("%w: %s has %d rows and sha256 %s, %s says %+v", ErrControl, c.file, s.Rows, s.SHA256, FileManifest, w)
	}
	return nil
}
