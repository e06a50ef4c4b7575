package console_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"gongji/audit"
	"gongji/console"
	"gongji/internal/pgtest"
	"gongji/internal/tlsconf"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// exportKey is the fixture's export pseudonym key.
var exportKey = func() audit.PseudonymKey {
	k, err := audit.NewPseudonymKey([]byte("gongji console test export key, 32+ bytes long"))
	if err != nil {
		panic(err)
	}
	return k
}()

var (
	operator   = tlsconf.Identity{Kind: tlsconf.Operator}
	clearingID = tlsconf.Identity{Kind: tlsconf.Clearing}
)

func provinceID(code string) tlsconf.Identity {
	return tlsconf.Identity{Kind: tlsconf.Province, Province: code}
}

// env is a console served over real mTLS on a loopback port.
type env struct {
	t       testing.TB
	fx      *fixture
	srv     *console.Server
	addr    string
	certs   string // certificates of the console's CA
	foreign string // certificates of another CA
	reg     *prometheus.Registry
}

// startConsole serves fx's database with a fresh CA (and a foreign one for
// the refusal tests). The console's clock is fxNow; its live sampler does not
// run by itself (the tests take samples).
func startConsole(t testing.TB, fx *fixture, opts console.Options) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, fx: fx, certs: filepath.Join(dir, "certs"), foreign: filepath.Join(dir, "foreign"), reg: prometheus.NewRegistry()}
	for _, d := range []string{e.certs, e.foreign} {
		if err := tlsconf.Init(d, tlsconf.InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	certs, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(e.certs, clearingID), Identity: clearingID})
	if err != nil {
		t.Fatal(err)
	}
	opts.Store, opts.ExportKey, opts.Clock = fx.store, exportKey, func() time.Time { return fxNow }
	if opts.Gatherer == nil {
		opts.Gatherer = e.reg
	}
	if opts.LiveInterval == 0 {
		opts.LiveInterval = -1
	}
	opts.TempDir = t.TempDir()
	if e.srv, err = console.New(opts); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx, lis, tlsconf.ServerConfig(certs), 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("console Run: %v", err)
		}
	})
	return e
}

// clientTLS is the TLS config of a client presenting id's certificate from
// dir (no certificate for a zero id), trusting the console's CA.
func (e *env) clientTLS(dir string, id tlsconf.Identity) *tls.Config {
	e.t.Helper()
	if id.Kind == 0 {
		ca, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(e.certs, operator), Identity: operator})
		if err != nil {
			e.t.Fatal(err)
		}
		return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: "localhost"}
	}
	r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(dir, id), Identity: id})
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := tlsconf.ClientConfigFor(r, "localhost", clearingID)
	if dir != e.certs {
		// A foreign client still has to trust the console's server
		// certificate for the handshake to reach the client check.
		own, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(e.certs, operator), Identity: operator})
		if err != nil {
			e.t.Fatal(err)
		}
		cfg = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: own.Pool(), ServerName: "localhost",
			GetClientCertificate: r.GetClientCertificate}
	}
	return cfg
}

func (e *env) client(dir string, id tlsconf.Identity) *http.Client {
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: e.clientTLS(dir, id), DisableKeepAlives: true},
		Timeout:   2 * time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// get fetches path as id (a certificate of the console's CA).
func (e *env) get(id tlsconf.Identity, path string) (*http.Response, []byte) {
	e.t.Helper()
	return e.getWith(e.client(e.certs, id), path)
}

func (e *env) getWith(c *http.Client, path string) (*http.Response, []byte) {
	e.t.Helper()
	resp, err := c.Get("https://" + e.addr + path)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("GET %s: body: %v", path, err)
	}
	return resp, b
}

// getJSON fetches an API path as id, wants status, decodes into v.
func (e *env) getJSON(id tlsconf.Identity, path string, status int, v any) {
	e.t.Helper()
	resp, b := e.get(id, path)
	if resp.StatusCode != status {
		e.t.Fatalf("GET %s as %s: status %d, want %d: %s", path, id, resp.StatusCode, status, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		e.t.Fatalf("GET %s: Content-Type %q", path, ct)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			e.t.Fatalf("GET %s: %v: %s", path, err, b)
		}
	}
}

// tlsRefused reports whether a request with c fails in the TLS layer.
func (e *env) tlsRefused(c *http.Client, path string) error {
	resp, err := c.Get("https://" + e.addr + path)
	if err == nil {
		resp.Body.Close()
		return errors.New("request succeeded with status " + resp.Status)
	}
	return nil
}
