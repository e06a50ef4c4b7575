package verify

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"testing/fstest"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/ and run with every go test.
// Errors are fine in all of these; a panic is not.

// FuzzSplitRecord: any line either fails to split or splits into fields that
// minimal quoting writes back into a line that splits into the same fields.
func FuzzSplitRecord(f *testing.F) {
	f.Add([]byte(`a,b,c`))
	f.Add([]byte(`"U1 ""x,y""",202607,,`))
	f.Fuzz(func(t *testing.T, line []byte) {
		if len(line) > 1<<16 {
			return
		}
		fields, err := splitRecord(line, nil)
		if err != nil {
			return
		}
		again, err := splitRecord([]byte(joinRecord(fields)), nil)
		if err != nil || !slices.Equal(fields, again) {
			t.Fatalf("split(join(%q)) = %q, %v", fields, again, err)
		}
	})
}

// FuzzParseAmount: an accepted amount is exactly its own canonical text and
// fits NUMERIC(18,2).
func FuzzParseAmount(f *testing.F) {
	for _, s := range []string{"0.00", "-12.30", "9999999999999999.99", "1.5", "-0.00", "01.00", "1e3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, reason := parseAmount(s)
		if reason != "" {
			return
		}
		if got := fmtAmount(d); got != s {
			t.Fatalf("parseAmount accepted %q, which formats as %q", s, got)
		}
		if len(s) > 20 {
			t.Fatalf("accepted %d characters", len(s))
		}
	})
}

// FuzzParseTime: an accepted time formats back to the same text in +08:00.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"2026-07-31T17:51:40+08:00", "2026-02-30T00:00:00+08:00", "2026-07-31T17:51:40Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tm, reason := parseTime(s)
		if reason != "" {
			return
		}
		if got := tm.Format("2006-01-02T15:04:05-07:00"); got != s {
			t.Fatalf("parseTime accepted %q, which formats as %q", s, got)
		}
	})
}

// FuzzVerifyUsages runs the whole verifier on the example bundle with a
// fuzzed usages.csv and a fuzzed gross.csv.
func FuzzVerifyUsages(f *testing.F) {
	dir := filepath.Join("..", "testdata", "example-bundle")
	base := fstest.MapFS{}
	for _, n := range append(append([]string{}, csvNames...), manifestName) {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			f.Fatal(err)
		}
		base[n] = &fstest.MapFile{Data: b}
	}
	f.Add(base[usagesName].Data, base[grossName].Data)
	f.Fuzz(func(t *testing.T, usages, gross []byte) {
		if len(usages) > 1<<20 || len(gross) > 1<<20 {
			return
		}
		fsys := fstest.MapFS{}
		for n, file := range base {
			fsys[n] = file
		}
		fsys[usagesName] = &fstest.MapFile{Data: usages}
		fsys[grossName] = &fstest.MapFile{Data: gross}
		err := VerifyFS(context.Background(), fsys, Options{})
		if err == nil && (string(usages) != string(base[usagesName].Data) || string(gross) != string(base[grossName].Data)) {
			t.Fatalf("a changed bundle verified")
		}
	})
}
