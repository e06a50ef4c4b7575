// Package console is the operator console of the national clearing service: a
// read-only web page, served by `clearing serve --console-listen ADDR` over
// HTTPS with the service's own certificates, that shows where a clearing
// period stands (overview, net positions, flows between provinces, the
// prepayment pool, exceptions, one province drilled down to its pooling
// regions, live ingest and authorisation rates) and offers the period's
// export bundle and workbook for download.
//
// # Transport and identity
//
// The console listens with tlsconf.ServerConfig: TLS 1.3, the clearing
// certificate, and a client certificate REQUIRED and verified against the CA
// bundle on every handshake, exactly as the gRPC API. A browser without a
// certificate, or with one of another CA, never gets past the handshake. The
// caller's identity is the URI SAN of its verified certificate
// (tlsconf.IdentityFromState).
//
// # Authorisation (the same rule as the gRPC API: a province reads only its own data)
//
//	page / API                       operator    province certificate P
//	period list (the chooser)        yes         yes (period states are the same for everyone)
//	overview                         yes         403: national totals of every province
//	positions                        32 rows     filtered: P's row only
//	flows (gross matrix, map)        all pairs   filtered: the pairs where P pays or receives
//	prepayment                       32 rows     filtered: P's row and P's account only
//	exceptions                       all         filtered: the items that name P
//	province page Q                  any Q       Q = P only, any other: 403
//	live (process metrics)           yes         403: the whole service's traffic
//	bundle / workbook download       national    P's province-scoped bundle and workbook
//
// A clearing-service certificate (gongji:clearing) is neither: every page is
// 403 for it. Filtering happens in the SQL (WHERE … = P), never in the page.
//
// # Read-only
//
// Handlers answer GET and HEAD only. Queries run in read-only transactions
// (queries.go); the only writes anywhere are the temporary files of a
// download, removed when it ends. Operator actions stay in the CLI and the
// admin gRPC API.
//
// # Self-contained
//
// Every script, style sheet and map is served from the binary (go:embed):
// the console's own console.js and console.css, and Apache ECharts and the
// China map from the npm registry, pinned in web/package-lock.json and copied
// into assets/vendor by `make console-assets`. A binary built without them
// answers its pages with an error page that says so. The pages carry a
// Content-Security-Policy of 'self' only, so the browser refuses any outside
// request. Fonts are the system's (no web font is loaded).
package console

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"go.uber.org/zap"

	"gongji/audit"
	"gongji/clearingdb"
	"gongji/internal/clock"
)

// Limits and defaults of the console.
const (
	// DefaultLiveInterval is how often the live page's sampler reads the
	// Prometheus registry (rates are differences between two samples).
	DefaultLiveInterval = 2 * time.Second
	// LiveSamplesMax bounds the samples kept: 150 × 2 s = the last 5 minutes.
	LiveSamplesMax = 150
	// DefaultDownloadsConcurrentMax bounds the bundles and workbooks built at
	// the same time (each streams a period's usages out of PostgreSQL and
	// stages files on disk), as clearingapi.DefaultExportsConcurrentMax.
	DefaultDownloadsConcurrentMax = 2
	// RowsShownMax bounds the rows of one exceptions list (reconciliation
	// exceptions, late records, disputes) that a page and its API return; the
	// totals are always exact and the export bundle has every row.
	RowsShownMax = 500
	// FlowLinesMax bounds the flow lines drawn on the map (the largest
	// pairs); the heatmap and the table show every pair.
	FlowLinesMax = 80
	// requestTimeout bounds one page or API answer (downloads excepted).
	requestTimeout = 30 * time.Second
	// downloadTimeout bounds one bundle or workbook download.
	downloadTimeout = 30 * time.Minute
)

// Options configure New.
type Options struct {
	// Store is the clearing database. Required. The console reads through
	// Store.Pool() in read-only transactions and builds downloads with
	// Store.ExportSource, the code path of `clearing export`.
	Store *clearingdb.Store
	// ExportKey is the export pseudonym key (clearing serve
	// --export-key-file). Required: downloads carry the same pseudonyms as
	// `clearing export` and GetProvinceExport.
	ExportKey audit.PseudonymKey
	// WarningThreshold is the prepayment warning threshold (--prepay-threshold),
	// drawn on the prepayment page and checked by the export. Zero: 0.70.
	WarningThreshold decimal.Decimal
	// Gatherer is the Prometheus registry the service's /metrics endpoint
	// serves (serve.Metrics.Registry); the live page samples it. Nil: the live
	// page shows no data.
	Gatherer prometheus.Gatherer
	// Clock is the service clock (--clock-start): it decides whether an
	// unanswered statement is past its deadline (deemed confirmed). Default
	// real time.
	Clock clock.Clock
	// LiveInterval: see DefaultLiveInterval. Negative: the sampler does not
	// run by itself (tests take samples with the test hook).
	LiveInterval time.Duration
	// TempDir stages downloads. Default os.TempDir().
	TempDir string
	// DownloadsConcurrentMax: see DefaultDownloadsConcurrentMax; range [1, 32].
	DownloadsConcurrentMax int
	// Assets replaces the embedded assets (tests of a binary built without
	// the vendor files). Default: the embedded ones.
	Assets fs.FS
	// Log receives internal errors and one line per download. Default: none.
	Log *zap.Logger
}

// Server is the console. Build it with New; serve it with Run or mount
// Handler behind a TLS listener that verifies client certificates.
type Server struct {
	o       Options
	assets  fs.FS
	missing []string // vendor files the assets lack
	pages   *pageSet
	live    *liveSampler
	slots   chan struct{}
	handler http.Handler
}

// New checks o and builds the console. Errors: a missing Store or
// ExportKey, DownloadsConcurrentMax out of range, templates that do not parse
// (a bug).
func New(o Options) (*Server, error) {
	if o.Store == nil {
		return nil, errors.New("console: Options.Store is required")
	}
	if o.ExportKey.IsZero() {
		return nil, errors.New("console: Options.ExportKey is required")
	}
	if o.WarningThreshold.IsZero() {
		o.WarningThreshold = decimal.RequireFromString("0.70")
	}
	if o.Clock == nil {
		o.Clock = clock.Real
	}
	if o.LiveInterval == 0 {
		o.LiveInterval = DefaultLiveInterval
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.DownloadsConcurrentMax == 0 {
		o.DownloadsConcurrentMax = DefaultDownloadsConcurrentMax
	}
	if o.DownloadsConcurrentMax < 1 || o.DownloadsConcurrentMax > 32 {
		return nil, fmt.Errorf("console: DownloadsConcurrentMax %d not in [1, 32]", o.DownloadsConcurrentMax)
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	assets := o.Assets
	if assets == nil {
		var err error
		if assets, err = fs.Sub(embedded, "assets"); err != nil {
			return nil, err
		}
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	s := &Server{o: o, assets: assets, missing: missingVendor(assets), pages: pages,
		live: newLiveSampler(o.Gatherer), slots: make(chan struct{}, o.DownloadsConcurrentMax)}
	if len(s.missing) > 0 {
		o.Log.Warn("console assets missing from this build: pages answer with an error page until it is rebuilt with make build",
			zap.Strings("missing", s.missing))
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the console's HTTP handler. Every request must come over TLS
// with a verified client certificate (r.TLS.VerifiedChains); one without is
// answered 401 (Run's listener never lets one through).
func (s *Server) Handler() http.Handler { return s.handler }

// Run serves the console on lis, wrapped in TLS with tlsConfig (use
// tlsconf.ServerConfig: client certificates required and verified), and runs
// the live sampler, until ctx is done; then it stops accepting and gives
// requests in flight up to grace. Returns nil after a shutdown, or the
// error that stopped serving.
func (s *Server) Run(ctx context.Context, lis net.Listener, tlsConfig *tls.Config, grace time.Duration) error {
	if tlsConfig == nil || tlsConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		_ = lis.Close()
		return errors.New("console: Run needs a TLS config that requires and verifies client certificates")
	}
	sctx, stopSampler := context.WithCancel(ctx)
	defer stopSampler()
	if s.o.LiveInterval > 0 {
		go s.live.run(sctx, s.o.LiveInterval, s.o.Log)
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// TLS refusals (no certificate, foreign CA) end up here: they are a
		// client's problem, logged at info level.
		ErrorLog: log.New(&zapWriter{log: s.o.Log}, "", 0),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(lis, tlsConfig)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("console: %w", err)
	case <-ctx.Done():
	}
	sctx2, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(sctx2); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("console: %w", err)
	}
	return nil
}

// zapWriter turns net/http's error log lines into zap info lines.
type zapWriter struct{ log *zap.Logger }

func (w *zapWriter) Write(b []byte) (int, error) {
	w.log.Info("console http", zap.ByteString("detail", trimNewline(b)))
	return len(b), nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
