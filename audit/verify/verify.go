// Package verify is the independent verifier of an audit export bundle
// (DESIGN §11). It shares no code with the writer (gongji/audit): it parses
// the files itself, recomputes every derived file from usages.csv alone, and
// checks every hash, row count, header, number format, code, time, sort order
// and invariant. Verify returns nil for a valid bundle, or a *Difference that
// names the first difference found: file, line, column, what was expected and
// what was found.
//
// Order of the checks, which decides which difference is "first":
//
//  1. manifest.json: valid JSON with exactly the contract's keys, in canonical
//     form (keys sorted, two-space indent, final "\n"), well-formed values.
//  2. usages.csv, streamed once: header, every line's quoting and fields,
//     strict usage_id order; then its row count and sha256 against the
//     manifest, then the manifest totals against the recomputed ones.
//  3. gross.csv, positions.csv, allocation.csv, instructions.csv, prepay.csv,
//     each streamed and compared line by line with the recomputation; then
//     row count and sha256 against the manifest (when the content is right,
//     a wrong hash is reported against manifest.json).
//  4. Invariants over the found files: nets sum to 0.00, region rows sum to
//     their province's row, the NATIONAL tier balances at the centre and each
//     province's PROVINCE-tier instructions net to its NATIONAL one.
//
// What the bundle cannot prove by itself: generated_at (the close time) and
// journal_head are attested by the clearing service, not derivable from
// usages.csv. The verifier checks their form, that generated_at is after the
// period and after every occurred_at, and journal_head against
// Options.JournalHead when the caller has it from the clearing journal.
// reversal_of is not followed (the reversed usage is usually in an earlier
// period's bundle). Memory stays bounded by the code lists (32 provinces, 387
// regions), whatever the number of usages.
package verify

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/shopspring/decimal"
)

// DefaultWarningThreshold is the prepayment warning threshold the verifier
// assumes when Options.WarningThreshold is zero: 0.70, the project default
// (config.PrepayWarningThreshold, DESIGN §10), used by the example bundle.
// The threshold is not written into the bundle.
const DefaultWarningThreshold = "0.70"

// Options adjust what the verifier assumes.
type Options struct {
	// WarningThreshold is the prepayment warning threshold the settlement
	// used; zero means DefaultWarningThreshold.
	WarningThreshold decimal.Decimal
	// JournalHead, when not empty, is the journal hash the caller read from
	// the clearing journal; manifest journal_head must equal it.
	JournalHead string
}

// Difference is the first way a bundle differs from what DESIGN §11 and its
// own usages.csv require.
type Difference struct {
	File   string // the file the difference is in, e.g. "gross.csv"
	Line   int64  // 1-based line in File; 0 when it is about the whole file
	Column string // CSV column or manifest key; "" for the whole line
	Want   string // what the verifier expected ("" when not a value)
	Got    string // what it found
	Reason string
	Err    error // an underlying error (I/O, JSON syntax), if any
}

func (d *Difference) Error() string {
	var b strings.Builder
	b.WriteString("verify: ")
	b.WriteString(d.File)
	if d.Line > 0 {
		fmt.Fprintf(&b, " line %d", d.Line)
	}
	if d.Column != "" {
		fmt.Fprintf(&b, ", column %s", d.Column)
	}
	b.WriteString(": ")
	b.WriteString(d.Reason)
	if d.Want != "" || d.Got != "" {
		fmt.Fprintf(&b, ": want %q, got %q", d.Want, d.Got)
	}
	if d.Err != nil {
		fmt.Fprintf(&b, ": %v", d.Err)
	}
	return b.String()
}

func (d *Difference) Unwrap() error { return d.Err }

// Verify checks the bundle in directory dir with the default options.
// It returns nil or a *Difference (see the package documentation).
func Verify(dir string) error {
	return VerifyFS(context.Background(), os.DirFS(dir), Options{})
}

// VerifyFS checks the bundle whose files are at the root of fsys. It returns
// nil, a *Difference, or ctx's error when cancelled. Files other than the
// seven of the bundle are ignored.
func VerifyFS(ctx context.Context, fsys fs.FS, opts Options) error {
	if opts.WarningThreshold.IsZero() {
		opts.WarningThreshold = decimal.RequireFromString(DefaultWarningThreshold)
	}
	if !opts.WarningThreshold.IsPositive() || opts.WarningThreshold.GreaterThan(decimal.NewFromInt(1)) {
		return fmt.Errorf("verify: warning threshold must be in (0, 1], got %s", opts.WarningThreshold)
	}
	v := &verifier{ctx: ctx, fsys: fsys, opts: opts}
	steps := []func() error{
		v.readManifest,
		v.checkUsages,
		v.checkGross,
		v.checkPositions,
		v.checkAllocation,
		v.checkInstructions,
		v.checkPrepay,
		v.checkInvariants,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}
