package main

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"gongji/internal/pgtest"
	"gongji/internal/tlsconf"
	provincev1 "gongji/proto/gen/gongji/province/v1"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestServeFlagsMatchDocs: `provincenode serve` has exactly the flags of the
// provincenode table in docs/cli.md, with its defaults (the demo and e2e rely
// on that contract).
func TestServeFlagsMatchDocs(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	start, end := strings.Index(text, "## provincenode"), strings.Index(text, "## clearing")
	if start < 0 || end < start {
		t.Fatal("docs/cli.md has no provincenode section")
	}
	row := regexp.MustCompile("(?m)^\\| (`--[^|]+) \\| ([^|]+) \\|")
	want := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(text[start:end], -1) {
		names := regexp.MustCompile("`--([a-z-]+)`").FindAllStringSubmatch(m[1], -1)
		defs := strings.Split(m[2], "/")
		for i, n := range names {
			def := strings.TrimSpace(defs[min(i, len(defs)-1)])
			if strings.HasPrefix(def, "(") || strings.HasPrefix(def, "``") {
				def = ""
			}
			want[n[1]] = strings.Trim(def, "`")
		}
	}
	if len(want) < 15 {
		t.Fatalf("parsed only %d flags from docs/cli.md: %v", len(want), want)
	}
	fl := serveCmd().Flags()
	got := 0
	fl.VisitAll(func(f *pflag.Flag) {
		got++
		def, ok := want[f.Name]
		if !ok {
			t.Errorf("flag --%s is not in docs/cli.md", f.Name)
			return
		}
		if f.Value.Type() == "duration" && def != "" {
			d, err := time.ParseDuration(def)
			if err != nil || d.String() != f.DefValue {
				t.Errorf("--%s default %s, docs say %s", f.Name, f.DefValue, def)
			}
			return
		}
		if f.DefValue != def {
			t.Errorf("--%s default %q, docs say %q", f.Name, f.DefValue, def)
		}
	})
	if got != len(want) {
		t.Errorf("serve has %d flags, docs/cli.md %d: %v", got, len(want), want)
	}
}

// TestServeRunsAndStops starts `provincenode serve` in-process on a fresh
// database: it migrates, binds the province, writes the ready file once
// listening, serves the province's own systems over mutual TLS, and stops
// cleanly when its context ends. A second node cannot take over the same
// database for another province.
func TestServeRunsAndStops(t *testing.T) {
	db := pgtest.NewEmpty(t, "")
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if err := tlsconf.Init(certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "person.key")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(dir, "ready")
	args := []string{"serve", "--province", "410000", "--listen", "127.0.0.1:0", "--database-url", db.URL,
		"--certs-dir", certs, "--clearing-addr", "127.0.0.1:1", "--person-key-file", keyFile, "--ready-file", ready,
		"--log-level", "warn", "--clock-start", "2026-11-01T01:00:00+08:00"}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		root := rootCmd()
		root.SetArgs(args)
		done <- root.ExecuteContext(runCtx)
	}()
	var addr string
	for addr == "" {
		select {
		case err := <-done:
			t.Fatalf("serve ended before it was ready: %v", err)
		case <-ctx.Done():
			t.Fatal("serve never wrote its ready file")
		case <-time.After(20 * time.Millisecond):
		}
		if b, err := os.ReadFile(ready); err == nil {
			addr = strings.TrimSpace(string(b))
		}
	}

	id := tlsconf.Identity{Kind: tlsconf.Province, Province: "410000"}
	r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(certs, id), Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsconf.ClientConfigFor(r, "localhost", id))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = provincev1.NewProvinceServiceClient(cc).GetPerson(ctx, &provincev1.GetPersonRequest{
		Person: &provincev1.PersonId{Id: &provincev1.PersonId_PersonRef{PersonRef: strings.Repeat("a", 32)}},
	})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetPerson of an unknown person: %v, want NotFound", err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("serve stopped with %v", err)
	}

	// The database now belongs to 410000.
	other := append([]string(nil), args...)
	other[2] = "110000"
	root := rootCmd()
	root.SetArgs(other)
	if err := root.ExecuteContext(ctx); err == nil || !strings.Contains(err.Error(), "410000") {
		t.Fatalf("another province on the same database: %v", err)
	}
}

// TestServeFlagChecks: bad settings stop the start before anything opens.
func TestServeFlagChecks(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.key")
	notHex := filepath.Join(dir, "nothex.key")
	good := filepath.Join(dir, "good.key")
	for path, text := range map[string]string{short: hex.EncodeToString(make([]byte, 31)), notHex: "zz", good: strings.Repeat("ab", 32)} {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := serveFlags{province: "410000", databaseURL: "postgres://x", personKeyFile: good, proposalExpiry: time.Hour,
		sweepInterval: time.Minute, rpcTimeout: time.Second, reportInterval: time.Second, reportBatch: 1000}
	if _, err := checkServeFlags(base); err != nil {
		t.Fatalf("valid flags refused: %v", err)
	}
	for name, mut := range map[string]func(*serveFlags){
		"province":    func(f *serveFlags) { f.province = "410100" },
		"database":    func(f *serveFlags) { f.databaseURL = "" },
		"no key":      func(f *serveFlags) { f.personKeyFile = "" },
		"short key":   func(f *serveFlags) { f.personKeyFile = short },
		"hex":         func(f *serveFlags) { f.personKeyFile = notHex },
		"missing key": func(f *serveFlags) { f.personKeyFile = filepath.Join(dir, "none") },
		"expiry":      func(f *serveFlags) { f.proposalExpiry = 0 },
		"sweep":       func(f *serveFlags) { f.sweepInterval = -time.Second },
		"rpc":         func(f *serveFlags) { f.rpcTimeout = 0 },
		"interval":    func(f *serveFlags) { f.reportInterval = 0 },
		"batch 0":     func(f *serveFlags) { f.reportBatch = 0 },
		"batch big":   func(f *serveFlags) { f.reportBatch = 5001 },
		"clock":       func(f *serveFlags) { f.clockStart = "yesterday" },
	} {
		f := base
		mut(&f)
		if _, err := checkServeFlags(f); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
