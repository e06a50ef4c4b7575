package console

import (
	"archive/zip"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"go.uber.org/zap"

	"gongji/audit"
	"gongji/clearingdb"
	"gongji/region"
)

// Download file names under /period/{setlym}/download/.
const (
	downloadBundle   = "bundle.zip"
	downloadWorkbook = "workbook.xlsx"
)

// download streams the export of a settled period, built by the code path
// of `clearing export` and GetProvinceExport (clearingdb.Store.ExportSource,
// then WriteBundle / audit.WriteWorkbook): the bundle as a zip of the seven
// files in a <setlym>/ folder, or the operators' workbook. An operator gets
// the national export; a province its own province-scoped one (manifest.json
// names the province), never another's. The files are staged in TempDir,
// checked by the writer as they are written, streamed, and removed.
//
// Statuses: 404 (no such period or file), 409 (not settled yet), 503
// (the database did not answer in time), 500 (logged).
func (s *Server) download(w http.ResponseWriter, r *http.Request) {
	p, err := parsePeriodArg(r.PathValue("ym"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	file := r.PathValue("file")
	if file != downloadBundle && file != downloadWorkbook {
		s.fail(w, r, httpErr(http.StatusNotFound, "no such download: bundle.zip or workbook.xlsx", nil))
		return
	}
	v := viewerOf(r)
	ctx := r.Context()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		s.fail(w, r, ctx.Err())
		return
	}
	tmp, err := os.MkdirTemp(s.o.TempDir, "gongji-console-")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	name := "gongji-" + p.String()
	if v.filter() != "" {
		name += "-" + v.filter()
	}
	src, err := s.o.Store.ExportSource(ctx, p, clearingdb.ExportOptions{Key: s.o.ExportKey, WarningThreshold: s.o.WarningThreshold, Province: v.filter()})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// The bundle is written first in both cases: WriteBundle checks every
	// cross-file control (the workbook writer checks rows only), so nothing
	// is sent that does not verify, as `clearing export --workbook` does.
	dir := filepath.Join(tmp, p.String())
	man, err := src.WriteBundle(ctx, dir)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if file == downloadWorkbook {
		path := filepath.Join(tmp, name+".xlsx")
		if err := audit.WriteWorkbook(ctx, path, src); err != nil {
			s.fail(w, r, err)
			return
		}
		s.o.Log.Info("console download", zap.String("caller", v.String()), zap.String("period", p.String()), zap.String("file", file))
		s.sendFile(w, r, path, name+".xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
		return
	}
	zipPath := filepath.Join(tmp, name+".zip")
	if err := zipBundle(zipPath, dir, p, man); err != nil {
		s.fail(w, r, err)
		return
	}
	s.o.Log.Info("console download", zap.String("caller", v.String()), zap.String("period", p.String()),
		zap.String("file", file), zap.Int64("usages", man.Totals.Usages))
	s.sendFile(w, r, zipPath, name+".zip", "application/zip")
}

// zipBundle writes the bundle folder dir into a zip at path: the files in
// the order of a bundle (audit.CSVFiles, then manifest.json) under
// <setlym>/, each stamped with the manifest's generated_at (the period's
// close), so that two downloads of a period are byte-identical.
func zipBundle(path, dir string, p region.Period, man clearingdb.ExportManifest) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(f)
	for _, n := range append(append([]string{}, audit.CSVFiles...), audit.FileManifest) {
		if err := addZipFile(zw, filepath.Join(dir, n), p.String()+"/"+n, man); err != nil {
			_ = f.Close()
			return err
		}
	}
	if err := zw.Close(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func addZipFile(zw *zip.Writer, src, name string, man clearingdb.ExportManifest) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate, Modified: man.GeneratedAt})
	if err != nil {
		return err
	}
	_, err = io.Copy(w, in)
	return err
}

// sendFile streams a staged file as an attachment.
func (s *Server) sendFile(w http.ResponseWriter, r *http.Request, path, name, contentType string) {
	f, err := os.Open(path)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	h.Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, f); err != nil && !isClientGone(r.Context()) {
		s.o.Log.Warn("console download cut short", zap.String("file", name), zap.Error(err))
	}
}

func isClientGone(ctx context.Context) bool { return ctx.Err() != nil }
