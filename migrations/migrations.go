// Package migrations embeds the goose migrations of gongji's two databases and
// applies them. Each binary migrates its own database on start; the `migrate`
// subcommands and the test helper use the same functions.
//
//   - clearing/: the national clearing service's database
//   - province/: a province node's database (one per provincial unit)
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

//go:embed clearing/*.sql
var clearingFS embed.FS

//go:embed province/*.sql
var provinceFS embed.FS

// Schema names one database's migration set.
type Schema string

const (
	Clearing Schema = "clearing"
	Province Schema = "province"
)

// FS returns the migration files of a schema.
func (s Schema) FS() (fs.FS, error) {
	switch s {
	case Clearing:
		return fs.Sub(clearingFS, "clearing")
	case Province:
		return fs.Sub(provinceFS, "province")
	}
	return nil, fmt.Errorf("migrations: unknown schema %q", string(s))
}

func provider(dsn string, s Schema) (*goose.Provider, *sql.DB, error) {
	fsys, err := s.FS()
	if err != nil {
		return nil, nil, err
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("migrations: open: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys)
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("migrations: %s: %w", s, err)
	}
	return p, db, nil
}

// Up applies every pending migration of schema s to the database at dsn.
// It is idempotent and safe to run on every start.
func Up(ctx context.Context, dsn string, s Schema) error {
	p, db, err := provider(dsn, s)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrations: %s up: %w", s, err)
	}
	return nil
}

// DownTo rolls schema s back to version (0 removes everything).
func DownTo(ctx context.Context, dsn string, s Schema, version int64) error {
	p, db, err := provider(dsn, s)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := p.DownTo(ctx, version); err != nil {
		return fmt.Errorf("migrations: %s down to %d: %w", s, version, err)
	}
	return nil
}

// Version reports the current version of schema s at dsn.
func Version(ctx context.Context, dsn string, s Schema) (int64, error) {
	p, db, err := provider(dsn, s)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	return p.GetDBVersion(ctx)
}

var _ = stdlib.GetDefaultDriver // registers the "pgx" database/sql driver

// Command runs the `migrate` subcommand of either binary: args are
// "up", "down [VERSION]" (default 0: remove everything) or "version".
func Command(ctx context.Context, dsn string, s Schema, args []string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	switch {
	case len(args) == 1 && args[0] == "up":
		return Up(ctx, dsn, s)
	case len(args) >= 1 && len(args) <= 2 && args[0] == "down":
		to := int64(0)
		if len(args) == 2 {
			v, err := strconv.ParseInt(args[1], 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("migrations: version %q is not a non-negative integer", args[1])
			}
			to = v
		}
		return DownTo(ctx, dsn, s, to)
	case len(args) == 1 && args[0] == "version":
		v, err := Version(ctx, dsn, s)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, v)
		return err
	}
	return fmt.Errorf("migrations: want up, down [VERSION] or version, got %q", args)
}
