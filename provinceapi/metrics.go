package provinceapi

import "github.com/prometheus/client_golang/prometheus"

// Metrics of a province node's transport: calls to the clearing service and
// the background workers. Register them on the server's registry
// (serve.Metrics.Registry) so /metrics shows them next to the gRPC metrics.
type Metrics struct {
	remoteCalls      *prometheus.CounterVec // op, code
	reportRecords    *prometheus.CounterVec // outcome: acked|rejected
	reportBatches    prometheus.Counter
	reportStreams    *prometheus.CounterVec // outcome: opened|failed
	relayMessages    *prometheus.CounterVec // kind, outcome: delivered|retry|dropped
	proposalsExpired prometheus.Counter
	workerErrors     *prometheus.CounterVec // worker
}

// NewMetrics creates the metrics and registers them on reg (nil: not
// registered, still counted, e.g. in tests). Errors: prometheus registration
// errors (a second registration on the same registry).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		remoteCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "node", Name: "remote_calls_total",
			Help: "Calls to the clearing switch (retries included in one call), by operation and final gRPC code.",
		}, []string{"op", "code"}),
		reportRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "node", Name: "report_records_total",
			Help: "Outbox records acknowledged by the clearing service, by outcome (acked, rejected: stored there as an exception).",
		}, []string{"outcome"}),
		reportBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "node", Name: "report_batches_total",
			Help: "Outbox batches acknowledged by the clearing service.",
		}),
		reportStreams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "node", Name: "report_streams_total",
			Help: "ReportUsage streams, by outcome: opened, or failed (ended by an error; the streamer reconnects).",
		}, []string{"outcome"}),
		relayMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "node", Name: "relay_messages_total",
			Help: "Relay queue deliveries, by kind and outcome (delivered, retry, dropped: refused for good by the other node).",
		}, []string{"kind", "outcome"}),
		proposalsExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "node", Name: "proposals_expired_total",
			Help: "Relationship proposals moved to EXPIRED by the sweeper.",
		}),
		workerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "gongji", Subsystem: "node", Name: "worker_errors_total",
			Help: "Errors of the background workers (outbox, relay, sweeper); each is retried after a backoff.",
		}, []string{"worker"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.remoteCalls, m.reportRecords, m.reportBatches, m.reportStreams,
			m.relayMessages, m.proposalsExpired, m.workerErrors} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
