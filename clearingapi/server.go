package clearingapi

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
)

// Transport limits of the clearing gRPC server.
const (
	// RecvMsgBytesMax bounds one incoming message. The largest is a report
	// batch: ReportBatchRecordsMax records of at most ~1 KiB each (keys ≤ 64,
	// refs ≤ 64, a relationship snapshot) fit with room to spare, while a
	// runaway client cannot make the server buffer more than this per call.
	RecvMsgBytesMax = 8 << 20
	// serverKeepaliveTime: after a minute without traffic the server pings the
	// client, so that a ReportUsage stream of a node whose host vanished is
	// closed after time + timeout instead of being held open until the OS TCP
	// timeout (and the node's reconnect is not refused for being a second
	// stream of a dead one).
	serverKeepaliveTime    = time.Minute
	serverKeepaliveTimeout = 20 * time.Second
	// clientPingIntervalMin: nodes may send keepalive pings this often (also
	// with no call in flight) without being disconnected for ping abuse;
	// grpc-go's default would refuse anything under 5 minutes.
	clientPingIntervalMin = 10 * time.Second
)

// ServerOptions are the clearing service's own gRPC server options: message
// size limit, keepalive, and the codec that lets a request with invalid
// UTF-8 reach validation (serve.ServerCodec). Pass them (with the TLS credentials)
// to serve.GRPCOptions.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(RecvMsgBytesMax),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: serverKeepaliveTime, Timeout: serverKeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: clientPingIntervalMin, PermitWithoutStream: true}),
		grpc.ForceServerCodecV2(serve.ServerCodec()),
	}
}

// CallerName names the caller of a request for the per-call log line of
// serve.GRPCOptions: its certificate identity ("gongji:province:410000"),
// or "unauthenticated".
func CallerName(ctx context.Context) string {
	id, err := tlsconf.IdentityFromContext(ctx)
	if err != nil {
		return "unauthenticated"
	}
	return id.String()
}

// Services are the gRPC services of the clearing service. Register registers
// every non-nil one.
type Services struct {
	Switch    clearingv1.SwitchServiceServer
	Reporting clearingv1.ReportingServiceServer
	Statement clearingv1.StatementServiceServer
	Admin     clearingv1.AdminServiceServer
}

// Register registers the services on r. Switch and Reporting are required
// (they are what province nodes need to run at all); errors otherwise.
func (s Services) Register(r grpc.ServiceRegistrar) error {
	if s.Switch == nil || s.Reporting == nil {
		return errors.New("clearingapi: Switch and Reporting services are required")
	}
	clearingv1.RegisterSwitchServiceServer(r, s.Switch)
	clearingv1.RegisterReportingServiceServer(r, s.Reporting)
	if s.Statement != nil {
		clearingv1.RegisterStatementServiceServer(r, s.Statement)
	}
	if s.Admin != nil {
		clearingv1.RegisterAdminServiceServer(r, s.Admin)
	}
	return nil
}

// Metrics of the switch and the reporting stream, registered on the
// server's Prometheus registry (serve.Metrics.Registry).
type Metrics struct {
	reportRecords *prometheus.CounterVec   // province, outcome: stored|duplicate|rejected
	reportBatches *prometheus.CounterVec   // province
	switchCalls   *prometheus.CounterVec   // op, outcome: approved|refused|unavailable|error
	switchLatency *prometheus.HistogramVec // op: time spent routing, retries included
	switchLogFail prometheus.Counter       // switch log rows that could not be written
}

// Metric outcomes of a switch call.
const (
	outcomeApproved    = "approved"
	outcomeRefused     = "refused"
	outcomeUnavailable = "unavailable"
	outcomeError       = "error"
)

// NewMetrics creates the metrics and registers them on reg (nil: not
// registered, still counted, e.g. in tests). Errors: prometheus
// registration errors (a second registration on the same registry).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		reportRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "report", Name: "records_total",
			Help: "Outbox records received on ReportUsage, by reporting province and outcome (stored, duplicate, rejected).",
		}, []string{"province", "outcome"}),
		reportBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "report", Name: "batches_total",
			Help: "Report batches acknowledged, by reporting province.",
		}, []string{"province"}),
		switchCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "switch", Name: "calls_total",
			Help: "Calls routed by the switch, by operation and outcome (approved, refused, unavailable, error).",
		}, []string{"op", "outcome"}),
		switchLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "gongji", Subsystem: "switch", Name: "route_seconds",
			Help:    "Time the switch spent on a routed call (retries included), by operation.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"op"}),
		switchLogFail: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "switch", Name: "log_failures_total",
			Help: "Routed calls whose switch log row could not be written (the answer was still returned).",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.reportRecords, m.reportBatches, m.switchCalls, m.switchLatency, m.switchLogFail} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
