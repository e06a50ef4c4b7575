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

// numericFen writes fen hundredths as a NUMERIC with two decimal places
// (binary format: ndigits, weight, sign, dscale, then base-10,000 digits,
// most significant first, without leading or trailing zero digits).
// |fen| < 10^18 (NUMERIC(18,2) is checked at the edge).
func (c *copyBuf) numericFen(fen int64) {
	const (
		signPos = 0x0000
		signNeg = 0x4000
		dscale  = 2
	)
	sign := uint16(signPos)
	a := uint64(fen)
	if fen < 0 {
		sign, a = signNeg, uint64(-fen)
	}
	var groups [5]uint16 // the integer part, least significant first
	g := 0
	for x := a / 100; x > 0; x /= 10_000 {
		groups[g] = uint16(x % 10_000)
		g++
	}
	var digits [6]uint16
	n := 0
	for i := g - 1; i >= 0; i-- {
		digits[n] = groups[i]
		n++
	}
	digits[n] = uint16(a%100) * 100 // the two decimals, first base-10,000 digit after the point
	n++
	for n > 0 && digits[n-1] == 0 {
		n--
	}
	weight := int16(g - 1) // the first digit's power of 10,000
	if n == 0 {
		weight, sign = 0, signPos
	}
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(8+2*n))
	c.b = binary.BigEndian.AppendUint16(c.b, uint16(n))
	c.b = binary.BigEndian.AppendUint16(c.b, uint16(weight))
	c.b = binary.BigEndian.AppendUint16(c.b, sign)
	c.b = binary.BigEndian.AppendUint16(c.b, dscale)
	for _, d := range digits[:n] {
		c.b = binary.BigEndian.AppendUint16(c.b, d)
	}
}
