package clearingdb

import (
	"encoding/binary"
	"time"
)

// The staging table is loaded with COPY … FROM STDIN (FORMAT binary) from a
// buffer encoded here rather than through pgx's generic CopyFrom: the batch's
// column types are fixed, and encoding them directly avoids boxing every value
// in an interface and looking up an encode plan for it (the bulk of the
// client's cost on the hot path). Format: PostgreSQL documentation, COPY,
// "Binary Format".
//
// Types used: bigint and integer (big-endian), boolean (one byte), text and
// bytea (raw bytes), timestamptz (microseconds since 2000-01-01 UTC, big-endian).

// copyBinHeader is the signature, flags (0) and header extension length (0).
var copyBinHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// pgEpochMicros is 2000-01-01 00:00:00 UTC in Unix microseconds.
var pgEpochMicros = time.Date(2000, time.January, 1, 0, 0, 0, 0, time.UTC).UnixMicro()

type copyBuf struct{ b []byte }

func (c *copyBuf) tuple(fields int) { c.b = binary.BigEndian.AppendUint16(c.b, uint16(fields)) }

func (c *copyBuf) null() { c.b = binary.BigEndian.AppendUint32(c.b, 0xffffffff) }

func (c *copyBuf) int8(v int64) {
	c.b = binary.BigEndian.AppendUint32(c.b, 8)
	c.b = binary.BigEndian.AppendUint64(c.b, uint64(v))
}

func (c *copyBuf) int4(v int32) {
	c.b = binary.BigEndian.AppendUint32(c.b, 4)
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(v))
}

func (c *copyBuf) boolean(v bool) {
	c.b = binary.BigEndian.AppendUint32(c.b, 1)
	if v {
		c.b = append(c.b, 1)
	} else {
		c.b = append(c.b, 0)
	}
}

func (c *copyBuf) text(s string) {
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(len(s)))
	c.b = append(c.b, s...)
}

// textOrNull writes "" as NULL.
func (c *copyBuf) textOrNull(s string) {
	if s == "" {
		c.null()
		return
	}
	c.text(s)
}

func (c *copyBuf) bytes(v []byte) {
	if v == nil {
		c.null()
		return
	}
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(len(v)))
	c.b = append(c.b, v...)
}

func (c *copyBuf) timestamptz(t time.Time) {
	c.int8(t.UnixMicro() - pgEpochMicros)
}

func (c *copyBuf) trailer() { c.b = binary.BigEndian.AppendUint16(c.b, 0xffff) }
