package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"gongji/region"
)

const manifestName = "manifest.json"

// manifestLenMax bounds manifest.json; the real one is about 1 KiB.
const manifestLenMax = 64 << 10

// The six CSV files, in the order they are checked.
const (
	usagesName       = "usages.csv"
	grossName        = "gross.csv"
	positionsName    = "positions.csv"
	allocationName   = "allocation.csv"
	instructionsName = "instructions.csv"
	prepayName       = "prepay.csv"
)

var csvNames = []string{usagesName, grossName, positionsName, allocationName, instructionsName, prepayName}

type manifestFile struct {
	Rows   int64  `json:"rows"`
	Sha256 string `json:"sha256"`
}

type manifestTotals struct {
	Gross  string `json:"gross"`
	Usages int64  `json:"usages"`
}

type manifestDoc struct {
	Files       map[string]manifestFile `json:"files"`
	GeneratedAt string                  `json:"generated_at"`
	JournalHead string                  `json:"journal_head"`
	Setlym      string                  `json:"setlym"`
	Totals      manifestTotals          `json:"totals"`
}

// verifier holds the state of one run.
type verifier struct {
	ctx  context.Context
	fsys fs.FS
	opts Options

	man       manifestDoc
	manLine   map[string]int64 // manifest key path -> line number
	period    region.Period
	generated time.Time

	t tally // recomputed from usages.csv

	// found figures of the derived files, for the invariants
	foundNet       map[string]decimal.Decimal
	foundRegionRPN map[string][3]decimal.Decimal // province -> summed region receivable, payable, net
	foundPosRPN    map[string][3]decimal.Decimal
	foundNational  map[string]decimal.Decimal // province -> signed national instruction (+ received)
	foundProvTier  map[string]decimal.Decimal // province -> net paid to its regions (+ paid out)
	centreIn       decimal.Decimal
	centreOut      decimal.Decimal
}

func (v *verifier) manDiff(key, reason, want, got string) *Difference {
	return &Difference{File: manifestName, Line: v.manLine[key], Column: key, Reason: reason, Want: want, Got: got}
}

// quote is a JSON string literal as encoding/json writes it.
func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// canonicalManifest writes the manifest in its canonical form and records the
// line number of every value.
func canonicalManifest(m *manifestDoc) (string, map[string]int64) {
	var lines []string
	at := map[string]int64{}
	add := func(key, s string) {
		lines = append(lines, s)
		if key != "" {
			at[key] = int64(len(lines))
		}
	}
	add("", "{")
	add("files", `  "files": {`)
	names := make([]string, 0, len(m.Files))
	for n := range m.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, n := range names {
		f := m.Files[n]
		add("files."+n, "    "+quote(n)+": {")
		add("files."+n+".rows", `      "rows": `+itoa(f.Rows)+",")
		add("files."+n+".sha256", `      "sha256": `+quote(f.Sha256))
		if i < len(names)-1 {
			add("", "    },")
		} else {
			add("", "    }")
		}
	}
	if len(names) == 0 {
		lines[len(lines)-1] = `  "files": {},`
	} else {
		add("", "  },")
	}
	add("generated_at", `  "generated_at": `+quote(m.GeneratedAt)+",")
	add("journal_head", `  "journal_head": `+quote(m.JournalHead)+",")
	add("setlym", `  "setlym": `+quote(m.Setlym)+",")
	add("totals", `  "totals": {`)
	add("totals.gross", `    "gross": `+quote(m.Totals.Gross)+",")
	add("totals.usages", `    "usages": `+itoa(m.Totals.Usages))
	add("", "  }")
	add("", "}")
	return strings.Join(lines, "\n") + "\n", at
}

func (v *verifier) readManifest() error {
	f, err := v.fsys.Open(manifestName)
	if err != nil {
		return &Difference{File: manifestName, Reason: "cannot open the file", Err: err}
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, manifestLenMax+1))
	if err != nil {
		return &Difference{File: manifestName, Reason: "read error", Err: err}
	}
	if len(raw) > manifestLenMax {
		return &Difference{File: manifestName, Reason: "larger than 64 KiB"}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v.man); err != nil {
		d := &Difference{File: manifestName, Reason: "not a valid manifest", Err: err}
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			d.Line = lineAt(raw, se.Offset)
		case errors.As(err, &te):
			d.Line = lineAt(raw, te.Offset)
			d.Column = te.Field
		}
		return d
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &Difference{File: manifestName, Line: lineAt(raw, dec.InputOffset()), Reason: "data after the JSON object"}
	}
	canon, at := canonicalManifest(&v.man)
	v.manLine = at
	if canon != string(raw) {
		cl, rl := strings.SplitAfter(canon, "\n"), strings.SplitAfter(string(raw), "\n")
		for i := 0; i < len(cl) || i < len(rl); i++ {
			var w, g string
			if i < len(cl) {
				w = cl[i]
			}
			if i < len(rl) {
				g = rl[i]
			}
			if w != g {
				return &Difference{File: manifestName, Line: int64(i + 1), Want: w, Got: g,
					Reason: "not in canonical form (keys sorted, two-space indent, every key present, final newline)"}
			}
		}
	}

	for _, n := range csvNames {
		if _, ok := v.man.Files[n]; !ok {
			return v.manDiff("files", "no entry for "+n, n, "")
		}
	}
	for n, f := range v.man.Files {
		if !isCSVName(n) {
			return v.manDiff("files."+n, "not a file of the bundle", "", n)
		}
		if len(f.Sha256) != 64 || !isLowerHex(f.Sha256) {
			return v.manDiff("files."+n+".sha256", "sha256 must be 64 lowercase hex characters", "", f.Sha256)
		}
		if f.Rows < 0 {
			return v.manDiff("files."+n+".rows", "negative row count", "", itoa(f.Rows))
		}
	}
	if v.period, err = region.ParsePeriod(v.man.Setlym); err != nil {
		return v.manDiff("setlym", "setlym must be YYYYMM", "", v.man.Setlym)
	}
	var reason string
	if v.generated, reason = parseTime(v.man.GeneratedAt); reason != "" {
		return v.manDiff("generated_at", reason, "", v.man.GeneratedAt)
	}
	if end := v.period.End(); v.generated.Before(end) {
		return v.manDiff("generated_at", "the period cannot close before it ends",
			"at or after "+end.Format(time.RFC3339), v.man.GeneratedAt)
	}
	if len(v.man.JournalHead) != 64 || !isLowerHex(v.man.JournalHead) {
		return v.manDiff("journal_head", "journal_head must be 64 lowercase hex characters", "", v.man.JournalHead)
	}
	if v.opts.JournalHead != "" && v.opts.JournalHead != v.man.JournalHead {
		return v.manDiff("journal_head", "differs from the clearing journal's head", v.opts.JournalHead, v.man.JournalHead)
	}
	if _, reason := parseAmount(v.man.Totals.Gross); reason != "" {
		return v.manDiff("totals.gross", reason, "", v.man.Totals.Gross)
	}
	return nil
}

func isCSVName(n string) bool {
	for _, c := range csvNames {
		if c == n {
			return true
		}
	}
	return false
}

func lineAt(b []byte, off int64) int64 {
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	return int64(bytes.Count(b[:off], []byte("\n"))) + 1
}

// checkFileSum compares a CSV file's row count and sha256 with its manifest
// entry. contentVerified says the content was proved right by recomputation:
// then a mismatch is the manifest's fault.
func (v *verifier) checkFileSum(name, sha string, rows int64, contentVerified bool) error {
	e := v.man.Files[name]
	if e.Rows != rows {
		if contentVerified {
			return v.manDiff("files."+name+".rows", "row count of "+name+" is wrong", itoa(rows), itoa(e.Rows))
		}
		return &Difference{File: name, Column: "rows", Reason: "row count differs from manifest.json line " +
			itoa(v.manLine["files."+name+".rows"]), Want: itoa(e.Rows), Got: itoa(rows)}
	}
	if e.Sha256 != sha {
		if contentVerified {
			return v.manDiff("files."+name+".sha256", "sha256 of "+name+" is wrong (the file's content is right)", sha, e.Sha256)
		}
		return &Difference{File: name, Column: "sha256", Reason: "file's sha256 differs from manifest.json line " +
			itoa(v.manLine["files."+name+".sha256"]), Want: e.Sha256, Got: sha}
	}
	return nil
}
