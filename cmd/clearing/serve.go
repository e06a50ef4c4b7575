package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shopspring/decimal"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"gongji/audit"
	"gongji/clearingapi"
	"gongji/clearingdb"
	"gongji/config"
	"gongji/console"
	"gongji/internal/auditlog"
	"gongji/internal/clock"
	"gongji/internal/fleet"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/prepay"
	"gongji/settlement"
)

// serveFlags are the flags of `clearing serve` (docs/cli.md is the contract).
type serveFlags struct {
	listen, metricsListen, consoleListen, databaseURL, certsDir, nodesFile, exportKeyFile, clockStart string
	clockFrozen                                                                                       bool
	cutoffGrace, confirmWindow, rpcTimeout                                                            time.Duration
	prepayMultiple, prepayThreshold                                                                   string
	logFormat, logLevel, readyFile                                                                    string
}

func serveCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run the national clearing service: switch, report collection, statements, admin",
		Long: "serve runs the national clearing service (gongji.clearing.v1) over mutual TLS: the switch that routes\n" +
			"cross-province debits, reversals and relationship commands to the province nodes listed in --nodes-file,\n" +
			"the ReportUsage stream that collects every node's outbox, and the statement and admin services.\n" +
			"The database is migrated on start. SIGHUP re-reads the certificates and the nodes file; SIGTERM or\n" +
			"SIGINT stops gracefully (in-flight calls get " + config.ShutdownGrace.String() + ")." + config.EnvHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServe(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:7400", "gRPC address to listen on (port 0: any free port, see --ready-file)")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", "HTTP address for /metrics and /healthz (empty: off)")
	fl.StringVar(&f.consoleListen, "console-listen", "",
		"HTTPS address of the read-only operator console (empty: off). Same certificates as the gRPC API: a client\n"+
			"certificate is required; an operator certificate sees every province, a province certificate its own")
	fl.StringVar(&f.databaseURL, "database-url", "", "PostgreSQL URL of the clearing database, migrated on start (required)")
	fl.StringVar(&f.certsDir, "certs-dir", "certs", "directory made by clearing certs init: ca.pem, clearing.pem, clearing-key.pem")
	fl.StringVar(&f.nodesFile, "nodes-file", "nodes.json", `JSON object of province code to node address, e.g. {"410000":"127.0.0.1:7501"}; re-read on SIGHUP`)
	fl.StringVar(&f.exportKeyFile, "export-key-file", "", "HMAC key for the person pseudonyms in exports, at least 32 bytes (required)")
	fl.StringVar(&f.clockStart, "clock-start", "", "RFC 3339 instant the process clock starts at, then advancing in real time (simulations; empty: real time)")
	fl.BoolVar(&f.clockFrozen, "clock-frozen", false, "with --clock-start: the clock stays at that instant, so journal entry times and a bundle's journal_head are reproducible (simulations)")
	fl.DurationVar(&f.cutoffGrace, "cutoff-grace", config.CutOffGrace,
		"a period's cut-off after month end (R14); later records go to the next open period, marked late. The default\n"+
			"gives 5 days, as the cross-province medical settlement timetable issues a month's data early in the next month")
	fl.DurationVar(&f.confirmWindow, "confirm-window", config.ConfirmationWindow,
		"time a province has to confirm or dispute a statement after it is issued; then it is deemed confirmed (R17).\n"+
			"The default gives 10 days to reconcile with the province's own records")
	fl.StringVar(&f.prepayMultiple, "prepay-multiple", strconv.Itoa(config.PrepayMultiple),
		"prepayment deposit = this multiple × the trailing average monthly payable (R18); the default sizes it at about\n"+
			"two months of cross-province volume, as for cross-province medical settlement (DESIGN §10)")
	fl.StringVar(&f.prepayThreshold, "prepay-threshold", config.PrepayWarningThreshold,
		"a draw of at least this share of a deposit raises a warning and an emergency top-up request; the default is\n"+
			"the commonly quoted 70 %")
	fl.DurationVar(&f.rpcTimeout, "rpc-timeout", config.RPCTimeout,
		"deadline of each call the switch routes to a node, retries included (a caller's earlier deadline wins); the\n"+
			"default leaves a payer node's debit time to commit under load and the payee's counter an answer within seconds")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fl.StringVar(&f.readyFile, "ready-file", "", "once listening, write the actual listen address here (atomically)")
	return cmd
}

// serveConfig is what runServe derives from the flags before it opens anything.
type serveConfig struct {
	clock      clock.Clock
	settlement settlement.Config
	prepay     prepay.Config
	exportKey  audit.PseudonymKey
}

// checkServeFlags validates the flags, so that a bad setting stops the
// process before it touches the database or the network.
func checkServeFlags(f serveFlags) (serveConfig, error) {
	var c serveConfig
	if f.databaseURL == "" {
		return c, errors.New("--database-url is required")
	}
	if f.exportKeyFile == "" {
		return c, errors.New("--export-key-file is required")
	}
	if f.rpcTimeout <= 0 {
		return c, fmt.Errorf("--rpc-timeout %s must be positive", f.rpcTimeout)
	}
	var err error
	if f.clockFrozen {
		if c.clock, err = clock.NewFrozen(f.clockStart); err != nil {
			return c, fmt.Errorf("--clock-frozen needs --clock-start: %w", err)
		}
	} else if c.clock, err = clock.New(f.clockStart); err != nil {
		return c, fmt.Errorf("--clock-start: %w", err)
	}
	c.settlement = settlement.Config{CutOffGrace: f.cutoffGrace, ConfirmationWindow: f.confirmWindow}
	if err := c.settlement.Validate(); err != nil {
		return c, fmt.Errorf("--cutoff-grace/--confirm-window: %w", err)
	}
	mult, err := decimal.NewFromString(f.prepayMultiple)
	if err != nil {
		return c, fmt.Errorf("--prepay-multiple %q: %w", f.prepayMultiple, err)
	}
	thr, err := decimal.NewFromString(f.prepayThreshold)
	if err != nil {
		return c, fmt.Errorf("--prepay-threshold %q: %w", f.prepayThreshold, err)
	}
	c.prepay = prepay.Config{Multiple: mult, WarningThreshold: thr, TrailingMonths: config.PrepayTrailingMonths}.WithDefaults()
	if err := c.prepay.Validate(); err != nil {
		return c, fmt.Errorf("--prepay-multiple/--prepay-threshold: %w", err)
	}
	// Read now: a missing or short key must stop the start, not the first export.
	// Key files hold hex (docs/cli.md), read the same way as `clearing export`
	// so that bundles streamed over gRPC carry the same pseudonyms.
	if c.exportKey, err = readExportKey(f.exportKeyFile); err != nil {
		return c, err
	}
	return c, nil
}

// runServe wires the clearing service and runs it until SIGTERM/SIGINT.
func runServe(parent context.Context, f serveFlags) error {
	cfg, err := checkServeFlags(f)
	if err != nil {
		return err
	}
	log, err := serve.NewLogger(f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Certificates first: SIGHUP must be handled (not fatal) from here on.
	// TLS verification uses real time, not --clock-start: certificates are
	// valid in the real world, the simulated clock is business time only.
	clearingID := tlsconf.Identity{Kind: tlsconf.Clearing}
	certs, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{
		Files: tlsconf.FilesFor(f.certsDir, clearingID), Identity: clearingID,
		OnError: func(err error) {
			log.Error("certificate reload failed; serving the previous certificate", zap.Error(err))
		},
		OnReload: func(leaf *x509.Certificate) { log.Info("certificate reloaded", zap.Time("not_after", leaf.NotAfter)) },
	})
	if err != nil {
		return fmt.Errorf("certificates in %s: %w", f.certsDir, err)
	}
	certs.ReloadOnSignal(ctx, syscall.SIGHUP)
	nodes, err := clearingapi.NewNodes(clearingapi.NodesOptions{File: f.nodesFile, TLS: certs, DrainDelay: f.rpcTimeout, Log: log})
	if err != nil {
		return err
	}
	defer func() { _ = nodes.Close() }()
	nodes.ReloadOnSignal(ctx, syscall.SIGHUP)

	if err := migrations.Up(ctx, f.databaseURL, migrations.Clearing); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, f.databaseURL)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	store, err := clearingdb.New(pool, clearingdb.Config{
		Settlement: cfg.settlement, BatchRowsMax: clearingapi.DefaultReportBatchRecordsMax,
	})
	if err != nil {
		return err
	}

	metrics := serve.NewMetrics("clearing")
	apiMetrics, err := clearingapi.NewMetrics(metrics.Registry)
	if err != nil {
		return err
	}
	sw, err := clearingapi.NewSwitch(clearingapi.SwitchOptions{
		Nodes: nodes, Store: store, Clock: cfg.clock, Log: log.Named("switch"), Metrics: apiMetrics, RPCTimeout: f.rpcTimeout,
	})
	if err != nil {
		return err
	}
	rep, err := clearingapi.NewReporting(clearingapi.ReportingOptions{
		Store: store, Clock: cfg.clock, Log: log.Named("reporting"), Metrics: apiMetrics,
		BatchRecordsMax: clearingapi.DefaultReportBatchRecordsMax,
	})
	if err != nil {
		return err
	}
	admin, err := clearingapi.NewAdminServer(store, cfg.prepay, cfg.clock, log.Named("admin"))
	if err != nil {
		return err
	}
	stmts, err := clearingapi.NewStatementServer(store, cfg.clock, log.Named("statements"))
	if err != nil {
		return err
	}
	exp, err := clearingapi.NewExportServer(clearingapi.ExportServerOptions{
		Store: store, Key: cfg.exportKey, WarningThreshold: cfg.prepay.WarningThreshold, Log: log.Named("export"),
	})
	if err != nil {
		return err
	}
	stmts.SetExport(exp)
	services := clearingapi.Services{Switch: sw, Reporting: rep, Statement: stmts, Admin: admin}

	// The operator console (optional): HTTPS with the same certificates and
	// client-certificate check as the gRPC API, read-only, its live page
	// sampling the registry /metrics serves.
	var (
		consoleLis net.Listener
		con        *console.Server
	)
	if f.consoleListen != "" {
		con, err = console.New(console.Options{
			Store: store, ExportKey: cfg.exportKey, WarningThreshold: cfg.prepay.WarningThreshold,
			Gatherer: metrics.Registry, Clock: cfg.clock, Log: log.Named("console"),
		})
		if err != nil {
			return err
		}
		if consoleLis, err = net.Listen("tcp", f.consoleListen); err != nil {
			return fmt.Errorf("console listen %s: %w", f.consoleListen, err)
		}
		defer consoleLis.Close()
	}

	// The audit trail (internal/auditlog): a row per state-changing call in
	// the clearing database, in the transaction of the change.
	auditRec, err := auditlog.New(auditlog.Options{DB: pool, Log: log.Named("audit"), Clock: cfg.clock})
	if err != nil {
		return err
	}
	opts := serve.GRPCOptions(log, metrics, clearingapi.CallerName,
		append(append(clearingapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(certs)))),
			clearingapi.AuditOptions(auditRec)...)...)
	srv := serve.NewServer(log, metrics, opts...)
	if err := services.Register(srv.GRPC); err != nil {
		return err
	}

	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", f.listen, err)
	}
	if con != nil {
		// A console that stops serving stops the service (its error is
		// returned), as a gRPC or metrics listener failure does.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		done := make(chan struct{})
		defer func() { cancel(nil); <-done }()
		go func() {
			defer close(done)
			if err := con.Run(ctx, consoleLis, tlsconf.ServerConfig(certs), config.ShutdownGrace); err != nil {
				log.Error("console stopped", zap.Error(err))
				cancel(err)
			}
		}()
		log.Info("console listening", zap.String("addr", "https://"+consoleLis.Addr().String()+"/"))
	}
	if err := fleet.WriteReadyFile(f.readyFile, lis.Addr().String()); err != nil {
		_ = lis.Close()
		return fmt.Errorf("--ready-file: %w", err)
	}
	log.Info("clearing service starting", zap.String("addr", lis.Addr().String()),
		zap.Time("clock", cfg.clock()), zap.Stringer("cutoff_grace", f.cutoffGrace), zap.String("nodes_file", f.nodesFile))
	// Report streams never end by themselves: end them when shutdown starts,
	// so that graceful stop waits only for the batch each is storing.
	go func() {
		<-ctx.Done()
		rep.Shutdown()
	}()
	if err := srv.Run(ctx, lis, f.metricsListen, config.ShutdownGrace); err != nil {
		return err
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}
