// Package serve holds what both gongji servers share: zap logging, the gRPC
// server with its interceptors (panic recovery, one structured log line per
// call, Prometheus metrics), gRPC health and reflection, the /metrics HTTP
// endpoint, and graceful shutdown.
package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// NewLogger builds the process logger: JSON for production, a readable console
// encoder for development. level is debug, info, warn or error.
func NewLogger(format, level string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	var cfg zap.Config
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.TimeKey = "ts"
		cfg.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	case "console":
		cfg = zap.NewDevelopmentConfig()
	default:
		return nil, fmt.Errorf("log format %q: want json or console", format)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.DisableStacktrace = lvl > zapcore.DebugLevel
	return cfg.Build()
}

// Metrics are the gRPC server metrics both servers export.
type Metrics struct {
	Registry *prometheus.Registry
	handled  *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewMetrics creates a registry with Go/process collectors and gRPC metrics.
func NewMetrics(service string) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: reg,
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Name: "grpc_handled_total",
			Help:        "gRPC calls completed, by method and status code.",
			ConstLabels: prometheus.Labels{"service": service},
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "gongji", Name: "grpc_handling_seconds",
			Help:        "gRPC handling time in seconds, by method.",
			ConstLabels: prometheus.Labels{"service": service},
			Buckets:     []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method"}),
	}
	reg.MustRegister(m.handled, m.latency)
	return m
}

// IdentityFunc names the caller of a request for logs (from its certificate).
type IdentityFunc func(ctx context.Context) string

// GRPCOptions builds the server options: interceptors for recovery, logging
// and metrics, plus the given extra options (credentials, limits).
func GRPCOptions(log *zap.Logger, m *Metrics, who IdentityFunc, extra ...grpc.ServerOption) []grpc.ServerOption {
	if who == nil {
		who = func(context.Context) string { return "" }
	}
	record := func(ctx context.Context, method string, start time.Time, err error) {
		code := status.Code(err)
		m.handled.WithLabelValues(method, code.String()).Inc()
		m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
		fields := []zap.Field{zap.String("method", method), zap.String("code", code.String()),
			zap.Duration("took", time.Since(start)), zap.String("caller", who(ctx))}
		switch code {
		case codes.OK:
			if ce := log.Check(zap.DebugLevel, "rpc"); ce != nil {
				ce.Write(fields...)
			}
		case codes.Internal, codes.Unknown, codes.DataLoss:
			log.Error("rpc", append(fields, zap.Error(err))...)
		default:
			log.Info("rpc", append(fields, zap.String("detail", status.Convert(err).Message()))...)
		}
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in handler", zap.String("method", info.FullMethod), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
			record(ctx, info.FullMethod, start, err)
		}()
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		start := time.Now()
		defer func() {
			if r := recover(); r != nil {
				log.Error("panic in stream handler", zap.String("method", info.FullMethod), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
			record(ss.Context(), info.FullMethod, start, err)
		}()
		return h(srv, ss)
	}
	opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
	return append(opts, extra...)
}

// Server is a gRPC server plus its health service and metrics endpoint.
type Server struct {
	GRPC   *grpc.Server
	Health *health.Server
	log    *zap.Logger
	m      *Metrics
}

// NewServer creates the gRPC server with health and reflection registered.
// Register the application services on s.GRPC before Run.
func NewServer(log *zap.Logger, m *Metrics, opts ...grpc.ServerOption) *Server {
	g := grpc.NewServer(opts...)
	h := health.NewServer()
	healthpb.RegisterHealthServer(g, h)
	reflection.Register(g)
	return &Server{GRPC: g, Health: h, log: log, m: m}
}

// Run serves gRPC on lis and metrics on metricsAddr ("" for none) until ctx is
// done, then shuts down gracefully: health goes NOT_SERVING, in-flight calls
// get up to grace to finish, then the server stops hard.
func (s *Server) Run(ctx context.Context, lis net.Listener, metricsAddr string, grace time.Duration) error {
	errc := make(chan error, 2)
	var httpSrv *http.Server
	if metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.m.Registry, promhttp.HandlerOpts{Registry: s.m.Registry}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		ml, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listen %s: %w", metricsAddr, err)
		}
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := httpSrv.Serve(ml); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics: %w", err)
			}
		}()
		s.log.Info("metrics listening", zap.String("addr", ml.Addr().String()))
	}
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go func() {
		if err := s.GRPC.Serve(lis); err != nil {
			errc <- fmt.Errorf("grpc: %w", err)
		}
	}()
	s.log.Info("grpc listening", zap.String("addr", lis.Addr().String()))
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.log.Info("shutting down", zap.Duration("grace", grace))
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() { s.GRPC.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.GRPC.Stop()
	}
	if httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		_ = httpSrv.Shutdown(sctx)
		cancel()
	}
	return runErr
}
