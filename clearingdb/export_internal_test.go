package clearingdb

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"gongji/audit"
)

func testExportKey(t *testing.T) audit.PseudonymKey {
	t.Helper()
	k, err := audit.NewPseudonymKey([]byte("gongji-internal-export-test-key-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestPseudonymizerAnySplit: whatever the split of the COPY stream into
// writes, the output is the same, with the last two fields of every line
// replaced by their keyed pseudonyms and everything before them (quoted
// ids holding commas and quotes) kept byte for byte.
func TestPseudonymizerAnySplit(t *testing.T) {
	t.Parallel()
	key := testExportKey(t)
	in := "\"A,1\"\"x\",202607,,0123456789abcdef0123456789abcdef,s_ref-2\n" +
		"B2,202607,R,ab,cd\n"
	want := "\"A,1\"\"x\",202607,," + audit.Pseudonym(key, "0123456789abcdef0123456789abcdef") + "," +
		audit.Pseudonym(key, "s_ref-2") + "\n" +
		"B2,202607,R," + audit.Pseudonym(key, "ab") + "," + audit.Pseudonym(key, "cd") + "\n"
	for step := 1; step <= len(in); step++ {
		var out bytes.Buffer
		z := newPseudonymizer(&out, key)
		for i := 0; i < len(in); i += step {
			n, err := z.Write([]byte(in[i:min(i+step, len(in))]))
			if err != nil || n != min(step, len(in)-i) {
				t.Fatalf("step %d: Write = %d, %v", step, n, err)
			}
		}
		if err := z.finish(); err != nil {
			t.Fatalf("step %d: finish: %v", step, err)
		}
		if out.String() != want {
			t.Fatalf("step %d:\n got %q\nwant %q", step, out.String(), want)
		}
	}
}

// TestPseudonymizerRefuses: a line without two trailing fields, a stored
// ref that is not one, an unterminated last line, and an endless line.
func TestPseudonymizerRefuses(t *testing.T) {
	t.Parallel()
	key := testExportKey(t)
	for name, in := range map[string]string{
		"one field":      "abc\n",
		"empty ref":      "a,b,\n",
		"ref with space": "a,b c,d\n",
		"quoted ref":     "a,\"b\",d\n",
		"ref too long":   "a,b," + strings.Repeat("c", refLenMax+1) + "\n",
		"no final \\n":   "a,b,c",
		"endless line":   strings.Repeat("x", exportLineMax+1),
	} {
		z := newPseudonymizer(&bytes.Buffer{}, key)
		_, err := z.Write([]byte(in))
		if err == nil {
			err = z.finish()
		}
		if !errors.Is(err, ErrExportFormat) {
			t.Errorf("%s: %v, want ErrExportFormat", name, err)
		}
	}
}

// TestExportSelectScopesAndRefuses: every file has a SELECT, scoped ones
// name the province, and an unknown file is refused.
func TestExportSelectScopesAndRefuses(t *testing.T) {
	t.Parallel()
	for _, f := range audit.CSVFiles {
		nat, err := exportSelect(f, 202607, "")
		if err != nil || strings.Contains(nat, "410000") {
			t.Errorf("%s national: %v %q", f, err, nat)
		}
		sc, err := exportSelect(f, 202607, "410000")
		if err != nil || !strings.Contains(sc, "'410000'") || !strings.Contains(sc, `COLLATE "C"`) {
			t.Errorf("%s scoped: %v %q", f, err, sc)
		}
	}
	if _, err := exportSelect("manifest.json", 202607, ""); err == nil {
		t.Error("manifest.json has no SELECT")
	}
}

// BenchmarkPseudonymizer: the Go cost the COPY path adds per usages line
// (two audit.Pseudonym calls and the splice).
func BenchmarkPseudonymizer(b *testing.B) {
	k, err := audit.NewPseudonymKey([]byte("gongji-internal-export-test-key-0123456789"))
	if err != nil {
		b.Fatal(err)
	}
	line := []byte("U0000000001,202607,USAGE,MEDICAL,110000,110100,310000,310100,123.45," +
		"2026-07-01T08:00:01+08:00,false,,0123456789abcdef0123456789abcdef,fedcba9876543210fedcba9876543210\n")
	z := newPseudonymizer(io.Discard, k)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := z.Write(line); err != nil {
			b.Fatal(err)
		}
	}
}
