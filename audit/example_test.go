package audit_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/shopspring/decimal"

	"gongji/audit"
)

const exampleDir = "testdata/example-bundle"

var threshold070 = decimal.RequireFromString("0.70")

// TestExampleBundleRoundTrip loads the example bundle of DESIGN §11 into a
// MemSource and writes it again: every file, manifest.json included, must come
// out byte-identical.
func TestExampleBundleRoundTrip(t *testing.T) {
	t.Parallel()
	src, err := audit.ReadBundle(exampleDir, threshold070)
	if err != nil {
		t.Fatal(err)
	}
	if len(src.UsageRows) != 12 || len(src.PositionRows) != 32 || len(src.PrepayRows) != 32 {
		t.Fatalf("loaded %d usages, %d positions, %d prepay rows", len(src.UsageRows), len(src.PositionRows), len(src.PrepayRows))
	}
	out := filepath.Join(t.TempDir(), "bundle")
	if _, err := audit.WriteBundle(context.Background(), out, src); err != nil {
		t.Fatal(err)
	}
	for _, name := range append(append([]string{}, audit.CSVFiles...), audit.FileManifest) {
		want, err := os.ReadFile(filepath.Join(exampleDir, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(want, got) {
			t.Errorf("%s differs from the example bundle:\n--- want\n%s\n--- got\n%s", name, want, got)
		}
	}
}

// TestExampleCopyMatchesShared keeps testdata/example-bundle identical to the
// contract's example in shared/data (skipped where shared/ is not beside the
// repository).
func TestExampleCopyMatchesShared(t *testing.T) {
	t.Parallel()
	shared := filepath.Join("..", "..", "shared", "data", "example-bundle")
	if _, err := os.Stat(shared); err != nil {
		t.Skipf("no shared example bundle: %v", err)
	}
	for _, name := range append(append([]string{}, audit.CSVFiles...), audit.FileManifest) {
		a, err := os.ReadFile(filepath.Join(shared, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(exampleDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: testdata copy differs from %s", name, shared)
		}
	}
}
