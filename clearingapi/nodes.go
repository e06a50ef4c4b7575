package clearingapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"gongji/config"
	"gongji/internal/auditlog"
	"gongji/internal/tlsconf"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
)

// Errors of the node registry.
var (
	// ErrUnknownNode: the nodes file names no address for the province. The
	// switch answers Unavailable: the file may be corrected and re-read
	// (SIGHUP) without a restart, and the caller retries with the same key.
	ErrUnknownNode = errors.New("clearingapi: no node address configured for the province")
	// ErrBadNodesFile: the nodes file is not a JSON object of provincial-unit
	// codes to host:port addresses.
	ErrBadNodesFile = errors.New("clearingapi: invalid nodes file")
	// ErrNodesClosed: the registry was closed.
	ErrNodesClosed = errors.New("clearingapi: node registry closed")
)

// Limits and defaults of the node registry.
const (
	// NodesFileBytesMax bounds the nodes file: 32 entries of a few dozen bytes
	// each need about 2 KiB, so anything near this is not a nodes file.
	NodesFileBytesMax = 1 << 20
	// DefaultNodeServerName is the DNS name every province certificate made
	// by `clearing certs init` carries (besides 127.0.0.1); the node's identity
	// (gongji:province:XX0000) is checked on top of it.
	DefaultNodeServerName = "localhost"
	// nodeKeepaliveTime: ping a node after a minute without any traffic
	// while a call is outstanding, so that a node host that vanished without
	// closing its socket is noticed in time + timeout, not at the OS TCP
	// timeout. PermitWithoutStream is false and routed calls end within the
	// RPC timeout, so an idle connection is never pinged and a node server
	// with grpc-go's default enforcement (no pings more often than every
	// 5 minutes) never sees a ping strike.
	nodeKeepaliveTime    = time.Minute
	nodeKeepaliveTimeout = 20 * time.Second
	// nodeReconnectDelayMax caps gRPC's reconnect backoff (default 120 s): a
	// node restarted after a crash must be reachable again within seconds,
	// not minutes, because every call meanwhile fails fast with Unavailable.
	nodeReconnectDelayMax = 2 * time.Second
)

// NodesOptions configures NewNodes.
type NodesOptions struct {
	// File is the JSON nodes file: {"410000": "127.0.0.1:7501", ...}.
	// Required; re-read by Reload.
	File string
	// TLS is the clearing service's own certificate (identity
	// gongji:clearing), presented to every node. Required.
	TLS *tlsconf.Reloader
	// ServerName is the name the node's certificate must carry. Default
	// DefaultNodeServerName.
	ServerName string
	// DrainDelay is how long a connection whose address changed (or whose
	// province left the file) stays open for calls already in flight before
	// it is closed. Default config.RPCTimeout: no routed call lasts longer.
	DrainDelay time.Duration
	// Log receives reload and connection events. Default zap.NewNop().
	Log *zap.Logger
	// DialOptions are appended to the registry's own (tests add interceptors).
	DialOptions []grpc.DialOption
}

// Nodes is the registry of province nodes: province code → address, read
// from the nodes file, and one gRPC client connection per node, created on
// first use with the clearing certificate and a TLS check that the peer is
// that province's node (tlsconf.ClientConfigFor). Safe for concurrent use.
type Nodes struct {
	opts NodesOptions

	mu     sync.Mutex
	addrs  map[string]string
	conns  map[string]*nodeConn
	closed bool
	// draining: connections replaced by a reload, closed by their timer
	// (or by Close, whichever comes first).
	draining map[*nodeConn]*time.Timer
}

type nodeConn struct {
	addr string
	cc   *grpc.ClientConn
	peer provincev1.PeerServiceClient
}

// NewNodes reads the nodes file; the first read must succeed. Errors:
// ErrBadNodesFile, file system errors, or a missing File/TLS.
func NewNodes(opts NodesOptions) (*Nodes, error) {
	if opts.File == "" || opts.TLS == nil {
		return nil, errors.New("clearingapi: NewNodes needs File and TLS")
	}
	if opts.ServerName == "" {
		opts.ServerName = DefaultNodeServerName
	}
	if opts.DrainDelay <= 0 {
		opts.DrainDelay = config.RPCTimeout
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	n := &Nodes{opts: opts, conns: map[string]*nodeConn{}, draining: map[*nodeConn]*time.Timer{}}
	addrs, err := readNodesFile(opts.File)
	if err != nil {
		return nil, err
	}
	n.addrs = addrs
	opts.Log.Info("nodes file loaded", zap.String("file", opts.File), zap.Int("nodes", len(addrs)))
	return n, nil
}

// readNodesFile parses and checks the nodes file: every key a provincial-unit
// code, every value a host:port.
func readNodesFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("nodes file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, NodesFileBytesMax+1))
	if err != nil {
		return nil, fmt.Errorf("nodes file %s: %w", path, err)
	}
	if len(b) > NodesFileBytesMax {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrBadNodesFile, path, NodesFileBytesMax)
	}
	var raw map[string]string
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: %s: want a JSON object of province code to host:port: %w", ErrBadNodesFile, path, err)
	}
	out := make(map[string]string, len(raw))
	for code, addr := range raw {
		if _, err := region.ParseProvince(code); err != nil {
			return nil, fmt.Errorf("%w: %s: key %q: %w", ErrBadNodesFile, path, code, err)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" || port == "" || port == "0" {
			return nil, fmt.Errorf("%w: %s: %s: address %q is not host:port", ErrBadNodesFile, path, code, addr)
		}
		out[code] = addr
	}
	return out, nil
}

// Reload re-reads the nodes file. On error the previous addresses stay in
// use and the error is returned. A province whose address changed, or that
// left the file, gets its connection closed after DrainDelay (calls in
// flight finish on it); the next call dials the new address.
func (n *Nodes) Reload() error {
	addrs, err := readNodesFile(n.opts.File)
	if err != nil {
		n.opts.Log.Error("nodes file reload failed; keeping the previous addresses", zap.String("file", n.opts.File), zap.Error(err))
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrNodesClosed
	}
	var changed []string
	for code, c := range n.conns {
		if addrs[code] != c.addr {
			delete(n.conns, code)
			n.drainLocked(code, c)
			changed = append(changed, code)
		}
	}
	slices.Sort(changed)
	n.addrs = addrs
	n.opts.Log.Info("nodes file reloaded", zap.String("file", n.opts.File), zap.Int("nodes", len(addrs)),
		zap.Strings("reconnect", changed))
	return nil
}

// drainLocked closes c after DrainDelay.
func (n *Nodes) drainLocked(code string, c *nodeConn) {
	n.draining[c] = time.AfterFunc(n.opts.DrainDelay, func() {
		n.mu.Lock()
		_, pending := n.draining[c]
		delete(n.draining, c)
		n.mu.Unlock()
		if !pending {
			return // Close got there first
		}
		if err := c.cc.Close(); err != nil {
			n.opts.Log.Debug("closing drained node connection", zap.String("province", code), zap.Error(err))
		}
	})
}

// ReloadOnSignal calls Reload whenever one of sigs (default SIGHUP) arrives,
// until ctx is done. The handler is registered before it returns.
func (n *Nodes) ReloadOnSignal(ctx context.Context, sigs ...os.Signal) {
	if len(sigs) == 0 {
		sigs = []os.Signal{syscall.SIGHUP}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				_ = n.Reload()
			}
		}
	}()
}

// Addr returns the configured address of province code.
func (n *Nodes) Addr(code string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.addrs[code]
	return a, ok
}

// Peer returns the PeerService client of province code's node, dialling it on
// first use (grpc.NewClient connects lazily; a node that is down fails the
// call with Unavailable, not this). Errors: ErrUnknownNode, ErrNodesClosed,
// grpc.NewClient errors.
func (n *Nodes) Peer(code string) (provincev1.PeerServiceClient, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrNodesClosed
	}
	addr, ok := n.addrs[code]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNode, code)
	}
	if c, ok := n.conns[code]; ok {
		return c.peer, nil
	}
	want := tlsconf.Identity{Kind: tlsconf.Province, Province: code}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsconf.ClientConfigFor(n.opts.TLS, n.opts.ServerName, want))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: nodeKeepaliveTime, Timeout: nodeKeepaliveTimeout, PermitWithoutStream: false,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: nodeReconnectDelayMax,
			},
			MinConnectTimeout: config.RPCTimeout,
		}),
		// The routed call carries the request id of the call it serves, so
		// the target node's audit row has the same one.
		grpc.WithChainUnaryInterceptor(auditlog.UnaryClientInterceptor()),
	}
	cc, err := grpc.NewClient(addr, append(opts, n.opts.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("dial node %s at %s: %w", code, addr, err)
	}
	c := &nodeConn{addr: addr, cc: cc, peer: provincev1.NewPeerServiceClient(cc)}
	n.conns[code] = c
	n.opts.Log.Debug("node connection created", zap.String("province", code), zap.String("addr", addr))
	return c.peer, nil
}

// Close closes every connection now (drains included). Later calls to Peer
// return ErrNodesClosed.
func (n *Nodes) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	for c, t := range n.draining {
		t.Stop()
		delete(n.draining, c)
		_ = c.cc.Close() // replaced connections: their errors are of no interest
	}
	for code, c := range n.conns {
		if err := c.cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close node %s: %w", code, err))
		}
	}
	n.conns = nil
	return errors.Join(errs...)
}
