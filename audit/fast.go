package audit

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"strconv"
	"strings"

	"gongji/money"
	"gongji/region"
)

// The usages file is the only one whose size grows with the period (millions
// of rows), so it has a fast path: amounts as integer fen, codes as small
// indexes, and a raw line checked field by field in one pass instead of being
// parsed, checked and formatted again. The fast path is an accelerator, never
// a second rule book: it accepts a line only when it is certain that the
// general path (splitLine, decode, check, encode, compare) would accept it
// with the same figures, and hands every other line — an error, a quoted id,
// anything unusual — to the general path, which then decides and words the
// error. TestFastUsageAgrees and FuzzFastUsage hold the two to each other.

// ---- code indexes --------------------------------------------------------------

var (
	provIdx  = map[string]int{} // province code → index in region.Provinces()
	regIdx   = map[string]int{} // pooling region code → index in regCodes
	regCodes []string
	regProv  []int // province index of each region

	// The same without hashing, for the fast path: provByXX["XX0000"[:2]]
	// and regByXXYY["XXYY00"[:4]] hold the index + 1, 0 for no such code.
	provByXX   [100]int16
	regByXXYY  [10000]int16
	codeDigits = func() (t [256]byte) { // 1 for '0'-'9'
		for c := '0'; c <= '9'; c++ {
			t[c] = 1
		}
		return t
	}()
)

func init() {
	for pi, p := range region.Provinces() {
		provIdx[p.Code] = pi
		if p.Code[2:] == "0000" {
			provByXX[num2(p.Code)] = int16(pi + 1)
		}
		for _, r := range p.Regions {
			ri := len(regCodes)
			regIdx[r.Code] = ri
			regCodes = append(regCodes, r.Code)
			regProv = append(regProv, pi)
			if r.Code[4:] == "00" {
				regByXXYY[num2(r.Code)*100+num2(r.Code[2:])] = int16(ri + 1)
			}
		}
	}
}

// num2 reads two digits (the caller checked them).
func num2[T string | []byte](s T) int { return int(s[0]-'0')*10 + int(s[1]-'0') }

// fastProvince returns the index of a province code, or -1 when the fast
// path does not know it (the general path then decides).
func fastProvince(b []byte) int {
	if len(b) != 6 || codeDigits[b[0]]&codeDigits[b[1]] == 0 || string(b[2:]) != "0000" {
		return -1
	}
	return int(provByXX[num2(b)]) - 1
}

// fastRegion is fastProvince for a pooling region code.
func fastRegion(b []byte) int {
	if len(b) != 6 || codeDigits[b[0]]&codeDigits[b[1]]&codeDigits[b[2]]&codeDigits[b[3]] == 0 || string(b[4:]) != "00" {
		return -1
	}
	return int(regByXXYY[num2(b)*100+num2(b[2:])]) - 1
}

// ---- amounts as fen ------------------------------------------------------------

// fenOf returns y in fen when y is a whole number of fen within NUMERIC(18,2),
// without the allocations of decimal arithmetic.
func fenOf(y money.Yuan) (int64, bool) {
	d := y.Decimal()
	n, c := d.NumDigits(), d.CoefficientInt64()
	switch d.Exponent() {
	case -2:
		if n > 18 {
			return 0, false
		}
	case -1:
		if n > 17 {
			return 0, false
		}
		c *= 10
	case 0:
		if n > 16 {
			return 0, false
		}
		c *= 100
	default:
		return 0, false
	}
	return c, true
}

// appendFen appends fen as a canonical amount (fmtAmount: exactly two
// decimals, '-' for negatives, never "-0.00").
func appendFen(dst []byte, fen int64) []byte {
	u := uint64(fen)
	if fen < 0 {
		dst = append(dst, '-')
		u = -u
	}
	dst = strconv.AppendUint(dst, u/100, 10)
	c := u % 100
	return append(dst, '.', byte('0'+c/10), byte('0'+c%10))
}

// fenSum adds amounts exactly: in an int64 of fen while it fits, the rest
// (overflow, or an amount that is not whole fen) in decimal.
type fenSum struct {
	fen  int64
	rest money.Yuan
	big  bool // rest is in use
}

func (s *fenSum) addFen(f int64) {
	n := s.fen + f
	if (f > 0 && n < s.fen) || (f < 0 && n > s.fen) { // overflow
		s.rest, s.big = s.rest.Add(money.FromFen(s.fen)), true
		n = f
	}
	s.fen = n
}

func (s *fenSum) add(y money.Yuan) {
	if f, ok := fenOf(y); ok {
		s.addFen(f)
		return
	}
	s.rest, s.big = s.rest.Add(y), true
}

func (s *fenSum) yuan() money.Yuan {
	if !s.big {
		return money.FromFen(s.fen)
	}
	return s.rest.Add(money.FromFen(s.fen))
}

// ---- raw usages lines ------------------------------------------------------------

// usageFacts is what the controls need from one usages row.
type usageFacts struct {
	fen                  int64
	payerProv, payeeProv int // province indexes
	payerReg, payeeReg   int // region indexes
}

// fastUsage holds what the fast path compares with, derived once from Meta.
type fastUsage struct {
	on     bool   // false: every line takes the general path
	period string // setlym text
	ym     int    // setlym as YYYYMM
	closed []byte // fmtTime(ClosedAt): whole seconds, +08:00
}

func newFastUsage(m *Meta) *fastUsage {
	closed := fmtTime(m.ClosedAt)
	return &fastUsage{on: len(closed) == len(timeShape), period: m.Period.String(), ym: m.Period.Int(), closed: []byte(closed)}
}

const usageFields = 14

// parse checks one usages line (with its "\n") and returns its usage_id and
// facts when the line is certainly canonical and valid; ok false otherwise.
// It does not check the key order.
func (fu *fastUsage) parse(line []byte) (id []byte, u usageFacts, ok bool) {
	if !fu.on || len(line) == 0 || line[len(line)-1] != '\n' {
		return nil, u, false
	}
	body := line[:len(line)-1]
	// One pass, eight bytes at a time: the positions of the first 16 commas,
	// and whether any byte needs the general path (a branch per byte on ','
	// mispredicts, a call of bytes.IndexByte per field costs more than the
	// field).
	var comma [16]int
	n := 0
	var odd uint64
	i := 0
	for ; i+8 <= len(body); i += 8 {
		v := binary.LittleEndian.Uint64(body[i:])
		// a byte < 0x20 (\r, \n, any control), a '"', or one ≥ 0x80 sets a
		// high bit (exact as a yes/no, not per byte)
		q := v ^ bcast('"')
		odd |= (v-bcast(0x20))&^v | (q-bcast(1))&^q | v
		for m := zeroBytes(v ^ bcast(',')); m != 0; m &= m - 1 {
			comma[n&15] = i + bits.TrailingZeros64(m)/8
			n++
		}
	}
	for ; i < len(body); i++ {
		c := body[i]
		odd |= uint64(oddByte[c])
		comma[n&15] = i
		n += int(isComma[c])
	}
	if odd&bcast(0x80) != 0 || n != usageFields-1 {
		return nil, u, false
	}
	var f [usageFields][]byte
	f[0] = body[:comma[0]]
	for k := 1; k < usageFields-1; k++ {
		f[k] = body[comma[k-1]+1 : comma[k]]
	}
	f[usageFields-1] = body[comma[usageFields-2]+1:]

	id = f[0]
	if !plainID(id) || string(f[1]) != fu.period {
		return nil, u, false
	}
	var sign int // the sign the entry type demands: 1, -1, or 0 for "not zero"
	switch string(f[2]) {
	case string(EntryUsage):
		sign = 1
	case string(EntryReversal):
		sign = -1
	case string(EntryAdjustment):
	default:
		return nil, u, false
	}
	switch string(f[3]) {
	case string(KindMedical), string(KindPharmacy), string(KindResidentPremium), string(KindLTCPremium):
	default:
		return nil, u, false
	}
	u.payerProv, u.payerReg = fastProvince(f[4]), fastRegion(f[5])
	u.payeeProv, u.payeeReg = fastProvince(f[6]), fastRegion(f[7])
	if u.payerProv < 0 || u.payerReg < 0 || u.payeeProv < 0 || u.payeeReg < 0 ||
		regProv[u.payerReg] != u.payerProv || regProv[u.payeeReg] != u.payeeProv || u.payerProv == u.payeeProv {
		return nil, u, false
	}
	if u.fen, ok = parseFen(f[8]); !ok || (sign > 0 && u.fen <= 0) || (sign < 0 && u.fen >= 0) || u.fen == 0 {
		return nil, u, false
	}
	ym, ok := fu.timeYM(f[9])
	if !ok || bytes.Compare(f[9], fu.closed) > 0 {
		return nil, u, false
	}
	switch string(f[10]) {
	case "true":
		if ym >= fu.ym {
			return nil, u, false
		}
	case "false":
		if ym != fu.ym {
			return nil, u, false
		}
	default:
		return nil, u, false
	}
	rev := f[11]
	if sign > 0 {
		if len(rev) != 0 {
			return nil, u, false
		}
	} else if !plainID(rev) || bytes.Equal(rev, id) {
		return nil, u, false
	}
	if !hexRef(f[12]) || !hexRef(f[13]) {
		return nil, u, false
	}
	return id, u, true
}

// plainID: an id that checkID accepts and that needs no quoting, in ASCII.
func plainID(b []byte) bool {
	if len(b) == 0 || len(b) > idLenMax {
		return false
	}
	for _, c := range b {
		if c < 0x20 || c >= 0x7f || c == ',' || c == '"' {
			return false
		}
	}
	return !looksLikeIDNumber(b)
}

func hexRef(b []byte) bool {
	if len(b) != 32 && len(b) != 64 {
		return false
	}
	// Branch-free: a per-character branch mispredicts on random hex.
	var bad byte
	for _, c := range b {
		bad |= notLowerHex[c]
	}
	return bad == 0
}

// bcast repeats c in every byte of a word.
func bcast(c byte) uint64 { return uint64(c) * 0x0101010101010101 }

// zeroBytes returns 0x80 in every byte of v that is zero and 0 in the
// others (exact: no false positives from borrows).
func zeroBytes(v uint64) uint64 {
	const lo7 = 0x7f7f7f7f7f7f7f7f
	t := (v & lo7) + lo7 // high bit set where the low seven bits are not all zero
	return ^(t | v | lo7)
}

// oddByte[c] is 0x80 for a byte that sends a line to the general path: a
// control character (\r, \n…), '"', or a byte of a non-ASCII character;
// isComma[c] is 1 for ','.
var oddByte, isComma = func() (o, c [256]byte) {
	for i := range o {
		if i < 0x20 || i == '"' || i >= 0x80 {
			o[i] = 0x80
		}
	}
	c[','] = 1
	return o, c
}()

// notLowerHex[c] is 1 unless c is 0-9 or a-f.
var notLowerHex = func() (t [256]byte) {
	for i := range t {
		if !(i >= '0' && i <= '9' || i >= 'a' && i <= 'f') {
			t[i] = 1
		}
	}
	return t
}()

// parseFen reads a canonical amount: -?(0|[1-9][0-9]{0,15})\.[0-9]{2}, not
// -0.00.
func parseFen(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	n := len(b) - 3 // integer digits
	if n < 1 || n > 16 || b[n] != '.' || (n > 1 && b[0] == '0') {
		return 0, false
	}
	var v int64
	for i, c := range b {
		if i == n {
			continue
		}
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	if neg {
		if v == 0 {
			return 0, false
		}
		v = -v
	}
	return v, true
}

// timeYM checks an occurred_at in the exact form fmtTime writes
// (YYYY-MM-DDTHH:MM:SS+08:00, a real date and time, years 2000-2999) and
// returns its month as YYYYMM: the offset is Asia/Shanghai's, so the text's
// month is region.PeriodOf's.
func (fu *fastUsage) timeYM(b []byte) (int, bool) {
	if len(b) != len(timeShape) || string(b[19:]) != "+08:00" ||
		b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return 0, false
	}
	num := func(i, j int) int {
		n := 0
		for ; i < j; i++ {
			c := b[i]
			if c < '0' || c > '9' {
				return -1
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	y, mo, d, h, mi, s := num(0, 4), num(5, 7), num(8, 10), num(11, 13), num(14, 16), num(17, 19)
	if y < 2000 || y > 2999 || mo < 1 || mo > 12 || d < 1 || d > daysIn(y, mo) ||
		h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 || s > 59 {
		return 0, false
	}
	return y*100 + mo, true
}

// usageRawFast is the fast path of emitter.addRaw for usages.csv: it writes
// a line that parse accepts and that comes after the previous row, and
// reports false for every other line, which then takes the general path.
func usageRawFast(e *emitter[UsageRow], line []byte) (bool, error) {
	if e.fu == nil || (e.onRow != nil && e.onFacts == nil) {
		return false, nil
	}
	id, u, ok := e.fu.parse(line)
	if !ok {
		return false, nil
	}
	if e.hasPrev {
		var c int
		if e.prevIsRaw {
			c = bytes.Compare(e.prevRaw[:bytes.IndexByte(e.prevRaw, ',')], id)
		} else {
			c = strings.Compare(e.prev.UsageID, string(id))
		}
		if c >= 0 {
			return false, nil
		}
	}
	if e.onFacts != nil {
		e.onFacts(&u)
	}
	e.write(line)
	if e.err != nil {
		return true, e.err
	}
	e.prevRaw = append(e.prevRaw[:0], line...)
	e.prevIsRaw, e.hasPrev = true, true
	e.rows++
	return true, nil
}
