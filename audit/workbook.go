package audit

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/shopspring/decimal"
	"github.com/xuri/excelize/v2"

	"gongji/money"
	"gongji/region"
)

// Sheet names of the operators' workbook.
const (
	SheetPositions    = "positions"
	SheetRegions      = "regions"
	SheetInstructions = "instructions"
)

// CentreName labels the national centre (code 000000) in the workbook.
const CentreName = "国家清算中心"

// ErrWorkbookAmount is returned for an amount a spreadsheet cannot show to the
// fen: spreadsheets keep numbers as IEEE doubles with 15 significant digits.
var ErrWorkbookAmount = errors.New("audit: amount too large for an exact spreadsheet number")

// workbookAmountMax: 13 integer digits + 2 decimals = 15 significant digits.
var workbookAmountMax = decimal.New(1, 13)

// amountFormat is the built-in number format "#,##0.00".
const amountFormat = 4

// WriteWorkbook writes an .xlsx for settlement operators at path: sheet
// "positions" (one row per provincial unit), "regions" (allocation.csv) and
// "instructions", with the Chinese name of every province or pooling region
// beside its code and amounts as numbers formatted with two decimals. It reads
// the same Source as WriteBundle and applies the same row rules (not the
// cross-file controls: write the bundle first). The workbook is reproducible:
// its document dates are the close time and its zip entries are in name
// order, so the same period gives the same bytes. The file is written to a
// temporary name beside path and renamed, so path is either the complete
// workbook or untouched; an existing file at path is replaced.
//
// Errors: ErrBadMeta; *RowError wrapping ErrInvalidRow or ErrUnsorted;
// ErrWorkbookAmount for |amount| ≥ 10^13 yuan; the source's errors; I/O errors.
func WriteWorkbook(ctx context.Context, path string, src Source) error {
	meta, err := src.Meta(ctx)
	if err != nil {
		return fmt.Errorf("audit: workbook metadata: %w", err)
	}
	if err := meta.validate(); err != nil {
		return err
	}
	f := excelize.NewFile()
	defer f.Close()
	closed := fmtTime(meta.ClosedAt)
	if err := f.SetDocProps(&excelize.DocProperties{
		Title: "gongji clearing " + meta.Period.String(), Creator: "gongji", Created: closed, Modified: closed,
		Description: "journal_head " + meta.JournalHead,
	}); err != nil {
		return err
	}
	style, err := f.NewStyle(&excelize.Style{NumFmt: amountFormat})
	if err != nil {
		return err
	}
	if err := f.SetSheetName("Sheet1", SheetPositions); err != nil {
		return err
	}
	for _, s := range []string{SheetRegions, SheetInstructions} {
		if _, err := f.NewSheet(s); err != nil {
			return err
		}
	}

	num := func(y money.Yuan) (excelize.Cell, error) {
		d := y.Decimal()
		if d.Abs().GreaterThanOrEqual(workbookAmountMax) {
			return excelize.Cell{}, fmt.Errorf("%w: %s", ErrWorkbookAmount, y)
		}
		v := d.InexactFloat64()
		if !decimal.NewFromFloat(v).Equal(d) { // cannot happen below 10^13; checked anyway
			return excelize.Cell{}, fmt.Errorf("%w: %s", ErrWorkbookAmount, y)
		}
		return excelize.Cell{StyleID: style, Value: v}, nil
	}

	err = writeSheet(ctx, f, SheetPositions, positionCodec, &meta, src.Positions,
		[]any{"省级单位代码 province_code", "省级单位 province", "应收 receivable", "应付 payable", "净额 net"},
		[]float64{16, 22, 16, 16, 16},
		func(r *PositionRow) ([]any, error) {
			return cells(num, []any{r.ProvinceCode, region.ProvinceName(r.ProvinceCode)}, r.Receivable, r.Payable, r.Net)
		})
	if err != nil {
		return err
	}
	err = writeSheet(ctx, f, SheetRegions, allocationCodec, &meta, src.Allocation,
		[]any{"省级单位代码 province_code", "省级单位 province", "统筹地区代码 region_code", "统筹地区 region",
			"应收 receivable", "应付 payable", "净额 net"},
		[]float64{16, 22, 16, 26, 16, 16, 16},
		func(r *AllocationRow) ([]any, error) {
			return cells(num, []any{r.ProvinceCode, region.ProvinceName(r.ProvinceCode), r.RegionCode, region.RegionName(r.RegionCode)},
				r.Receivable, r.Payable, r.Net)
		})
	if err != nil {
		return err
	}
	err = writeSheet(ctx, f, SheetInstructions, instructionCodec, &meta, src.Instructions,
		[]any{"层级 tier", "付款方代码 from_code", "付款方 from", "收款方代码 to_code", "收款方 to", "金额 amount"},
		[]float64{12, 16, 26, 16, 26, 16},
		func(r *InstructionRow) ([]any, error) {
			return cells(num, []any{string(r.Tier), r.FromCode, codeName(r.FromCode), r.ToCode, codeName(r.ToCode)}, r.Amount)
		})
	if err != nil {
		return err
	}
	f.SetActiveSheet(0)

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	var buf bytes.Buffer
	if _, err := f.WriteTo(&buf); err != nil {
		return err
	}
	if err := sortZip(buf.Bytes(), tmp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	ok = true
	return syncDir(filepath.Dir(path))
}

// sortZip copies a zip archive with its entries in name order. excelize
// writes the parts of stream-written sheets in map order, so without this two
// workbooks of the same period would differ in entry order only. Entries are
// copied raw (no recompression); "[Content_Types].xml" sorts first, as OPC
// readers expect.
func sortZip(in []byte, w io.Writer) error {
	zr, err := zip.NewReader(bytes.NewReader(in), int64(len(in)))
	if err != nil {
		return err
	}
	files := slices.Clone(zr.File)
	slices.SortFunc(files, func(a, b *zip.File) int { return strings.Compare(a.Name, b.Name) })
	zw := zip.NewWriter(w)
	for _, f := range files {
		r, err := f.OpenRaw()
		if err != nil {
			return err
		}
		fh := f.FileHeader
		out, err := zw.CreateRaw(&fh)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, r); err != nil {
			return err
		}
	}
	return zw.Close()
}

// codeName is the Chinese name of a province, pooling region or the centre.
func codeName(code string) string {
	if code == region.NationalCentre {
		return CentreName
	}
	if n := region.ProvinceName(code); n != "" {
		return n
	}
	return region.RegionName(code)
}

func cells(num func(money.Yuan) (excelize.Cell, error), text []any, amounts ...money.Yuan) ([]any, error) {
	out := text
	for _, a := range amounts {
		c, err := num(a)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func writeSheet[R any](ctx context.Context, f *excelize.File, sheet string, c *codec[R], m *Meta,
	rows func(context.Context, func(R) error) error, header []any, widths []float64, toCells func(*R) ([]any, error)) error {
	sw, err := f.NewStreamWriter(sheet)
	if err != nil {
		return err
	}
	for i, w := range widths {
		if err := sw.SetColWidth(i+1, i+1, w); err != nil {
			return err
		}
	}
	if err := sw.SetPanes(&excelize.Panes{Freeze: true, YSplit: 1, TopLeftCell: "A2", ActivePane: "bottomLeft"}); err != nil {
		return err
	}
	if err := sw.SetRow("A1", header); err != nil {
		return err
	}
	// The emitter applies the row rules and key order; its text goes nowhere.
	e := newEmitter(ctx, c, m, discard{}, nil)
	line := 2
	err = rows(ctx, func(r R) error {
		if err := e.add(&r, nil); err != nil {
			return err
		}
		vals, err := toCells(&r)
		if err != nil {
			return fmt.Errorf("%s line %d: %w", sheet, line, err)
		}
		cell, err := excelize.CoordinatesToCellName(1, line)
		if err != nil {
			return err
		}
		line++
		return sw.SetRow(cell, vals)
	})
	if err != nil {
		return err
	}
	return sw.Flush()
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }
