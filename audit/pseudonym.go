package audit

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// PseudonymKeyLenMin is the shortest export key accepted: 32 bytes, the
// HMAC-SHA256 block-size guidance for full-strength keys.
const PseudonymKeyLenMin = 32

// ErrWeakKey is returned for an export key shorter than PseudonymKeyLenMin.
var ErrWeakKey = errors.New("audit: pseudonym key must be at least 32 bytes")

// PseudonymKey is the export key that turns a person_ref into the
// sharer_ref/beneficiary_ref of a bundle (docs/architecture.md): a second key,
// so that an export cannot be joined to node data without it. The key never
// appears in output: String, GoString and Format print a placeholder, and
// MarshalText refuses.
type PseudonymKey struct{ b []byte }

// NewPseudonymKey copies secret into a key. Errors: ErrWeakKey.
func NewPseudonymKey(secret []byte) (PseudonymKey, error) {
	if len(secret) < PseudonymKeyLenMin {
		return PseudonymKey{}, fmt.Errorf("%w (got %d)", ErrWeakKey, len(secret))
	}
	return PseudonymKey{b: append([]byte(nil), secret...)}, nil
}

// ParsePseudonymKey reads a key written as hex (surrounding white space, such
// as a key file's final newline, is ignored). Errors: ErrWeakKey, hex errors.
func ParsePseudonymKey(hexText string) (PseudonymKey, error) {
	b, err := hex.DecodeString(strings.TrimSpace(hexText))
	if err != nil {
		return PseudonymKey{}, fmt.Errorf("audit: pseudonym key is not hex: %w", err)
	}
	return NewPseudonymKey(b)
}

// GeneratePseudonymKey returns a fresh random 32-byte key and its hex text,
// for the demo and for provisioning.
func GeneratePseudonymKey() (PseudonymKey, string, error) {
	b := make([]byte, PseudonymKeyLenMin)
	if _, err := rand.Read(b); err != nil {
		return PseudonymKey{}, "", err
	}
	k, err := NewPseudonymKey(b)
	return k, hex.EncodeToString(b), err
}

// IsZero reports whether k was never set.
func (k PseudonymKey) IsZero() bool { return len(k.b) == 0 }

func (PseudonymKey) String() string               { return "PseudonymKey(redacted)" }
func (PseudonymKey) GoString() string             { return "audit.PseudonymKey{redacted}" }
func (k PseudonymKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// MarshalText refuses, so a key put into JSON or a log by mistake fails
// loudly instead of leaking.
func (PseudonymKey) MarshalText() ([]byte, error) {
	return nil, errors.New("audit: a pseudonym key is never serialised")
}

// Pseudonym returns the keyed pseudonym of a person in an export: the 64
// lowercase hex characters of HMAC-SHA256(key, personRef), as in the example
// bundle of DESIGN §11. The same person gets
// the same pseudonym in every bundle made with the same key. It panics on a
// zero key, which is a wiring bug (an unkeyed hash of a person_ref could be
// joined to node data by anyone). For many values, use a Pseudonymizer.
func Pseudonym(key PseudonymKey, personRef string) string {
	return string(NewPseudonymizer(key).Append(nil, []byte(personRef)))
}

// Pseudonymizer computes Pseudonym for many person_refs with one keyed HMAC
// that is reset between values, so that the key schedule (two SHA-256 blocks
// and the allocations of hmac.New) is paid once, not per value. Not safe for
// concurrent use: give each goroutine its own.
type Pseudonymizer struct {
	m   hash.Hash
	sum [sha256.Size]byte
}

// NewPseudonymizer returns a Pseudonymizer for key. It panics on a zero key,
// as Pseudonym does.
func NewPseudonymizer(key PseudonymKey) *Pseudonymizer {
	if key.IsZero() {
		panic("audit: Pseudonym called with a zero PseudonymKey")
	}
	return &Pseudonymizer{m: hmac.New(sha256.New, key.b)}
}

// Append appends Pseudonym(key, personRef) — 64 lowercase hex characters —
// to dst and returns the extended slice.
func (z *Pseudonymizer) Append(dst, personRef []byte) []byte {
	z.m.Reset()
	z.m.Write(personRef)
	s := z.m.Sum(z.sum[:0])
	return hex.AppendEncode(dst, s)
}
