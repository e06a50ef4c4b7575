package clearingapi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/clearingdb"
	"gongji/config"
	"gongji/internal/clock"
	"gongji/internal/pii"
	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/settlement"
)

// Limits and defaults of the switch.
const (
	// usageKeyLenMax bounds usage and reversal keys at the switch. A usage's
	// key becomes its usage_id in the clearing database and the audit export,
	// which hold at most settlement.UsageIDLenMax (64) bytes; authorising a
	// longer key would move money that can never be cleared.
	usageKeyLenMax = settlement.UsageIDLenMax
	// commandKeyLenMax bounds relationship command and proposal keys: the
	// province nodes' own limit (provinceapi.KeyLenMax, one limit for every
	// key). A longer key would be routed only to be refused by the node.
	commandKeyLenMax = settlement.UsageIDLenMax
	// relationshipIDLenMax: relationship ids are "R" + 24 hex characters
	// (docs/architecture.md); the clearing database stores up to 64.
	relationshipIDLenMax = settlement.UsageIDLenMax
	// occurredAtSkewMax: business time (occurred_at) from a request may be at
	// most a day ahead of the clearing clock (docs/architecture.md, "Time").
	occurredAtSkewMax = 24 * time.Hour

	// DefaultSwitchRetryMax is the number of attempts of one routed call
	// while the target answers Unavailable (every routed call is idempotent
	// by its key). Three attempts ride out a node restart or a connection
	// being replaced, and all of them stay within the one RPC deadline.
	DefaultSwitchRetryMax = 3
	// SwitchRetryMaxLimit caps RetryMax.
	SwitchRetryMaxLimit = 10
	// DefaultSwitchRetryBackoff is the wait before the second attempt; it
	// doubles each attempt, with full jitter.
	DefaultSwitchRetryBackoff = 50 * time.Millisecond
	// switchRetryBackoffMax caps one wait.
	switchRetryBackoffMax = time.Second
	// switchLogTimeout bounds the switch log write. It runs even when the
	// caller has gone, so that what the target did is on record.
	switchLogTimeout = 2 * time.Second
	// switchDetailLenMax: the switch log keeps at most this much of a
	// target's refusal message (the column allows 1024 bytes).
	switchDetailLenMax = 512
)

// PeerDialer gives the PeerService client of a province's node (Nodes).
// Errors: ErrUnknownNode, ErrNodesClosed.
type PeerDialer interface {
	Peer(province string) (provincev1.PeerServiceClient, error)
}

// SwitchLogger durably records one routed call (clearingdb.Store).
type SwitchLogger interface {
	LogSwitch(ctx context.Context, e *clearingdb.SwitchEntry) error
}

// SwitchOptions configures NewSwitch.
type SwitchOptions struct {
	// Nodes routes to province nodes. Required.
	Nodes PeerDialer
	// Store records every routed call (the tie-breaker of reconciliation).
	// Required.
	Store SwitchLogger
	// Clock gives the switch log's times and bounds occurred_at. Default
	// clock.Real.
	Clock clock.Clock
	// Log: one line per routed call. Default nop.
	Log *zap.Logger
	// Metrics: calls by outcome and latency. Default: unregistered metrics.
	Metrics *Metrics
	// RPCTimeout is the deadline of one routed call, all retries included;
	// a caller's earlier deadline wins. Default config.RPCTimeout.
	RPCTimeout time.Duration
	// RetryMax: attempts while the target answers Unavailable. Default
	// DefaultSwitchRetryMax, range [1, SwitchRetryMaxLimit].
	RetryMax int
	// RetryBackoff: wait before the second attempt. Default
	// DefaultSwitchRetryBackoff, range (0, 1 s].
	RetryBackoff time.Duration
}

// Switch is gongji.clearing.v1.SwitchService: it routes a province node's
// cross-province request to the node that is the authority for it (the
// sharer's, for debits, reversals and relationship commands; the
// beneficiary's, for snapshots), after checking that the caller acts only for
// itself and that every field is valid. It holds no money and no state: the
// payer's node decides, the switch passes the answer on and records it.
// Construct with NewSwitch.
type Switch struct {
	clearingv1.UnimplementedSwitchServiceServer

	nodes   PeerDialer
	store   SwitchLogger
	now     clock.Clock
	log     *zap.Logger
	metrics *Metrics
	timeout time.Duration
	tries   int
	backoff time.Duration
}

// NewSwitch checks opts and returns the service. Errors: a missing Nodes or
// Store, a field out of range, metrics construction errors.
func NewSwitch(opts SwitchOptions) (*Switch, error) {
	if opts.Nodes == nil || opts.Store == nil {
		return nil, errors.New("clearingapi: NewSwitch needs Nodes and Store")
	}
	if opts.RPCTimeout == 0 {
		opts.RPCTimeout = config.RPCTimeout
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = DefaultSwitchRetryMax
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = DefaultSwitchRetryBackoff
	}
	switch {
	case opts.RPCTimeout < 0:
		return nil, fmt.Errorf("clearingapi: RPCTimeout %s must be positive", opts.RPCTimeout)
	case opts.RetryMax < 1 || opts.RetryMax > SwitchRetryMaxLimit:
		return nil, fmt.Errorf("clearingapi: RetryMax %d not in [1, %d]", opts.RetryMax, SwitchRetryMaxLimit)
	case opts.RetryBackoff < 0 || opts.RetryBackoff > switchRetryBackoffMax:
		return nil, fmt.Errorf("clearingapi: RetryBackoff %s not in (0, %s]", opts.RetryBackoff, switchRetryBackoffMax)
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
	return &Switch{nodes: opts.Nodes, store: opts.Store, now: opts.Clock, log: opts.Log, metrics: opts.Metrics,
		timeout: opts.RPCTimeout, tries: opts.RetryMax, backoff: opts.RetryBackoff}, nil
}

// Authorize routes a cross-province debit to the payer's node (R9-R11, R13).
// The caller must be the payee province. The answer (approval or refusal
// with the node's code: ResourceExhausted, FailedPrecondition, NotFound,
// AlreadyExists, InvalidArgument) is the payer node's, passed on unchanged.
// Errors of its own: Unauthenticated, PermissionDenied, InvalidArgument,
// Unavailable (the payer node is unreachable, did not answer in time, or the
// call could not be recorded: retry with the same usage_key), Internal.
func (s *Switch) Authorize(ctx context.Context, req *clearingv1.AuthorizeRequest) (*clearingv1.AuthorizeResponse, error) {
	caller, err := callerProvince(ctx)
	if err != nil {
		return nil, err
	}
	d := req.GetDebit()
	if d == nil {
		return nil, status.Error(codes.InvalidArgument, "debit is required")
	}
	if err := requireProvince(ctx, d.GetPayeeProvince()); err != nil {
		return nil, err
	}
	payer := req.GetPayerProvince()
	var c edgeCheck
	c.key("debit.usage_key", d.GetUsageKey(), usageKeyLenMax)
	c.key("debit.relationship_id", d.GetRelationshipId(), relationshipIDLenMax)
	kind := c.usageKind("debit.kind", d.GetKind())
	amount := c.amount("debit.amount", d.GetAmount())
	c.regionIn("debit.payee_region_code", d.GetPayeeRegionCode(), caller)
	occurred := c.timestamp("debit.occurred_at", d.GetOccurredAt(), s.now())
	c.ref("debit.beneficiary_ref", d.GetBeneficiaryRef())
	c.otherProvince("payer_province", payer, caller)
	if c.err != nil {
		return nil, c.err
	}

	e := &clearingdb.SwitchEntry{
		Op: clearingdb.OpAuthorize, CallerProvince: caller, TargetProvince: payer, Key: d.GetUsageKey(),
		Amount: amount, Kind: kind, PayeeProvince: caller, PayeeRegion: d.GetPayeeRegionCode(),
		OccurredAt: occurred, RelationshipID: d.GetRelationshipId(),
	}
	var resp *provincev1.DebitResponse
	err = s.route(ctx, e, func(ctx context.Context, peer provincev1.PeerServiceClient) error {
		r, err := peer.Debit(ctx, d)
		if err != nil {
			return err
		}
		// Pair check: the payer must answer for this usage, this amount, as itself.
		if err := sameAnswer(r.GetUsageKey(), d.GetUsageKey(), r.GetAmount(), amount); err != nil {
			return err
		}
		if err := payerFields(r.GetPayerProvince(), r.GetPayerRegion(), payer); err != nil {
			return err
		}
		e.PayerRegion = r.GetPayerRegion()
		resp = r
		return nil
	}, zap.String("usage_key", d.GetUsageKey()), zap.String("relationship_id", d.GetRelationshipId()),
		zap.String("beneficiary_ref", d.GetBeneficiaryRef()), zap.String("amount_yuan", amount.String()),
		zap.String("kind", kind))
	if err != nil {
		return nil, err
	}
	return &clearingv1.AuthorizeResponse{Debit: resp}, nil
}

// AuthorizeReversal routes a reversal of a cross-province usage (R12) to the
// payer's node; the caller must be the payee province. Codes as Authorize;
// retry with the same reversal_key.
func (s *Switch) AuthorizeReversal(ctx context.Context, req *clearingv1.AuthorizeReversalRequest) (*clearingv1.AuthorizeReversalResponse, error) {
	caller, err := callerProvince(ctx)
	if err != nil {
		return nil, err
	}
	rv := req.GetReversal()
	if rv == nil {
		return nil, status.Error(codes.InvalidArgument, "reversal is required")
	}
	if err := requireProvince(ctx, rv.GetPayeeProvince()); err != nil {
		return nil, err
	}
	payer := req.GetPayerProvince()
	var c edgeCheck
	c.key("reversal.reversal_key", rv.GetReversalKey(), usageKeyLenMax)
	c.key("reversal.usage_key", rv.GetUsageKey(), usageKeyLenMax)
	if c.err == nil && rv.GetReversalKey() == rv.GetUsageKey() {
		c.fail("reversal.reversal_key must differ from the usage_key it reverses")
	}
	amount := c.amount("reversal.amount", rv.GetAmount())
	occurred := c.timestamp("reversal.occurred_at", rv.GetOccurredAt(), s.now())
	c.otherProvince("payer_province", payer, caller)
	if c.err != nil {
		return nil, c.err
	}

	e := &clearingdb.SwitchEntry{
		Op: clearingdb.OpReversal, CallerProvince: caller, TargetProvince: payer, Key: rv.GetReversalKey(),
		ReversalOf: rv.GetUsageKey(), Amount: amount, PayeeProvince: caller, OccurredAt: occurred,
	}
	var resp *provincev1.ReverseResponse
	err = s.route(ctx, e, func(ctx context.Context, peer provincev1.PeerServiceClient) error {
		r, err := peer.ReverseDebit(ctx, rv)
		if err != nil {
			return err
		}
		if err := sameAnswer(r.GetReversalKey(), rv.GetReversalKey(), r.GetAmount(), amount); err != nil {
			return err
		}
		if r.GetUsageKey() != rv.GetUsageKey() {
			return fmt.Errorf("%w: answered for usage %q, asked for %q", errInconsistentAnswer, r.GetUsageKey(), rv.GetUsageKey())
		}
		resp = r
		return nil
	}, zap.String("reversal_key", rv.GetReversalKey()), zap.String("usage_key", rv.GetUsageKey()),
		zap.String("amount_yuan", amount.String()))
	if err != nil {
		return nil, err
	}
	return &clearingv1.AuthorizeReversalResponse{Reversal: resp}, nil
}

// RelayRelationshipCommand forwards a relationship command (propose,
// consent, decline, dissolve) from the province it comes from to the
// authority, the sharer's node, and returns the authority's snapshot. The
// caller must be command.origin_province; target_province must be another
// provincial unit (for PROPOSE, the sharer's). Codes as Authorize; retry
// with the same command_key.
func (s *Switch) RelayRelationshipCommand(ctx context.Context, req *clearingv1.RelayRelationshipCommandRequest) (*clearingv1.RelayRelationshipCommandResponse, error) {
	caller, err := callerProvince(ctx)
	if err != nil {
		return nil, err
	}
	cmd := req.GetCommand()
	if cmd == nil {
		return nil, status.Error(codes.InvalidArgument, "command is required")
	}
	if err := requireProvince(ctx, cmd.GetOriginProvince()); err != nil {
		return nil, err
	}
	target := req.GetTargetProvince()
	var c edgeCheck
	c.otherProvince("target_province", target, caller)
	c.relationshipCommand(cmd, caller, target)
	if c.err != nil {
		return nil, c.err
	}

	e := &clearingdb.SwitchEntry{
		Op: clearingdb.OpRelationshipCommand, CallerProvince: caller, TargetProvince: target,
		Key: cmd.GetCommandKey(), RelationshipID: cmd.GetRelationshipId(),
	}
	var resp *provincev1.Relationship
	err = s.route(ctx, e, func(ctx context.Context, peer provincev1.PeerServiceClient) error {
		r, err := peer.ApplyRelationshipCommand(ctx, cmd)
		if err != nil {
			return err
		}
		// The authority answers with its own relationship.
		if r.GetSharerProvince() != target || !switchKeyOK(r.GetRelationshipId(), relationshipIDLenMax) {
			return fmt.Errorf("%w: snapshot %q of sharer province %q from the authority %s", errInconsistentAnswer,
				r.GetRelationshipId(), r.GetSharerProvince(), target)
		}
		if cmd.GetRelationshipId() != "" && r.GetRelationshipId() != cmd.GetRelationshipId() {
			return fmt.Errorf("%w: answered for relationship %q, asked for %q", errInconsistentAnswer,
				r.GetRelationshipId(), cmd.GetRelationshipId())
		}
		e.RelationshipID = r.GetRelationshipId()
		resp = r
		return nil
	}, zap.String("action", cmd.GetAction().String()), zap.String("command_key", cmd.GetCommandKey()),
		zap.String("relationship_id", cmd.GetRelationshipId()))
	if err != nil {
		return nil, err
	}
	return &clearingv1.RelayRelationshipCommandResponse{Relationship: resp}, nil
}

// RelayRelationshipSnapshot forwards the authority's snapshot of a
// relationship to the beneficiary's node, which keeps it as its replica
// (applied only if newer). The caller must be relationship.sharer_province;
// target_province must equal relationship.beneficiary_province and be
// another province. Codes as Authorize.
func (s *Switch) RelayRelationshipSnapshot(ctx context.Context, req *clearingv1.RelayRelationshipSnapshotRequest) (*clearingv1.RelayRelationshipSnapshotResponse, error) {
	caller, err := callerProvince(ctx)
	if err != nil {
		return nil, err
	}
	rel := req.GetRelationship()
	if rel == nil {
		return nil, status.Error(codes.InvalidArgument, "relationship is required")
	}
	if err := requireProvince(ctx, rel.GetSharerProvince()); err != nil {
		return nil, err
	}
	target := req.GetTargetProvince()
	var c edgeCheck
	c.otherProvince("target_province", target, caller)
	if c.err == nil && target != rel.GetBeneficiaryProvince() {
		c.fail(fmt.Sprintf("target_province %s is not the relationship's beneficiary_province %s", target, safeCode(rel.GetBeneficiaryProvince())))
	}
	c.relationship(rel, caller)
	if c.err != nil {
		return nil, c.err
	}

	e := &clearingdb.SwitchEntry{
		Op: clearingdb.OpRelationshipSnapshot, CallerProvince: caller, TargetProvince: target,
		Key: rel.GetRelationshipId() + "@" + strconv.FormatInt(rel.GetVersion(), 10), RelationshipID: rel.GetRelationshipId(),
	}
	var resp *provincev1.ApplyRelationshipSnapshotResponse
	err = s.route(ctx, e, func(ctx context.Context, peer provincev1.PeerServiceClient) error {
		r, err := peer.ApplyRelationshipSnapshot(ctx, &provincev1.ApplyRelationshipSnapshotRequest{Relationship: rel})
		if err != nil {
			return err
		}
		if r.GetApplied() && r.GetVersion() != rel.GetVersion() {
			return fmt.Errorf("%w: applied version %d, sent %d", errInconsistentAnswer, r.GetVersion(), rel.GetVersion())
		}
		resp = r
		return nil
	}, zap.String("relationship_id", rel.GetRelationshipId()), zap.Int64("version", rel.GetVersion()),
		zap.String("status", rel.GetStatus().String()))
	if err != nil {
		return nil, err
	}
	return &clearingv1.RelayRelationshipSnapshotResponse{Applied: resp.GetApplied(), Version: resp.GetVersion()}, nil
}

// errInconsistentAnswer: the target answered OK for something else than it
// was asked (another key, another amount, another province). A bug or a
// misrouted node: the answer is not passed on.
var errInconsistentAnswer = errors.New("clearingapi: target node answered inconsistently")

// sameAnswer checks that an answer is for the key and amount asked.
func sameAnswer(gotKey, wantKey, gotAmount string, want money.Yuan) error {
	if gotKey != wantKey {
		return fmt.Errorf("%w: answered for key %q, asked for %q", errInconsistentAnswer, gotKey, wantKey)
	}
	got, err := money.Parse(gotAmount)
	if err != nil || !got.Equal(want) {
		return fmt.Errorf("%w: answered amount %q, asked for %s", errInconsistentAnswer, gotAmount, want)
	}
	return nil
}

// payerFields checks the payer node's province and region in its answer
// (empty is allowed: then the switch does not know them).
func payerFields(province, regionCode, payer string) error {
	if province != "" && province != payer {
		return fmt.Errorf("%w: answered as province %q, routed to %s", errInconsistentAnswer, province, payer)
	}
	if regionCode != "" {
		if _, err := region.ParseRegionIn(regionCode, payer); err != nil {
			return fmt.Errorf("%w: payer_region: %w", errInconsistentAnswer, err)
		}
	}
	return nil
}

// route runs call against the target node of e with the switch's deadline
// and retries, records the outcome in the switch log, the metrics and the
// process log, and returns the caller's error (nil when approved). call
// must set what it learns from a successful answer (into e and its result).
func (s *Switch) route(ctx context.Context, e *clearingdb.SwitchEntry, call func(context.Context, provincev1.PeerServiceClient) error, fields ...zap.Field) error {
	startedAt, mono := s.now(), time.Now()
	attempts, callErr := s.attempt(ctx, e.TargetProvince, call)
	latency := time.Since(mono)
	e.StartedAt, e.FinishedAt = startedAt, startedAt.Add(latency)

	outcome, out := s.classify(ctx, e, callErr)
	op := string(e.Op)
	s.metrics.switchCalls.WithLabelValues(op, outcome).Inc()
	s.metrics.switchLatency.WithLabelValues(op).Observe(latency.Seconds())

	logCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), switchLogTimeout)
	logErr := s.store.LogSwitch(logCtx, e)
	cancel()

	fields = append(fields, zap.String("op", op), zap.String("caller", e.CallerProvince),
		zap.String("target", e.TargetProvince), zap.String("outcome", string(e.Outcome)),
		zap.String("code", e.Code), zap.Duration("latency", latency), zap.Int("attempts", attempts))
	switch {
	case logErr != nil:
		// Every answer the switch gives is in its log (clearingdb.LogSwitch):
		// without the row, the caller gets Unavailable and retries with the
		// same key; the target replays its first answer and the retry is logged.
		s.metrics.switchLogFail.Inc()
		s.log.Error("switch log write failed: answering Unavailable", append(fields, zap.Error(logErr))...)
		return status.Error(codes.Unavailable, "the switch could not record the call: retry with the same key")
	case outcome == outcomeError:
		s.log.Error("routed call failed", append(fields, zap.Error(callErr))...)
	default:
		s.log.Info("routed call", fields...)
	}
	return out
}

// attempt calls the target until it answers something other than
// Unavailable, the attempts are used up, or the deadline (the caller's or
// RPCTimeout, whichever is earlier) would pass before the next try.
func (s *Switch) attempt(ctx context.Context, target string, call func(context.Context, provincev1.PeerServiceClient) error) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	backoff := s.backoff
	for n := 1; ; n++ {
		peer, err := s.nodes.Peer(target)
		if err == nil {
			err = call(ctx, peer)
		}
		if status.Code(err) != codes.Unavailable || n >= s.tries {
			return n, err
		}
		wait := time.Duration(rand.Int64N(int64(backoff))) + 1
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
			return n, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return n, err
		case <-t.C:
		}
		backoff = min(2*backoff, switchRetryBackoffMax)
	}
}

// Codes a target's refusal passes through unchanged: the payer node's
// decision about the request, which the caller acts on as if it had asked
// the payer itself.
var passThrough = map[codes.Code]bool{
	codes.InvalidArgument:    true,
	codes.NotFound:           true,
	codes.AlreadyExists:      true,
	codes.FailedPrecondition: true,
	codes.ResourceExhausted:  true,
	codes.Aborted:            true,
	codes.OutOfRange:         true,
}

// classify sets e's outcome from the routed call's error and returns the
// metric outcome and the error for the caller.
func (s *Switch) classify(ctx context.Context, e *clearingdb.SwitchEntry, err error) (string, error) {
	if err == nil {
		e.Outcome = clearingdb.OutcomeApproved
		return outcomeApproved, nil
	}
	st, isStatus := status.FromError(err)
	code := codeOf(err)
	e.Code = code.String()
	e.Detail = truncateUTF8(st.Message(), switchDetailLenMax)
	switch {
	case errors.Is(err, errInconsistentAnswer):
		e.Outcome, e.Code, e.Detail = clearingdb.OutcomeError, "INCONSISTENT_ANSWER", truncateUTF8(err.Error(), switchDetailLenMax)
		return outcomeError, status.Error(codes.Internal, internalMessage)
	case errors.Is(err, ErrUnknownNode), errors.Is(err, ErrNodesClosed):
		e.Outcome, e.Code, e.Detail = clearingdb.OutcomeUnavailable, "NO_NODE", err.Error()
		return outcomeUnavailable, status.Errorf(codes.Unavailable,
			"no node is configured for province %s: retry with the same key later", e.TargetProvince)
	case isStatus && passThrough[code]:
		e.Outcome = clearingdb.OutcomeRefused
		return outcomeRefused, status.ErrorProto(st.Proto())
	case code == codes.Unavailable,
		code == codes.DeadlineExceeded && ctx.Err() == nil,
		code == codes.Canceled && ctx.Err() == nil:
		// Unreachable, or our own RPC timeout while the caller still waits, or
		// a connection replaced under the call: the outcome at the target is
		// unknown, and a retry with the same key is safe.
		e.Outcome = clearingdb.OutcomeUnavailable
		return outcomeUnavailable, status.Errorf(codes.Unavailable,
			"province %s's node is unavailable (%s): retry with the same key", e.TargetProvince, code)
	case ctx.Err() != nil:
		// The caller gave up (its deadline passed or it cancelled).
		e.Outcome = clearingdb.OutcomeUnavailable
		return outcomeUnavailable, status.FromContextError(ctx.Err()).Err()
	}
	// Internal, Unknown, Unimplemented, PermissionDenied, Unauthenticated,
	// DataLoss: the target or the federation's configuration is broken; the
	// caller cannot fix it by changing its request.
	e.Outcome = clearingdb.OutcomeError
	return outcomeError, status.Error(codes.Internal, internalMessage)
}

// truncateUTF8 cuts s to at most n bytes at a rune boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// edgeCheck validates request fields, keeping the first failure as an
// InvalidArgument status naming the field.
type edgeCheck struct{ err error }

func (c *edgeCheck) fail(msg string) {
	if c.err == nil {
		c.err = status.Error(codes.InvalidArgument, msg)
	}
}

func (c *edgeCheck) failf(field, format string, a ...any) {
	c.fail(field + ": " + fmt.Sprintf(format, a...))
}

// switchKeyOK: 1..n printable ASCII characters without space, and no GB
// 11643 identity number in it (pii.ContainsID), as the clearing database and
// the province nodes require of every key.
//
// Keys (usage, reversal, command and proposal keys, relationship ids,
// movement, answer and resolution keys) are opaque identifiers chosen by a
// caller. The switch logs them (switch_log), the clearing database stores
// them, and a usage key is the usage_id of usages.csv: all in clear. A key
// containing an ID number is therefore refused at the edge with the field's
// usual InvalidArgument, before anything is routed or written; masking it
// instead would break the idempotency the key exists for.
func switchKeyOK(s string, n int) bool {
	if s == "" || len(s) > n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return !pii.ContainsID(s)
}

func (c *edgeCheck) key(field, v string, n int) {
	if !switchKeyOK(v, n) {
		c.failf(field, "must be 1 to %d printable ASCII characters without spaces, and contain no ID number", n)
	}
}

// ref checks a person_ref: exactly the pseudonym form (32 lowercase hex), so
// that an ID number can never travel in its place.
func (c *edgeCheck) ref(field, v string) {
	if !pii.IsRef(v) {
		c.failf(field, "must be a person_ref (%d lowercase hex characters), never an ID number", pii.RefLen)
	}
}

func (c *edgeCheck) province(field, v string) bool {
	if _, err := region.ParseProvince(v); err != nil {
		c.failf(field, "%s", codeReason(err))
		return false
	}
	return true
}

// otherProvince checks a valid provincial unit other than self: only
// cross-province requests go through the switch (R13).
func (c *edgeCheck) otherProvince(field, v, self string) {
	if c.province(field, v) && v == self {
		c.failf(field, "%s is the caller's own province: same-province requests are settled inside the province", v)
	}
}

func (c *edgeCheck) regionIn(field, v, province string) {
	if _, err := region.ParseRegionIn(v, province); err != nil {
		c.failf(field, "%s", codeReason(err))
	}
}

func (c *edgeCheck) amount(field, v string) money.Yuan {
	y, err := money.ParsePositive(v)
	if err != nil {
		c.failf(field, "%s", moneyReason(err))
	}
	return y
}

// usageKind returns the settlement kind name ("MEDICAL", ...).
func (c *edgeCheck) usageKind(field string, k provincev1.UsageKind) string {
	switch k {
	case provincev1.UsageKind_USAGE_KIND_MEDICAL:
		return string(settlement.KindMedical)
	case provincev1.UsageKind_USAGE_KIND_PHARMACY:
		return string(settlement.KindPharmacy)
	case provincev1.UsageKind_USAGE_KIND_RESIDENT_PREMIUM:
		return string(settlement.KindResidentPremium)
	case provincev1.UsageKind_USAGE_KIND_LTC_PREMIUM:
		return string(settlement.KindLTCPremium)
	}
	c.failf(field, "unknown usage kind %s", k)
	return ""
}

// timestamp checks business time: set, valid, within the years 2000-2999
// and at most occurredAtSkewMax after now.
func (c *edgeCheck) timestamp(field string, ts *timestamppb.Timestamp, now time.Time) time.Time {
	if ts == nil {
		c.failf(field, "is required")
		return time.Time{}
	}
	if err := ts.CheckValid(); err != nil {
		c.failf(field, "%v", err)
		return time.Time{}
	}
	t := ts.AsTime()
	if y := t.In(region.Shanghai).Year(); y < 2000 || y > 2999 {
		c.failf(field, "is outside the years 2000-2999")
		return time.Time{}
	}
	if t.After(now.Add(occurredAtSkewMax)) {
		c.failf(field, "%s is more than %s after the clearing service's clock", t.In(region.Shanghai).Format(time.RFC3339), occurredAtSkewMax)
		return time.Time{}
	}
	return t
}

// enum checks that an enum value is one of the defined, non-zero values.
func (c *edgeCheck) enum(field string, v, max int32, name string) {
	if v < 1 || v > max {
		c.failf(field, "unknown or missing value %s", name)
	}
}

// party checks a cross-province party: its province and its person_ref. An
// ID number never crosses a province border (docs/architecture.md).
func (c *edgeCheck) party(field string, p *provincev1.PartyRef, wantProvince string) {
	if p == nil {
		c.failf(field, "is required")
		return
	}
	if p.GetIdNumber() != "" {
		c.failf(field, "must name the person by person_ref: ID numbers never leave their province")
		return
	}
	if c.province(field+".province_code", p.GetProvinceCode()) && p.GetProvinceCode() != wantProvince {
		c.failf(field+".province_code", "is %s, want %s", p.GetProvinceCode(), wantProvince)
	}
	c.ref(field+".person_ref", p.GetPersonRef())
}

// relationshipCommand checks a command travelling from origin to the
// authority target.
func (c *edgeCheck) relationshipCommand(cmd *provincev1.ApplyRelationshipCommandRequest, origin, target string) {
	c.key("command.command_key", cmd.GetCommandKey(), commandKeyLenMax)
	act := cmd.GetAction()
	c.enum("command.action", int32(act), int32(provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO), act.String())
	if cmd.GetReason() != provincev1.DissolveReason_DISSOLVE_REASON_UNSPECIFIED {
		c.enum("command.reason", int32(cmd.GetReason()), int32(provincev1.DissolveReason_DISSOLVE_REASON_ACCOUNT_LOST), cmd.GetReason().String())
	}
	if cmd.GetBy() != provincev1.Side_SIDE_UNSPECIFIED {
		c.enum("command.by", int32(cmd.GetBy()), int32(provincev1.Side_SIDE_BENEFICIARY), cmd.GetBy().String())
	}
	switch act {
	case provincev1.RelationshipAction_RELATIONSHIP_ACTION_PROPOSE:
		p := cmd.GetProposal()
		if p == nil {
			c.failf("command.proposal", "is required for PROPOSE")
			return
		}
		// The authority is the sharer's node; the command comes from the
		// beneficiary's side.
		c.party("command.proposal.sharer", p.GetSharer(), target)
		c.party("command.proposal.beneficiary", p.GetBeneficiary(), origin)
		c.enum("command.proposal.relation", int32(p.GetRelation()), int32(provincev1.RelationType_RELATION_TYPE_GRANDCHILD_MATERNAL), p.GetRelation().String())
		c.enum("command.proposal.proposed_by", int32(p.GetProposedBy()), int32(provincev1.Side_SIDE_BENEFICIARY), p.GetProposedBy().String())
		c.key("command.proposal.proposal_key", p.GetProposalKey(), commandKeyLenMax)
		if cmd.GetBeneficiaryRegion() != "" {
			c.regionIn("command.beneficiary_region", cmd.GetBeneficiaryRegion(), origin)
		}
		if cmd.GetRelationshipId() != "" {
			c.key("command.relationship_id", cmd.GetRelationshipId(), relationshipIDLenMax)
		}
	case provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO:
		c.key("command.relationship_id", cmd.GetRelationshipId(), relationshipIDLenMax)
		switch cmd.GetReason() {
		case provincev1.DissolveReason_DISSOLVE_REASON_TRANSFER, provincev1.DissolveReason_DISSOLVE_REASON_SUSPENSION,
			provincev1.DissolveReason_DISSOLVE_REASON_TERMINATION, provincev1.DissolveReason_DISSOLVE_REASON_DEATH,
			provincev1.DissolveReason_DISSOLVE_REASON_ACCOUNT_LOST:
		default:
			c.failf("command.reason", "an automatic dissolution needs an enrollment-change reason (R6), not %s", cmd.GetReason())
		}
	default: // CONSENT, DECLINE, DISSOLVE
		c.key("command.relationship_id", cmd.GetRelationshipId(), relationshipIDLenMax)
		c.enum("command.by", int32(cmd.GetBy()), int32(provincev1.Side_SIDE_BENEFICIARY), cmd.GetBy().String())
	}
}

// relationship checks a snapshot sent by the authority sharer.
func (c *edgeCheck) relationship(r *provincev1.Relationship, sharer string) {
	c.key("relationship.relationship_id", r.GetRelationshipId(), relationshipIDLenMax)
	if r.GetVersion() < 1 {
		c.failf("relationship.version", "must be >= 1")
	}
	c.ref("relationship.sharer_ref", r.GetSharerRef())
	c.ref("relationship.beneficiary_ref", r.GetBeneficiaryRef())
	c.regionIn("relationship.sharer_region", r.GetSharerRegion(), sharer)
	c.enum("relationship.relation", int32(r.GetRelation()), int32(provincev1.RelationType_RELATION_TYPE_GRANDCHILD_MATERNAL), r.GetRelation().String())
	c.enum("relationship.proposed_by", int32(r.GetProposedBy()), int32(provincev1.Side_SIDE_BENEFICIARY), r.GetProposedBy().String())
	c.enum("relationship.status", int32(r.GetStatus()), int32(provincev1.RelationshipStatus_RELATIONSHIP_STATUS_DISSOLVED), r.GetStatus().String())
	if r.GetDissolveReason() != provincev1.DissolveReason_DISSOLVE_REASON_UNSPECIFIED {
		c.enum("relationship.dissolve_reason", int32(r.GetDissolveReason()), int32(provincev1.DissolveReason_DISSOLVE_REASON_ACCOUNT_LOST), r.GetDissolveReason().String())
	}
	// Amounts only in form: how quota, used and returned relate after a
	// dissolution is the authority's rule, not the switch's. returned may be
	// empty (a node that predates the field); quota and used may not.
	for _, f := range []struct {
		name, v  string
		required bool
	}{{"relationship.quota", r.GetQuota(), true}, {"relationship.used", r.GetUsed(), true}, {"relationship.returned", r.GetReturned(), false}} {
		if f.v == "" && !f.required {
			continue
		}
		if y, err := money.Parse(f.v); err != nil || y.IsNegative() {
			c.failf(f.name, "must be a non-negative amount with at most two decimals")
		}
	}
	// The authority's times, in form only (an expiry lies in the future by
	// design, so no clock check): the three a snapshot always has, and the
	// two a node that predates them may leave unset.
	for _, f := range []struct {
		name     string
		ts       *timestamppb.Timestamp
		required bool
	}{{"relationship.proposed_at", r.GetProposedAt(), true}, {"relationship.expires_at", r.GetExpiresAt(), true},
		{"relationship.updated_at", r.GetUpdatedAt(), true}, {"relationship.activated_at", r.GetActivatedAt(), false},
		{"relationship.ended_at", r.GetEndedAt(), false}} {
		if f.ts == nil && !f.required {
			continue
		}
		c.businessTime(f.name, f.ts)
	}
}

// businessTime checks a time the caller's node keeps (set, valid, within the
// years 2000–2999) without comparing it with the clearing service's clock.
func (c *edgeCheck) businessTime(field string, ts *timestamppb.Timestamp) {
	switch {
	case ts == nil:
		c.failf(field, "is required")
	case ts.CheckValid() != nil:
		c.failf(field, "%v", ts.CheckValid())
	default:
		if y := ts.AsTime().In(region.Shanghai).Year(); y < 2000 || y > 2999 {
			c.failf(field, "is outside the years 2000-2999")
		}
	}
}
