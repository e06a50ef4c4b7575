package provinceapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"gongji/config"
	"gongji/internal/clock"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	"gongji/sharing"
)

// Defaults and limits of the background workers (docs/cli.md for the flags).
const (
	// DefaultReportBatch is the outbox records per report batch (--report-batch).
	DefaultReportBatch = 1000
	// ReportBatchRecordsMax is the largest batch the clearing service accepts
	// (clearingapi.DefaultReportBatchRecordsMax); a larger one would end every
	// stream with InvalidArgument.
	ReportBatchRecordsMax = 5000
	// DefaultReportInterval is the outbox poll interval when there is nothing
	// to send (--report-interval): a committed usage reaches the clearing
	// service within about this long.
	DefaultReportInterval = 100 * time.Millisecond
	// DefaultAckTimeout bounds the wait for one batch's acknowledgement; a
	// stream that does not answer in time is cut and reopened, and the batch
	// is sent again (duplicates are recognised by the clearing service).
	DefaultAckTimeout = 30 * time.Second
	// DefaultRelayBatch is the relay messages leased per poll.
	DefaultRelayBatch = 100
	// RelayBatchMax bounds RelayBatch.
	RelayBatchMax = 1000
	// DefaultRelayInterval is the relay queue poll interval when it is empty.
	DefaultRelayInterval = 200 * time.Millisecond
	// DefaultRelayRetryMax caps the delay before a failed relay message's
	// next attempt (1 s doubling per attempt): a province node that was down
	// for an hour gets its messages within a minute of coming back.
	DefaultRelayRetryMax = time.Minute
	relayRetryBase       = time.Second
	// DefaultBackoffBase and DefaultBackoffMax bound the wait after a worker's
	// error (stream failure, database error) before it tries again; the wait
	// doubles per consecutive failure, with jitter, and resets on success.
	DefaultBackoffBase = 100 * time.Millisecond
	DefaultBackoffMax  = 5 * time.Second
)

// WorkerOptions configures NewWorkers.
type WorkerOptions struct {
	// Service is the node's domain service: the sweeper expires proposals
	// with it, and the relay worker keeps the authority's answers to
	// forwarded dissolutions as replicas. Required.
	Service *sharing.Service
	// Outbox is read by the streamer (provincedb.Store). Required.
	Outbox sharing.OutboxReader
	// Relay is the durable relay queue (provincedb.Store). Required.
	Relay sharing.RelayQueue
	// Remote delivers relay messages through the switch. Required.
	Remote *Remote
	// Conn is the connection to the clearing service (DialClearing) for the
	// ReportUsage stream. Required.
	Conn grpc.ClientConnInterface
	// Clock is the Service's clock: relay messages are due and proposals
	// expire by it. Default clock.Real.
	Clock clock.Clock
	// Log and Metrics. Defaults: nop, unregistered metrics.
	Log     *zap.Logger
	Metrics *Metrics

	// ReportBatch: outbox records per batch, [1, ReportBatchRecordsMax]
	// (and at most the store's own limit). Default DefaultReportBatch.
	ReportBatch int
	// ReportInterval: outbox poll interval when idle. Default DefaultReportInterval.
	ReportInterval time.Duration
	// AckTimeout: wait for one batch's acknowledgement. Default DefaultAckTimeout.
	AckTimeout time.Duration
	// SweepInterval: how often expired proposals are swept. Default
	// config.ProposalSweepInterval.
	SweepInterval time.Duration
	// RelayBatch: relay messages per poll, [1, RelayBatchMax]. Default DefaultRelayBatch.
	RelayBatch int
	// RelayInterval: relay poll interval when the queue is empty. Default DefaultRelayInterval.
	RelayInterval time.Duration
	// RelayRetryMax caps a failed relay message's retry delay. Default DefaultRelayRetryMax.
	RelayRetryMax time.Duration
	// BackoffBase, BackoffMax: waits after a worker error. Defaults
	// DefaultBackoffBase, DefaultBackoffMax.
	BackoffBase, BackoffMax time.Duration
}

func (o WorkerOptions) withDefaults() (WorkerOptions, error) {
	if o.Service == nil || o.Outbox == nil || o.Relay == nil || o.Remote == nil || o.Conn == nil {
		return o, errors.New("provinceapi: NewWorkers needs Service, Outbox, Relay, Remote and Conn")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.ReportInterval, DefaultReportInterval)
	def(&o.AckTimeout, DefaultAckTimeout)
	def(&o.SweepInterval, config.ProposalSweepInterval)
	def(&o.RelayInterval, DefaultRelayInterval)
	def(&o.RelayRetryMax, DefaultRelayRetryMax)
	def(&o.BackoffBase, DefaultBackoffBase)
	def(&o.BackoffMax, DefaultBackoffMax)
	if o.ReportBatch == 0 {
		o.ReportBatch = DefaultReportBatch
	}
	if o.RelayBatch == 0 {
		o.RelayBatch = DefaultRelayBatch
	}
	switch {
	case o.ReportBatch < 1 || o.ReportBatch > ReportBatchRecordsMax:
		return o, fmt.Errorf("provinceapi: ReportBatch %d not in [1, %d]", o.ReportBatch, ReportBatchRecordsMax)
	case o.RelayBatch < 1 || o.RelayBatch > RelayBatchMax:
		return o, fmt.Errorf("provinceapi: RelayBatch %d not in [1, %d]", o.RelayBatch, RelayBatchMax)
	case o.ReportInterval < 0 || o.AckTimeout < 0 || o.SweepInterval < 0 || o.RelayInterval < 0 ||
		o.RelayRetryMax < relayRetryBase || o.BackoffBase < 0 || o.BackoffMax < o.BackoffBase:
		return o, errors.New("provinceapi: worker intervals must be positive, RelayRetryMax ≥ 1 s and BackoffMax ≥ BackoffBase")
	}
	if o.Clock == nil {
		o.Clock = clock.Real
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Metrics == nil {
		m, err := NewMetrics(nil)
		if err != nil {
			return o, err
		}
		o.Metrics = m
	}
	return o, nil
}

// Workers are a province node's background loops: the outbox streamer, the
// relay worker and the proposal sweeper. Each runs until its context ends,
// works in bounded batches, and waits with a growing backoff after an error.
// Construct with NewWorkers; Run runs all three.
type Workers struct {
	o       WorkerOptions
	batchID atomic.Int64
}

// NewWorkers checks opts and returns the workers. Errors: a missing
// dependency, a setting out of range, metrics construction errors.
func NewWorkers(opts WorkerOptions) (*Workers, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	w := &Workers{o: o}
	// Batch ids are echoed in acks only to pair an ack with its batch; a
	// start from the clock keeps them apart across restarts in the logs.
	w.batchID.Store(time.Now().UnixMilli())
	return w, nil
}

// Run runs the outbox streamer, the relay worker and the proposal sweeper
// until ctx ends, and returns when all three have stopped.
func (w *Workers) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, run := range []func(context.Context){w.RunOutbox, w.RunRelay, w.RunSweeper} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(ctx)
		}()
	}
	wg.Wait()
}

// retryWait is an exponential wait with jitter between base and max.
type retryWait struct{ base, max, cur time.Duration }

func (b *retryWait) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.base
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	if b.cur <= 0 {
		return 0
	}
	// Jitter in [cur/2, cur]: nodes that lost the clearing service together
	// do not reconnect in lockstep.
	return b.cur/2 + time.Duration(rand.Int64N(int64(b.cur/2)+1))
}

func (b *retryWait) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// ---------------------------------------------------------------------------
// Outbox streamer

// RunOutbox streams the outbox to the clearing service over one long-lived
// ReportUsage stream until ctx ends: it sends the unacknowledged records in
// seq order, ReportBatch at a time, one batch in flight, and marks exactly
// the acknowledged seqs as acknowledged — only after the clearing service
// acknowledged them, so nothing is lost; a resent record is recognised there
// by (province, seq), so nothing is counted twice. Records the clearing
// service rejected are acknowledged too (it keeps them as exceptions) and
// logged. After any stream error it reconnects with backoff.
func (w *Workers) RunOutbox(ctx context.Context) {
	client := clearingv1.NewReportingServiceClient(w.o.Conn)
	bo := retryWait{base: w.o.BackoffBase, max: w.o.BackoffMax}
	for ctx.Err() == nil {
		progressed, err := w.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		w.o.Metrics.reportStreams.WithLabelValues("failed").Inc()
		if progressed {
			bo.reset()
		}
		wait := bo.next()
		w.o.Log.Warn("report stream ended; reconnecting", zap.Error(err), zap.Duration("backoff", wait))
		if !sleep(ctx, wait) {
			return
		}
	}
}

// stream runs one ReportUsage stream until an error; it reports whether any
// batch was acknowledged on it.
func (w *Workers) stream(ctx context.Context, client clearingv1.ReportingServiceClient) (bool, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := client.ReportUsage(sctx)
	if err != nil {
		return false, fmt.Errorf("open report stream: %w", err)
	}
	w.o.Metrics.reportStreams.WithLabelValues("opened").Inc()
	progressed := false
	for {
		recs, err := w.o.Outbox.PendingOutbox(sctx, w.o.ReportBatch)
		if err != nil {
			w.o.Metrics.workerErrors.WithLabelValues("outbox").Inc()
			return progressed, fmt.Errorf("read outbox: %w", err)
		}
		if len(recs) == 0 {
			if !sleep(sctx, w.o.ReportInterval) {
				return progressed, sctx.Err()
			}
			continue
		}
		if err := w.sendBatch(sctx, cancel, st, recs); err != nil {
			return progressed, err
		}
		progressed = true
		if len(recs) < w.o.ReportBatch && !sleep(sctx, w.o.ReportInterval) {
			return progressed, sctx.Err()
		}
	}
}

// sendBatch sends one batch, waits for its acknowledgement (cutting the
// stream with cancel if none comes within AckTimeout) and marks the
// acknowledged seqs.
func (w *Workers) sendBatch(ctx context.Context, cancel context.CancelFunc, st clearingv1.ReportingService_ReportUsageClient, recs []sharing.OutboxRecord) error {
	batch := &clearingv1.ReportBatch{BatchId: w.batchID.Add(1), Records: make([]*clearingv1.UsageRecord, len(recs))}
	sent := make(map[int64]bool, len(recs))
	for i, r := range recs {
		p, err := recordToProto(r)
		if err != nil {
			// The row cannot be read as what it claims to be. It is sent in
			// the form it has, so that the clearing service rejects it
			// visibly (an exception on the statement) instead of it blocking
			// the outbox or vanishing.
			w.o.Log.Error("outbox record cannot be decoded; reporting it for rejection",
				zap.Int64("seq", r.Seq), zap.String("key", r.Key), zap.Error(err))
		}
		batch.Records[i] = p
		sent[r.Seq] = true
	}
	if err := st.Send(batch); err != nil {
		if errors.Is(err, io.EOF) {
			_, err = st.Recv() // the stream's real status
		}
		return fmt.Errorf("send batch %d: %w", batch.BatchId, err)
	}
	timer := time.AfterFunc(w.o.AckTimeout, cancel)
	ack, err := st.Recv()
	if !timer.Stop() {
		return fmt.Errorf("batch %d: no acknowledgement within %s", batch.BatchId, w.o.AckTimeout)
	}
	if err != nil {
		return fmt.Errorf("batch %d: %w", batch.BatchId, err)
	}
	if ack.GetBatchId() != batch.BatchId {
		return fmt.Errorf("acknowledgement for batch %d, expected %d", ack.GetBatchId(), batch.BatchId)
	}
	for _, s := range ack.GetSeqs() {
		if !sent[s] {
			return fmt.Errorf("batch %d: acknowledgement names seq %d, which was not sent", batch.BatchId, s)
		}
	}
	if err := w.o.Outbox.AckOutbox(ctx, ack.GetSeqs()); err != nil {
		// The clearing service has them; they are sent again and
		// recognised as duplicates.
		w.o.Metrics.workerErrors.WithLabelValues("outbox").Inc()
		return fmt.Errorf("mark batch %d acknowledged: %w", batch.BatchId, err)
	}
	w.o.Metrics.reportBatches.Inc()
	rejected := min(len(ack.GetRejected()), len(ack.GetSeqs()))
	w.o.Metrics.reportRecords.WithLabelValues("acked").Add(float64(len(ack.GetSeqs()) - rejected))
	w.o.Metrics.reportRecords.WithLabelValues("rejected").Add(float64(rejected))
	for _, rj := range ack.GetRejected() {
		// The clearing service keeps it as a reconciliation exception; the
		// reason names keys, codes and fields, never personal data.
		w.o.Log.Warn("outbox record rejected by the clearing service", zap.Int64("seq", rj.GetSeq()),
			zap.String("reason", rj.GetReason()), zap.Int64("batch_id", batch.BatchId))
	}
	if len(ack.GetSeqs()) < len(sent) {
		w.o.Log.Warn("batch partly acknowledged; the rest is sent again", zap.Int64("batch_id", batch.BatchId),
			zap.Int("sent", len(sent)), zap.Int("acknowledged", len(ack.GetSeqs())))
	}
	return nil
}

// recordToProto converts an outbox row to its wire form. A row whose
// payload cannot be decoded is returned with its seq, kind and key only (the
// clearing service rejects it) together with the decode error.
func recordToProto(r sharing.OutboxRecord) (*clearingv1.UsageRecord, error) {
	p := &clearingv1.UsageRecord{Seq: r.Seq, Kind: recordKinds.proto(r.Kind), Role: reporterRoles.proto(r.Role)}
	fail := func(err error) (*clearingv1.UsageRecord, error) {
		if keyOK(r.Key) {
			p.UsageKey = r.Key
		}
		return p, err
	}
	switch r.Kind {
	case sharing.OutboxUsage:
		u, err := r.Usage()
		if err != nil {
			return fail(err)
		}
		p.UsageKey, p.UsageKind, p.RelationshipId = u.Key, usageKinds.proto(u.Kind), u.RelationshipID
		p.PayerProvince, p.PayerRegion, p.PayeeProvince, p.PayeeRegion = u.PayerProvince, u.PayerRegion, u.PayeeProvince, u.PayeeRegion
		p.Amount, p.OccurredAt, p.SharerRef, p.BeneficiaryRef = u.Amount.String(), ts(u.OccurredAt), u.SharerRef, u.BeneficiaryRef
	case sharing.OutboxReversal:
		v, err := r.Reversal()
		if err != nil {
			return fail(err)
		}
		p.UsageKey, p.ReversalOf, p.UsageKind, p.RelationshipId = v.Key, v.UsageKey, usageKinds.proto(v.Kind), v.RelationshipID
		p.PayerProvince, p.PayerRegion, p.PayeeProvince, p.PayeeRegion = v.PayerProvince, v.PayerRegion, v.PayeeProvince, v.PayeeRegion
		p.Amount, p.OccurredAt, p.SharerRef, p.BeneficiaryRef = v.Amount.String(), ts(v.OccurredAt), v.SharerRef, v.BeneficiaryRef
	case sharing.OutboxRelationship:
		rel, err := r.Relationship()
		if err != nil {
			return fail(err)
		}
		p.RelationshipId, p.Relationship = rel.ID, relationshipToProto(rel)
	default:
		return fail(fmt.Errorf("unknown outbox kind %q", r.Kind))
	}
	return p, nil
}

// ---------------------------------------------------------------------------
// Relay worker

// RunRelay delivers the relay queue until ctx ends: relationship snapshots
// to the beneficiary's node (RelayRelationshipSnapshot) and automatic
// dissolutions to the authority (RelayRelationshipCommand DISSOLVE_AUTO),
// at least once. A delivered message is marked done; one the other node
// refuses for good (its answer is a decision about the message, e.g. it is
// not the authority) is marked done, counted as dropped and logged at error
// level; anything else is retried after 1 s, 2 s, 4 s … up to RelayRetryMax.
func (w *Workers) RunRelay(ctx context.Context) {
	bo := retryWait{base: w.o.BackoffBase, max: w.o.BackoffMax}
	for ctx.Err() == nil {
		msgs, err := w.o.Relay.DueRelay(ctx, w.o.Clock(), w.o.RelayBatch)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.o.Metrics.workerErrors.WithLabelValues("relay").Inc()
			wait := bo.next()
			w.o.Log.Error("relay queue read failed", zap.Error(err), zap.Duration("backoff", wait))
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		bo.reset()
		for _, m := range msgs {
			if ctx.Err() != nil {
				return
			}
			w.deliver(ctx, m)
		}
		if len(msgs) < w.o.RelayBatch && !sleep(ctx, w.o.RelayInterval) {
			return
		}
	}
}

// errUndeliverable marks a relay message this node cannot even send (a
// payload that does not decode, an unknown kind): retrying cannot help.
var errUndeliverable = errors.New("provinceapi: relay message cannot be delivered")

// deliver sends one relay message and records the outcome in the queue.
func (w *Workers) deliver(ctx context.Context, m sharing.RelayMessage) {
	log := w.o.Log.With(zap.Int64("relay_id", m.ID), zap.String("kind", string(m.Kind)),
		zap.String("target", m.TargetProvince), zap.String("key", m.Key), zap.Int("attempt", m.Attempts))
	var err error
	switch m.Kind {
	case sharing.RelaySnapshot:
		snap, derr := m.Snapshot()
		if derr != nil {
			err = fmt.Errorf("%w: %w", errUndeliverable, derr)
			break
		}
		_, _, err = w.o.Remote.RelaySnapshot(ctx, m.TargetProvince, snap)
	case sharing.RelayDissolve:
		cmd, derr := m.DissolveCommand()
		if derr != nil {
			err = fmt.Errorf("%w: %w", errUndeliverable, derr)
			break
		}
		var snap sharing.Relationship
		if snap, err = w.o.Remote.Command(ctx, m.TargetProvince, cmd); err == nil {
			// The authority's answer is the replica's newest state; its own
			// snapshot follows through its relay queue (applied if newer).
			if _, rerr := w.o.Service.ApplyReplica(ctx, snap); rerr != nil {
				log.Warn("keeping the authority's answer as replica failed", zap.Error(rerr))
			}
		}
	default:
		err = fmt.Errorf("%w: unknown kind %q", errUndeliverable, m.Kind)
	}
	if ctx.Err() != nil {
		return // shutting down: the lease brings the message back
	}
	outcome := "delivered"
	switch {
	case err == nil:
	case m.Kind == sharing.RelayDissolve && errors.Is(err, sharing.ErrBadTransition):
		// The relationship had already ended at the authority (a voluntary
		// dissolution crossed the enrollment change): nothing left to do.
		log.Info("automatic dissolution found the relationship already ended", zap.Error(err))
	case permanent(err):
		outcome = "dropped"
		log.Error("relay message refused for good; dropped", zap.Error(err))
	default:
		outcome = "retry"
		next := w.o.Clock().Add(w.relayDelay(m.Attempts))
		log.Warn("relay delivery failed; will retry", zap.Error(err), zap.Time("next_attempt_at", next))
		if rerr := w.o.Relay.RelayRetry(ctx, m.ID, next); rerr != nil {
			// The lease brings it back anyway.
			w.o.Metrics.workerErrors.WithLabelValues("relay").Inc()
			log.Error("relay reschedule failed", zap.Error(rerr))
		}
	}
	w.o.Metrics.relayMessages.WithLabelValues(string(m.Kind), outcome).Inc()
	if outcome == "retry" {
		return
	}
	if derr := w.o.Relay.RelayDone(ctx, m.ID); derr != nil {
		// Delivered again after the lease; the other node applies it
		// idempotently.
		w.o.Metrics.workerErrors.WithLabelValues("relay").Inc()
		log.Error("marking relay message done failed", zap.Error(derr))
	}
}

// relayDelay is the wait before attempt n+1 of a message: 1 s doubling,
// capped at RelayRetryMax.
func (w *Workers) relayDelay(attempts int) time.Duration {
	d := relayRetryBase
	for i := 1; i < attempts && d < w.o.RelayRetryMax; i++ {
		d *= 2
	}
	return min(d, w.o.RelayRetryMax)
}

// permanent reports an answer that retrying the same message cannot change:
// a decision of the other node (or the switch) about the message itself, or
// a message this node cannot send. Unavailable, deadlines, Internal,
// authentication problems and inconsistent answers are retried: they heal
// when the node or the configuration is fixed.
func permanent(err error) bool {
	if errors.Is(err, errUndeliverable) {
		return true
	}
	var re *RemoteError
	if !errors.As(err, &re) {
		return false
	}
	switch re.GRPCStatus().Code() {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.FailedPrecondition,
		codes.PermissionDenied, codes.OutOfRange:
		return true
	}
	return false
}

// ---------------------------------------------------------------------------
// Proposal sweeper

// RunSweeper expires unanswered proposals (R4) every SweepInterval until
// ctx ends (Service.ExpireProposals, bounded batches), by the Service's clock.
func (w *Workers) RunSweeper(ctx context.Context) {
	t := time.NewTicker(w.o.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := w.o.Service.ExpireProposals(ctx, w.o.Clock())
		if n > 0 {
			w.o.Metrics.proposalsExpired.Add(float64(n))
			w.o.Log.Info("proposals expired", zap.Int("count", n))
		}
		if err != nil && ctx.Err() == nil {
			w.o.Metrics.workerErrors.WithLabelValues("sweeper").Inc()
			w.o.Log.Error("proposal sweep failed; next tick retries", zap.Error(err))
		}
	}
}
