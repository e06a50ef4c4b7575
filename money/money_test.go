package money

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
		err  error
	}{
		{"12.30", "12.30", nil},
		{"12.3", "12.30", nil},
		{"7", "7.00", nil},
		{"-0.05", "-0.05", nil},
		{"+1.00", "1.00", nil},
		{"0.10", "0.10", nil},
		{"12.300", "", ErrTooPrecise}, // three places on the wire, even if zero
		{"9999999999999999.99", "9999999999999999.99", nil},
		{"", "", ErrEmpty},
		{"12.345", "", ErrTooPrecise},
		{"1e3", "", ErrSyntax},
		{"NaN", "", ErrSyntax},
		{"Infinity", "", ErrSyntax},
		{" 1.00", "", ErrSyntax},
		{"1,000.00", "", ErrSyntax},
		{"1.", "", ErrSyntax},
		{".5", "0.50", nil},
		{"-", "", ErrSyntax},
		{"0x10", "", ErrSyntax},
		{"10000000000000000.00", "", ErrOutOfRange},
		{strings.Repeat("9", 40), "", ErrInputTooLong},
		{"١٢", "", ErrSyntax}, // non-ASCII digits
	} {
		got, err := Parse(c.in)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("Parse(%q) error = %v, want %v", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got.String() != c.want {
			t.Errorf("Parse(%q) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
}

func TestParsePositive(t *testing.T) {
	for _, in := range []string{"0", "0.00", "-1.00", "-0.01"} {
		if _, err := ParsePositive(in); !errors.Is(err, ErrNotPositive) {
			t.Errorf("ParsePositive(%q) = %v, want ErrNotPositive", in, err)
		}
	}
	if y, err := ParsePositive("0.01"); err != nil || y.Fen() != 1 {
		t.Fatalf("ParsePositive(0.01) = %v, %v", y, err)
	}
}

func TestArithmeticAndFen(t *testing.T) {
	a, b := MustParse("10.25"), MustParse("0.75")
	if s := a.Add(b).String(); s != "11.00" {
		t.Fatalf("add = %s", s)
	}
	if s := b.Sub(a).String(); s != "-9.50" {
		t.Fatalf("sub = %s", s)
	}
	if FromFen(-5).String() != "-0.05" || MustParse("123.45").Fen() != 12345 {
		t.Fatal("fen conversion")
	}
	if s := MustParse("100.00").MulRatio(2, 3).String(); s != "66.67" {
		t.Fatalf("MulRatio = %s", s)
	}
	var y Yuan
	if err := y.Scan("12.30"); err != nil || y.String() != "12.30" {
		t.Fatalf("Scan = %s, %v", y, err)
	}
	if err := y.Scan("1.234"); err == nil {
		t.Fatal("Scan accepted three decimals")
	}
}

// FuzzParse: Parse never panics; whatever it accepts formats back to a value
// that parses to the same amount, has exactly two decimals and is in range.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"12.30", "-0.05", "9999999999999999.99", "1e9", "NaN", "", "0.001", "+7", ".5", "1.", "--1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		y, err := Parse(s)
		if err != nil {
			return
		}
		out := y.String()
		if i := strings.IndexByte(out, '.'); i < 0 || len(out)-i != 3 {
			t.Fatalf("Parse(%q) formats as %q: not two decimals", s, out)
		}
		back, err := Parse(out)
		if err != nil || !back.Equal(y) {
			t.Fatalf("round trip of %q: %q → %v, %v", s, out, back, err)
		}
		if !y.InRange() {
			t.Fatalf("Parse(%q) accepted an out-of-range amount", s)
		}
	})
}
