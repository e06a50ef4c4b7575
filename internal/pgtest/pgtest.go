// Package pgtest gives each test its own migrated PostgreSQL database.
//
// Once per test binary and schema, the migrations are applied to a template
// database; each call to New then clones it with CREATE DATABASE … TEMPLATE …
// (milliseconds) and drops the clone in t.Cleanup. Tests therefore run in
// parallel against real PostgreSQL with no shared state.
//
// The server is the one named by DATABASE_URL, or a private cluster started by
// internal/pgboot on first use. Use Main from TestMain so that templates are
// dropped and a private cluster stopped when the package's tests end:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"gongji/internal/pgboot"
	"gongji/migrations"
)

var (
	srvOnce sync.Once
	srv     *pgboot.Server
	srvErr  error

	tplMu sync.Mutex
	tpls  = map[migrations.Schema]string{}
)

// Server returns the shared server for this test binary, starting a private
// cluster if DATABASE_URL is not set.
func Server(tb testing.TB) *pgboot.Server {
	tb.Helper()
	srvOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		srv, srvErr = pgboot.Start(ctx, pgboot.Options{})
	})
	if srvErr != nil {
		tb.Fatalf("pgtest: %v", srvErr)
	}
	return srv
}

// Main runs the package's tests, then drops the templates and stops a private
// cluster. It calls os.Exit.
func Main(m *testing.M) {
	code := m.Run()
	cleanup()
	os.Exit(code)
}

func cleanup() {
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tplMu.Lock()
	for _, name := range tpls {
		_ = srv.DropDatabase(ctx, name)
	}
	tplMu.Unlock()
	_ = srv.Stop()
}

// Name returns a fresh database name with a prefix.
func Name(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

func template(tb testing.TB, s migrations.Schema) string {
	tb.Helper()
	tplMu.Lock()
	defer tplMu.Unlock()
	if name, ok := tpls[s]; ok {
		return name
	}
	server := Server(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	name := Name(fmt.Sprintf("gongji_tpl_%s_%d", s, os.Getpid()))
	if err := server.CreateDatabase(ctx, name, ""); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	if err := migrations.Up(ctx, server.URL(name), s); err != nil {
		_ = server.DropDatabase(ctx, name)
		tb.Fatalf("pgtest: migrate template: %v", err)
	}
	tpls[s] = name
	return name
}

// DB is one test's database.
type DB struct {
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// New creates a database migrated to the latest version of schema s, opens a
// pool on it and registers cleanup (close pool, drop database).
func New(tb testing.TB, s migrations.Schema) *DB {
	tb.Helper()
	db := NewEmpty(tb, template(tb, s))
	return db
}

// NewEmpty creates a database cloned from template ("" for an empty one).
func NewEmpty(tb testing.TB, template string) *DB {
	tb.Helper()
	server := Server(tb)
	ctx := context.Background()
	name := Name("gongji_t")
	if err := server.CreateDatabase(ctx, name, template); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	url := server.URL(name)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		_ = server.DropDatabase(ctx, name)
		tb.Fatalf("pgtest: pool: %v", err)
	}
	tb.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := server.DropDatabase(ctx, name); err != nil {
			tb.Errorf("pgtest: drop %s: %v", name, err)
		}
	})
	return &DB{Name: name, URL: url, Pool: pool}
}
