package clearingapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/clearingdb"
	"gongji/internal/auditlog"
	"gongji/internal/clock"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
)

// Limits of the reporting stream.
const (
	// DefaultReportBatchRecordsMax bounds the records of one ReportBatch: a
	// node's default batch is 1,000 (docs/cli.md --report-batch), so 5,000
	// leaves room for a node configured larger while keeping one ingest
	// transaction short (one COPY, well under a second) and one message far
	// below RecvMsgBytesMax. A larger batch ends the stream with
	// InvalidArgument; the node must send smaller ones.
	DefaultReportBatchRecordsMax = 5000
)

// Ingester stores one report batch in one transaction (clearingdb.Store).
type Ingester interface {
	IngestBatch(ctx context.Context, province string, recs []clearingdb.Record, now time.Time) (clearingdb.Ack, error)
}

// ReportingOptions configures NewReporting.
type ReportingOptions struct {
	// Store ingests batches. Required.
	Store Ingester
	// Clock is the clearing service's clock: a batch's arrival time, which
	// decides its period and lateness (R14). Default clock.Real.
	Clock clock.Clock
	// Log: one line per batch with rejections, debug otherwise. Default nop.
	Log *zap.Logger
	// Metrics: record and batch counters. Default: unregistered metrics.
	Metrics *Metrics
	// BatchRecordsMax bounds the records of one batch. Default
	// DefaultReportBatchRecordsMax, range [1, clearingdb.BatchRowsMaxLimit];
	// keep it at most the store's BatchRowsMax.
	BatchRecordsMax int
}

// Reporting is gongji.clearing.v1.ReportingService: it receives every
// node's outbox over a bidirectional stream, stores each batch in one
// transaction (deduplicated by the node's sequence numbers and the usage
// keys) and acknowledges it. Construct with NewReporting.
type Reporting struct {
	clearingv1.UnimplementedReportingServiceServer

	store   Ingester
	now     clock.Clock
	log     *zap.Logger
	metrics *Metrics
	max     int

	stopOnce sync.Once
	stop     chan struct{}
}

// NewReporting checks opts and returns the service. Errors: a missing Store,
// BatchRecordsMax out of range, metrics construction errors.
func NewReporting(opts ReportingOptions) (*Reporting, error) {
	if opts.Store == nil {
		return nil, errors.New("clearingapi: NewReporting needs a Store")
	}
	if opts.BatchRecordsMax == 0 {
		opts.BatchRecordsMax = DefaultReportBatchRecordsMax
	}
	if opts.BatchRecordsMax < 1 || opts.BatchRecordsMax > clearingdb.BatchRowsMaxLimit {
		return nil, fmt.Errorf("clearingapi: BatchRecordsMax %d not in [1, %d]", opts.BatchRecordsMax, clearingdb.BatchRowsMaxLimit)
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Metrics == nil {
		m, err := NewMetrics(nil)
		if err != nil {
			return nil, err
		}
		opts.Metrics = m
	}
	return &Reporting{
		store: opts.Store, now: opts.Clock, log: opts.Log, metrics: opts.Metrics, max: opts.BatchRecordsMax,
		stop: make(chan struct{}),
	}, nil
}

// Shutdown ends every open ReportUsage stream after the batch it is storing
// (if any) is committed and acknowledged, with Unavailable: the nodes
// reconnect (to this or a restarted server) and send what is unacknowledged
// again. Call it when the server starts to stop, so that graceful stop does
// not wait for streams that never end by themselves. Idempotent.
func (r *Reporting) Shutdown() { r.stopOnce.Do(func() { close(r.stop) }) }

// ReportUsage serves one node's stream: the caller's province comes from its
// certificate, and it may report only its own records (a PAYER record of
// another payer province, a PAYEE record of another payee province, ... is
// rejected and acknowledged). Batches are handled one at a time in arrival
// order; each is acknowledged only after its transaction committed, so a
// stream cut at any point loses nothing and a resent batch is recognised.
//
// Ends with: nil when the node closes its side; InvalidArgument for a batch
// over the limit or a record with seq ≤ 0 (nothing of that batch stored);
// Unavailable on Shutdown or when the database is busy; the context's code
// when the stream is cancelled; Internal (logged) for anything else.
func (r *Reporting) ReportUsage(stream clearingv1.ReportingService_ReportUsageServer) error {
	ctx := stream.Context()
	province, err := callerProvince(ctx)
	if err != nil {
		return err
	}
	log := r.log.With(zap.String("province", province))

	// Recv runs in its own goroutine so that the loop below can also end on
	// Shutdown. It reads ahead at most one batch; after this handler returns,
	// gRPC cancels ctx, Recv fails and the goroutine ends.
	batches := make(chan *clearingv1.ReportBatch)
	recvErr := make(chan error, 1)
	go func() {
		for {
			b, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case batches <- b:
			case <-ctx.Done():
				return
			}
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-r.stop:
			return status.Error(codes.Unavailable, "clearing service is shutting down: reconnect and send the unacknowledged records again")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case b := <-batches:
			// One audit row per batch (internal/auditlog): the ingest
			// transaction writes it, or Finish does for a batch refused
			// before it or stored by none.
			bctx, batch := auditlog.Child(ctx, batchRef(b))
			ack, err := r.handle(bctx, log, province, b)
			if err != nil {
				err = statusError(log, "ReportUsage", err)
			}
			batch.Finish(bctx, err)
			if err != nil {
				return err
			}
			if err := stream.Send(ack); err != nil {
				return err
			}
		}
	}
}

// handle converts, stores and answers one batch.
func (r *Reporting) handle(ctx context.Context, log *zap.Logger, province string, b *clearingv1.ReportBatch) (*clearingv1.ReportAck, error) {
	in := b.GetRecords()
	if len(in) > r.max {
		return nil, status.Errorf(codes.InvalidArgument, "batch %d has %d records, at most %d: send smaller batches", b.GetBatchId(), len(in), r.max)
	}
	recs := make([]clearingdb.Record, len(in))
	for i, p := range in {
		recs[i] = recordFromProto(p)
	}
	ack, err := r.store.IngestBatch(ctx, province, recs, r.now())
	if err != nil {
		return nil, fmt.Errorf("batch %d: %w", b.GetBatchId(), err)
	}
	// Pair check: every seq of the batch must be acknowledged, once.
	if want := distinctSeqs(in); len(ack.Seqs) != want {
		return nil, fmt.Errorf("batch %d: ingest acknowledged %d seqs of %d", b.GetBatchId(), len(ack.Seqs), want)
	}
	out := &clearingv1.ReportAck{
		BatchId: b.GetBatchId(), Seqs: ack.Seqs, Stored: ack.Stored, Duplicates: ack.Duplicates,
		Rejected: make([]*clearingv1.RecordRejection, len(ack.Rejected)),
	}
	for i, rj := range ack.Rejected {
		out.Rejected[i] = &clearingv1.RecordRejection{Seq: rj.Seq, Reason: rj.Reason}
	}
	m := r.metrics
	m.reportBatches.WithLabelValues(province).Inc()
	m.reportRecords.WithLabelValues(province, "stored").Add(float64(ack.Stored))
	m.reportRecords.WithLabelValues(province, "duplicate").Add(float64(ack.Duplicates))
	m.reportRecords.WithLabelValues(province, "rejected").Add(float64(len(ack.Rejected)))
	fields := []zap.Field{zap.Int64("batch_id", b.GetBatchId()), zap.Int("records", len(in)),
		zap.Int64("stored", ack.Stored), zap.Int64("duplicates", ack.Duplicates), zap.Int("rejected", len(ack.Rejected))}
	if len(ack.Rejected) > 0 {
		// Reasons name keys, codes and fields, never personal data.
		first := ack.Rejected[0]
		log.Warn("report batch with rejected records", append(fields,
			zap.Int64("first_rejected_seq", first.Seq), zap.String("first_reason", first.Reason))...)
	} else if ce := log.Check(zap.DebugLevel, "report batch stored"); ce != nil {
		ce.Write(fields...)
	}
	return out, nil
}

func distinctSeqs(in []*clearingv1.UsageRecord) int {
	seen := make(map[int64]struct{}, len(in))
	for _, r := range in {
		seen[r.GetSeq()] = struct{}{}
	}
	return len(seen)
}

// recordFromProto copies a wire record into the ingest form. It validates
// nothing: IngestBatch checks every field and turns an invalid record into
// an acknowledged rejection, which an error here could not do. Unknown enum
// values become their numeric names, which IngestBatch rejects by name.
func recordFromProto(p *clearingv1.UsageRecord) clearingdb.Record {
	r := clearingdb.Record{
		Seq:            p.GetSeq(),
		Kind:           reportRecordKind(p.GetKind()),
		Role:           reportRole(p.GetRole()),
		UsageKey:       p.GetUsageKey(),
		ReversalOf:     p.GetReversalOf(),
		UsageKind:      reportUsageKind(p.GetUsageKind()),
		PayerProvince:  p.GetPayerProvince(),
		PayerRegion:    p.GetPayerRegion(),
		PayeeProvince:  p.GetPayeeProvince(),
		PayeeRegion:    p.GetPayeeRegion(),
		Amount:         p.GetAmount(),
		SharerRef:      p.GetSharerRef(),
		BeneficiaryRef: p.GetBeneficiaryRef(),
		RelationshipID: p.GetRelationshipId(),
	}
	if ts := p.GetOccurredAt(); ts != nil {
		r.OccurredAt = ts.AsTime()
	}
	if r.Kind == clearingdb.RecordRelationship && p.GetRelationship() != nil {
		rel := p.GetRelationship()
		c := &clearingdb.RelationshipChange{
			RelationshipID:      rel.GetRelationshipId(),
			Version:             rel.GetVersion(),
			Status:              strings.TrimPrefix(rel.GetStatus().String(), "RELATIONSHIP_STATUS_"),
			SharerProvince:      rel.GetSharerProvince(),
			BeneficiaryProvince: rel.GetBeneficiaryProvince(),
		}
		if ts := rel.GetUpdatedAt(); ts != nil {
			c.ChangedAt = ts.AsTime()
		}
		r.Relationship = c
	}
	return r
}

func reportRecordKind(k clearingv1.RecordKind) clearingdb.RecordKind {
	switch k {
	case clearingv1.RecordKind_RECORD_KIND_USAGE:
		return clearingdb.RecordUsage
	case clearingv1.RecordKind_RECORD_KIND_REVERSAL:
		return clearingdb.RecordReversal
	case clearingv1.RecordKind_RECORD_KIND_RELATIONSHIP:
		return clearingdb.RecordRelationship
	}
	return clearingdb.RecordKind(k.String())
}

func reportRole(r clearingv1.ReporterRole) clearingdb.Role {
	switch r {
	case clearingv1.ReporterRole_REPORTER_ROLE_PAYER:
		return clearingdb.RolePayer
	case clearingv1.ReporterRole_REPORTER_ROLE_PAYEE:
		return clearingdb.RolePayee
	case clearingv1.ReporterRole_REPORTER_ROLE_LOCAL:
		return clearingdb.RoleLocal
	}
	return clearingdb.Role(r.String())
}

// reportUsageKind is the settlement kind name of a proto usage kind ("MEDICAL",
// ...); UNSPECIFIED and unknown values keep their proto names and are
// rejected downstream.
func reportUsageKind(k provincev1.UsageKind) string {
	if k == provincev1.UsageKind_USAGE_KIND_UNSPECIFIED {
		return k.String()
	}
	return strings.TrimPrefix(k.String(), "USAGE_KIND_")
}
