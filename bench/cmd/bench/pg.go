package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"gongji/internal/pgboot"
	"gongji/migrations"
)

// pgHarness is the one PostgreSQL server of a run (DATABASE_URL, or a private
// cluster when the variable is unset) with a migrated template database per
// schema. Every row gets fresh databases cloned from the templates, so that
// no row sees another's data, and every database is dropped at the end.
type pgHarness struct {
	srv *pgboot.Server

	mu      sync.Mutex
	tpls    map[migrations.Schema]string
	created []string
}

func startPG(ctx context.Context, logf func(string, ...any)) (*pgHarness, error) {
	srv, err := pgboot.Start(ctx, pgboot.Options{Logf: logf})
	if err != nil {
		return nil, err
	}
	return &pgHarness{srv: srv, tpls: map[migrations.Schema]string{}}, nil
}

// dbName is a fresh database name: prefix, the process id and 6 random bytes.
func dbName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("gongji_bench_%s_%s", prefix, hex.EncodeToString(b[:]))
}

func (h *pgHarness) template(ctx context.Context, s migrations.Schema) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if name, ok := h.tpls[s]; ok {
		return name, nil
	}
	name := dbName("tpl_" + string(s))
	if err := h.srv.CreateDatabase(ctx, name, ""); err != nil {
		return "", err
	}
	h.created = append(h.created, name)
	if err := migrations.Up(ctx, h.srv.URL(name), s); err != nil {
		return "", err
	}
	h.tpls[s] = name
	return name, nil
}

// benchDB is one database of a row: its URL and a pool on it.
type benchDB struct {
	h    *pgHarness
	Name string
	URL  string
	Pool *pgxpool.Pool
}

// newDB creates a database migrated to the latest version of schema s ("" for
// an empty database) and opens a pool of at most maxConns connections (0:
// pgxpool's default, max(4, CPUs), as the servers use).
func (h *pgHarness) newDB(ctx context.Context, s migrations.Schema, maxConns int) (*benchDB, error) {
	tpl := ""
	if s != "" {
		var err error
		if tpl, err = h.template(ctx, s); err != nil {
			return nil, err
		}
	}
	name := dbName(string(s))
	if err := h.srv.CreateDatabase(ctx, name, tpl); err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.created = append(h.created, name)
	h.mu.Unlock()
	cfg, err := pgxpool.ParseConfig(h.srv.URL(name))
	if err != nil {
		return nil, err
	}
	if maxConns > 0 {
		cfg.MaxConns = int32(max(maxConns, 2))
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &benchDB{h: h, Name: name, URL: h.srv.URL(name), Pool: pool}, nil
}

// drop closes the pool and drops the database now (a big fixture should not
// hold its disk space until the end of the run).
func (d *benchDB) drop() {
	d.Pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_ = d.h.srv.DropDatabase(ctx, d.Name)
}

// close drops every database the run created and stops a private cluster.
func (h *pgHarness) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h.mu.Lock()
	names := append([]string(nil), h.created...)
	h.mu.Unlock()
	for _, n := range names {
		_ = h.srv.DropDatabase(ctx, n)
	}
	_ = h.srv.Stop()
}

// serverInfo is the server's version and the settings a reader of the
// figures needs (durability in particular: both sides of every ratio run
// with the same settings).
func (h *pgHarness) serverInfo(ctx context.Context) (string, error) {
	d, err := h.newDB(ctx, "", 2)
	if err != nil {
		return "", err
	}
	defer d.drop()
	var version, fsync, sync, sb, wm string
	err = d.Pool.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync'),
		current_setting('synchronous_commit'), current_setting('shared_buffers'), current_setting('work_mem')`).
		Scan(&version, &fsync, &sync, &sb, &wm)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("PostgreSQL %s (fsync=%s, synchronous_commit=%s, shared_buffers=%s, work_mem=%s)",
		version, fsync, sync, sb, wm), nil
}
