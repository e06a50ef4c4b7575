package audit_test

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gongji/audit"
	"gongji/audit/verify"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

const goldenDir = "testdata/golden/202608"

var bundleFiles = append(append([]string{}, audit.CSVFiles...), audit.FileManifest)

func writeFixture(t *testing.T, src audit.Source) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bundle-"+fxPeriod)
	if _, err := audit.WriteBundle(context.Background(), dir, src); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRoundTrip writes the hand-computed period, verifies it independently,
// checks the figures to the cent, writes it again byte-identically and
// compares it with the committed golden files (go test -run TestRoundTrip
// ./audit -update rewrites them).
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	dir := writeFixture(t, fixture())
	if err := verify.Verify(dir); err != nil {
		t.Fatalf("verify rejects what WriteBundle wrote: %v", err)
	}

	// Hand-computed figures, to the cent, as they appear in the files.
	want := map[string][]string{
		audit.FileGross: {
			"310000,440000,-120.00", "310000,510000,100.00", "440000,110000,200.00", "440000,510000,1000.00",
			"510000,110000,35.25", "510000,310000,2000.00", "510000,440000,380.00",
		},
		audit.FilePositions: {
			"110000,235.25,0.00,235.25", "310000,2000.00,-20.00,2020.00",
			"440000,260.00,1200.00,-940.00", "510000,1100.00,2415.25,-1315.25", "120000,0.00,0.00,0.00",
		},
		audit.FileAllocation: {
			"110000,110100,235.25,0.00,235.25", "310000,310100,2000.00,-20.00,2020.00",
			"440000,440100,380.00,1000.00,-620.00", "440000,440300,-120.00,200.00,-320.00",
			"510000,510100,1100.00,2035.25,-935.25", "510000,519900,0.00,380.00,-380.00",
		},
		audit.FileInstructions: {
			"NATIONAL,000000,110000,235.25", "NATIONAL,000000,310000,2020.00",
			"NATIONAL,440000,000000,940.00", "NATIONAL,510000,000000,1315.25",
			"PROVINCE,110000,110100,235.25", "PROVINCE,310000,310100,2020.00",
			"PROVINCE,440100,440000,620.00", "PROVINCE,440300,440000,320.00",
			"PROVINCE,510100,510000,935.25", "PROVINCE,519900,510000,380.00",
		},
		audit.FilePrepay: {
			"440000,1200.00,940.00,0.00,260.00,2400.00,true",
			"510000,1000.00,1000.00,315.25,0.00,4830.50,true",
			"110000,5000.00,0.00,0.00,5000.00,1000.00,false",
			"320000,3000.00,0.00,0.00,3000.00,3000.00,false",
		},
		audit.FileUsages: {
			`"U202608-0006 ""PH,7""",202608,USAGE,MEDICAL,310000,310100,510000,510100,100.00,2026-08-08T08:08:08+08:00,false,,`,
			"U202608-0004,202608,USAGE,MEDICAL,110000,110100,310000,310100,600.00,2026-07-30T16:45:12+08:00,true,,",
			"R202608-0002,202608,REVERSAL,MEDICAL,310000,310100,440000,440300,-120.00,2026-08-05T07:30:00+08:00,false,U202607-0099,",
		},
		audit.FileManifest: {`"gross": "3595.25"`, `"usages": 10`, `"setlym": "202608"`, `"generated_at": "2026-09-05T18:00:00+08:00"`},
	}
	rows := map[string]int{audit.FileUsages: 10, audit.FileGross: 7, audit.FilePositions: 32,
		audit.FileAllocation: 6, audit.FileInstructions: 10, audit.FilePrepay: 32}
	for name, lines := range want {
		text := string(readFile(t, filepath.Join(dir, name)))
		for _, l := range lines {
			if name == audit.FileUsages || name == audit.FileManifest {
				if !strings.Contains(text, l) {
					t.Errorf("%s lacks %q", name, l)
				}
			} else if !strings.Contains(text, "\n"+l+"\n") {
				t.Errorf("%s lacks line %q", name, l)
			}
		}
		if n, ok := rows[name]; ok {
			if got := strings.Count(text, "\n") - 1; got != n {
				t.Errorf("%s has %d rows, want %d", name, got, n)
			}
		}
	}
	if text := string(readFile(t, filepath.Join(dir, audit.FileGross))); strings.Contains(text, "110000,310000") {
		t.Errorf("gross.csv lists the pair 110000→310000 that sums to zero")
	}

	// Deterministic: a second write is byte-identical.
	again := writeFixture(t, fixture())
	for _, name := range bundleFiles {
		if !bytes.Equal(readFile(t, filepath.Join(dir, name)), readFile(t, filepath.Join(again, name))) {
			t.Errorf("%s differs between two writes of the same period", name)
		}
	}

	// Golden files.
	for _, name := range bundleFiles {
		got := readFile(t, filepath.Join(dir, name))
		golden := filepath.Join(goldenDir, name)
		if *update {
			if err := os.MkdirAll(goldenDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if w := readFile(t, golden); !bytes.Equal(w, got) {
			t.Errorf("%s differs from %s (run with -update if the change is intended):\n--- want\n%s\n--- got\n%s", name, golden, w, got)
		}
	}
}

// TestGoldenVerifies keeps the committed golden bundle valid on its own.
func TestGoldenVerifies(t *testing.T) {
	t.Parallel()
	if *update {
		t.Skip("golden files are being rewritten")
	}
	if err := verify.Verify(goldenDir); err != nil {
		t.Fatal(err)
	}
}
