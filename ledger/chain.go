package ledger

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strconv"
	"time"
)

// canonicalTag versions the encoding below; a change of encoding must change it.
const canonicalTag = "gongji.ledger.entry.v1"

// timeLayout is At in UTC at microsecond precision: PostgreSQL timestamptz keeps
// microseconds, so an entry read back from a database hashes like the one
// that was written.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// Canonical returns the byte encoding that Hash covers. It is a sequence of
// netstrings ("<decimal length>:<bytes>,"), in this order:
//
//	"gongji.ledger.entry.v1"
//	ID            decimal, e.g. "42"
//	Kind
//	At            UTC, microseconds, "2006-01-02T15:04:05.000000Z"
//	Ref
//	N             decimal number of postings
//	N × (Account, Amount)   Amount with exactly two decimals, e.g. "-12.30"
//
// Postings keep their order. Every field is length-prefixed, so no two
// different entries share an encoding, whatever bytes their strings hold.
// An independent verifier can re-implement this from the description alone.
func Canonical(e Entry) []byte {
	var b bytes.Buffer
	ns := func(s string) {
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
		b.WriteByte(',')
	}
	ns(canonicalTag)
	ns(strconv.FormatInt(e.ID, 10))
	ns(e.Kind)
	ns(e.At.UTC().Truncate(time.Microsecond).Format(timeLayout))
	ns(e.Ref)
	ns(strconv.Itoa(len(e.Postings)))
	for _, p := range e.Postings {
		ns(p.Account)
		ns(p.Amount.String())
	}
	return b.Bytes()
}

// Hash links e to the chain whose last hash is prev: sha256(prev ‖ Canonical(e)).
// The first entry of a journal uses an empty prev (nil).
func Hash(prev []byte, e Entry) []byte {
	h := sha256.New()
	h.Write(prev)
	h.Write(Canonical(e))
	return h.Sum(nil)
}

// Chain returns the hash of every entry, each linked to the one before,
// starting from prev (nil at the start of a journal).
func Chain(prev []byte, entries []Entry) [][]byte {
	out := make([][]byte, len(entries))
	for i, e := range entries {
		prev = Hash(prev, e)
		out[i] = prev
	}
	return out
}

// ChainError names the first entry at which a chain check failed.
type ChainError struct {
	Index int   // index into the entries slice
	ID    int64 // the entry's ID
	Err   error
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("ledger: entry %d (id %d): %v", e.Index, e.ID, e.Err)
}

func (e *ChainError) Unwrap() error { return e.Err }

// VerifyChain checks a journal segment: every entry is valid (balanced, see
// Entry.Validate) and hashes[i] == Hash(hashes[i-1], entries[i]), starting
// from prev. It returns the head (the last hash, or prev for an empty segment)
// or a *ChainError for the first failing entry, wrapping ErrChainBroken or the
// validation error; ErrChainLength when the slices differ in length.
func VerifyChain(prev []byte, entries []Entry, hashes [][]byte) ([]byte, error) {
	if len(entries) != len(hashes) {
		return nil, fmt.Errorf("%w: %d entries, %d hashes", ErrChainLength, len(entries), len(hashes))
	}
	for i, e := range entries {
		if _, err := e.Validate(); err != nil {
			return nil, &ChainError{Index: i, ID: e.ID, Err: err}
		}
		want := Hash(prev, e)
		if !bytes.Equal(want, hashes[i]) {
			return nil, &ChainError{Index: i, ID: e.ID, Err: fmt.Errorf("%w: stored %x, computed %x", ErrChainBroken, hashes[i], want)}
		}
		prev = want
	}
	return prev, nil
}
