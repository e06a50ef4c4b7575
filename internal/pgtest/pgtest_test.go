package pgtest_test

import (
	"context"
	"sync"
	"testing"

	"gongji/internal/pgtest"
	"gongji/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestIsolation: parallel tests write the same keys into their own databases
// and each sees only its own rows.
func TestIsolation(t *testing.T) {
	var mu sync.Mutex
	names := map[string]bool{}
	for i := 0; i < 4; i++ {
		t.Run("writer", func(t *testing.T) {
			t.Parallel()
			db := pgtest.New(t, migrations.Province)
			mu.Lock()
			if names[db.Name] {
				t.Errorf("database %s handed out twice", db.Name)
			}
			names[db.Name] = true
			mu.Unlock()
			ctx := context.Background()
			if _, err := db.Pool.Exec(ctx, `CREATE TABLE k (id int PRIMARY KEY, v text)`); err != nil {
				t.Fatal(err)
			}
			for k := 1; k <= 100; k++ {
				if _, err := db.Pool.Exec(ctx, `INSERT INTO k VALUES ($1, $2)`, k, db.Name); err != nil {
					t.Fatalf("same key %d collided across tests: %v", k, err)
				}
			}
			var n int
			var other int
			if err := db.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE v <> $1) FROM k`, db.Name).Scan(&n, &other); err != nil {
				t.Fatal(err)
			}
			if n != 100 || other != 0 {
				t.Fatalf("rows=%d foreign=%d, want 100 and 0", n, other)
			}
		})
	}
}

func TestMigrationsUpDown(t *testing.T) {
	for _, s := range []migrations.Schema{migrations.Clearing, migrations.Province} {
		t.Run(string(s), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := pgtest.NewEmpty(t, "")
			if err := migrations.Up(ctx, db.URL, s); err != nil {
				t.Fatal(err)
			}
			top, err := migrations.Version(ctx, db.URL, s)
			if err != nil || top < 1 {
				t.Fatalf("version after up = %d, %v", top, err)
			}
			if err := migrations.Up(ctx, db.URL, s); err != nil {
				t.Fatalf("second up must be a no-op: %v", err)
			}
			if err := migrations.DownTo(ctx, db.URL, s, 0); err != nil {
				t.Fatal(err)
			}
			var tables int
			if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'goose_db_version'`).Scan(&tables); err != nil {
				t.Fatal(err)
			}
			if tables != 0 {
				t.Fatalf("%d tables left after down to 0", tables)
			}
			if err := migrations.Up(ctx, db.URL, s); err != nil {
				t.Fatalf("up after down: %v", err)
			}
		})
	}
}
