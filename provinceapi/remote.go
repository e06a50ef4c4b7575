package provinceapi

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/config"
	"gongji/internal/auditlog"
	"gongji/internal/tlsconf"
	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/sharing"
)

// Defaults and limits of the connection to the clearing service and of Remote.
const (
	// ClearingServerName is the DNS name the clearing certificate must carry
	// (`clearing certs init` puts localhost on it); the identity
	// gongji:clearing is checked on top of it.
	ClearingServerName = "localhost"
	// clientKeepaliveTime: the node pings the clearing service after this long
	// without traffic, also with no call in flight (the ReportUsage stream is
	// long-lived and often idle), so a vanished server is noticed in
	// time + timeout. The clearing server permits pings every ≥ 10 s
	// (clearingapi.ServerOptions); 30 s stays well clear of that.
	clientKeepaliveTime    = 30 * time.Second
	clientKeepaliveTimeout = 10 * time.Second
	// clientReconnectDelayMax caps gRPC's reconnect backoff (default 120 s):
	// after a clearing restart the node must be back within seconds.
	clientReconnectDelayMax = 2 * time.Second

	// DefaultRemoteRetryMax is the number of attempts of one call while the
	// clearing service answers Unavailable. Every call is idempotent by its
	// key, so a retry is safe; three ride out a connection being replaced.
	DefaultRemoteRetryMax = 3
	// RemoteRetryMaxLimit caps RemoteOptions.RetryMax.
	RemoteRetryMaxLimit = 10
	// DefaultRemoteRetryBackoff is the wait before the second attempt; it
	// doubles each attempt, with full jitter.
	DefaultRemoteRetryBackoff = 50 * time.Millisecond
	remoteRetryBackoffMax     = time.Second
)

// DialClearing opens the node's connection to the clearing service at addr,
// presenting the province certificate of certs and requiring the server to be
// gongji:clearing (tlsconf.ClientConfigFor), so that no province node can
// stand in for the clearing service. It connects lazily; extra options are
// appended (tests). Errors: grpc.NewClient errors.
func DialClearing(addr string, certs *tlsconf.Reloader, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(
			tlsconf.ClientConfigFor(certs, ClearingServerName, tlsconf.Identity{Kind: tlsconf.Clearing}))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: clientKeepaliveTime, Timeout: clientKeepaliveTimeout, PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: clientReconnectDelayMax,
			},
			MinConnectTimeout: config.RPCTimeout,
		}),
		// A call made for an audited request carries its request id, so the
		// clearing service's and the other node's audit rows share it.
		grpc.WithChainUnaryInterceptor(auditlog.UnaryClientInterceptor()),
	}
	cc, err := grpc.NewClient(addr, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("provinceapi: dial clearing service at %s: %w", addr, err)
	}
	return cc, nil
}

// RemoteError is an answer from the other side of the clearing switch that
// is not a success: the other province's refusal (passed through by the
// switch with its code, message and details), or the switch's own error.
// Handlers return its status unchanged to their caller (statusError); the
// domain sees the sharing sentinel the status names (errors.Is), e.g.
// ErrQuotaExceeded for a payer's ResourceExhausted, ErrUnavailable for
// Unavailable.
type RemoteError struct {
	st       *status.Status
	sentinel error // nil when the status names no sentinel
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("clearing switch: %s: %s", e.st.Code(), e.st.Message())
}

// Unwrap exposes the sharing sentinel, if any.
func (e *RemoteError) Unwrap() error { return e.sentinel }

// GRPCStatus is the status as received.
func (e *RemoteError) GRPCStatus() *status.Status { return e.st }

// remoteSentinels maps a code without an ErrorInfo of ours (the switch's own
// answers) to the sentinel the domain acts on.
var remoteSentinels = map[codes.Code]error{
	codes.Unavailable:       sharing.ErrUnavailable,
	codes.ResourceExhausted: sharing.ErrQuotaExceeded,
	codes.NotFound:          sharing.ErrNotFound,
	codes.AlreadyExists:     sharing.ErrKeyReused,
	codes.InvalidArgument:   sharing.ErrInvalidInput,
	codes.PermissionDenied:  sharing.ErrWrongProvince,
}

func newRemoteError(st *status.Status) *RemoteError {
	e := &RemoteError{st: st}
	if s, ok := sentinelOf(reasonOf(st)); ok {
		e.sentinel = s
	} else {
		e.sentinel = remoteSentinels[st.Code()]
	}
	return e
}

// errInconsistent: the clearing service answered OK with something that is
// not an answer to the request (an unparsable amount, another relationship).
// A bug or a misrouted call: Internal, logged.
var errInconsistent = errors.New("provinceapi: the clearing service answered inconsistently")

// RemoteOptions configures NewRemote.
type RemoteOptions struct {
	// Conn is the connection to the clearing service (DialClearing). Required.
	Conn grpc.ClientConnInterface
	// Province is this node's provincial unit. Required.
	Province string
	// RPCTimeout is the deadline of one call, retries included; a caller's
	// earlier deadline wins. Default config.RPCTimeout.
	RPCTimeout time.Duration
	// RetryMax: attempts while the answer is Unavailable. Default
	// DefaultRemoteRetryMax, range [1, RemoteRetryMaxLimit].
	RetryMax int
	// RetryBackoff: wait before the second attempt. Default
	// DefaultRemoteRetryBackoff, range (0, 1 s].
	RetryBackoff time.Duration
	// Log: errors that are not the other node's answers. Default nop.
	Log *zap.Logger
	// Metrics: calls by operation and code. Default: unregistered metrics.
	Metrics *Metrics
}

// Remote is sharing.Remote over the clearing service's SwitchService: it
// reaches another province's node for proposals, relationship commands,
// debits and reversals, and carries the relay queue's messages. Every call
// is idempotent by its key, so it is retried on Unavailable within its
// deadline. Safe for concurrent use. Construct with NewRemote.
type Remote struct {
	sw       clearingv1.SwitchServiceClient
	province string
	timeout  time.Duration
	tries    int
	backoff  time.Duration
	log      *zap.Logger
	metrics  *Metrics
}

var _ sharing.Remote = (*Remote)(nil)

// NewRemote checks opts and returns the Remote. Errors: missing Conn, a bad
// Province, a field out of range, metrics construction errors.
func NewRemote(opts RemoteOptions) (*Remote, error) {
	if opts.Conn == nil {
		return nil, errors.New("provinceapi: NewRemote needs Conn")
	}
	if _, err := region.ParseProvince(opts.Province); err != nil {
		return nil, fmt.Errorf("provinceapi: NewRemote province: %w", err)
	}
	if opts.RPCTimeout == 0 {
		opts.RPCTimeout = config.RPCTimeout
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = DefaultRemoteRetryMax
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = DefaultRemoteRetryBackoff
	}
	switch {
	case opts.RPCTimeout < 0:
		return nil, fmt.Errorf("provinceapi: RPCTimeout %s must be positive", opts.RPCTimeout)
	case opts.RetryMax < 1 || opts.RetryMax > RemoteRetryMaxLimit:
		return nil, fmt.Errorf("provinceapi: RetryMax %d not in [1, %d]", opts.RetryMax, RemoteRetryMaxLimit)
	case opts.RetryBackoff < 0 || opts.RetryBackoff > remoteRetryBackoffMax:
		return nil, fmt.Errorf("provinceapi: RetryBackoff %s not in (0, %s]", opts.RetryBackoff, remoteRetryBackoffMax)
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
	return &Remote{sw: clearingv1.NewSwitchServiceClient(opts.Conn), province: opts.Province,
		timeout: opts.RPCTimeout, tries: opts.RetryMax, backoff: opts.RetryBackoff, log: opts.Log, metrics: opts.Metrics}, nil
}

// call runs fn with the Remote's deadline (never beyond the caller's),
// retrying while the answer is Unavailable and the deadline leaves room, and
// turns the final error into what the domain and the edge need:
//
//   - the caller's own context ended: its error (Canceled, DeadlineExceeded);
//   - our RPC timeout passed while the caller still waits: a RemoteError
//     Unavailable (ErrUnavailable: the outcome is unknown, retry with the
//     same key);
//   - any other status: a RemoteError carrying it unchanged.
func (r *Remote) call(ctx context.Context, op, target string, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	backoff := r.backoff
	var err error
	for n := 1; ; n++ {
		err = fn(cctx)
		if status.Code(err) != codes.Unavailable || n >= r.tries {
			break
		}
		wait := time.Duration(rand.Int64N(int64(backoff))) + 1
		if dl, ok := cctx.Deadline(); ok && time.Until(dl) <= wait {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-cctx.Done():
			t.Stop()
		case <-t.C:
		}
		if cctx.Err() != nil {
			break
		}
		backoff = min(2*backoff, remoteRetryBackoffMax)
	}
	code := status.Code(err)
	r.metrics.remoteCalls.WithLabelValues(op, code.String()).Inc()
	// Which deadline ended the call: the caller's when it is the earlier one
	// (gRPC may report it before the caller's context says so).
	callerDL, callerHas := ctx.Deadline()
	effDL, _ := cctx.Deadline()
	callerGoverns := callerHas && !callerDL.After(effDL)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("%s to %s: %w", op, target, ctx.Err())
	case (cctx.Err() != nil || code == codes.DeadlineExceeded) && callerGoverns:
		return fmt.Errorf("%s to %s: %w", op, target, context.DeadlineExceeded)
	case cctx.Err() != nil, code == codes.DeadlineExceeded:
		return newRemoteError(status.Newf(codes.Unavailable,
			"the clearing service did not answer %s for %s within %s: retry with the same key", op, target, r.timeout))
	}
	st := status.Convert(err)
	switch code {
	case codes.Internal, codes.Unknown, codes.Unauthenticated, codes.Unimplemented, codes.DataLoss:
		// Not another node's decision: the federation is misconfigured or
		// something is broken. Passed on, and logged here where it is seen.
		r.log.Error("clearing switch call failed", zap.String("op", op), zap.String("target", target),
			zap.String("code", code.String()), zap.String("detail", st.Message()))
	}
	return newRemoteError(st)
}

// Propose forwards a proposal by this province's beneficiary to the sharer's
// node (RelayRelationshipCommand PROPOSE) and returns the authority's
// snapshot. Errors: *RemoteError (with the sentinel it names), context
// errors, errInconsistent.
func (r *Remote) Propose(ctx context.Context, sharerProvince string, p sharing.Proposal) (sharing.Relationship, error) {
	origin := p.Origin
	if origin == "" {
		origin = r.province
	}
	cmd := &provincev1.ApplyRelationshipCommandRequest{
		Action: provincev1.RelationshipAction_RELATIONSHIP_ACTION_PROPOSE, CommandKey: p.Key, OriginProvince: origin,
		Proposal: &provincev1.ProposeRelationshipRequest{
			Sharer:      &provincev1.PartyRef{ProvinceCode: p.SharerProvince, Id: &provincev1.PartyRef_PersonRef{PersonRef: p.SharerRef}},
			Beneficiary: &provincev1.PartyRef{ProvinceCode: p.BeneficiaryProvince, Id: &provincev1.PartyRef_PersonRef{PersonRef: p.BeneficiaryRef}},
			Relation:    relations.proto(p.Relation), ProposedBy: sides.proto(p.By), ProposalKey: p.Key,
		},
	}
	return r.relayCommand(ctx, "propose", sharerProvince, cmd)
}

// Command forwards a consent, decline or dissolution (voluntary or, with an
// automatic reason, DISSOLVE_AUTO) to the authority and returns its
// snapshot. SET_QUOTA never travels (only the sharer sets a quota, at the
// sharer's node): ErrWrongProvince. Errors as Propose.
func (r *Remote) Command(ctx context.Context, sharerProvince string, c sharing.Command) (sharing.Relationship, error) {
	origin := c.Origin
	if origin == "" {
		origin = r.province
	}
	cmd := &provincev1.ApplyRelationshipCommandRequest{
		CommandKey: c.Key, OriginProvince: origin, RelationshipId: c.RelationshipID, By: sides.proto(c.By),
		Reason: dissolveReasons.proto(c.Reason),
	}
	switch {
	case c.Kind == sharing.CommandDissolve && c.Reason.Automatic():
		cmd.Action = provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO
	default:
		cmd.Action = commandActions.proto(c.Kind)
	}
	if cmd.Action == provincev1.RelationshipAction_RELATIONSHIP_ACTION_UNSPECIFIED {
		return sharing.Relationship{}, fmt.Errorf("%w: a %s command is applied only at the sharer's node", sharing.ErrWrongProvince, c.Kind)
	}
	return r.relayCommand(ctx, "command", sharerProvince, cmd)
}

func (r *Remote) relayCommand(ctx context.Context, op, target string, cmd *provincev1.ApplyRelationshipCommandRequest) (sharing.Relationship, error) {
	var resp *clearingv1.RelayRelationshipCommandResponse
	err := r.call(ctx, op, target, func(ctx context.Context) error {
		var err error
		resp, err = r.sw.RelayRelationshipCommand(ctx, &clearingv1.RelayRelationshipCommandRequest{Command: cmd, TargetProvince: target})
		return err
	})
	if err != nil {
		return sharing.Relationship{}, err
	}
	var c edge
	rel := relationshipFromProto(&c, "relationship", resp.GetRelationship())
	if c.err != nil {
		return sharing.Relationship{}, fmt.Errorf("%w: %s of %s: %s", errInconsistent, op, cmd.GetCommandKey(), status.Convert(c.err).Message())
	}
	return rel, nil
}

// Debit asks the payer's node, through the switch (Authorize), to authorise
// and debit a cross-province usage, and returns its approval. A refusal
// comes back as a *RemoteError naming its sentinel (ErrQuotaExceeded for
// ResourceExhausted, ErrNotActive, ErrSharerInactive, ErrNoPersonalAccount
// for FailedPrecondition), so the payee's caller gets the payer's code.
// Errors as Propose.
func (r *Remote) Debit(ctx context.Context, payerProvince string, req sharing.UsageRequest) (sharing.UsageResult, error) {
	d := &provincev1.DebitRequest{
		UsageKey: req.Key, RelationshipId: req.RelationshipID, Kind: usageKinds.proto(req.Kind), Amount: req.Amount.String(),
		PayeeProvince: req.PayeeProvince, PayeeRegionCode: req.PayeeRegion, OccurredAt: timestamppb.New(req.OccurredAt),
		BeneficiaryRef: req.BeneficiaryRef,
	}
	var resp *clearingv1.AuthorizeResponse
	err := r.call(ctx, "debit", payerProvince, func(ctx context.Context) error {
		var err error
		resp, err = r.sw.Authorize(ctx, &clearingv1.AuthorizeRequest{Debit: d, PayerProvince: payerProvince})
		return err
	})
	if err != nil {
		return sharing.UsageResult{}, err
	}
	a := resp.GetDebit()
	var c edge
	amount := c.amount("amount", a.GetAmount())
	remaining := c.quota("quota_remaining", a.GetQuotaRemaining())
	kind := enum(&c, "kind", usageKinds, a.GetKind())
	occurred := c.timestamp("occurred_at", a.GetOccurredAt(), true, time.Time{}, 0)
	c.ref("sharer_ref", a.GetSharerRef())
	c.ref("beneficiary_ref", a.GetBeneficiaryRef())
	if c.err == nil && (a.GetUsageKey() != req.Key || a.GetPayerProvince() != payerProvince) {
		c.failf("usage_key", "answer for %q from %q", a.GetUsageKey(), a.GetPayerProvince())
	}
	if c.err != nil {
		return sharing.UsageResult{}, fmt.Errorf("%w: debit %s: %s", errInconsistent, req.Key, status.Convert(c.err).Message())
	}
	return sharing.UsageResult{
		Approved: true,
		Usage: sharing.Usage{
			Key: req.Key, RelationshipID: a.GetRelationshipId(), Kind: kind, Amount: amount,
			PayerProvince: a.GetPayerProvince(), PayerRegion: a.GetPayerRegion(),
			PayeeProvince: req.PayeeProvince, PayeeRegion: req.PayeeRegion,
			SharerRef: a.GetSharerRef(), BeneficiaryRef: a.GetBeneficiaryRef(),
			OccurredAt: occurred, Role: sharing.RolePayee, CrossProvince: true, Reversed: money.Zero,
		},
		Remaining: remaining,
		Replayed:  a.GetReplayed(),
	}, nil
}

// ReverseDebit asks the payer's node, through the switch (AuthorizeReversal),
// to reverse (part of) a cross-province usage, and returns its answer: the
// reversal as requested (this node records it from its own copy of the
// usage), the usage's reversed total and the quota remaining at the payer.
// Errors as Debit (ErrReversalExceedsUsage for FailedPrecondition).
func (r *Remote) ReverseDebit(ctx context.Context, payerProvince string, req sharing.ReversalRequest) (sharing.ReversalResult, error) {
	payee := req.PayeeProvince
	if payee == "" {
		payee = r.province
	}
	rv := &provincev1.ReverseDebitRequest{
		ReversalKey: req.Key, UsageKey: req.UsageKey, Amount: req.Amount.String(),
		OccurredAt: timestamppb.New(req.OccurredAt), PayeeProvince: payee,
	}
	var resp *clearingv1.AuthorizeReversalResponse
	err := r.call(ctx, "reverse", payerProvince, func(ctx context.Context) error {
		var err error
		resp, err = r.sw.AuthorizeReversal(ctx, &clearingv1.AuthorizeReversalRequest{Reversal: rv, PayerProvince: payerProvince})
		return err
	})
	if err != nil {
		return sharing.ReversalResult{}, err
	}
	a := resp.GetReversal()
	var c edge
	amount := c.amount("amount", a.GetAmount())
	total := c.amount("reversed_total", a.GetReversedTotal())
	remaining := c.quota("quota_remaining", a.GetQuotaRemaining())
	if c.err == nil && (a.GetReversalKey() != req.Key || a.GetUsageKey() != req.UsageKey) {
		c.failf("reversal_key", "answer for %q of %q", a.GetReversalKey(), a.GetUsageKey())
	}
	if c.err != nil {
		return sharing.ReversalResult{}, fmt.Errorf("%w: reversal %s: %s", errInconsistent, req.Key, status.Convert(c.err).Message())
	}
	return sharing.ReversalResult{
		Reversal: sharing.Reversal{
			Key: req.Key, UsageKey: req.UsageKey, Amount: amount, OccurredAt: req.OccurredAt,
			Role: sharing.RolePayee, CrossProvince: true, PayerProvince: payerProvince, PayeeProvince: payee,
		},
		ReversedTotal: total, Remaining: remaining, Replayed: a.GetReplayed(),
	}, nil
}

// RelaySnapshot pushes a relationship snapshot of which this node is the
// authority to the beneficiary's node (RelayRelationshipSnapshot); it
// reports whether the replica applied it and the version it now holds.
// Errors as Propose.
func (r *Remote) RelaySnapshot(ctx context.Context, target string, rel sharing.Relationship) (applied bool, version int64, err error) {
	var resp *clearingv1.RelayRelationshipSnapshotResponse
	err = r.call(ctx, "snapshot", target, func(ctx context.Context) error {
		var err error
		resp, err = r.sw.RelayRelationshipSnapshot(ctx, &clearingv1.RelayRelationshipSnapshotRequest{
			Relationship: relationshipToProto(rel), TargetProvince: target,
		})
		return err
	})
	if err != nil {
		return false, 0, err
	}
	return resp.GetApplied(), resp.GetVersion(), nil
}
