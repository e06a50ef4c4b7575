// Package money holds the yuan amount type every gongji package shares.
//
// Amounts are decimal yuan with exactly two places (fen precision), stored as
// NUMERIC(18,2) in PostgreSQL and carried as decimal strings on the wire. Floats
// never appear. Parsing happens once, at the edge: a Yuan value that exists has
// already been validated.
package money

import (
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"

	"github.com/shopspring/decimal"
)

// Sentinel errors returned (wrapped) by the parsers. Callers test with errors.Is.
var (
	ErrEmpty         = errors.New("money: amount is empty")
	ErrSyntax        = errors.New("money: amount is not a plain decimal number")
	ErrTooPrecise    = errors.New("money: amount has more than two decimal places")
	ErrOutOfRange    = errors.New("money: amount exceeds NUMERIC(18,2)")
	ErrNotPositive   = errors.New("money: amount must be greater than zero")
	ErrInputTooLong  = errors.New("money: amount text is too long")
	errNilComparison = errors.New("money: nil")
)

// inputLenMax bounds the text a parser will look at, so a hostile 1 MB string is
// refused before any arithmetic happens. NUMERIC(18,2) needs at most
// sign + 16 digits + point + 2 digits = 20 characters.
const inputLenMax = 24

// Max is the largest magnitude NUMERIC(18,2) can hold: 16 integer digits.
var Max = decimal.RequireFromString("9999999999999999.99")

// Yuan is an amount of money in yuan with at most two decimal places.
// The zero value is 0.00 yuan.
type Yuan struct{ d decimal.Decimal }

// Zero is 0.00 yuan.
var Zero = Yuan{}

// Parse reads a signed decimal amount such as "12.30", "-0.05" or "7".
// It refuses exponents, spaces, NaN/Inf words, more than two decimals and values
// outside NUMERIC(18,2). Errors wrap one of the sentinels above.
func Parse(s string) (Yuan, error) {
	if s == "" {
		return Yuan{}, ErrEmpty
	}
	if len(s) > inputLenMax {
		return Yuan{}, fmt.Errorf("%w (%d characters)", ErrInputTooLong, len(s))
	}
	if !plainDecimal(s) {
		return Yuan{}, fmt.Errorf("%w: %q", ErrSyntax, s)
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return Yuan{}, fmt.Errorf("%w: %q", ErrSyntax, s)
	}
	// More than two digits after the point is refused even when they are
	// zeros ("12.300"): the wire format is yuan with at most two decimals.
	if i := strings.IndexByte(s, '.'); i >= 0 && len(s)-i-1 > 2 {
		return Yuan{}, fmt.Errorf("%w: %q", ErrTooPrecise, s)
	}
	if d.Abs().GreaterThan(Max) {
		return Yuan{}, fmt.Errorf("%w: %q", ErrOutOfRange, s)
	}
	return Yuan{d.Round(2)}, nil
}

// ParsePositive is Parse plus the rule that amounts moved by an operation must be
// greater than zero (DESIGN §3).
func ParsePositive(s string) (Yuan, error) {
	y, err := Parse(s)
	if err != nil {
		return Yuan{}, err
	}
	if !y.IsPositive() {
		return Yuan{}, fmt.Errorf("%w: %q", ErrNotPositive, s)
	}
	return y, nil
}

// plainDecimal accepts an optional leading '-' or '+', digits, and at most one
// '.' followed by digits. Nothing else.
func plainDecimal(s string) bool {
	i := 0
	if s[0] == '-' || s[0] == '+' {
		i = 1
	}
	digits, dot := 0, false
	for ; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return digits > 0 && !strings.HasSuffix(s, ".")
}

// FromDecimal converts a decimal that is known to be in range (for example read
// from a NUMERIC(18,2) column) into Yuan. It returns an error when d has more
// than two places or is out of range.
func FromDecimal(d decimal.Decimal) (Yuan, error) {
	if !d.Equal(d.Round(2)) {
		return Yuan{}, fmt.Errorf("%w: %s", ErrTooPrecise, d.String())
	}
	if d.Abs().GreaterThan(Max) {
		return Yuan{}, fmt.Errorf("%w: %s", ErrOutOfRange, d.String())
	}
	return Yuan{d.Round(2)}, nil
}

// MustParse is Parse for constants in tests and code; it panics on a bad literal.
func MustParse(s string) Yuan {
	y, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return y
}

// FromFen builds an amount from an integer number of fen (1/100 yuan).
func FromFen(fen int64) Yuan { return Yuan{decimal.New(fen, -2)} }

// Fen returns the amount as an integer number of fen.
func (y Yuan) Fen() int64 { return y.d.Shift(2).IntPart() }

// Decimal returns the underlying decimal (always at most two places).
func (y Yuan) Decimal() decimal.Decimal { return y.d }

// String formats with exactly two decimals: "12.30", "-0.05", "0.00".
func (y Yuan) String() string { return y.d.StringFixed(2) }

func (y Yuan) Add(o Yuan) Yuan              { return Yuan{y.d.Add(o.d)} }
func (y Yuan) Sub(o Yuan) Yuan              { return Yuan{y.d.Sub(o.d)} }
func (y Yuan) Neg() Yuan                    { return Yuan{y.d.Neg()} }
func (y Yuan) Abs() Yuan                    { return Yuan{y.d.Abs()} }
func (y Yuan) Cmp(o Yuan) int               { return y.d.Cmp(o.d) }
func (y Yuan) Equal(o Yuan) bool            { return y.d.Equal(o.d) }
func (y Yuan) LessThan(o Yuan) bool         { return y.d.LessThan(o.d) }
func (y Yuan) GreaterThan(o Yuan) bool      { return y.d.GreaterThan(o.d) }
func (y Yuan) IsZero() bool                 { return y.d.IsZero() }
func (y Yuan) IsPositive() bool             { return y.d.IsPositive() }
func (y Yuan) IsNegative() bool             { return y.d.IsNegative() }
func (y Yuan) Min(o Yuan) Yuan              { return Yuan{decimal.Min(y.d, o.d)} }
func (y Yuan) Max(o Yuan) Yuan              { return Yuan{decimal.Max(y.d, o.d)} }
func (y Yuan) InRange() bool                { return !y.d.Abs().GreaterThan(Max) }
func (y Yuan) MarshalText() ([]byte, error) { return []byte(y.String()), nil }

// UnmarshalText parses with Parse, so JSON and flag input get the same checks.
func (y *Yuan) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*y = v
	return nil
}

// Sum adds amounts.
func Sum(ys ...Yuan) Yuan {
	t := Zero
	for _, y := range ys {
		t = t.Add(y)
	}
	return t
}

// MulRatio returns y × num ÷ den rounded half-even to the fen, for sizing rules
// such as "twice the trailing average". den must not be zero.
func (y Yuan) MulRatio(num, den int64) Yuan {
	if den == 0 {
		panic(errNilComparison)
	}
	return Yuan{y.d.Mul(decimal.NewFromInt(num)).DivRound(decimal.NewFromInt(den), 8).RoundBank(2)}
}

// MulDecimal returns y × f rounded half-even to the fen (f is a policy factor
// such as the 0.70 warning threshold, never a float).
func (y Yuan) MulDecimal(f decimal.Decimal) Yuan { return Yuan{y.d.Mul(f).RoundBank(2)} }

// Value implements driver.Valuer so a Yuan can be passed straight to pgx as a
// NUMERIC parameter (as its exact decimal text).
func (y Yuan) Value() (driver.Value, error) { return y.String(), nil }

// Scan implements sql.Scanner for NUMERIC columns read as text or decimal.
func (y *Yuan) Scan(src any) error {
	var s string
	switch v := src.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	case int64:
		*y = Yuan{decimal.NewFromInt(v)}
		return nil
	case nil:
		return errors.New("money: scan NULL into Yuan")
	default:
		return fmt.Errorf("money: cannot scan %T into Yuan", src)
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return fmt.Errorf("money: scan %q: %w", s, err)
	}
	v, err := FromDecimal(d)
	if err != nil {
		return err
	}
	*y = v
	return nil
}
