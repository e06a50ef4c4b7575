// Package e2e runs the federation as separate processes (the real clearing and
// provincenode binaries, one database each, mTLS on loopback) and checks the
// invariants the system promises: money conserved in every node and in the
// clearing journal, node and clearing records equal row by row, exports that
// verify, and nothing lost or doubled across kills and restarts.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"gongji/internal/federation"
	"gongji/internal/pgtest"
	"gongji/provincedb"
	"gongji/region"
	"gongji/sim"
)

// long enables the nightly variants (more kill iterations, bigger months).
var long = flag.Bool("long", false, "run the long (nightly) variants")

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// binaries builds clearing and provincenode once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gongji-e2e-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		cmd := exec.Command("go", "build", "-o", dir+"/", "gongji/cmd/clearing", "gongji/cmd/provincenode")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// monthExpiry is the proposal expiry of the small population TestMonth uses
// (sim.Generate with People: 1 gives the 4-per-region minimum).
var monthExpiry = func() time.Duration {
	_, links, _ := sim.Generate(sim.Config{People: 1, Seed: 1, Year: 2026}).Counts()
	return sim.ProposalExpiry(links)
}()

// startFederation runs a federation of the given provinces (all 32 when nil)
// on the shared test server; it is stopped in t.Cleanup.
func startFederation(t *testing.T, period region.Period, seed uint64, provinces []string) *federation.Federation {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := federation.Start(ctx, federation.Options{
		Dir: dir, Bin: binaries(t), Seed: seed, Period: period, Provinces: provinces,
		ProposalExpiry: monthExpiry, SweepInterval: 500 * time.Millisecond,
		Server: pgtest.Server(t), Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("federation logs kept in %s", f.LogsDir())
			keepLogs(t, f.LogsDir())
		}
		f.Close()
	})
	return f
}

// keepLogs copies the logs of a failed run next to the test binary's temp dir
// so that they survive t.TempDir's cleanup.
func keepLogs(t *testing.T, dir string) {
	dst, err := os.MkdirTemp("", "gongji-e2e-logs-")
	if err != nil {
		return
	}
	_ = exec.Command("cp", "-r", dir, dst).Run()
	t.Logf("logs copied to %s", dst)
}

func pool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// checkConservation runs every node's conservation check and verifies the
// clearing journal's hash chain and balances.
func checkConservation(t *testing.T, f *federation.Federation) {
	t.Helper()
	ctx := context.Background()
	for _, c := range f.Provinces() {
		st, err := provincedb.New(pool(t, f.DatabaseURL(c)), provincedb.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.CheckConservation(ctx); err != nil {
			t.Errorf("node %s: conservation: %v", c, err)
		}
	}
	if out, err := f.ClearingCmd(ctx, "journal", "verify"); err != nil {
		t.Errorf("clearing journal verify: %v\n%s", err, out)
	}
}

// record is one cleared entry as both sides see it.
type record struct {
	Key, Type, Payer, Payee, PayerRegion, PayeeRegion, Amount string
}

// nodeRecords reads every approved cross-province usage and reversal each
// node recorded in the given role (PAYER or PAYEE).
func nodeRecords(t *testing.T, f *federation.Federation, role string) map[string]record {
	t.Helper()
	out := map[string]record{}
	for _, c := range f.Provinces() {
		p := pool(t, f.DatabaseURL(c))
		rows, err := p.Query(context.Background(), `
			SELECT usage_key, 'USAGE', payer_province, payee_province, payer_region, payee_region, amount::text
			  FROM usages WHERE role = $1 AND approved AND cross_province
			UNION ALL
			SELECT r.reversal_key, 'REVERSAL', u.payer_province, u.payee_province, u.payer_region, u.payee_region, (-r.amount)::text
			  FROM reversals r JOIN usages u ON u.usage_key = r.usage_key
			 WHERE r.role = $1 AND u.cross_province`, role)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var r record
			if err := rows.Scan(&r.Key, &r.Type, &r.Payer, &r.Payee, &r.PayerRegion, &r.PayeeRegion, &r.Amount); err != nil {
				t.Fatal(err)
			}
			if _, dup := out[r.Key]; dup {
				t.Errorf("key %s recorded twice as %s", r.Key, role)
			}
			out[r.Key] = r
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// clearingRecords reads every usage and reversal row of the clearing database.
func clearingRecords(t *testing.T, f *federation.Federation) map[string]record {
	t.Helper()
	p := pool(t, f.DatabaseURL("clearing"))
	rows, err := p.Query(context.Background(), `
		SELECT usage_id, entry_type, payer_province, payee_province, payer_region, payee_region, amount::text
		  FROM usages WHERE entry_type <> 'ADJUSTMENT'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]record{}
	for rows.Next() {
		var r record
		if err := rows.Scan(&r.Key, &r.Type, &r.Payer, &r.Payee, &r.PayerRegion, &r.PayeeRegion, &r.Amount); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[r.Key]; dup {
			t.Errorf("clearing holds %s twice", r.Key)
		}
		out[r.Key] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// compareRecords asserts that the clearing database holds exactly what the
// payer nodes committed, and that every payee record matches its payer.
func compareRecords(t *testing.T, f *federation.Federation) int {
	t.Helper()
	payer := nodeRecords(t, f, "PAYER")
	payee := nodeRecords(t, f, "PAYEE")
	cleared := clearingRecords(t, f)
	var diffs []string
	for k, r := range payer {
		c, ok := cleared[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: committed by payer %s, missing at clearing", k, r.Payer))
		case c != r:
			diffs = append(diffs, fmt.Sprintf("%s: payer %+v, clearing %+v", k, r, c))
		}
		if p, ok := payee[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: no payee record", k))
		} else if p != r {
			diffs = append(diffs, fmt.Sprintf("%s: payer %+v, payee %+v", k, r, p))
		}
	}
	for k := range cleared {
		if _, ok := payer[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: at clearing but not committed by any payer", k))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("… and %d more", len(diffs)-20))
		}
		t.Errorf("node and clearing records differ:\n%s", joinLines(diffs))
	}
	return len(payer)
}

func joinLines(s []string) string {
	out := ""
	for _, l := range s {
		out += "  " + l + "\n"
	}
	return out
}

// exportAndVerify exports a settled period and runs `clearing verify` on it.
func exportAndVerify(t *testing.T, f *federation.Federation, period region.Period, journalHead string) string {
	t.Helper()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), period.String())
	if out, err := f.ClearingCmd(ctx, "export", "--period", period.String(), "--out", dir); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	args := []string{"verify", dir}
	if journalHead != "" {
		args = append(args, "--journal-head", journalHead)
	}
	if out, err := f.ClearingCmd(ctx, args...); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	return dir
}
