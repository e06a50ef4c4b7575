package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/shopspring/decimal"

	"gongji/audit/verify"
)

const goldenDir = "../testdata/golden/202608"

var csvFiles = []string{"usages.csv", "gross.csv", "positions.csv", "allocation.csv", "instructions.csv", "prepay.csv"}

// load reads a bundle into memory.
func load(t *testing.T, dir string) fstest.MapFS {
	t.Helper()
	fsys := fstest.MapFS{}
	for _, n := range append(append([]string{}, csvFiles...), "manifest.json") {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		fsys[n] = &fstest.MapFile{Data: b}
	}
	return fsys
}

func clone(fsys fstest.MapFS) fstest.MapFS {
	out := fstest.MapFS{}
	for n, f := range fsys {
		out[n] = &fstest.MapFile{Data: append([]byte(nil), f.Data...)}
	}
	return out
}

func run(fsys fstest.MapFS) error {
	return verify.VerifyFS(context.Background(), fsys, verify.Options{})
}

func asDiff(t *testing.T, err error) *verify.Difference {
	t.Helper()
	if err == nil {
		t.Fatal("Verify accepted a tampered bundle")
	}
	var d *verify.Difference
	if !errors.As(err, &d) {
		t.Fatalf("error is %T, want *verify.Difference: %v", err, err)
	}
	return d
}

// lineOf is the 1-based line of byte offset i.
func lineOf(b []byte, i int) int64 { return int64(bytes.Count(b[:i], []byte("\n"))) + 1 }

// manifestUnprovable marks the bytes of generated_at and journal_head values:
// they are attested by the clearing service, not derivable from the bundle
// (see the package documentation); they are tested separately below.
func manifestUnprovable(b []byte) []bool {
	skip := make([]bool, len(b))
	for _, key := range []string{`"generated_at": "`, `"journal_head": "`} {
		i := bytes.Index(b, []byte(key))
		if i < 0 {
			continue
		}
		start := i + len(key)
		end := start + bytes.IndexByte(b[start:], '"')
		for j := start; j < end; j++ {
			skip[j] = true
		}
	}
	return skip
}

// TestEverySingleByteChange changes every byte of every file of two bundles,
// one at a time, and expects Verify to refuse each copy, naming the file — and
// for the derived CSV files, the very line that was changed.
func TestEverySingleByteChange(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{exampleDir, goldenDir} {
		base := load(t, dir)
		if err := run(base); err != nil {
			t.Fatalf("%s: the untouched bundle fails: %v", dir, err)
		}
		for name, f := range base {
			skip := make([]bool, len(f.Data))
			if name == "manifest.json" {
				skip = manifestUnprovable(f.Data)
			}
			for i := range f.Data {
				if skip[i] {
					continue
				}
				for _, flip := range []byte{0x01} {
					fsys := clone(base)
					fsys[name].Data[i] ^= flip
					err := run(fsys)
					where := fmt.Sprintf("%s: %s byte %d (%q→%q)", dir, name, i, f.Data[i], fsys[name].Data[i])
					if err == nil {
						t.Fatalf("%s: accepted", where)
					}
					d := asDiff(t, err)
					if !strings.Contains(err.Error(), name) {
						t.Fatalf("%s: error does not name the file: %v", where, err)
					}
					line := lineOf(f.Data, i)
					switch name {
					case "manifest.json":
					case "usages.csv":
						// A format error on the line (or the next, for a key
						// that now sorts after it), or the sha256 check.
						if d.File != name || !(d.Line == line || d.Line == line+1 || d.Line == 0) {
							t.Fatalf("%s (line %d): %v", where, line, err)
						}
					case "prepay.csv":
						// deposit_before and required_next are inputs: a change
						// the derived columns do not reflect is caught by sha256.
						if d.File != name || (d.Line != line && !(d.Line == 0 && d.Column == "sha256")) {
							t.Fatalf("%s (line %d): got %s line %d: %v", where, line, d.File, d.Line, err)
						}
					default:
						if d.File != name || d.Line != line {
							t.Fatalf("%s (line %d): got %s line %d: %v", where, line, d.File, d.Line, err)
						}
					}
				}
			}
		}
	}
}

// lines splits a CSV file into its lines (each without "\n").
func lines(b []byte) []string { return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") }

func joinLines(l []string) []byte { return []byte(strings.Join(l, "\n") + "\n") }

// rehash updates the manifest entry of name as a forger would, so that only
// the recomputation from usages.csv can catch the change.
func rehash(fsys fstest.MapFS, name string) {
	m := fsys["manifest.json"].Data
	sum := sha256.Sum256(fsys[name].Data)
	rows := strings.Count(string(fsys[name].Data), "\n") - 1
	re := regexp.MustCompile(`("` + regexp.QuoteMeta(name) + `": \{\n\s+"rows": )\d+(,\n\s+"sha256": ")[0-9a-f]+`)
	fsys["manifest.json"].Data = re.ReplaceAll(m, []byte(fmt.Sprintf("${1}%d${2}%s", rows, hex.EncodeToString(sum[:]))))
}

// TestTampering applies the edits an auditor worries about to every file and
// expects the named file (and line) in the error, with and without a forged
// manifest.
func TestTampering(t *testing.T) {
	t.Parallel()
	base := load(t, exampleDir)
	type edit struct {
		name string
		do   func(l []string) []string // l[0] is the header
		line int64                     // expected line for derived files; 0 = any
	}
	changeAmount := func(col int) func(l []string) []string {
		return func(l []string) []string {
			f := strings.Split(l[3], ",")
			d := decimal.RequireFromString(f[col]).Add(decimal.RequireFromString("0.01"))
			f[col] = d.StringFixed(2)
			l[3] = strings.Join(f, ",")
			return l
		}
	}
	edits := []edit{
		{"drop row", func(l []string) []string { return append(l[:2:2], l[3:]...) }, 3},
		{"drop last row", func(l []string) []string { return l[:len(l)-1] }, 0},
		{"reorder two rows", func(l []string) []string { l[2], l[3] = l[3], l[2]; return l }, 3},
		{"duplicate a row", func(l []string) []string {
			return append(l[:3:3], append([]string{l[2]}, l[3:]...)...)
		}, 4},
		{"add a row at the end", func(l []string) []string { return append(l, l[len(l)-1]) }, 0},
		{"drop the header", func(l []string) []string { return l[1:] }, 1},
		{"CRLF line ends", func(l []string) []string {
			for i := range l {
				l[i] += "\r"
			}
			return l
		}, 1},
		{"unneeded quotes", func(l []string) []string {
			f := strings.Split(l[2], ",")
			f[0] = `"` + f[0] + `"`
			l[2] = strings.Join(f, ",")
			return l
		}, 3},
	}
	amountCol := map[string]int{"usages.csv": 8, "gross.csv": 2, "positions.csv": 3, "allocation.csv": 2,
		"instructions.csv": 3, "prepay.csv": 2}
	for _, name := range csvFiles {
		all := append(append([]edit{}, edits...), edit{"change an amount", changeAmount(amountCol[name]), 4})
		for _, e := range all {
			for _, forge := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/forged=%v", name, e.name, forge), func(t *testing.T) {
					t.Parallel()
					fsys := clone(base)
					fsys[name].Data = joinLines(e.do(lines(fsys[name].Data)))
					if forge {
						rehash(fsys, name)
					}
					err := run(fsys)
					d := asDiff(t, err)
					if name == "usages.csv" && forge {
						// A forged manifest makes usages.csv consistent with
						// itself; the recomputation then finds the derived file
						// that no longer agrees (or a broken usages line).
						t.Logf("%v", err)
						return
					}
					if d.File != name {
						t.Fatalf("error names %s, want %s: %v", d.File, name, err)
					}
					if e.line != 0 && name != "usages.csv" && d.Line != e.line {
						t.Fatalf("error names line %d, want %d: %v", d.Line, e.line, err)
					}
				})
			}
		}
	}
}

// TestForgedUsagesAmountCaughtByRecomputation: an amount in usages.csv changed
// together with its manifest hash and the manifest totals is caught by
// recomputing gross.csv.
func TestForgedUsagesAmountCaughtByRecomputation(t *testing.T) {
	t.Parallel()
	fsys := clone(load(t, exampleDir))
	l := lines(fsys["usages.csv"].Data)
	l[3] = strings.Replace(l[3], ",70.03,", ",70.13,", 1) // U202607-000000: 410000 → 310000
	fsys["usages.csv"].Data = joinLines(l)
	rehash(fsys, "usages.csv")
	fsys["manifest.json"].Data = bytes.Replace(fsys["manifest.json"].Data, []byte(`"gross": "14019.27"`), []byte(`"gross": "14019.37"`), 1)
	d := asDiff(t, run(fsys))
	if d.File != "gross.csv" || d.Line != 7 || d.Column != "amount" || d.Want != "54.42" || d.Got != "54.32" {
		t.Fatalf("got %#v", d)
	}
}

func TestManifestEdits(t *testing.T) {
	t.Parallel()
	base := load(t, exampleDir)
	cases := []struct {
		name, from, to string
		file           string
		line           int64
	}{
		{"totals.gross", `"gross": "14019.27"`, `"gross": "14019.28"`, "manifest.json", 32},
		{"totals.usages", `"usages": 12`, `"usages": 13`, "manifest.json", 33},
		{"setlym", `"setlym": "202607"`, `"setlym": "202608"`, "usages.csv", 2},
		{"a derived file's sha256", `"sha256": "6528825f`, `"sha256": "6528825e`, "manifest.json", 9},
		{"a derived file's rows", `"rows": 10,`, `"rows": 11,`, "manifest.json", 8},
		{"usages.csv sha256", `"sha256": "6d6cca71`, `"sha256": "6d6cca70`, "usages.csv", 0},
		{"unknown key", `"setlym"`, `"setlym2"`, "manifest.json", 0},
		{"missing file entry", "    \"gross.csv\": {\n      \"rows\": 10,\n      \"sha256\": \"6528825f5b8835fd0322cb6c2b153e38efa586687cd023a81bb523a59d1da1b1\"\n    },\n", "", "manifest.json", 0},
		{"tab indent", "\n  \"files\"", "\n\t\"files\"", "manifest.json", 2},
		{"no final newline", "}\n}\n", "}\n}", "manifest.json", 0},
		{"generated_at before the period ends", `"generated_at": "2026-11-29T16:53:31+08:00"`, `"generated_at": "2026-07-29T16:53:31+08:00"`, "manifest.json", 28},
		{"generated_at in UTC", `"generated_at": "2026-11-29T16:53:31+08:00"`, `"generated_at": "2026-11-29T08:53:31Z"`, "manifest.json", 28},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fsys := clone(base)
			if !bytes.Contains(fsys["manifest.json"].Data, []byte(c.from)) {
				t.Fatalf("fixture lacks %q", c.from)
			}
			fsys["manifest.json"].Data = bytes.Replace(fsys["manifest.json"].Data, []byte(c.from), []byte(c.to), 1)
			err := run(fsys)
			d := asDiff(t, err)
			if d.File != c.file || (c.line != 0 && d.Line != c.line) {
				t.Fatalf("got %s line %d, want %s line %d: %v", d.File, d.Line, c.file, c.line, err)
			}
			if !strings.Contains(err.Error(), "manifest.json") && c.file != "usages.csv" {
				t.Fatalf("error does not name manifest.json: %v", err)
			}
		})
	}
}

// TestJournalHeadOption: journal_head is checked against the clearing
// journal's head when the caller supplies it.
func TestJournalHeadOption(t *testing.T) {
	t.Parallel()
	base := load(t, exampleDir)
	head := "336976dd268a5b46a5c391ca5e4a7585a8ffe71d89a94b0a8caf7cbae3a5ddd6"
	if err := verify.VerifyFS(context.Background(), base, verify.Options{JournalHead: head}); err != nil {
		t.Fatal(err)
	}
	fsys := clone(base)
	fsys["manifest.json"].Data = bytes.Replace(fsys["manifest.json"].Data, []byte(head[:8]), []byte("436976dd"), 1)
	d := asDiff(t, verify.VerifyFS(context.Background(), fsys, verify.Options{JournalHead: head}))
	if d.File != "manifest.json" || d.Column != "journal_head" || d.Line != 29 {
		t.Fatalf("got %#v", d)
	}
}

// TestWarningThreshold: the threshold decides the warning column; the example
// was made with 0.70, so 0.01 makes 150000's draw of 2153.00 from 43324.28 a
// warning the file does not show.
func TestWarningThreshold(t *testing.T) {
	t.Parallel()
	base := load(t, exampleDir)
	err := verify.VerifyFS(context.Background(), base, verify.Options{WarningThreshold: decimal.RequireFromString("0.01")})
	d := asDiff(t, err)
	if d.File != "prepay.csv" || d.Line != 6 || d.Column != "warning" || d.Want != "true" || d.Got != "false" {
		t.Fatalf("got %#v", d)
	}
	if err := verify.VerifyFS(context.Background(), base, verify.Options{WarningThreshold: decimal.RequireFromString("1.5")}); err == nil {
		t.Fatal("a threshold above 1 was accepted")
	}
}

// TestMissingFile names the file that is not there.
func TestMissingFile(t *testing.T) {
	t.Parallel()
	for _, name := range append(append([]string{}, csvFiles...), "manifest.json") {
		fsys := clone(load(t, exampleDir))
		delete(fsys, name)
		d := asDiff(t, run(fsys))
		if d.File != name || !errors.Is(d, os.ErrNotExist) {
			t.Errorf("%s: got %v", name, d)
		}
	}
}

// TestDifferenceMessage pins the message format auditors read.
func TestDifferenceMessage(t *testing.T) {
	t.Parallel()
	fsys := clone(load(t, exampleDir))
	fsys["positions.csv"].Data = bytes.Replace(fsys["positions.csv"].Data, []byte("130000,0.00,4257.56,-4257.56"), []byte("130000,0.00,4257.56,-4257.57"), 1)
	err := run(fsys)
	want := `verify: positions.csv line 4, column net: differs from the value recomputed from usages.csv: want "-4257.56", got "-4257.57"`
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
}

func TestVerifyDirectory(t *testing.T) {
	t.Parallel()
	if err := verify.Verify(goldenDir); err != nil {
		t.Fatal(err)
	}
	if err := verify.Verify(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Fatal("an absent directory verified")
	}
}
