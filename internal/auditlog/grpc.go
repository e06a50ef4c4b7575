package auditlog

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Rule classifies one gRPC method: whether its calls change state (and are
// audited), and how to name what a call acts on.
type Rule struct {
	changes bool
	ref     func(req any) string
}

// ReadOnly is the rule of a method that changes nothing: no audit row.
func ReadOnly() Rule { return Rule{} }

// Changes is the rule of a state-changing method whose request is a Req;
// ref names what a call acts on (a key, an id, a period; never an ID
// number: the result is cleaned anyway). ref may be nil; it must not fail
// on a malformed request (use the generated getters).
func Changes[Req any](ref func(Req) string) Rule {
	return Rule{changes: true, ref: func(req any) string {
		r, ok := req.(Req)
		if !ok || ref == nil {
			return ""
		}
		return ref(r)
	}}
}

// ChangesStream is the rule of a state-changing streaming method; its
// handler names refs per part (Child).
func ChangesStream() Rule { return Rule{changes: true} }

// Policy is the one explicit classification of a server's methods, by full
// method name ("/gongji.clearing.v1.AdminService/ClosePeriod"). A method
// missing from it is audited (fail safe), except gRPC's own health and
// reflection services, which never change state.
type Policy map[string]Rule

// alwaysReadOnly are the method prefixes of the services serve.NewServer
// registers besides the application's.
var alwaysReadOnly = []string{"/grpc.health.v1.", "/grpc.reflection."}

// rule returns the rule of method and whether its calls are audited.
func (p Policy) rule(method string) (Rule, bool) {
	if r, ok := p[method]; ok {
		return r, r.changes
	}
	for _, pre := range alwaysReadOnly {
		if strings.HasPrefix(method, pre) {
			return Rule{}, false
		}
	}
	return Rule{changes: true}, true
}

// Audited reports whether calls of method get an audit row.
func (p Policy) Audited(method string) bool {
	_, ok := p.rule(method)
	return ok
}

// Unclassified returns the methods of services that p does not name, sorted:
// a test over the service descriptors fails on them, so that a new RPC is
// classified when it is added.
func (p Policy) Unclassified(services ...protoreflect.ServiceDescriptor) []string {
	var out []string
	for _, sd := range services {
		for i := 0; i < sd.Methods().Len(); i++ {
			m := FullMethod(sd.Methods().Get(i))
			if _, ok := p[m]; !ok {
				out = append(out, m)
			}
		}
	}
	slices.Sort(out)
	return out
}

// FullMethod is the gRPC full method name of md ("/pkg.Service/Method").
func FullMethod(md protoreflect.MethodDescriptor) string {
	return fmt.Sprintf("/%s/%s", md.Parent().FullName(), md.Name())
}

// ActorFunc names the caller of a request: its certificate identity.
type ActorFunc func(ctx context.Context) string

// incomingRequestID is the request id the client sent, or "".
func incomingRequestID(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(RequestIDHeader); len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// startRPC opens the call of an audited RPC and announces its request id in
// the response headers.
func (r *Recorder) startRPC(ctx context.Context, actor ActorFunc, method string) (context.Context, *Call) {
	ctx, c := r.Start(ctx, actor(ctx), method, incomingRequestID(ctx))
	// Best effort: a header that cannot be set (the stream already sent its
	// headers) leaves the row as it is.
	_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, c.RequestID()))
	return ctx, c
}

// finishPanic writes the row of a call whose handler panicked, then panics
// on: the recovery interceptor of package serve turns it into Internal.
func finishPanic(ctx context.Context, c *Call) {
	if p := recover(); p != nil {
		c.Finish(ctx, status.Error(codes.Internal, "internal error"))
		panic(p)
	}
}

// UnaryServerInterceptor audits the unary methods p classifies as changing
// state: it opens the call (actor from actor, request id from the
// x-request-id metadata or generated, ref from the rule), runs the handler
// with the call in its context, marks a successful answer whose "replayed"
// field is true as OutcomeReplayed, and Finishes the call with the
// handler's error. Chain it inside the recovery and logging interceptors.
func (r *Recorder) UnaryServerInterceptor(p Policy, actor ActorFunc) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		rule, audited := p.rule(info.FullMethod)
		if !audited {
			return h(ctx, req)
		}
		ctx, c := r.startRPC(ctx, actor, info.FullMethod)
		if rule.ref != nil {
			c.SetRef(rule.ref(req))
		}
		defer finishPanic(ctx, c)
		resp, err := h(ctx, req)
		if err == nil && replayed(resp) {
			c.SetOutcome(OutcomeReplayed)
		}
		c.Finish(ctx, err)
		return resp, err
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streaming methods.
// The handler sees the call in its stream's context; it may split it into
// Child calls.
func (r *Recorder) StreamServerInterceptor(p Policy, actor ActorFunc) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if _, audited := p.rule(info.FullMethod); !audited {
			return h(srv, ss)
		}
		ctx, c := r.startRPC(ss.Context(), actor, info.FullMethod)
		defer finishPanic(ctx, c)
		err := h(srv, &callStream{ServerStream: ss, ctx: ctx})
		c.Finish(ctx, err)
		return err
	}
}

// callStream is a server stream whose context carries the call.
type callStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callStream) Context() context.Context { return s.ctx }

// replayed reports whether resp is a message with a bool field "replayed"
// set (SpendResponse, ReverseResponse, DebitResponse): the answer is the
// stored first answer of an idempotent request.
func replayed(resp any) bool {
	m, ok := resp.(proto.Message)
	if !ok || m == nil {
		return false
	}
	rm := m.ProtoReflect()
	if !rm.IsValid() {
		return false
	}
	f := rm.Descriptor().Fields().ByName("replayed")
	return f != nil && f.Kind() == protoreflect.BoolKind && rm.Get(f).Bool()
}

// UnaryClientInterceptor forwards the request id of the call in ctx as
// x-request-id metadata on outgoing calls (unless the caller set one), so
// that a usage authorised through the switch leaves rows with one request id
// at the payee's node, the clearing service and the payer's node.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if id := RequestIDOf(ctx); id != "" {
			if md, ok := metadata.FromOutgoingContext(ctx); !ok || len(md.Get(RequestIDHeader)) == 0 {
				ctx = metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id)
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// ServerOptions are the interceptors of UnaryServerInterceptor and
// StreamServerInterceptor as server options, to append after serve's own.
func (r *Recorder) ServerOptions(p Policy, actor ActorFunc) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(r.UnaryServerInterceptor(p, actor)),
		grpc.ChainStreamInterceptor(r.StreamServerInterceptor(p, actor)),
	}
}
