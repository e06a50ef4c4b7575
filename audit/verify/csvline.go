package verify

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"io/fs"
	"strings"
	"unicode/utf8"
)

// lineLenMax bounds one line: a valid usages line is under 600 bytes.
const lineLenMax = 16 << 10

// csvFile streams one CSV file line by line while hashing every byte read.
type csvFile struct {
	name   string
	f      fs.File
	br     *bufio.Reader
	h      hash.Hash
	line   int64 // number of the line last returned
	fields []string
}

func openCSV(fsys fs.FS, name string) (*csvFile, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, &Difference{File: name, Reason: "cannot open the file", Err: err}
	}
	h := sha256.New()
	size := int64(lineLenMax)
	if st, err := f.Stat(); err == nil && st.Size() < size { // small files need no 16 KiB buffer
		size = max(st.Size()+1, 16)
	}
	return &csvFile{name: name, f: f, h: h, br: bufio.NewReaderSize(io.TeeReader(f, h), int(size))}, nil
}

func (c *csvFile) close() { _ = c.f.Close() }

func (c *csvFile) diff(column, reason, want, got string) *Difference {
	return &Difference{File: c.name, Line: c.line, Column: column, Reason: reason, Want: want, Got: got}
}

// next returns the next line without its "\n", or ok=false at the end of the
// file. The slice is valid until the next call.
func (c *csvFile) next() (line []byte, ok bool, err error) {
	b, err := c.br.ReadSlice('\n')
	c.line++
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, false, c.diff("", "line longer than 16 KiB", "", "")
	case errors.Is(err, io.EOF):
		if len(b) > 0 {
			return nil, false, c.diff("", "last line does not end with \\n", "", "")
		}
		c.line--
		return nil, false, nil
	case err != nil:
		return nil, false, &Difference{File: c.name, Line: c.line, Reason: "read error", Err: err}
	}
	b = b[:len(b)-1]
	if i := bytes.IndexByte(b, '\r'); i >= 0 {
		return nil, false, c.diff("", "carriage return in line: line ends must be \\n only", "", "")
	}
	if !utf8.Valid(b) {
		return nil, false, c.diff("", "not valid UTF-8", "", "")
	}
	return b, true, nil
}

// record reads the next line and splits it into exactly len(header) fields,
// checking that its quoting is the minimal RFC 4180 quoting.
func (c *csvFile) record(header []string) (fields []string, ok bool, err error) {
	line, ok, err := c.next()
	if !ok || err != nil {
		return nil, ok, err
	}
	c.fields, err = splitRecord(line, c.fields[:0])
	if err != nil {
		return nil, false, c.diff("", "bad RFC 4180 quoting: "+err.Error(), "", string(line))
	}
	if len(c.fields) != len(header) {
		return nil, false, c.diff("", "wrong number of fields", itoa(int64(len(header))), itoa(int64(len(c.fields))))
	}
	if !isMinimal(c.fields, line) {
		return nil, false, c.diff("", "quoting is not minimal RFC 4180 (quote a field only when it holds ',' or '\"')", joinRecord(c.fields), string(line))
	}
	return c.fields, true, nil
}

// header checks the first line.
func (c *csvFile) header(header []string) error {
	line, ok, err := c.next()
	if err != nil {
		return err
	}
	want := strings.Join(header, ",")
	if !ok {
		return c.diff("", "empty file: the header line is missing", want, "")
	}
	if string(line) != want {
		return c.diff("", "wrong header", want, string(line))
	}
	return nil
}

// finish drains nothing (next returned ok=false) and returns the hex sha256
// of the whole file and its number of body rows.
func (c *csvFile) finish() (sha string, rows int64) {
	return hex.EncodeToString(c.h.Sum(nil)), c.line - 1
}

var (
	errUnterminated = errors.New("unterminated quoted field")
	errAfterQuote   = errors.New("characters after a closing quote")
	errBareQuote    = errors.New("quote inside an unquoted field")
)

// splitRecord splits one line by RFC 4180.
func splitRecord(line []byte, dst []string) ([]string, error) {
	pos := 0
	for {
		if pos < len(line) && line[pos] == '"' {
			var sb strings.Builder
			pos++
			closed := false
			for pos < len(line) {
				ch := line[pos]
				pos++
				if ch == '"' {
					if pos < len(line) && line[pos] == '"' {
						sb.WriteByte('"')
						pos++
						continue
					}
					closed = true
					break
				}
				sb.WriteByte(ch)
			}
			if !closed {
				return dst, errUnterminated
			}
			dst = append(dst, sb.String())
			if pos == len(line) {
				return dst, nil
			}
			if line[pos] != ',' {
				return dst, errAfterQuote
			}
			pos++
			continue
		}
		end := bytes.IndexByte(line[pos:], ',')
		field := line[pos:]
		if end >= 0 {
			field = line[pos : pos+end]
		}
		if bytes.IndexByte(field, '"') >= 0 {
			return dst, errBareQuote
		}
		dst = append(dst, string(field))
		if end < 0 {
			return dst, nil
		}
		pos += end + 1
	}
}

func mustQuote(f string) bool {
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case ',', '"', '\n', '\r':
			return true
		}
	}
	return false
}

// isMinimal reports whether line is exactly joinRecord(fields), without
// building it: a field is quoted in line if and only if it must be. Given
// that line splits into fields, only the quoting can differ.
func isMinimal(fields []string, line []byte) bool {
	pos := 0
	for i, f := range fields {
		if i > 0 {
			pos++ // the comma
		}
		quoted := pos < len(line) && line[pos] == '"'
		if quoted != mustQuote(f) {
			return false
		}
		if !quoted {
			pos += len(f)
			continue
		}
		pos += 2 + len(f) + strings.Count(f, `"`)
	}
	return pos == len(line)
}

// joinRecord writes fields with minimal RFC 4180 quoting.
func joinRecord(fields []string) string {
	var sb strings.Builder
	for i, f := range fields {
		if i > 0 {
			sb.WriteByte(',')
		}
		if mustQuote(f) {
			sb.WriteByte('"')
			sb.WriteString(strings.ReplaceAll(f, `"`, `""`))
			sb.WriteByte('"')
		} else {
			sb.WriteString(f)
		}
	}
	return sb.String()
}
