package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// FileSum is what the manifest records about one CSV file: its body rows
// (the header not counted) and the sha256 of its exact bytes.
type FileSum struct {
	Rows   int64  `json:"rows"`
	SHA256 string `json:"sha256"`
}

// lineLenMax bounds one CSV line. A usages line is under 600 bytes even with
// two 128-byte ids; anything longer is a broken or hostile stream.
const lineLenMax = 16 << 10

// emitter writes one file: header, then rows that it checks, orders, formats
// canonically, counts and hashes in one pass.
type emitter[R any] struct {
	ctx     context.Context
	c       *codec[R]
	meta    *Meta
	w       io.Writer
	h       hash.Hash
	rows    int64
	prev    R
	hasPrev bool
	fields  []string
	buf     []byte
	onRow   func(*R) error
	err     error // first write error

	// The fast path of raw usages lines (fast.go): fu is set for usages.csv;
	// onFacts mirrors onRow for a line that never became a UsageRow; after
	// such a line prev is stale and prevRaw holds the line instead.
	fu        *fastUsage
	onFacts   func(*usageFacts)
	prevRaw   []byte
	prevIsRaw bool
}

func newEmitter[R any](ctx context.Context, c *codec[R], m *Meta, w io.Writer, onRow func(*R) error) *emitter[R] {
	e := &emitter[R]{ctx: ctx, c: c, meta: m, w: w, h: sha256.New(), onRow: onRow}
	if c.rawFast != nil {
		e.fu = newFastUsage(m)
	}
	e.write(appendLine(nil, c.header))
	return e
}

func (e *emitter[R]) write(b []byte) {
	if e.err != nil {
		return
	}
	e.h.Write(b)
	_, e.err = e.w.Write(b)
}

func (e *emitter[R]) rowErr(column string, err error) error {
	var fe *fieldErr
	if errors.As(err, &fe) {
		column, err = fe.column, fe.err
	}
	return &RowError{File: e.c.file, Line: e.rows + 2, Column: column, Err: err}
}

// add checks and writes one row. raw, when not nil, is the line as the source
// formatted it (with its "\n"); it must equal the canonical line.
func (e *emitter[R]) add(r *R, raw []byte) error {
	if e.rows%1024 == 0 {
		if err := e.ctx.Err(); err != nil {
			return err
		}
	}
	if e.prevIsRaw {
		if err := e.restorePrev(); err != nil {
			return err
		}
	}
	if err := e.c.check(r, e.meta); err != nil {
		return e.rowErr("", err)
	}
	if e.hasPrev && e.c.cmp(&e.prev, r) >= 0 {
		return e.rowErr("", fmt.Errorf("%w: key %q does not come after %q", ErrUnsorted,
			e.c.encode(nil, r), e.c.encode(nil, &e.prev)))
	}
	e.fields = e.c.encode(e.fields[:0], r)
	e.buf = appendLine(e.buf[:0], e.fields)
	if raw != nil && !bytes.Equal(raw, e.buf) {
		return e.rowErr(firstDiffColumn(e.c.header, raw, e.fields),
			fmt.Errorf("%w: want %q, got %q", ErrNotCanonical, e.buf, raw))
	}
	if e.onRow != nil {
		if err := e.onRow(r); err != nil {
			return e.rowErr("", err)
		}
	}
	e.write(e.buf)
	if e.err != nil {
		return e.err
	}
	e.prev, e.hasPrev = *r, true
	e.rows++
	return nil
}

// firstDiffColumn names the first column whose raw text differs from the
// canonical field, for the error message.
func firstDiffColumn(header []string, raw []byte, canon []string) string {
	got, err := splitLine(bytes.TrimSuffix(raw, []byte("\n")), nil)
	if err != nil {
		return ""
	}
	for i := range canon {
		if i >= len(got) || got[i] != canon[i] {
			return header[i]
		}
	}
	return ""
}

// restorePrev decodes prevRaw, the last row written by the fast path, into
// prev for the general path.
func (e *emitter[R]) restorePrev() error {
	f, err := splitLine(e.prevRaw[:len(e.prevRaw)-1], nil)
	if err == nil && len(f) != len(e.c.header) {
		err = fmt.Errorf("%d fields", len(f))
	}
	var r R
	if err == nil {
		r, err = e.c.decode(f)
	}
	if err != nil { // cannot happen: the fast path accepted the line
		return fmt.Errorf("audit: %s: previous line %q: %w", e.c.file, e.prevRaw, err)
	}
	e.prev, e.prevIsRaw = r, false
	return nil
}

// addRaw parses one raw line (with its "\n") and adds it.
func (e *emitter[R]) addRaw(line []byte) error {
	if e.c.rawFast != nil {
		if e.rows%1024 == 0 {
			if err := e.ctx.Err(); err != nil {
				return err
			}
		}
		if done, err := e.c.rawFast(e, line); done || err != nil {
			return err
		}
	}
	body := line[:len(line)-1]
	if bytes.IndexByte(body, '\r') >= 0 {
		return e.rowErr("", fmt.Errorf("%w: carriage return in line (want \\n line ends)", ErrNotCanonical))
	}
	var err error
	e.fields, err = splitLine(body, e.fields[:0])
	if err != nil {
		return e.rowErr("", fmt.Errorf("%w: %v", ErrNotCanonical, err))
	}
	if len(e.fields) != len(e.c.header) {
		return e.rowErr("", fmt.Errorf("%w: %d fields, want %d", ErrNotCanonical, len(e.fields), len(e.c.header)))
	}
	r, err := e.c.decode(e.fields)
	if err != nil {
		return e.rowErr("", err)
	}
	return e.add(&r, line)
}

// copyFrom adds every line of body.
func (e *emitter[R]) copyFrom(body io.Reader) error {
	br := bufio.NewReaderSize(body, lineLenMax)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			return e.rowErr("", fmt.Errorf("%w: more than %d bytes", ErrLineTooLong, lineLenMax))
		case errors.Is(err, io.EOF):
			if len(line) > 0 {
				return e.rowErr("", fmt.Errorf("%w: last line does not end in \\n", ErrNotCanonical))
			}
			return nil
		case err != nil:
			return fmt.Errorf("%s: read raw rows: %w", e.c.file, err)
		}
		if err := e.addRaw(line); err != nil {
			return err
		}
	}
}

func (e *emitter[R]) sum() (FileSum, error) {
	if e.err != nil {
		return FileSum{}, e.err
	}
	return FileSum{Rows: e.rows, SHA256: hex.EncodeToString(e.h.Sum(nil))}, nil
}

// WriteRawCSV writes the bundle file named file (one of CSVFiles) to w: the
// header, then every body line read from body, each checked as WriteBundle
// checks a raw line (canonical form, row rules for period m, strict key
// order). It returns the row count and the sha256 of all bytes written, in the
// same pass. It does not run WriteBundle's cross-file controls.
//
// Errors: *RowError wrapping ErrNotCanonical, ErrInvalidRow, ErrUnsorted,
// ErrLooksLikeIDNumber or ErrLineTooLong; ErrBadMeta; read and write errors.
// No transaction is involved; body is read to its end or to the first error.
func WriteRawCSV(ctx context.Context, w io.Writer, file string, m Meta, body io.Reader) (FileSum, error) {
	if err := m.validate(); err != nil {
		return FileSum{}, err
	}
	switch file {
	case FileUsages:
		return copyRaw(ctx, w, usageCodec, &m, body)
	case FileGross:
		return copyRaw(ctx, w, grossCodec, &m, body)
	case FilePositions:
		return copyRaw(ctx, w, positionCodec, &m, body)
	case FileAllocation:
		return copyRaw(ctx, w, allocationCodec, &m, body)
	case FileInstructions:
		return copyRaw(ctx, w, instructionCodec, &m, body)
	case FilePrepay:
		return copyRaw(ctx, w, prepayCodec, &m, body)
	}
	return FileSum{}, fmt.Errorf("audit: %q is not a CSV file of the bundle", file)
}

func copyRaw[R any](ctx context.Context, w io.Writer, c *codec[R], m *Meta, body io.Reader) (FileSum, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	e := newEmitter(ctx, c, m, bw, nil)
	if err := e.copyFrom(body); err != nil {
		return FileSum{}, err
	}
	if err := bw.Flush(); err != nil {
		return FileSum{}, err
	}
	return e.sum()
}
