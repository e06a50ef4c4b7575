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

// ErrContainsID is returned (wrapped) by callers that refuse a value which
// must never carry personal data — an idempotency key, an id chosen by a
// caller — because it contains an identity number (ContainsID). The
// refusal must not quote the value.
var ErrContainsID = errors.New("pii: must not contain a resident ID number (an 18-character run of digits that passes the GB 11643 check); keys are stored and exported as they are: break long digit runs with a non-digit")

// idHorizon is the "today" of ContainsID: the last day a birth date may
// have (the years 2000-2999 bound every business time in gongji).
var idHorizon = time.Date(2999, 12, 31, 0, 0, 0, 0, shanghai)

// ContainsID reports whether some 18-byte window of s is an identity number
// by Parse's rules (check character, province prefix, a calendar birth date)
// with a birth date anywhere from 1900 to the end of 2999: every number
// Validate accepts, and those whose birth date is still to come. Keys and
// other opaque identifiers are refused at the edge when it is true: there is
// never a reason to put an ID number into one, and a key is stored, logged
// and exported as it is.
//
// It does not depend on the date, unlike Validate: a key accepted once is
// accepted on every retry, and an id derived to contain no number
// (IDFreeHex) stays valid. The full check keeps hex digests, person_refs and
// long numeric keys from matching by chance (a check character alone matches
// one window of digits in eleven).
func ContainsID(s string) bool {
	return nextID(s, 0, idHorizon) >= 0
}

// IDFreeHex returns the first n lowercase hex characters of digest (a
// SHA-256) — or, when those contain an identity number (ContainsID), of
// SHA-256(digest), and so on: the first that contains none. For ids derived
// from a hash (relationship ids, adjustment ids), which are keys like any
// other: 24 hex characters hold a valid number about once in 10^6. The
// result depends on digest alone, so every node derives the same id.
// It panics unless 1 <= n <= 2*len(digest) and n <= 64: a programming error.
func IDFreeHex(digest []byte, n int) string {
	if n < 1 || n > 2*len(digest) || n > 2*sha256.Size {
		panic(fmt.Sprintf("pii: IDFreeHex of %d characters from %d bytes", n, len(digest)))
	}
	for {
		if h := hex.EncodeToString(digest)[:n]; !ContainsID(h) {
			return h
		}
		d := sha256.Sum256(digest)
		digest = d[:]
	}
}

// MaskAll returns s with every 18-byte window that Validate accepts replaced
// by its Mask form ("1101**********123X"); everything else is left as it is.
// It is for text that must be kept although a caller may have typed an ID
// number into it — a dispute reason, a report record refused at ingest, an
// audit ref — where refusing would lose what the user said.
//
// Properties (FuzzMaskAll): the result has exactly as many bytes as s (an
// identity number is ASCII, and so is its mask), no 18-byte window of the
// result passes Validate, a string without a valid ID number comes back
// unchanged, and MaskAll is idempotent. Overlapping numbers are all masked:
// the windows are found in s itself, and masking only turns digits into
// '*', so a window of the result made only of digits and X was already a
// window of s. MaskAll judges birth dates against the current date; MaskAllAt
// takes the date.
func MaskAll(s string) string { return MaskAllAt(s, time.Now()) }

// MaskAllAt is MaskAll with birth dates judged against today (as in Parse).
func MaskAllAt(s string, today time.Time) string {
	i := nextID(s, 0, today)
	if i < 0 {
		return s
	}
	b := []byte(s)
	for ; i >= 0; i = nextID(s, i+1, today) {
		// Only the middle is overwritten: the first and last four
		// characters of the window stay as they were (as in Mask), so an
		// overlapping window masked earlier keeps its stars.
		for j := i + maskKeep; j < i+IDLen-maskKeep; j++ {
			b[j] = '*'
		}
	}
	return string(b)
}

// nextID returns the start of the first 18-byte window of s at or after
// from that Parse accepts for today, or -1.
func nextID(s string, from int, today time.Time) int {
	for i := from; i+IDLen <= len(s); i++ {
		if !idShaped(s[i : i+IDLen]) {
			continue // cheap pre-check before the full validation
		}
		if _, err := Parse(s[i:i+IDLen], today); err == nil {
			return i
		}
	}
	return -1
}

// idShaped: 17 ASCII digits and a digit, X or x.
func idShaped(w string) bool {
	for k := 0; k < IDLen-1; k++ {
		if w[k] < '0' || w[k] > '9' {
			return false
		}
	}
	c := w[IDLen-1]
	return c >= '0' && c <= '9' || c == 'X' || c == 'x'
}
