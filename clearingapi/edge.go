package clearingapi

import (
	"errors"
	"strconv"

	"gongji/money"
	"gongji/region"
)

// Refusals at the edge name the field and say what is wrong with it, but
// never repeat the value: a hostile value (an ID number typed into the wrong
// field, a megabyte of junk) must not be echoed into replies, the per-call
// log or the switch log. The money and region packages quote what they could
// not parse, so their errors are reduced to their sentinel's text here.

// moneyErrs are the sentinels of money.Parse, most specific first.
var moneyErrs = []error{money.ErrEmpty, money.ErrInputTooLong, money.ErrSyntax, money.ErrTooPrecise,
	money.ErrOutOfRange, money.ErrNotPositive}

// moneyReason is the text of the money sentinel err wraps, without the
// offending text.
func moneyReason(err error) string {
	for _, s := range moneyErrs {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return "not an amount"
}

// codeReason is a region error's text without a malformed value: only a code
// that is not six digits is quoted by the region package (an unknown or
// misplaced six-digit code is named, which is safe and useful).
func codeReason(err error) string {
	switch {
	case errors.Is(err, region.ErrBadCode):
		return region.ErrBadCode.Error()
	case errors.Is(err, region.ErrBadPeriod):
		return region.ErrBadPeriod.Error()
	}
	return err.Error()
}

// safeCode is code when it has the form of a code (six ASCII digits), which
// may be repeated in a message; anything else is described, not repeated.
func safeCode(code string) string {
	if len(code) != 6 {
		return "(not a six-digit code)"
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return "(not a six-digit code)"
		}
	}
	return code
}

// quotedLenMax: a value of at most this many printable ASCII characters may
// be quoted in a refusal (it helps to see "2026-07"); an ID number has 18.
const quotedLenMax = 11

// quoteShort is v quoted, after a space, when it is short and printable
// ASCII, else "".
func quoteShort(v string) string {
	if len(v) > quotedLenMax {
		return ""
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return ""
		}
	}
	return " " + strconv.Quote(v)
}
