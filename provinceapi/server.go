package provinceapi

import (
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"gongji/internal/clock"
	"gongji/internal/serve"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/sharing"
)

// Transport limits of a province node's gRPC server.
const (
	// RecvMsgBytesMax bounds one incoming message. The largest request is a
	// relationship snapshot or command of well under 2 KiB; 1 MiB leaves room
	// while a runaway client cannot make the node buffer more per call.
	RecvMsgBytesMax = 1 << 20
	// serverKeepaliveTime: after a minute without traffic the node pings its
	// client, so a connection whose peer vanished is closed in time + timeout.
	serverKeepaliveTime    = time.Minute
	serverKeepaliveTimeout = 20 * time.Second
	// clientPingIntervalMin: clients may ping this often, with or without a
	// call in flight, without being disconnected for ping abuse. The clearing
	// switch pings a node after a minute of silence during a call, the
	// province's own systems may keep connections warm; grpc-go's default (5
	// minutes) would refuse both. The same value as the clearing server's.
	clientPingIntervalMin = 10 * time.Second
)

// ServerOptions are a province node's own gRPC server options: message size
// limit, keepalive compatible with the clearing service's client, and the
// codec that lets a request with invalid UTF-8 reach validation (serve.ServerCodec).
// Pass them, with the TLS credentials, to serve.GRPCOptions.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(RecvMsgBytesMax),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: serverKeepaliveTime, Timeout: serverKeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: clientPingIntervalMin, PermitWithoutStream: true}),
		grpc.ForceServerCodecV2(serve.ServerCodec()),
	}
}

// Options configures NewProvinceServer and NewPeerServer.
type Options struct {
	// Service is the node's domain service. Required; its Province is the
	// node's province.
	Service *sharing.Service
	// Clock is the node's clock (the one the Service uses): it bounds an
	// enrollment change's effective_at. Default clock.Real.
	Clock clock.Clock
	// Log receives internal errors (with person_refs, never ID numbers).
	// Default nop.
	Log *zap.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Service == nil {
		return o, errors.New("provinceapi: a Service is required")
	}
	if o.Clock == nil {
		o.Clock = clock.Real
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return o, nil
}

// Register registers the ProvinceService and the PeerService on r.
func Register(r grpc.ServiceRegistrar, p *ProvinceServer, q *PeerServer) {
	provincev1.RegisterProvinceServiceServer(r, p)
	provincev1.RegisterPeerServiceServer(r, q)
}
