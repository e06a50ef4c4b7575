package prepay

import (
	"testing"

	"github.com/shopspring/decimal"
)

func TestDivHalfEvenSigns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		num  string
		den  int64
		want string
	}{
		{"0.015", 1, "0.02"},
		{"0.025", 1, "0.02"},
		{"0.0251", 1, "0.03"},
		{"-0.015", 1, "-0.02"},
		{"-0.025", 1, "-0.02"},
		{"-0.0251", 1, "-0.03"},
		{"2", 3, "0.67"},
		{"-2", 3, "-0.67"},
		{"100", 7, "14.29"},
		{"12345678901234.5", 1, "12345678901234.50"},
	} {
		got := divHalfEven(decimal.RequireFromString(tc.num), tc.den).StringFixed(2)
		if got != tc.want {
			t.Errorf("%s ÷ %d = %s, want %s", tc.num, tc.den, got, tc.want)
		}
	}
}
