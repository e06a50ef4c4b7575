package pii_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"gongji/internal/pii"
)

// today is fixed so that tests and fuzzing do not depend on the calendar.
var today = time.Date(2026, 7, 15, 12, 0, 0, 0, time.UTC)

// withCheck completes 17 digits with their check character.
func withCheck(t testing.TB, first17 string) string {
	t.Helper()
	c, err := pii.CheckDigit(first17)
	if err != nil {
		t.Fatalf("CheckDigit(%s): %v", first17, err)
	}
	return first17 + string(c)
}

func TestParseValid(t *testing.T) {
	t.Parallel()
	// The worked example of GB 11643-1999.
	id, err := pii.Parse("11010519491231002X", today)
	if err != nil {
		t.Fatal(err)
	}
	if id.Address != "110105" || id.Birth != time.Date(1949, 12, 31, 0, 0, 0, 0, time.UTC) || id.Sequence != "002" || !id.Female {
		t.Fatalf("parsed %+v", id)
	}
	lower, err := pii.Parse("11010519491231002x", today)
	if err != nil || lower.Number != "11010519491231002X" {
		t.Fatalf("lower-case x: %+v, %v", lower, err)
	}
	for _, first17 := range []string{"44030420000229001", "65010219000101123", "81000020260715001", "32058319851103451"} {
		s := withCheck(t, first17)
		if _, err := pii.Parse(s, today); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		in   string
		want error
	}{
		"empty":          {"", pii.ErrLength},
		"17":             {"11010519491231002", pii.ErrLength},
		"19":             {"11010519491231002X1", pii.ErrLength},
		"letter inside":  {"1101051949123100AX", pii.ErrSyntax},
		"bad last":       {"11010519491231002Y", pii.ErrSyntax},
		"fullwidth":      {"１１０１０５１９４", pii.ErrLength},
		"check digit":    {"110105194912310021", pii.ErrCheckDigit},
		"feb 30":         {withCheck(t, "11010519490230002"), pii.ErrBirthDate},
		"month 13":       {withCheck(t, "11010519491301002"), pii.ErrBirthDate},
		"1899":           {withCheck(t, "11010518991231002"), pii.ErrBirthDate},
		"tomorrow":       {withCheck(t, "11010520260716002"), pii.ErrBirthDate},
		"feb 29 2025":    {withCheck(t, "11010520250229002"), pii.ErrBirthDate},
		"unknown prefix": {withCheck(t, "99010519491231002"), pii.ErrRegion},
		"prefix 00":      {withCheck(t, "00000019491231002"), pii.ErrRegion},
	}
	for name, c := range cases {
		_, err := pii.Parse(c.in, today)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Parse(%q) = %v, want %v", name, c.in, err, c.want)
		}
		if err != nil && len(c.in) == 18 && strings.Contains(err.Error(), c.in[6:14]) {
			t.Errorf("%s: error %q quotes the number", name, err)
		}
	}
}

// TestSingleDigitErrorsDetected: MOD 11-2 catches every single-character
// substitution, so any one wrong digit is refused.
func TestSingleDigitErrorsDetected(t *testing.T) {
	t.Parallel()
	good := "11010519491231002X"
	for i := 0; i < 18; i++ {
		for _, c := range "0123456789X" {
			if byte(c) == good[i] || (i < 17 && c == 'X') {
				continue
			}
			bad := good[:i] + string(c) + good[i+1:]
			if _, err := pii.Parse(bad, today); err == nil {
				t.Errorf("substitution at %d (%s) accepted", i, bad)
			}
		}
	}
}

func TestPersonRef(t *testing.T) {
	t.Parallel()
	key := []byte("k1")
	a := pii.PersonRef(key, "11010519491231002X")
	if !pii.IsRef(a) {
		t.Fatalf("ref %q has the wrong form", a)
	}
	if pii.PersonRef(key, "11010519491231002x") != a {
		t.Fatal("ref depends on the case of x")
	}
	if pii.PersonRef([]byte("k2"), "11010519491231002X") == a {
		t.Fatal("ref does not depend on the key")
	}
	if pii.PersonRef(key, withCheck(t, "44030420000229001")) == a {
		t.Fatal("two people share a ref")
	}
	// Pinned value, computed independently with
	// `printf 11010519491231002X | openssl dgst -sha256 -hmac gongji-test-key`:
	// every node must compute the same ref.
	if got, want := pii.PersonRef([]byte("gongji-test-key"), "11010519491231002x"), "cff43baee32a632ea639266aa4e71fe0"; got != want {
		t.Fatalf("PersonRef = %s, want %s", got, want)
	}
	for _, s := range []string{"", "ABCDEF0123456789abcdef0123456789", strings.Repeat("a", 31), strings.Repeat("g", 32)} {
		if pii.IsRef(s) {
			t.Errorf("IsRef(%q) = true", s)
		}
	}
}

func TestMask(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"11010519491231002X": "1101**********002X",
		"":                   "",
		"12345678":           "********",
		"123456789":          "1234*6789",
	}
	for in, want := range cases {
		if got := pii.Mask(in); got != want {
			t.Errorf("Mask(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParse: Parse never panics; what it accepts is 18 characters whose check
// character matches, whose normalised form parses to the same value, and whose
// every single-digit corruption is refused.
func FuzzParse(f *testing.F) {
	f.Add("11010519491231002X")
	f.Add("440304200002290014")
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<10 {
			return
		}
		id, err := pii.Parse(s, today)
		if err != nil {
			if id != (pii.ID{}) {
				t.Fatalf("error %v with non-zero ID", err)
			}
			return
		}
		if len(id.Number) != pii.IDLen || strings.ToUpper(s) != id.Number {
			t.Fatalf("Number %q from %q", id.Number, s)
		}
		c, err := pii.CheckDigit(id.Number[:17])
		if err != nil || c != id.Number[17] {
			t.Fatalf("check %c, %v for accepted %q", c, err, s)
		}
		again, err := pii.Parse(id.Number, today)
		if err != nil || again != id {
			t.Fatalf("round trip: %+v, %v vs %+v", again, err, id)
		}
		for i := 0; i < 17; i++ {
			d := id.Number[i]
			repl := byte('0' + (d-'0'+1)%10)
			bad := id.Number[:i] + string(repl) + id.Number[i+1:]
			if _, err := pii.Parse(bad, today); err == nil {
				t.Fatalf("single-digit corruption at %d accepted: %q", i, bad)
			}
		}
	})
}

// FuzzMask: the mask keeps length (in characters), shows at most the first and
// last four characters and is idempotent.
func FuzzMask(f *testing.F) {
	f.Add("11010519491231002X")
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<10 {
			return
		}
		m := pii.Mask(s)
		n := utf8.RuneCountInString(s)
		if utf8.RuneCountInString(m) != n {
			t.Fatalf("Mask(%q) = %q changes length", s, m)
		}
		rs, ms := []rune(s), []rune(m)
		for i := range ms {
			visible := n > 8 && (i < 4 || i >= n-4)
			if !visible && ms[i] != '*' {
				t.Fatalf("Mask(%q) = %q shows position %d", s, m, i)
			}
			if visible && ms[i] != rs[i] && rs[i] != utf8.RuneError {
				t.Fatalf("Mask(%q) = %q changes kept position %d", s, m, i)
			}
		}
		if pii.Mask(m) != m {
			t.Fatalf("Mask not idempotent on %q", s)
		}
	})
}

// FuzzPersonRef: refs always have the ref form, are case-insensitive in the ID
// and are deterministic.
func FuzzPersonRef(f *testing.F) {
	f.Add([]byte("k"), "11010519491231002X")
	f.Fuzz(func(t *testing.T, key []byte, id string) {
		if len(id) > 1<<10 || len(key) > 1<<10 {
			return
		}
		r := pii.PersonRef(key, id)
		if !pii.IsRef(r) {
			t.Fatalf("PersonRef = %q", r)
		}
		ascii := true
		for i := 0; i < len(id); i++ {
			ascii = ascii && id[i] < utf8.RuneSelf
		}
		// ID numbers are ASCII; beyond ASCII, Unicode case mapping is not
		// an involution (the Kelvin sign lower-cases to k), so the property
		// is only claimed for ASCII.
		if ascii && pii.PersonRef(key, strings.ToLower(id)) != r {
			t.Fatal("ref depends on letter case")
		}
		if pii.PersonRef(key, id) != r {
			t.Fatal("not deterministic")
		}
	})
}

// overlapping returns two valid numbers where the second begins with the
// last four characters of the first, and the 32-character string in which
// they overlap.
func overlapping(t testing.TB) (first, second, joined string) {
	t.Helper()
	second = withCheck(t, "41010519900101123")
	for day := 1; day <= 28; day++ {
		// The first number ends in "4101": sequence "410", check '1'.
		cand := fmt.Sprintf("1101051980020%d410", day%10)
		if day >= 10 {
			cand = fmt.Sprintf("110105198002%02d410", day)
		}
		if c, err := pii.CheckDigit(cand); err == nil && c == '1' {
			first = cand + "1"
			break
		}
	}
	if first == "" {
		t.Fatal("no first number ending in 4101")
	}
	return first, second, first + second[4:]
}

func TestContainsID(t *testing.T) {
	t.Parallel()
	id := withCheck(t, "11010519491231002")
	_, _, joined := overlapping(t)
	yes := []string{id, "u-" + id, id + "-1", "key:" + strings.ToLower(withCheck(t, "11010519491231002")), joined,
		"退款 " + id + " 号"}
	for _, s := range yes {
		if !pii.ContainsID(s) {
			t.Errorf("ContainsID(%q) = false", s)
		}
	}
	// A birth date still to come: not valid today, but ContainsID does not
	// depend on the date (a key accepted once stays accepted).
	yes = append(yes, "k-"+withCheck(t, "11010529991231001"))
	badCheck := id[:17] + "1"
	no := []string{"", "u-1", id[:17], badCheck, strings.Repeat("9", 100), "ab" + id[:10] + "-" + id[10:],
		pii.Mask(id), pii.PersonRef([]byte("0123456789abcdef"), id), "990105194912310025", /* prefix 99 */
		withCheck(t, "11010530000101001") /* year 3000 */, withCheck(t, "11010518991231001") /* before 1900 */}
	for _, s := range no {
		if pii.ContainsID(s) {
			t.Errorf("ContainsID(%q) = true", s)
		}
	}
}

func TestMaskAll(t *testing.T) {
	t.Parallel()
	id := "11010519491231002X"
	first, second, joined := overlapping(t)
	cases := map[string]string{
		"":                         "",
		"no number here":           "no number here",
		id:                         "1101**********002X",
		"u-" + id + "-" + id:       "u-1101**********002X-1101**********002X",
		"refund " + id + " please": "refund 1101**********002X please",
		"11010519491231002x":       "1101**********002x",
		id[:17] + "1":              id[:17] + "1", // wrong check character: not a number
		"部分退款" + id:                "部分退款1101**********002X",
		// Both overlapping numbers lose their middles.
		joined: first[:4] + strings.Repeat("*", 10) + first[14:] + strings.Repeat("*", 10) + second[14:],
	}
	for in, want := range cases {
		got := pii.MaskAllAt(in, today)
		if got != want {
			t.Errorf("MaskAllAt(%q) = %q, want %q", in, got, want)
		}
		if pii.MaskAll(in) != got {
			t.Errorf("MaskAll(%q) differs from MaskAllAt today", in)
		}
	}
	// A birth date after today is not a valid number (yet).
	future := withCheck(t, "11010520270101001")
	if got := pii.MaskAllAt(future, today); got != future {
		t.Errorf("MaskAllAt(future) = %q", got)
	}
}

// FuzzMaskAll: MaskAllAt never panics, keeps the length in bytes, changes
// only characters of valid numbers (to '*'), leaves no window that Parse
// accepts, returns a string without a valid number unchanged, and is
// idempotent.
func FuzzMaskAll(f *testing.F) {
	f.Add("11010519491231002X")
	f.Add("u-11010519491231002x-440304200002290014")
	f.Add("退款11010519491231002X")
	f.Add(strings.Repeat("9", 64))
	_, _, joined := overlapping(f)
	f.Add("k-" + joined + "-" + joined)
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<12 {
			return
		}
		had := false
		for i := 0; i+pii.IDLen <= len(s); i++ {
			if _, err := pii.Parse(s[i:i+pii.IDLen], today); err == nil {
				had = true
				break
			}
		}
		m := pii.MaskAllAt(s, today)
		if len(m) != len(s) {
			t.Fatalf("MaskAllAt(%q) = %q: %d bytes, want %d", s, m, len(m), len(s))
		}
		for i := 0; i < len(m); i++ {
			if m[i] != s[i] && m[i] != '*' {
				t.Fatalf("MaskAllAt(%q) = %q changes byte %d to %q", s, m, i, m[i])
			}
		}
		for i := 0; i+pii.IDLen <= len(m); i++ {
			if _, err := pii.Parse(m[i:i+pii.IDLen], today); err == nil {
				t.Fatalf("MaskAllAt(%q) = %q leaves a valid number at %d", s, m, i)
			}
		}
		if !had && m != s {
			t.Fatalf("MaskAllAt(%q) = %q changed a string without a valid number", s, m)
		}
		if had && m == s {
			t.Fatalf("MaskAllAt(%q) left a valid number unmasked", s)
		}
		if pii.MaskAllAt(m, today) != m {
			t.Fatalf("MaskAllAt not idempotent on %q", s)
		}
		_ = pii.MaskAll(s) // against the real date: must not panic either
	})
}

// TestIDFreeHex: a digest whose first 24 hex characters hold a valid number
// (sha256 of "410000:p-26652556", found by search) gives the first 24 of the
// next digest instead; any other gives its own first characters.
func TestIDFreeHex(t *testing.T) {
	t.Parallel()
	d := sha256.Sum256([]byte("410000:p-26652556"))
	naive := hex.EncodeToString(d[:])[:24]
	if !pii.ContainsID(naive) {
		t.Fatalf("%s holds no number: the fixture is stale", naive)
	}
	next := sha256.Sum256(d[:])
	got := pii.IDFreeHex(d[:], 24)
	if got != hex.EncodeToString(next[:])[:24] || pii.ContainsID(got) || pii.IDFreeHex(d[:], 24) != got {
		t.Errorf("IDFreeHex = %s (naive %s)", got, naive)
	}
	plain := sha256.Sum256([]byte("410000:k"))
	if got := pii.IDFreeHex(plain[:], 24); got != hex.EncodeToString(plain[:])[:24] {
		t.Errorf("IDFreeHex changed a digest without a number: %s", got)
	}
	if got := pii.IDFreeHex(plain[:], 64); got != hex.EncodeToString(plain[:]) {
		t.Errorf("IDFreeHex(64) = %s", got)
	}
	for _, n := range []int{0, 65} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("IDFreeHex(%d) did not panic", n)
				}
			}()
			pii.IDFreeHex(plain[:], n)
		}()
	}
}
