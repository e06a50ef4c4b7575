package audit_test

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/xuri/excelize/v2"

	"gongji/audit"
)

func writeWorkbook(t *testing.T, src audit.Source) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "clearing-202608.xlsx")
	if err := audit.WriteWorkbook(context.Background(), path, src); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWorkbook(t *testing.T) {
	t.Parallel()
	path := writeWorkbook(t, fixture())
	f, err := excelize.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, want := f.GetSheetList(), []string{audit.SheetPositions, audit.SheetRegions, audit.SheetInstructions}; !slices.Equal(got, want) {
		t.Fatalf("sheets %v, want %v", got, want)
	}
	cell := func(sheet, ref string) string {
		t.Helper()
		v, err := f.GetCellValue(sheet, ref)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	raw := func(sheet, ref string) string {
		t.Helper()
		v, err := f.GetCellValue(sheet, ref, excelize.Options{RawCellValue: true})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// positions: header + 32 provinces; 440000 广东省 is row 20.
	rows, err := f.GetRows(audit.SheetPositions)
	if err != nil || len(rows) != 33 {
		t.Fatalf("positions rows %d: %v", len(rows), err)
	}
	for ref, want := range map[string]string{"A20": "440000", "B20": "广东省", "C20": "260.00", "D20": "1,200.00", "E20": "-940.00",
		"A2": "110000", "B2": "北京市", "E2": "235.25"} {
		if got := cell(audit.SheetPositions, ref); got != want {
			t.Errorf("positions %s = %q, want %q", ref, got, want)
		}
	}
	if got := raw(audit.SheetPositions, "E20"); got != "-940" {
		t.Errorf("positions E20 stored as %q, want the number -940", got)
	}
	typ, err := f.GetCellType(audit.SheetPositions, "E20")
	if err != nil || (typ != excelize.CellTypeUnset && typ != excelize.CellTypeNumber) {
		t.Errorf("positions E20 type %v: %v", typ, err)
	}
	styleID, err := f.GetCellStyle(audit.SheetPositions, "E20")
	if err != nil {
		t.Fatal(err)
	}
	style, err := f.GetStyle(styleID)
	if err != nil || style.NumFmt != 4 {
		t.Errorf("positions E20 number format %d (want 4, #,##0.00): %v", style.NumFmt, err)
	}
	// regions: allocation.csv with names.
	for ref, want := range map[string]string{"A5": "440000", "B5": "广东省", "C5": "440300", "D5": "深圳市",
		"E5": "-120.00", "F5": "200.00", "G5": "-320.00", "D7": "四川省本级"} {
		if got := cell(audit.SheetRegions, ref); got != want {
			t.Errorf("regions %s = %q, want %q", ref, got, want)
		}
	}
	// instructions: the centre and both tiers.
	for ref, want := range map[string]string{"A2": "NATIONAL", "B2": "000000", "C2": audit.CentreName, "D2": "110000", "E2": "北京市",
		"F2": "235.25", "A8": "PROVINCE", "B8": "440100", "C8": "广州市", "D8": "440000", "E8": "广东省", "F8": "620.00"} {
		if got := cell(audit.SheetInstructions, ref); got != want {
			t.Errorf("instructions %s = %q, want %q", ref, got, want)
		}
	}
	// Reproducible: the same period gives the same workbook bytes.
	for i := 0; i < 4; i++ { // excelize's own part order varies from run to run
		if !bytes.Equal(readFile(t, path), readFile(t, writeWorkbook(t, fixture()))) {
			t.Fatal("two workbooks of the same period differ")
		}
	}
}

func TestWorkbookRefusesInexactAmount(t *testing.T) {
	t.Parallel()
	src := fixture()
	src.PositionRows[0].Receivable = y("10000000000000.00")
	src.PositionRows[0].Net = y("10000000000000.00")
	path := filepath.Join(t.TempDir(), "w.xlsx")
	if err := audit.WriteWorkbook(context.Background(), path, src); err == nil {
		t.Fatal("an amount beyond 15 significant digits was accepted")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a failed workbook left %s: %v", path, err)
	}
}

// idPattern is an 18-character resident ID number standing alone: 17 digits
// and a digit or X, not inside a longer run of letters and digits (so a hex
// hash that happens to hold 18 digits is not a match).
var idPattern = regexp.MustCompile(`(?:^|[^0-9A-Za-z])([0-9]{17}[0-9Xx])(?:[^0-9A-Za-z]|$)`)

// scanForIDs returns every ID-shaped token in the bundle files and in every
// part of every .xlsx in dir.
func scanForIDs(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b := readFile(t, filepath.Join(dir, e.Name()))
		parts := [][]byte{b}
		if filepath.Ext(e.Name()) == ".xlsx" {
			parts = nil
			zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			for _, zf := range zr.File {
				rc, err := zf.Open()
				if err != nil {
					t.Fatal(err)
				}
				p, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					t.Fatal(err)
				}
				parts = append(parts, p)
			}
		}
		for _, p := range parts {
			for _, m := range idPattern.FindAllSubmatch(p, -1) {
				found = append(found, e.Name()+": "+string(m[1]))
			}
		}
	}
	return found
}

// TestNoIDNumbersInOutput: the people of the fixture are identified by real
// shaped ID numbers; none may appear in the bundle or the workbook.
func TestNoIDNumbersInOutput(t *testing.T) {
	t.Parallel()
	dir := writeFixture(t, fixture())
	if err := audit.WriteWorkbook(context.Background(), filepath.Join(dir, "clearing.xlsx"), fixture()); err != nil {
		t.Fatal(err)
	}
	if found := scanForIDs(t, dir); len(found) > 0 {
		t.Fatalf("ID numbers in the export: %v", found)
	}
	// The scanner itself must be able to fail.
	planted := filepath.Join(t.TempDir(), "planted.csv")
	if err := os.WriteFile(planted, []byte("a,"+fxPeople[0]+",b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if found := scanForIDs(t, filepath.Dir(planted)); len(found) != 1 {
		t.Fatalf("the scanner missed a planted ID number: %v", found)
	}
}
