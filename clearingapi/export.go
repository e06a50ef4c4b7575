package clearingapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/shopspring/decimal"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/audit"
	"gongji/clearingdb"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/region"
)

// Limits of the province export stream.
const (
	// ExportChunkBytesMax bounds ExportChunk.data: 64 KiB, well under the
	// 4 MiB default message limit of a gRPC client.
	ExportChunkBytesMax = 64 << 10
	// DefaultExportsConcurrentMax: province bundles built at the same time;
	// more callers wait for a slot (each build streams its province's usages
	// out of PostgreSQL and stages the bundle on disk).
	DefaultExportsConcurrentMax = 2
	// ExportsConcurrentMaxLimit bounds ExportServerOptions.ConcurrentMax.
	ExportsConcurrentMaxLimit = 32
)

// ExportFiles are the files of a bundle in the order GetProvinceExport
// streams them: the six CSV files, then manifest.json. Do not modify.
var ExportFiles = append(slices.Clone(audit.CSVFiles), audit.FileManifest)

// ExportServerOptions configure NewExportServer.
type ExportServerOptions struct {
	// Store is the clearing database. Required.
	Store *clearingdb.Store
	// Key is the export pseudonym key (clearing serve --export-key-file,
	// read with audit.ParsePseudonymKey: the file holds hex). Required.
	Key audit.PseudonymKey
	// WarningThreshold is the prepayment warning threshold the settlement
	// used (--prepay-threshold). Zero: 0.70.
	WarningThreshold decimal.Decimal
	// TempDir is where each province bundle is staged while it is built and
	// streamed (removed afterwards). Default os.TempDir(). It needs room for
	// ConcurrentMax province bundles.
	TempDir string
	// ConcurrentMax bounds the bundles built at the same time. Default
	// DefaultExportsConcurrentMax, range [1, ExportsConcurrentMaxLimit].
	ConcurrentMax int
	// Log receives internal errors. Default: no logging.
	Log *zap.Logger
}

// ExportServer implements StatementService.GetProvinceExport. It is not a
// whole StatementService: the statement server delegates that one method to
// it (see GetProvinceExport).
type ExportServer struct {
	store *clearingdb.Store
	key   audit.PseudonymKey
	thr   decimal.Decimal
	tmp   string
	log   *zap.Logger
	slots chan struct{}
}

// NewExportServer checks o and returns the server. Errors: a missing Store
// or Key, a ConcurrentMax out of range.
func NewExportServer(o ExportServerOptions) (*ExportServer, error) {
	if o.Store == nil {
		return nil, errors.New("clearingapi: ExportServerOptions.Store is required")
	}
	if o.Key.IsZero() {
		return nil, errors.New("clearingapi: ExportServerOptions.Key is required")
	}
	if o.ConcurrentMax == 0 {
		o.ConcurrentMax = DefaultExportsConcurrentMax
	}
	if o.ConcurrentMax < 1 || o.ConcurrentMax > ExportsConcurrentMaxLimit {
		return nil, fmt.Errorf("clearingapi: ExportServerOptions.ConcurrentMax %d not in [1, %d]", o.ConcurrentMax, ExportsConcurrentMaxLimit)
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return &ExportServer{store: o.Store, key: o.Key, thr: o.WarningThreshold, tmp: o.TempDir, log: o.Log,
		slots: make(chan struct{}, o.ConcurrentMax)}, nil
}

// GetProvinceExport streams the bundle of period req.setlym scoped to the
// caller's own province (its certificate's, never one named in the request:
// a province can fetch no other's), as clearing export --province writes it:
// the bundle is built and checked (clearingdb.ExportSource.WriteBundle) in a
// staging folder first, so nothing is sent that does not verify, then each
// file of ExportFiles is sent in order as chunks of at most
// ExportChunkBytesMax bytes; the last chunk of a file has last = true and
// sha256 = the hex SHA-256 of the whole file (the same value manifest.json
// lists for the CSV files). ReceiveProvinceExport reassembles and checks it.
//
// Codes: Unauthenticated (no verified certificate); PermissionDenied (not a
// province node); InvalidArgument (bad setlym); NotFound (no such period);
// FailedPrecondition (the period is not closed and settled yet); Canceled or
// DeadlineExceeded; Internal for anything else (logged).
func (s *ExportServer) GetProvinceExport(req *clearingv1.GetProvinceExportRequest, stream grpc.ServerStreamingServer[clearingv1.ExportChunk]) error {
	ctx := stream.Context()
	province, err := callerProvince(ctx)
	if err != nil {
		return err
	}
	p, err := region.ParsePeriod(req.GetSetlym())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "setlym: %v", err)
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	src, err := s.store.ExportSource(ctx, p, clearingdb.ExportOptions{Key: s.key, WarningThreshold: s.thr, Province: province})
	if err != nil {
		return s.exportError(err, province, p)
	}
	tmp, err := os.MkdirTemp(s.tmp, "gongji-export-"+province+"-")
	if err != nil {
		return s.exportError(err, province, p)
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	dir := filepath.Join(tmp, "bundle")
	man, err := src.WriteBundle(ctx, dir)
	if err != nil {
		return s.exportError(err, province, p)
	}
	buf := make([]byte, ExportChunkBytesMax)
	for _, name := range ExportFiles {
		if err := sendExportFile(stream, filepath.Join(dir, name), name, buf); err != nil {
			return s.exportError(err, province, p)
		}
	}
	s.log.Info("province export sent", zap.String("province", province), zap.String("period", p.String()),
		zap.Int64("usages", man.Totals.Usages))
	return nil
}

// exportError maps an export error to its status (the export's own
// sentinels first, then the package's table).
func (s *ExportServer) exportError(err error, province string, p region.Period) error {
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, clearingdb.ErrNotFound):
		return status.Errorf(codes.NotFound, "period %s does not exist", p)
	case errors.Is(err, clearingdb.ErrPeriodNotFrozen), errors.Is(err, clearingdb.ErrExportNotSettled),
		errors.Is(err, clearingdb.ErrExportNoJournalHead):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return statusError(s.log.With(zap.String("province", province), zap.String("period", p.String())), "GetProvinceExport", err)
}

// sendExportFile streams one file of the staged bundle.
func sendExportFile(stream grpc.ServerStreamingServer[clearingv1.ExportChunk], path, name string, buf []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	h := sha256.New()
	left := info.Size()
	for {
		n := int(min(left, int64(len(buf))))
		if _, err := io.ReadFull(f, buf[:n]); err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		h.Write(buf[:n])
		left -= int64(n)
		c := &clearingv1.ExportChunk{FileName: name, Data: buf[:n], Last: left == 0}
		if c.Last {
			c.Sha256 = hex.EncodeToString(h.Sum(nil))
		}
		// SendMsg serialises the message before it returns, so buf is
		// free for the next chunk.
		if err := stream.Send(c); err != nil {
			return err
		}
		if c.Last {
			return nil
		}
	}
}

// Errors of ReceiveProvinceExport.
var (
	// ErrExportStream: the stream broke the chunk protocol (unknown or
	// repeated file, a chunk over ExportChunkBytesMax, a file cut short, a
	// sha256 that does not match, a missing file).
	ErrExportStream = errors.New("clearingapi: malformed export stream")
)

// ReceiveProvinceExport writes the files of a GetProvinceExport stream into
// dir (created; it must not exist or be empty) and checks the chunk protocol:
// only the seven files of a bundle, each once and whole, every chunk at most
// ExportChunkBytesMax, and each file's SHA-256 equal to its last chunk's
// sha256. It does not verify the bundle's content: run
// clearingdb.VerifyProvinceBundle on dir next (with the province's statement).
// On error the partial files are removed.
//
// Errors: ErrExportStream; the stream's gRPC status; I/O errors.
func ReceiveProvinceExport(stream grpc.ServerStreamingClient[clearingv1.ExportChunk], dir string) (err error) {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if names, rerr := os.ReadDir(dir); rerr != nil || len(names) > 0 {
		return fmt.Errorf("clearingapi: %s must be an empty folder: %v", dir, rerr)
	}
	defer func() {
		if err != nil {
			for _, n := range ExportFiles {
				_ = os.Remove(filepath.Join(dir, n))
			}
		}
	}()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrExportStream, fmt.Sprintf(format, args...))
	}
	done := map[string]bool{}
	var (
		cur  string
		f    *os.File
		h    = sha256.New()
		want = map[string]bool{}
	)
	for _, n := range ExportFiles {
		want[n] = true
	}
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for {
		c, rerr := stream.Recv()
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
		name := c.GetFileName()
		if len(c.GetData()) > ExportChunkBytesMax {
			return bad("%s: chunk of %d bytes, at most %d", name, len(c.GetData()), ExportChunkBytesMax)
		}
		if name != cur {
			if f != nil {
				return bad("%s began before %s ended", name, cur)
			}
			if !want[name] {
				return bad("%q is not a file of a bundle", name)
			}
			if done[name] {
				return bad("%s sent twice", name)
			}
			if f, err = os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
				return err
			}
			cur = name
			h.Reset()
		}
		if c.GetSha256() != "" && !c.GetLast() {
			return bad("%s: sha256 on a chunk that is not the last", name)
		}
		if _, err := f.Write(c.GetData()); err != nil {
			return err
		}
		h.Write(c.GetData())
		if !c.GetLast() {
			continue
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != c.GetSha256() {
			return bad("%s: sha256 of the received bytes is %s, the stream says %q", name, got, c.GetSha256())
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		f, cur, done[name] = nil, "", true
	}
	if f != nil {
		return bad("%s ended without its last chunk", cur)
	}
	for _, n := range ExportFiles {
		if !done[n] {
			return bad("%s is missing", n)
		}
	}
	return nil
}
