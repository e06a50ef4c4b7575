package tlsconf_test

import (
	"context"
	"crypto/tls"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"gongji/internal/tlsconf"
)

// identityInterceptor is what a gongji gRPC server does first: identity
// from the verified client certificate, Unauthenticated otherwise. It echoes
// the identity and the client certificate's serial in response headers so
// that the test can see what the server saw.
func identityInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := tlsconf.IdentityFromContext(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	p, _ := peer.FromContext(ctx)
	serial := p.AuthInfo.(credentials.TLSInfo).State.VerifiedChains[0][0].SerialNumber
	if err := grpc.SetHeader(ctx, metadata.Pairs("x-peer-identity", id.String(), "x-peer-serial", serial.String())); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// startGRPC serves the standard health service with ServerConfig(r).
func startGRPC(t *testing.T, r *tlsconf.Reloader) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(r))),
		grpc.UnaryInterceptor(identityInterceptor),
	)
	healthgrpc.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

type callResult struct {
	peerIdentity string   // the client's identity as the server saw it
	clientSerial string   // the client certificate serial the server saw
	serverSerial *big.Int // the server certificate serial the client saw
}

// call opens a new connection (so a new handshake), makes one health check
// and closes it.
func call(t *testing.T, addr string, cfg *tls.Config) (callResult, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	var md metadata.MD
	var p peer.Peer
	resp, err := healthgrpc.NewHealthClient(conn).Check(ctx, &healthgrpc.HealthCheckRequest{}, grpc.Header(&md), grpc.Peer(&p))
	if err != nil {
		return callResult{}, err
	}
	if resp.GetStatus() != healthgrpc.HealthCheckResponse_SERVING {
		t.Fatalf("health status %v", resp.GetStatus())
	}
	res := callResult{}
	if v := md.Get("x-peer-identity"); len(v) == 1 {
		res.peerIdentity = v[0]
	}
	if v := md.Get("x-peer-serial"); len(v) == 1 {
		res.clientSerial = v[0]
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		res.serverSerial = info.State.PeerCertificates[0].SerialNumber
	}
	return res, nil
}

func mustCall(t *testing.T, addr string, cfg *tls.Config) callResult {
	t.Helper()
	res, err := call(t, addr, cfg)
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	return res
}

func TestGRPCIdentity(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	clearing := reloaderFor(t, dir, clearingID, nil)
	clearingAddr := startGRPC(t, clearing)

	for _, id := range []tlsconf.Identity{provinceID("110000"), provinceID("460000"), provinceID("660000"), operatorID} {
		cli := reloaderFor(t, dir, id, nil)
		res := mustCall(t, clearingAddr, tlsconf.ClientConfigFor(cli, "127.0.0.1", clearingID))
		if res.peerIdentity != id.String() || res.clientSerial != cli.Leaf().SerialNumber.String() {
			t.Errorf("server saw %q serial %s, want %q serial %s", res.peerIdentity, res.clientSerial, id, cli.Leaf().SerialNumber)
		}
		if res.serverSerial.Cmp(clearing.Leaf().SerialNumber) != 0 {
			t.Errorf("client saw server serial %s", res.serverSerial)
		}
	}

	// The other direction: the clearing switch calls a province node.
	gd := provinceID("440000")
	provinceAddr := startGRPC(t, reloaderFor(t, dir, gd, nil))
	res := mustCall(t, provinceAddr, tlsconf.ClientConfigFor(clearing, "localhost", gd))
	if res.peerIdentity != clearingID.String() {
		t.Errorf("province node saw %q", res.peerIdentity)
	}

	// No client certificate: the connection is refused, the RPC never runs.
	// (The client-side text of these failures races with the server closing
	// the connection; the server-side reasons are asserted exactly in
	// TestHandshakeRefusals.)
	ca := loadCA(t, dir)
	_, err := call(t, clearingAddr, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("no client certificate: %v", err)
	}
	// A client certificate from a foreign CA: same.
	foreign, err := tlsconf.NewCA(tlsconf.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fc := issue(t, foreign, tlsconf.LeafRequest{Identity: provinceID("110000")}).TLSCertificate()
	_, err = call(t, clearingAddr, &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: "127.0.0.1",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &fc, nil },
	})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("foreign client certificate: %v", err)
	}
	// A province node pretending to be the clearing service is refused by a
	// client that knows whom it dials.
	_, err = call(t, provinceAddr, tlsconf.ClientConfigFor(reloaderFor(t, dir, provinceID("110000"), nil), "127.0.0.1", clearingID))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), tlsconf.ErrWrongPeer.Error()) {
		t.Errorf("province posing as clearing: %v", err)
	}

}

// TestGRPCRotationByClock rotates both the server's and the client's
// certificate on disk while the gRPC server keeps running; an injected clock
// moves past the check interval and the next handshakes present the new
// certificates.
func TestGRPCRotationByClock(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	ca := loadCA(t, dir)
	clock := newFakeClock()
	opts := func(id tlsconf.Identity) tlsconf.ReloaderOptions {
		return tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(dir, id), Identity: id, CheckInterval: time.Minute, Now: clock.Now}
	}
	bj := provinceID("110000")
	srv := newReloader(t, opts(clearingID))
	cli := newReloader(t, opts(bj))
	addr := startGRPC(t, srv)
	cfg := tlsconf.ClientConfigFor(cli, "127.0.0.1", clearingID)

	oldServer, oldClient := srv.Leaf().SerialNumber, cli.Leaf().SerialNumber
	first := mustCall(t, addr, cfg)
	if first.serverSerial.Cmp(oldServer) != 0 || first.clientSerial != oldClient.String() || first.peerIdentity != bj.String() {
		t.Fatalf("first call %+v", first)
	}

	newServer := rotate(t, ca, dir, clearingID)
	newClient := rotate(t, ca, dir, bj)

	// Within the interval nothing is re-read.
	second := mustCall(t, addr, cfg)
	if second.serverSerial.Cmp(oldServer) != 0 || second.clientSerial != oldClient.String() {
		t.Fatalf("reloaded before the interval: %+v", second)
	}

	clock.Advance(time.Minute + time.Second)
	third := mustCall(t, addr, cfg)
	if third.serverSerial.Cmp(newServer.Cert.SerialNumber) != 0 {
		t.Errorf("server presents %s, want rotated %s", third.serverSerial, newServer.Cert.SerialNumber)
	}
	if third.clientSerial != newClient.Cert.SerialNumber.String() {
		t.Errorf("client presents %s, want rotated %s", third.clientSerial, newClient.Cert.SerialNumber)
	}
	if third.peerIdentity != bj.String() {
		t.Errorf("identity after rotation %q", third.peerIdentity)
	}
	if srv.LastError() != nil || cli.LastError() != nil {
		t.Errorf("errors: %v, %v", srv.LastError(), cli.LastError())
	}
}

// rotate issues a new certificate for id with the same hosts Init uses and
// writes it over id's files.
func rotate(t *testing.T, ca *tlsconf.CA, dir string, id tlsconf.Identity) *tlsconf.Leaf {
	t.Helper()
	hosts := []string{"localhost", "127.0.0.1"}
	if id.Kind == tlsconf.Clearing {
		hosts = append(hosts, "::1")
	}
	l := issue(t, ca, tlsconf.LeafRequest{Identity: id, Hosts: hosts})
	f := tlsconf.FilesFor(dir, id)
	if err := l.WriteFiles(f.CertFile, f.KeyFile); err != nil {
		t.Fatal(err)
	}
	return l
}
