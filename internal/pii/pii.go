// Package pii handles the only personal data a province node ever sees in
// clear: the resident identity card number (GB 11643-1999, 公民身份号码).
//
// The number is validated at the edge (Parse), turned into the federation-wide
// pseudonym person_ref (PersonRef, keyed by the national person key) and into a
// masked form for support staff (Mask). Nothing else in gongji stores, logs or
// sends the clear number (docs/architecture.md, "Identity and personal data").
package pii

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Sentinel errors returned (wrapped) by Parse and Validate.
var (
	ErrLength     = errors.New("pii: ID number must be 18 characters")
	ErrSyntax     = errors.New("pii: ID number must be 17 digits followed by a digit or X")
	ErrCheckDigit = errors.New("pii: ID number check digit (ISO 7064 MOD 11-2) does not match")
	ErrBirthDate  = errors.New("pii: ID number birth date is not a plausible date")
	ErrRegion     = errors.New("pii: ID number address code is not a known provincial prefix")
)

// IDLen is the length of a GB 11643-1999 citizen identity number.
const IDLen = 18

// RefLen is the length of a person_ref: the first 32 hex characters (128 bits)
// of the HMAC-SHA256 — enough to make collisions among 1.4 billion people
// negligible (birthday bound ≈ 2^-64·n²) while keeping keys short.
const RefLen = 32

// birthYearMin is the earliest birth year accepted: the oldest living person
// registered in China was born in the late 1880s; 1900 leaves no real
// beneficiary out while catching typos such as 0984.
const birthYearMin = 1900

// weights are 2^(17-i) mod 11 for positions i = 0..16 (ISO 7064 MOD 11-2).
var weights = [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}

// checkChars maps (Σ aᵢ·Wᵢ) mod 11 to the check character.
const checkChars = "10X98765432"

// provincePrefixes are the first two digits of GB/T 2260 address codes of the
// 31 provincial units on the mainland, plus 71 (Taiwan), 81 (Hong Kong), 82
// (Macao) and 83 (Taiwan residents' residence permits), which use the same
// number format. 兵团 enrollees carry Xinjiang (65) ID numbers.
var provincePrefixes = map[string]bool{
	"11": true, "12": true, "13": true, "14": true, "15": true,
	"21": true, "22": true, "23": true,
	"31": true, "32": true, "33": true, "34": true, "35": true, "36": true, "37": true,
	"41": true, "42": true, "43": true, "44": true, "45": true, "46": true,
	"50": true, "51": true, "52": true, "53": true, "54": true,
	"61": true, "62": true, "63": true, "64": true, "65": true,
	"71": true, "81": true, "82": true, "83": true,
}

// ID is a parsed identity number. Keep it on the stack: it exists only between
// the edge that received the number and the call to PersonRef/Mask.
type ID struct {
	Number   string    // normalised: 18 characters, check character upper-case
	Address  string    // first 6 digits: GB/T 2260 address code at issue
	Birth    time.Time // date of birth, 00:00 UTC
	Sequence string    // digits 15-17
	Female   bool      // the 17th digit is even
}

// CheckDigit returns the check character for the first 17 digits.
// It returns ErrSyntax when first17 is not 17 ASCII digits.
func CheckDigit(first17 string) (byte, error) {
	if len(first17) != 17 {
		return 0, fmt.Errorf("%w: need 17 digits, got %d characters", ErrSyntax, len(first17))
	}
	sum := 0
	for i := 0; i < 17; i++ {
		c := first17[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: character %d is not a digit", ErrSyntax, i+1)
		}
		sum += int(c-'0') * weights[i]
	}
	return checkChars[sum%11], nil
}

// Parse validates an identity number against GB 11643-1999: 18 characters, 17
// digits and a check character (a digit or X, lower-case x accepted), a check
// character that matches ISO 7064 MOD 11-2, a real calendar birth date between
// 1900-01-01 and today (Asia/Shanghai), and an address code whose first two
// digits name a provincial unit. Errors wrap ErrLength, ErrSyntax,
// ErrCheckDigit, ErrBirthDate or ErrRegion and never quote the number itself.
func Parse(s string, today time.Time) (ID, error) {
	if len(s) != IDLen {
		return ID{}, fmt.Errorf("%w (got %d bytes)", ErrLength, len(s))
	}
	want, err := CheckDigit(s[:17])
	if err != nil {
		return ID{}, err
	}
	last := s[17]
	if last == 'x' {
		last = 'X'
	}
	if !(last >= '0' && last <= '9') && last != 'X' {
		return ID{}, fmt.Errorf("%w: character 18 must be a digit or X", ErrSyntax)
	}
	if last != want {
		return ID{}, ErrCheckDigit
	}
	if !provincePrefixes[s[:2]] {
		return ID{}, fmt.Errorf("%w: prefix %s", ErrRegion, s[:2])
	}
	year := atoi(s[6:10])
	month := atoi(s[10:12])
	day := atoi(s[12:14])
	birth := time.Date(year, time.Month(month), day, 0, 0, 0, 0, time.UTC)
	if birth.Year() != year || int(birth.Month()) != month || birth.Day() != day {
		return ID{}, fmt.Errorf("%w: not a calendar date", ErrBirthDate)
	}
	t := today.In(shanghai)
	todayUTC := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	if year < birthYearMin || birth.After(todayUTC) {
		return ID{}, fmt.Errorf("%w: outside %d-01-01 … today", ErrBirthDate, birthYearMin)
	}
	return ID{
		Number:   s[:17] + string(last),
		Address:  s[:6],
		Birth:    birth,
		Sequence: s[14:17],
		Female:   (s[16]-'0')%2 == 0,
	}, nil
}

// shanghai is UTC+8 (no daylight saving since 1991): "today" for a birth date.
var shanghai = time.FixedZone("CST", 8*3600)

// Validate is Parse against the current date.
func Validate(s string) error {
	_, err := Parse(s, time.Now())
	return err
}

func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}

// PersonRef returns the federation-wide pseudonym of a person: lowercase hex of
// HMAC-SHA256(key, upper-cased ID number), first RefLen characters. Every node
// holds the same national person key, so each computes the same ref for the
// same person, and the ID number itself never needs to cross the wire.
// It does not validate id; call Parse first.
func PersonRef(key []byte, id string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(strings.ToUpper(id)))
	return hex.EncodeToString(m.Sum(nil))[:RefLen]
}

// IsRef reports whether s has the form of a person_ref: RefLen lowercase hex
// characters.
func IsRef(s string) bool {
	if len(s) != RefLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// maskKeep is how many characters Mask leaves visible at each end: the first
// four (province and city of issue) and the last four (enough for a caller to
// confirm "your number ending 123X" without revealing the birth date).
const maskKeep = 4

// Mask returns id with every character except the first and last four
// replaced by '*' ("1101**********123X"). The result has as many characters
// (runes) as id. A string of eight characters or fewer is masked entirely, so
// that Mask never reveals a whole short value.
func Mask(id string) string {
	n := utf8.RuneCountInString(id)
	if n <= 2*maskKeep {
		return strings.Repeat("*", n)
	}
	var b strings.Builder
	i := 0
	for _, r := range id {
		if i < maskKeep || i >= n-maskKeep {
			b.WriteRune(r)
		} else {
			b.WriteByte('*')
		}
		i++
	}
	return b.String()
}
