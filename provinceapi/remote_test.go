package provinceapi_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/provinceapi"
	"gongji/sharing"
)

// fakeSwitch is a TEST DOUBLE of the clearing switch for the Remote's own
// behaviour (deadlines, retries, error mapping): answer is called for every
// Authorize.
type fakeSwitch struct {
	clearingv1.UnimplementedSwitchServiceServer
	calls  atomic.Int64
	answer func(ctx context.Context, n int64, req *clearingv1.AuthorizeRequest) (*clearingv1.AuthorizeResponse, error)
}

func (f *fakeSwitch) Authorize(ctx context.Context, req *clearingv1.AuthorizeRequest) (*clearingv1.AuthorizeResponse, error) {
	return f.answer(ctx, f.calls.Add(1), req)
}

func startFakeSwitch(t *testing.T, f *fakeSwitch, timeout time.Duration) *provinceapi.Remote {
	t.Helper()
	lis := listen(t)
	srv := grpc.NewServer()
	clearingv1.RegisterSwitchServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	r, err := provinceapi.NewRemote(provinceapi.RemoteOptions{Conn: cc, Province: beijing, RPCTimeout: timeout, RetryBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func debitRequest(t *testing.T) sharing.UsageRequest {
	return sharing.UsageRequest{
		Key: "u-1", RelationshipID: "R" + "0123456789abcdef01234567", Kind: sharing.KindMedical,
		Amount: money.MustParse("10.00"), PayeeProvince: beijing, PayeeRegion: regionOf(t, beijing),
		OccurredAt: time.Now().Add(-time.Minute), BeneficiaryRef: refOf(t, "x"),
	}
}

// TestRemote: the Remote's deadline never outlives the caller's, its own
// timeout becomes Unavailable (retry with the same key), Unavailable is
// retried, and answers are mapped back to the sentinels the domain needs.
func TestRemote(t *testing.T) {
	t.Parallel()
	block := func(ctx context.Context, _ int64, _ *clearingv1.AuthorizeRequest) (*clearingv1.AuthorizeResponse, error) {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}

	t.Run("own timeout is Unavailable", func(t *testing.T) {
		t.Parallel()
		r := startFakeSwitch(t, &fakeSwitch{answer: block}, 50*time.Millisecond)
		_, err := r.Debit(hang(t), henan, debitRequest(t))
		var re *provinceapi.RemoteError
		if !errors.As(err, &re) || re.GRPCStatus().Code() != codes.Unavailable || !errors.Is(err, sharing.ErrUnavailable) {
			t.Fatalf("got %v, want a RemoteError Unavailable naming ErrUnavailable", err)
		}
	})
	t.Run("the caller's deadline wins", func(t *testing.T) {
		t.Parallel()
		r := startFakeSwitch(t, &fakeSwitch{answer: block}, time.Hour)
		ctx, cancel := context.WithTimeout(hang(t), 50*time.Millisecond)
		defer cancel()
		_, err := r.Debit(ctx, henan, debitRequest(t))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the caller's DeadlineExceeded", err)
		}
	})
	t.Run("Unavailable is retried", func(t *testing.T) {
		t.Parallel()
		f := &fakeSwitch{}
		f.answer = func(_ context.Context, n int64, req *clearingv1.AuthorizeRequest) (*clearingv1.AuthorizeResponse, error) {
			if n < 3 {
				return nil, status.Error(codes.Unavailable, "not yet")
			}
			d := req.GetDebit()
			return nil, status.Errorf(codes.ResourceExhausted, "usage %s exceeds the remaining quota", d.GetUsageKey())
		}
		r := startFakeSwitch(t, f, time.Minute)
		_, err := r.Debit(hang(t), henan, debitRequest(t))
		if f.calls.Load() != 3 || status.Code(err) != codes.ResourceExhausted || !errors.Is(err, sharing.ErrQuotaExceeded) {
			t.Fatalf("after %d calls: %v; want the third answer, ResourceExhausted as ErrQuotaExceeded", f.calls.Load(), err)
		}
	})
	t.Run("refusals are not retried", func(t *testing.T) {
		t.Parallel()
		f := &fakeSwitch{}
		f.answer = func(context.Context, int64, *clearingv1.AuthorizeRequest) (*clearingv1.AuthorizeResponse, error) {
			return nil, status.Error(codes.NotFound, "no such relationship")
		}
		r := startFakeSwitch(t, f, time.Minute)
		_, err := r.Debit(hang(t), henan, debitRequest(t))
		if f.calls.Load() != 1 || !errors.Is(err, sharing.ErrNotFound) {
			t.Fatalf("after %d calls: %v", f.calls.Load(), err)
		}
	})
	t.Run("an inconsistent answer is an error", func(t *testing.T) {
		t.Parallel()
		f := &fakeSwitch{}
		f.answer = func(_ context.Context, _ int64, req *clearingv1.AuthorizeRequest) (*clearingv1.AuthorizeResponse, error) {
			d := req.GetDebit()
			return &clearingv1.AuthorizeResponse{Debit: &provincev1.DebitResponse{UsageKey: "other", Amount: d.GetAmount()}}, nil
		}
		r := startFakeSwitch(t, f, time.Minute)
		if _, err := r.Debit(hang(t), henan, debitRequest(t)); err == nil {
			t.Fatal("accepted an answer for another usage")
		}
	})
}
