package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"gongji/config"
	"gongji/internal/auditlog"
	"gongji/internal/clock"
	"gongji/internal/fleet"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/provinceapi"
	"gongji/provincedb"
	"gongji/region"
	"gongji/sharing"
)

// personKeyLenMin is the shortest national person key accepted: 32 bytes,
// the HMAC-SHA256 block-size guidance for full-strength keys (docs/cli.md).
const personKeyLenMin = 32

// serveFlags are the flags of `provincenode serve` (docs/cli.md is the contract).
type serveFlags struct {
	province, listen, metricsListen, databaseURL, certsDir, clearingAddr, personKeyFile, clockStart string
	proposalExpiry, sweepInterval, rpcTimeout, reportInterval                                       time.Duration
	reportBatch                                                                                     int
	logFormat, logLevel, readyFile                                                                  string
}

func serveCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run one province node: ProvinceService, PeerService, outbox streaming, relay and proposal sweeps",
		Long: "serve runs the province node of --province (gongji.province.v1) over mutual TLS: the ProvinceService the\n" +
			"province's own systems call with its certificate, and the PeerService the national clearing service calls\n" +
			"on behalf of other provinces. In the background it streams the outbox to the clearing service, delivers\n" +
			"the relationship relay queue and expires unanswered proposals. The database is migrated on start and\n" +
			"bound to --province. SIGHUP re-reads the certificates; SIGTERM or SIGINT stops gracefully (in-flight\n" +
			"calls get " + config.ShutdownGrace.String() + ")." + config.EnvHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runServe(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.province, "province", "", "this node's provincial unit code, e.g. 410000; must match the certificate (required)")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:7500", "gRPC address to listen on (port 0: any free port, see --ready-file)")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", "HTTP address for /metrics and /healthz (empty: off)")
	fl.StringVar(&f.databaseURL, "database-url", "", "PostgreSQL URL of this node's database, migrated on start (required)")
	fl.StringVar(&f.certsDir, "certs-dir", "certs", "directory made by clearing certs init: ca.pem, province-XX0000.pem, province-XX0000-key.pem")
	fl.StringVar(&f.clearingAddr, "clearing-addr", "127.0.0.1:7400", "address of the national clearing service (switch and report collection)")
	fl.StringVar(&f.personKeyFile, "person-key-file", "",
		"the national person-pseudonym key (HMAC), at least 32 bytes written as hex, shared by every node so that\n"+
			"each computes the same person_ref from an ID number (required)")
	fl.StringVar(&f.clockStart, "clock-start", "", "RFC 3339 instant the process clock starts at, then advancing in real time (simulations; empty: real time)")
	fl.DurationVar(&f.proposalExpiry, "proposal-expiry", config.ProposalExpiry,
		"unanswered relationship proposals expire after this (R4); the default gives a relative a week to consent,\n"+
			"as in the provincial apps that pioneered family sharing")
	fl.DurationVar(&f.sweepInterval, "sweep-interval", config.ProposalSweepInterval,
		"how often expired proposals are swept to EXPIRED; consent after expiry is refused at once regardless, so\n"+
			"a minute only bounds how long an expired proposal still shows as PENDING")
	fl.DurationVar(&f.rpcTimeout, "rpc-timeout", config.RPCTimeout,
		"deadline of each outgoing call to the clearing service, retries included (a caller's earlier deadline\n"+
			"wins); the default leaves the payer's node time to commit a debit under load")
	fl.IntVar(&f.reportBatch, "report-batch", provinceapi.DefaultReportBatch,
		fmt.Sprintf("outbox records per report batch, 1..%d (the clearing service's limit); larger batches mean fewer\n"+
			"round trips when catching up, the default keeps one batch well under a second to store", provinceapi.ReportBatchRecordsMax))
	fl.DurationVar(&f.reportInterval, "report-interval", provinceapi.DefaultReportInterval,
		"outbox poll interval when there is nothing to send: a committed usage reaches the clearing service within\n"+
			"about this long")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fl.StringVar(&f.readyFile, "ready-file", "", "once listening, write the actual listen address here (atomically)")
	return cmd
}

// serveConfig is what runServe derives from the flags before it opens anything.
type serveConfig struct {
	clock     clock.Clock
	personKey []byte
}

// checkServeFlags validates the flags, so that a bad setting stops the
// process before it touches the database or the network.
func checkServeFlags(f serveFlags) (serveConfig, error) {
	var c serveConfig
	if _, err := region.ParseProvince(f.province); err != nil {
		return c, fmt.Errorf("--province %q: %w", f.province, err)
	}
	if f.databaseURL == "" {
		return c, errors.New("--database-url is required")
	}
	if f.personKeyFile == "" {
		return c, errors.New("--person-key-file is required")
	}
	switch {
	case f.proposalExpiry <= 0:
		return c, fmt.Errorf("--proposal-expiry %s must be positive", f.proposalExpiry)
	case f.sweepInterval <= 0:
		return c, fmt.Errorf("--sweep-interval %s must be positive", f.sweepInterval)
	case f.rpcTimeout <= 0:
		return c, fmt.Errorf("--rpc-timeout %s must be positive", f.rpcTimeout)
	case f.reportInterval <= 0:
		return c, fmt.Errorf("--report-interval %s must be positive", f.reportInterval)
	case f.reportBatch < 1 || f.reportBatch > provinceapi.ReportBatchRecordsMax:
		return c, fmt.Errorf("--report-batch %d not in 1..%d", f.reportBatch, provinceapi.ReportBatchRecordsMax)
	}
	var err error
	if c.clock, err = clock.New(f.clockStart); err != nil {
		return c, fmt.Errorf("--clock-start: %w", err)
	}
	if c.personKey, err = readKeyFile(f.personKeyFile); err != nil {
		return c, fmt.Errorf("--person-key-file: %w", err)
	}
	return c, nil
}

// readKeyFile reads a key written as hex (white space around it ignored) of
// at least personKeyLenMin bytes. The key is never printed.
func readKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s is not hex: %w", path, err)
	}
	if len(key) < personKeyLenMin {
		return nil, fmt.Errorf("%s holds %d bytes, at least %d are required", path, len(key), personKeyLenMin)
	}
	return key, nil
}

// runServe wires the province node and runs it until SIGTERM/SIGINT.
func runServe(parent context.Context, f serveFlags) error {
	cfg, err := checkServeFlags(f)
	if err != nil {
		return err
	}
	log, err := serve.NewLogger(f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	log = log.With(zap.String("province", f.province))
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Certificates first: SIGHUP must be handled (not fatal) from here on.
	// TLS verification uses real time, not --clock-start: certificates are
	// valid in the real world, the simulated clock is business time only.
	id := tlsconf.Identity{Kind: tlsconf.Province, Province: f.province}
	certs, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{
		Files: tlsconf.FilesFor(f.certsDir, id), Identity: id,
		OnError: func(err error) {
			log.Error("certificate reload failed; serving the previous certificate", zap.Error(err))
		},
		OnReload: func(leaf *x509.Certificate) { log.Info("certificate reloaded", zap.Time("not_after", leaf.NotAfter)) },
	})
	if err != nil {
		return fmt.Errorf("certificates in %s: %w", f.certsDir, err)
	}
	certs.ReloadOnSignal(ctx, syscall.SIGHUP)

	if err := migrations.Up(ctx, f.databaseURL, migrations.Province); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, f.databaseURL)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	store, err := provincedb.New(pool, provincedb.Options{OutboxBatchRowsMax: max(provinceapi.DefaultReportBatch, f.reportBatch)})
	if err != nil {
		return err
	}
	if err := store.BindProvince(ctx, f.province); err != nil {
		return err
	}

	metrics := serve.NewMetrics("provincenode")
	apiMetrics, err := provinceapi.NewMetrics(metrics.Registry)
	if err != nil {
		return err
	}
	conn, err := provinceapi.DialClearing(f.clearingAddr, certs)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	remote, err := provinceapi.NewRemote(provinceapi.RemoteOptions{
		Conn: conn, Province: f.province, RPCTimeout: f.rpcTimeout, Log: log.Named("remote"), Metrics: apiMetrics,
	})
	if err != nil {
		return err
	}
	svc, err := sharing.NewService(store, sharing.Config{
		Province: f.province, PersonKey: cfg.personKey, ProposalTTL: f.proposalExpiry, Now: cfg.clock, Remote: remote,
	})
	if err != nil {
		return err
	}
	apiOpts := provinceapi.Options{Service: svc, Clock: cfg.clock, Log: log.Named("api")}
	ps, err := provinceapi.NewProvinceServer(apiOpts)
	if err != nil {
		return err
	}
	peer, err := provinceapi.NewPeerServer(apiOpts)
	if err != nil {
		return err
	}
	workers, err := provinceapi.NewWorkers(provinceapi.WorkerOptions{
		Service: svc, Outbox: store, Relay: store, Remote: remote, Conn: conn, Clock: cfg.clock,
		Log: log.Named("workers"), Metrics: apiMetrics, ReportBatch: f.reportBatch, ReportInterval: f.reportInterval,
		SweepInterval: f.sweepInterval,
	})
	if err != nil {
		return err
	}

	// The audit trail (internal/auditlog): a row per state-changing call in
	// this node's database, in the transaction of the change.
	auditRec, err := auditlog.New(auditlog.Options{DB: pool, Log: log.Named("audit"), Clock: cfg.clock})
	if err != nil {
		return err
	}
	opts := serve.GRPCOptions(log, metrics, provinceapi.CallerName,
		append(append(provinceapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(certs)))),
			provinceapi.AuditOptions(auditRec, svc)...)...)
	srv := serve.NewServer(log, metrics, opts...)
	provinceapi.Register(srv.GRPC, ps, peer)

	lis, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", f.listen, err)
	}
	if err := fleet.WriteReadyFile(f.readyFile, lis.Addr().String()); err != nil {
		_ = lis.Close()
		return fmt.Errorf("--ready-file: %w", err)
	}
	log.Info("province node starting", zap.String("addr", lis.Addr().String()), zap.String("clearing", f.clearingAddr),
		zap.Time("clock", cfg.clock()), zap.Stringer("proposal_expiry", f.proposalExpiry))

	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		workers.Run(wctx)
	}()
	runErr := srv.Run(ctx, lis, f.metricsListen, config.ShutdownGrace)
	// Workers stop after the server: an in-flight call's outbox row is sent
	// now or, if the stream is already gone, at the next start.
	stopWorkers()
	wg.Wait()
	return runErr
}
