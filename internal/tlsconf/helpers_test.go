package tlsconf_test

import (
	"crypto/tls"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"gongji/internal/tlsconf"
)

// hangGuard bounds every wait in these tests so that a bug fails the test
// instead of hanging it. It is never used to let something happen.
const hangGuard = 20 * time.Second

var (
	clearingID = tlsconf.Identity{Kind: tlsconf.Clearing}
	operatorID = tlsconf.Identity{Kind: tlsconf.Operator}
)

func provinceID(code string) tlsconf.Identity {
	return tlsconf.Identity{Kind: tlsconf.Province, Province: code}
}

// fakeClock is an injectable clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// initDir runs Init with defaults in a fresh directory.
func initDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := tlsconf.Init(dir, tlsconf.InitOptions{}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return dir
}

func loadCA(t *testing.T, dir string) *tlsconf.CA {
	t.Helper()
	ca, err := tlsconf.LoadCA(dir+"/"+tlsconf.CACertFile, dir+"/"+tlsconf.CAKeyFile)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	return ca
}

func newReloader(t *testing.T, opts tlsconf.ReloaderOptions) *tlsconf.Reloader {
	t.Helper()
	r, err := tlsconf.NewReloader(opts)
	if err != nil {
		t.Fatalf("NewReloader(%s): %v", opts.CertFile, err)
	}
	return r
}

func reloaderFor(t *testing.T, dir string, id tlsconf.Identity, clock *fakeClock) *tlsconf.Reloader {
	t.Helper()
	opts := tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(dir, id), Identity: id, CheckInterval: -1}
	if clock != nil {
		opts.Now = clock.Now
	}
	return newReloader(t, opts)
}

func issue(t *testing.T, ca *tlsconf.CA, req tlsconf.LeafRequest) *tlsconf.Leaf {
	t.Helper()
	l, err := ca.Issue(req)
	if err != nil {
		t.Fatalf("Issue(%s): %v", req.Identity, err)
	}
	return l
}

// serverResult is what the raw TLS test server saw of one connection.
type serverResult struct {
	id     tlsconf.Identity
	serial *big.Int // client certificate serial
	err    error    // handshake or identity error
}

type tlsServer struct {
	addr    string
	results chan serverResult
}

// startTLSServer accepts connections with cfg (results are buffered for 64
// connections; a test that dials more must drain them as it goes); for each it completes the
// handshake, reports the result, and on success writes "ok\n" so that the
// client learns the verdict (in TLS 1.3 the client finishes its handshake
// before the server has checked the client certificate).
func startTLSServer(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsServer{addr: ln.Addr().String(), results: make(chan serverResult, 64)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(hangGuard))
				tc := tls.Server(c, cfg)
				if err := tc.Handshake(); err != nil {
					s.results <- serverResult{err: err}
					return
				}
				cs := tc.ConnectionState()
				id, err := tlsconf.IdentityFromState(cs)
				res := serverResult{id: id, err: err}
				if len(cs.PeerCertificates) > 0 {
					res.serial = cs.PeerCertificates[0].SerialNumber
				}
				s.results <- res
				if err == nil {
					_, _ = tc.Write([]byte("ok\n"))
				}
			}()
		}
	}()
	return s
}

// next returns the server's result for the next connection.
func (s *tlsServer) next(t *testing.T) serverResult {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(hangGuard):
		t.Fatal("no server result")
		return serverResult{}
	}
}

// dial connects with cfg and reads the server's "ok". It returns the serial
// of the server certificate the client saw and the first error.
func dial(t *testing.T, addr string, cfg *tls.Config) (*big.Int, error) {
	t.Helper()
	d := &net.Dialer{Timeout: hangGuard}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(hangGuard))
	serial := c.ConnectionState().PeerCertificates[0].SerialNumber
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c, buf); err != nil {
		return serial, err
	}
	if string(buf) != "ok\n" {
		return serial, errors.New("unexpected reply " + string(buf))
	}
	return serial, nil
}
