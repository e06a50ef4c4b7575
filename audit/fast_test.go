package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shopspring/decimal"

	"gongji/money"
)

// The fast path of usages.csv (fast.go) must be invisible: for any body,
// the writer with it and the writer without it (every line through
// splitLine, decode, check, encode, compare) write the same bytes, count the
// same rows, give the same hash, the same controls, and refuse with the same
// error on the same line.

// bodyOf returns the body rows (header dropped) of a usages.csv and its Meta.
func bodyOf(t testing.TB, dir string) ([]byte, Meta) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, FileUsages))
	if err != nil {
		t.Fatal(err)
	}
	mb, err := os.ReadFile(filepath.Join(dir, FileManifest))
	if err != nil {
		t.Fatal(err)
	}
	man, err := DecodeManifest(mb)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte("fast path test journal"))
	m := Meta{Period: man.Period, ClosedAt: man.GeneratedAt, JournalHead: hex.EncodeToString(h[:]),
		Totals: man.Totals, WarningThreshold: decimal.RequireFromString("0.70")}
	return b[bytes.IndexByte(b, '\n')+1:], m
}

type emitResult struct {
	out  string
	sum  FileSum
	err  string
	ctl  *controls // after endUsages, when err is ""
	fast int64     // lines the fast path wrote
}

// emitUsages runs the usages emitter over body with the fast path on or off,
// with the controls of WriteBundle attached.
func emitUsages(m Meta, body []byte, fast bool) emitResult {
	var out bytes.Buffer
	ctl := newControls(&m)
	e := newEmitter(context.Background(), usageCodec, &m, &out, ctl.usage)
	if fast {
		e.onFacts = ctl.usageFacts
	} else {
		e.fu = nil
	}
	var r emitResult
	// count the lines the fast path takes
	n := int64(0)
	if fast {
		inner := e.onFacts
		e.onFacts = func(u *usageFacts) { n++; inner(u) }
	}
	err := e.copyFrom(bytes.NewReader(body))
	if err == nil {
		r.sum, err = e.sum()
	}
	if err == nil {
		err = ctl.endUsages()
	}
	r.out, r.fast = out.String(), n
	if err != nil {
		r.err = err.Error()
	} else {
		r.ctl = ctl
	}
	return r
}

func sameResult(t testing.TB, what string, m Meta, body []byte) emitResult {
	t.Helper()
	f, s := emitUsages(m, body, true), emitUsages(m, body, false)
	if f.out != s.out || f.sum != s.sum || f.err != s.err {
		t.Fatalf("%s: fast and general paths differ\nbody %q\nfast:    sum %+v err %s\ngeneral: sum %+v err %s",
			what, body, f.sum, f.err, s.sum, s.err)
	}
	if f.err == "" {
		fc, sc := f.ctl, s.ctl
		if fc.usages != sc.usages || !fc.total.Equal(sc.total) ||
			fmt.Sprint(fc.gross, fc.pos, fc.alloc, fc.instr) != fmt.Sprint(sc.gross, sc.pos, sc.alloc, sc.instr) {
			t.Fatalf("%s: controls differ\nbody %q", what, body)
		}
	}
	return f
}

// mutants returns variants of one line (with its "\n"): every field replaced
// by values near the edge of the rules, and single-byte edits.
func mutants(line []byte, rng *rand.Rand) [][]byte {
	body := string(line[:len(line)-1])
	var out [][]byte
	add := func(s string) { out = append(out, []byte(s+"\n")) }
	fields := strings.Split(body, ",")
	if len(fields) == usageFields {
		edge := [usageFields][]string{
			{"", "U", strings.Repeat("x", 128), strings.Repeat("x", 129), "U 1", "U\x7f", "U\x01", "é", "U-11010519491231002X", "11010519491231002X", "A", "\xff"},
			{"202607", "202609", "2026-08", "20260", "2026088", "202613", ""},
			{"USAGE", "REVERSAL", "ADJUSTMENT", "usage", "", "USAGES"},
			{"MEDICAL", "PHARMACY", "RESIDENT_PREMIUM", "LTC_PREMIUM", "medical", ""},
			{"110000", "440000", "510000", "310000", "990000", "11000", "1100000", "110100", ""},
			{"110100", "440100", "440300", "510100", "519900", "310100", "110000", "999900", ""},
			{"110000", "440000", "510000", "310000", "990000", "11000", ""},
			{"110100", "440100", "440300", "510100", "519900", "310100", "110000", ""},
			{"0.00", "-0.00", "1.00", "-1.00", "0.01", "-0.01", "01.00", "1.0", "1.000", "1", ".50", "-.50", "+1.00", "1e2",
				"9999999999999999.99", "-9999999999999999.99", "10000000000000000.00", "99999999999999999.99", " 1.00", "1.00 ", "--1.00", "1..00", "١.00"},
			{"2026-08-01T00:00:00+08:00", "2026-07-31T23:59:59+08:00", "2026-08-31T23:59:59+08:00", "2026-09-05T18:00:00+08:00",
				"2026-09-05T18:00:01+08:00", "2026-02-29T10:00:00+08:00", "2028-02-29T10:00:00+08:00", "2026-08-31T24:00:00+08:00",
				"2026-08-31T23:60:00+08:00", "2026-08-31T23:59:60+08:00", "2026-08-32T10:00:00+08:00", "2026-13-01T10:00:00+08:00",
				"2026-08-20T15:30:00Z", "2026-08-20T15:30:00+09:00", "2026-08-20 15:30:00+08:00", "2026-08-20T15:30:00.5+08:00",
				"1999-08-20T15:30:00+08:00", "0001-01-01T08:00:00+08:00", "2026-00-10T10:00:00+08:00", "2026-08-00T10:00:00+08:00", ""},
			{"true", "false", "t", "f", "TRUE", ""},
			{"", "U202608-0001", "U202607-0042", "R202608-0001", "x", "U-11010519491231002X"},
			{strings.Repeat("a", 64), strings.Repeat("a", 32), strings.Repeat("a", 63), strings.Repeat("A", 64), strings.Repeat("g", 64), ""},
			{strings.Repeat("0", 64), strings.Repeat("f", 32), strings.Repeat("a", 33), strings.Repeat("F", 32), ""},
		}
		for i, vals := range edge {
			for _, v := range vals {
				g := append([]string(nil), fields...)
				g[i] = v
				add(strings.Join(g, ","))
			}
		}
		for _, swap := range [][2]int{{4, 6}, {6, 4}} { // one side's province and region to the other side
			g := append([]string(nil), fields...)
			g[swap[0]], g[swap[0]+1] = g[swap[1]], g[swap[1]+1]
			add(strings.Join(g, ","))
		}
		add(strings.Join(fields[:usageFields-1], ","))
		add(body + ",")
		add(body + ",x")
	}
	alphabet := []byte{'0', '1', '9', '-', '.', ',', '"', 'a', 'f', 'g', 'X', 'T', ' ', '\r', '\n', 0, 0xc3}
	for i := 0; i < len(body); i++ {
		add(body[:i] + body[i+1:])
		for _, c := range alphabet {
			if rng.IntN(4) == 0 {
				add(body[:i] + string(c) + body[i+1:])
			}
		}
		if rng.IntN(4) == 0 {
			add(body[:i] + "," + body[i:])
		}
	}
	add(body)
	out = append(out, []byte(body)) // no final newline
	return out
}

// TestFastUsageAgrees: the golden and example bodies, and every mutant of
// every line in its place among the others, give the same result with and
// without the fast path; and the fast path does take the plain lines.
func TestFastUsageAgrees(t *testing.T) {
	t.Parallel()
	for dir, mutate := range map[string]int{"testdata/golden/202608": 10, "testdata/example-bundle": 4} {
		body, m := bodyOf(t, dir)
		r := sameResult(t, dir, m, body)
		lines := bytes.SplitAfter(body, []byte("\n"))
		lines = lines[:len(lines)-1]
		plain := int64(0)
		for _, l := range lines {
			if !bytes.Contains(l, []byte(`"`)) {
				plain++
			}
		}
		if r.err != "" || r.fast != plain {
			t.Fatalf("%s: %s; the fast path took %d of the %d unquoted lines", dir, r.err, r.fast, plain)
		}
		rng := rand.New(rand.NewPCG(1, uint64(len(dir))))
		for k := range min(len(lines), mutate) {
			// the mutant between its neighbours: the order is checked both ways
			before, after := lines[max(k-1, 0):k], lines[k+1:min(k+2, len(lines))]
			for _, mu := range mutants(lines[k], rng) {
				b := bytes.Join([][]byte{bytes.Join(before, nil), mu, bytes.Join(after, nil)}, nil)
				sameResult(t, fmt.Sprintf("%s line %d", dir, k+2), m, b)
				checkParse(t, &m, mu)
			}
		}
	}
}

// checkParse: a line the fast parser accepts passes the general path alone,
// with the same figures.
func checkParse(t *testing.T, m *Meta, line []byte) {
	t.Helper()
	id, u, ok := newFastUsage(m).parse(line)
	if !ok {
		return
	}
	f, err := splitLine(line[:len(line)-1], nil)
	if err != nil || len(f) != usageFields {
		t.Fatalf("fast path accepted %q: %v", line, err)
	}
	r, err := usageCodec.decode(f)
	if err == nil {
		err = r.check(m)
	}
	if err != nil {
		t.Fatalf("fast path accepted %q: %v", line, err)
	}
	if canon := appendLine(nil, usageCodec.encode(nil, &r)); !bytes.Equal(canon, line) {
		t.Fatalf("fast path accepted %q, canonical is %q", line, canon)
	}
	fen, _ := fenOf(r.Amount)
	want := usageFacts{fen: fen, payerProv: provIdx[r.PayerProvince], payeeProv: provIdx[r.PayeeProvince],
		payerReg: regIdx[r.PayerRegion], payeeReg: regIdx[r.PayeeRegion]}
	if string(id) != r.UsageID || u != want {
		t.Fatalf("fast path read %q as %s %+v, want %s %+v", line, id, u, r.UsageID, want)
	}
}

// TestFastUsageMixedOrder: the key order holds across lines of either path,
// and an unsorted line after fast lines is refused with the general path's
// words.
func TestFastUsageMixedOrder(t *testing.T) {
	t.Parallel()
	body, m := bodyOf(t, "testdata/golden/202608")
	lines := bytes.SplitAfter(body, []byte("\n"))
	lines = lines[:len(lines)-1]
	quoted := lines[len(lines)-1] // "U202608-0006 ""PH,7""": general path
	for i := range lines {
		for j := range lines {
			b := bytes.Join([][]byte{lines[i], lines[j], quoted, lines[j]}, nil)
			r := sameResult(t, fmt.Sprintf("lines %d, %d", i, j), m, b)
			if r.err == "" {
				t.Fatalf("lines %d, %d: a repeated line was accepted", i, j)
			}
		}
	}
}

func TestFenOf(t *testing.T) {
	t.Parallel()
	var five money.Yuan
	if err := five.Scan(int64(5)); err != nil { // exponent 0
		t.Fatal(err)
	}
	maxY := money.MustParse("9999999999999999.99")
	for _, c := range []struct {
		y    money.Yuan
		fen  int64
		fast bool
	}{
		{money.Yuan{}, 0, true},
		{five, 500, true},
		{five.Neg(), -500, true},
		{money.MustParse("-0.05"), -5, true},
		{money.MustParse("12.3"), 1230, true},
		{maxY, 999_999_999_999_999_999, true},
		{maxY.Neg(), -999_999_999_999_999_999, true},
		{maxY.Add(money.MustParse("0.01")), 0, false},            // past NUMERIC(18,2)
		{maxY.Add(maxY).Add(maxY).Add(maxY).Add(maxY), 0, false}, // past int64 fen
		{money.MustParse("1234567890123456.7"), 123_456_789_012_345_670, true},
	} {
		fen, ok := fenOf(c.y)
		if ok != c.fast || (ok && fen != c.fen) {
			t.Errorf("fenOf(%s) = %d, %v; want %d, %v", c.y.Decimal(), fen, ok, c.fen, c.fast)
		}
		if got, want := fmtAmount(c.y), c.y.Decimal().StringFixed(2); got != want {
			t.Errorf("fmtAmount(%s) = %s, want %s", c.y.Decimal(), got, want)
		}
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 10000 {
		fen := rng.Int64N(2_000_000_000_000_000_000) - 1_000_000_000_000_000_000
		y := money.FromFen(fen)
		text := fmtAmount(y)
		if want := y.Decimal().StringFixed(2); text != want {
			t.Fatalf("fmtAmount(%d fen) = %s, want %s", fen, text, want)
		}
		if f, ok := parseFen([]byte(text)); !ok || f != fen {
			t.Fatalf("parseFen(%s) = %d, %v", text, f, ok)
		}
	}
}

// TestFenSumExact: sums in fen equal decimal sums, overflow of int64
// included.
func TestFenSumExact(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 9))
	var s fenSum
	want := money.Zero
	for i := range 5000 {
		fen := rng.Int64N(999_999_999_999_999_999)
		if i%3 == 0 {
			fen = -fen
		}
		if i%7 == 0 {
			fen = 999_999_999_999_999_999 // push the int64 over its edge
		}
		y := money.FromFen(fen)
		if i%11 == 0 {
			s.add(y)
		} else {
			s.addFen(fen)
		}
		want = want.Add(y)
	}
	if !s.yuan().Equal(want) {
		t.Fatalf("fenSum %s, decimal sum %s", s.yuan(), want)
	}
	if !s.big {
		t.Fatal("the test never overflowed an int64")
	}
}

// FuzzFastUsage: any body gives the same result with and without the fast
// path (seed corpus: the golden lines).
func FuzzFastUsage(f *testing.F) {
	for _, dir := range []string{"testdata/golden/202608", "testdata/example-bundle"} {
		body, _ := bodyOf(f, dir)
		for _, l := range bytes.SplitAfter(body, []byte("\n")) {
			f.Add(l)
		}
	}
	_, m := bodyOf(f, "testdata/golden/202608")
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > 1<<16 {
			return
		}
		sameResult(t, "fuzz", m, body)
	})
}

func TestZeroBytes(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 5))
	for range 20000 {
		v := rng.Uint64()
		if rng.IntN(2) == 0 { // plant zero bytes
			for range 1 + rng.IntN(4) {
				v &^= 0xff << (8 * rng.IntN(8))
			}
		}
		var want uint64
		for i := range 8 {
			if byte(v>>(8*i)) == 0 {
				want |= 0x80 << (8 * i)
			}
		}
		if got := zeroBytes(v); got != want {
			t.Fatalf("zeroBytes(%#x) = %#x, want %#x", v, got, want)
		}
	}
}

// BenchmarkFastParse: the fast path's check of one usages line.
func BenchmarkFastParse(b *testing.B) {
	body, m := bodyOf(b, "testdata/golden/202608")
	lines := bytes.SplitAfter(body, []byte("\n"))
	lines = lines[:len(lines)-2] // the plain lines
	fu := newFastUsage(&m)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, ok := fu.parse(lines[i%len(lines)]); !ok {
			b.Fatal("refused")
		}
	}
}
