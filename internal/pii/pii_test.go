package pii_test

import (
	"errors"
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
