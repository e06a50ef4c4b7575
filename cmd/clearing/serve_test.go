package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gongji/internal/pgtest"
	"gongji/internal/tlsconf"
)

// TestServeConsole runs `clearing serve --console-listen` in-process and
// checks the wiring: the console answers over HTTPS with the service's own
// certificates, requires a client certificate of the service's CA, serves
// an operator, and stops with the service.
func TestServeConsole(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if err := tlsconf.Init(certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	keyFile := filepath.Join(dir, "export.key")
	nodesFile := filepath.Join(dir, "nodes.json")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nodesFile, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	db := pgtest.NewEmpty(t, "") // serve migrates it
	f := serveFlags{listen: "127.0.0.1:0", databaseURL: db.URL, certsDir: certs, nodesFile: nodesFile, exportKeyFile: keyFile,
		cutoffGrace: 120 * time.Hour, confirmWindow: 240 * time.Hour, rpcTimeout: 5 * time.Second,
		prepayMultiple: "2", prepayThreshold: "0.70", logFormat: "json", logLevel: "error", readyFile: filepath.Join(dir, "ready")}

	// The console's port is picked free first; another process may take it
	// before serve binds it, so a start that fails to listen is retried.
	var (
		done    chan error
		cancel  context.CancelFunc
		console string
	)
	for attempt := 1; ; attempt++ {
		console = freeAddr(t)
		f.consoleListen = console
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		done = make(chan error, 1)
		go func() { done <- runServe(ctx, f) }()
		if err := waitFile(f.readyFile, done); err == nil {
			break
		} else if attempt == 3 || !strings.Contains(err.Error(), "console listen") {
			cancel()
			t.Fatalf("serve: %v", err)
		}
		cancel()
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve returned %v", err)
		}
	}()

	client := func(id tlsconf.Identity) *http.Client {
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "localhost"}
		ca, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(certs, tlsconf.Identity{Kind: tlsconf.Operator})})
		if err != nil {
			t.Fatal(err)
		}
		cfg.RootCAs = ca.Pool()
		if id.Kind != 0 {
			r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(certs, id), Identity: id})
			if err != nil {
				t.Fatal(err)
			}
			cfg.GetClientCertificate = r.GetClientCertificate
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: time.Minute}
	}
	resp, err := client(tlsconf.Identity{Kind: tlsconf.Operator}).Get("https://" + console + "/api/periods")
	if err != nil {
		t.Fatal(err)
	}
	var periods struct{ Periods []any }
	err = json.NewDecoder(resp.Body).Decode(&periods)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(periods.Periods) != 0 {
		t.Errorf("operator: %d %v %+v", resp.StatusCode, err, periods)
	}
	resp, err = client(tlsconf.Identity{Kind: tlsconf.Province, Province: "410000"}).Get("https://" + console + "/api/live")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("province on /api/live: %d, want 403", resp.StatusCode)
	}
	if resp, err := client(tlsconf.Identity{}).Get("https://" + console + "/api/periods"); err == nil {
		resp.Body.Close()
		t.Errorf("no client certificate: %s, want a TLS refusal", resp.Status)
	}
}

// TestServeConsoleFlag: the console is off unless --console-listen is set.
func TestServeConsoleFlag(t *testing.T) {
	t.Parallel()
	cmd := serveCmd()
	fl := cmd.Flags().Lookup("console-listen")
	if fl == nil || fl.DefValue != "" {
		t.Fatalf("--console-listen: %+v (want a flag, off by default)", fl)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitFile waits (bounded) for serve's ready file, or for serve to return.
// Polling a file is how a parent learns a server is ready (internal/fleet
// does the same).
func waitFile(path string, done <-chan error) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Minute)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case err := <-done:
			if err == nil {
				err = errors.New("serve returned before it was ready")
			}
			return err
		case <-deadline:
			return errors.New("serve not ready after 2 minutes")
		case <-tick.C:
		}
	}
}
