package clearingdb

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gongji/audit"
	"gongji/internal/pgtest"
	"gongji/migrations"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
)

var (
	benchExportRows = flag.Int("export.rows", 100_000, "BenchmarkExport: usages in the exported period")
	benchExportReps = flag.Int("export.reps", 1, "BenchmarkExport: exports per variant (the variants' order rotates)")
)

// benchExportKeyHex is the benchmark's export key (hex, as in a key file).
const benchExportKeyHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// BenchmarkExport exports a settled period of -export.rows usages between 8
// provinces (generated in SQL straight into the usages partition, then
// closed and settled through the public API) and reports, per variant of
// usages.csv, rows/s of the whole national WriteBundle (all seven files,
// fsync included), its ratio to a bare COPY (SELECT …) TO STDOUT of the same
// rows into io.Discard, and the growth of the process's peak RSS during the
// export (VmHWM reset through /proc/self/clear_refs before each variant, and
// a 5 ms VmRSS sampler as a cross-check where the reset is not allowed):
//
//	bundle    the production path (ExportSource as WriteBundle uses it):
//	          COPY formats every column but the refs, Go rewrites the two
//	          ref fields (ExportSource.CopyCSV) and the writer checks each
//	          line on its fast path
//	typed     pgx rows scanned into audit.UsageRow (ExportSource.Usages),
//	          checked and formatted by package audit
//	pgcrypto  COPY with hmac() in SQL (only if the server has pgcrypto; the
//	          key is then in the statement text — shown for comparison only)
//
// Every variant must produce the same usages.csv bytes. The fixture is built
// on every call of the benchmark function, so use -benchtime 1x and
// -export.reps for repetitions:
//
//	go test -run '^$' -bench BenchmarkExport -benchtime 1x ./clearingdb/
//	go test -run '^$' -bench BenchmarkExport -benchtime 1x -timeout 1h ./clearingdb/ \
//	    -args -export.rows=1000000 -export.reps=3
func BenchmarkExport(b *testing.B) {
	ctx := context.Background()
	n := *benchExportRows
	st, p := benchExportPeriod(b, n)
	key, err := audit.ParsePseudonymKey(benchExportKeyHex)
	if err != nil {
		b.Fatal(err)
	}
	src, err := st.ExportSource(ctx, p, ExportOptions{Key: key})
	if err != nil {
		b.Fatal(err)
	}

	// The baseline: the same SELECT, refs as stored, straight to io.Discard.
	sel, err := exportSelect(audit.FileUsages, p.Int(), "")
	if err != nil {
		b.Fatal(err)
	}
	bareStart := time.Now()
	rc, err := startCopy(ctx, st.pool, copyStatement(sel), nil)
	if err != nil {
		b.Fatal(err)
	}
	bareBytes, err := io.Copy(io.Discard, rc)
	_ = rc.Close()
	if err != nil {
		b.Fatal(err)
	}
	bareRate := float64(n) / time.Since(bareStart).Seconds()
	b.Logf("rows %d: bare COPY (SELECT …) TO STDOUT: %.0f rows/s (%d bytes)", n, bareRate, bareBytes)

	variants := []struct {
		name string
		src  audit.Source
	}{
		{"bundle", src},
		{"typed", benchTyped{src}},
	}
	if _, err := st.pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pgcrypto`); err == nil {
		variants = append(variants, struct {
			name string
			src  audit.Source
		}{"pgcrypto", benchPgcrypto{src}})
	} else {
		b.Logf("pgcrypto not available on this server: %v", err)
	}

	var usagesSum string
	b.ResetTimer()
	for range b.N * *benchExportReps {
		variants = append(variants[1:], variants[0]) // rotate: no variant always runs first
		for _, v := range variants {
			b.StopTimer()
			dir := filepath.Join(b.TempDir(), v.name)
			debug.FreeOSMemory() // a GC, and freed pages back to the OS: RSS starts from live memory
			hwmReset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
			before := procStatusKiB(b, "VmHWM")
			rssBefore := procStatusKiB(b, "VmRSS")
			stop := sampleRSS(b)
			cpu0 := cpuTime(b)
			if v.name == "bundle" {
				b.StartTimer()
			}
			start := time.Now()
			man, err := audit.WriteBundle(ctx, dir, v.src)
			secs := time.Since(start).Seconds()
			if v.name == "bundle" {
				b.StopTimer()
			}
			peakSampled := stop()
			cpu := cpuTime(b) - cpu0
			if err != nil {
				b.Fatalf("%s: %v", v.name, err)
			}
			after := procStatusKiB(b, "VmHWM")
			if usagesSum == "" {
				usagesSum = man.Files[audit.FileUsages].SHA256
			} else if got := man.Files[audit.FileUsages].SHA256; got != usagesSum {
				b.Fatalf("%s: usages.csv sha256 %s differs from the first variant's %s", v.name, got, usagesSum)
			}
			rate := float64(n) / secs
			growth := "n/a (clear_refs not allowed)"
			if hwmReset {
				growth = fmt.Sprintf("%.1f MiB", float64(after-before)/1024)
			}
			b.Logf("%-8s %d rows in %.2fs = %.0f rows/s, %.2f × bare COPY, Go CPU %.2fs (%.1f µs/row); peak RSS growth %s (sampled %.1f MiB over %.1f MiB)",
				v.name, n, secs, rate, rate/bareRate, cpu.Seconds(), float64(cpu.Microseconds())/float64(n),
				growth, float64(peakSampled-rssBefore)/1024, float64(rssBefore)/1024)
			if v.name == "bundle" {
				b.ReportMetric(rate, "rows/s")
				b.ReportMetric(rate/bareRate, "ratio_to_copy")
				if hwmReset {
					b.ReportMetric(float64(after-before)/1024, "rss_growth_MiB")
				}
			}
			_ = os.RemoveAll(dir)
			b.StartTimer()
		}
	}
}

// benchTyped takes usages.csv from the typed rows (ExportSource.Usages).
type benchTyped struct{ *ExportSource }

func (s benchTyped) RawCSV(ctx context.Context, file string) (io.ReadCloser, error) {
	if file == audit.FileUsages {
		return nil, audit.ErrNoRaw
	}
	return s.CopyCSV(ctx, file)
}

// benchPgcrypto computes the pseudonyms in SQL with pgcrypto's hmac().
type benchPgcrypto struct{ *ExportSource }

func (s benchPgcrypto) RawCSV(ctx context.Context, file string) (io.ReadCloser, error) {
	if file != audit.FileUsages {
		return s.CopyCSV(ctx, file)
	}
	sel, err := exportSelect(file, s.period.Int(), s.province)
	if err != nil {
		return nil, err
	}
	h := func(col string) string {
		return "encode(hmac(convert_to(" + col + ", 'UTF8'), decode('" + benchExportKeyHex + "', 'hex'), 'sha256'), 'hex')"
	}
	sel = strings.Replace(sel, "reversal_of, sharer_ref, beneficiary_ref",
		"reversal_of, "+h("sharer_ref")+", "+h("beneficiary_ref"), 1)
	return startCopy(ctx, s.pool, copyStatement(sel), nil)
}

// benchExportPeriod builds a settled period 202607 of n usages between 8
// provinces: 1 in 10 rows a reversal, people repeating (50 000 sharers,
// 70 001 beneficiaries), every row reported by both sides.
func benchExportPeriod(b *testing.B, n int) (*Store, region.Period) {
	b.Helper()
	ctx := context.Background()
	db := pgtest.New(b, migrations.Clearing)
	st, err := New(db.Pool, Config{})
	if err != nil {
		b.Fatal(err)
	}
	p, _ := region.ParsePeriod("202607")
	now := time.Date(2026, time.July, 20, 12, 0, 0, 0, region.Shanghai)
	if _, err := st.EnsurePeriod(ctx, p, now); err != nil {
		b.Fatal(err)
	}
	provinces := []string{"110000", "310000", "440000", "510000", "320000", "330000", "420000", "610000"}
	var regions []string
	for i, code := range provinces {
		pr, err := region.ParseProvince(code)
		if err != nil {
			b.Fatal(err)
		}
		regions = append(regions, pr.Regions[0].Code, pr.Regions[1%len(pr.Regions)].Code)
		if _, err := st.FundPrepay(ctx, PrepayMovement{Province: code, Amount: money.MustParse("100000.00"),
			Key: "bench-fund-" + strconv.Itoa(i)}, now); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	_, err = db.Pool.Exec(ctx, `WITH x AS (
			SELECT g, g % 8 AS pi, (g % 8 + 1 + (g / 8) % 7) % 8 AS ei, (g / 56) % 2 AS ri, g % 10 = 0 AS rev
			FROM generate_series(1::bigint, $3::bigint) g)
		INSERT INTO usages (setlym, payer_province, usage_id, entry_type, kind, payer_region, payee_province,
			payee_region, amount, occurred_at, late, reversal_of, sharer_ref, beneficiary_ref, relationship_id,
			payer_reported, payee_reported, first_at)
		SELECT 202607, ($1::text[])[pi + 1], 'U' || lpad(g::text, 10, '0'),
			CASE WHEN rev THEN 'REVERSAL' ELSE 'USAGE' END,
			(ARRAY['MEDICAL', 'PHARMACY', 'RESIDENT_PREMIUM', 'LTC_PREMIUM'])[g % 4 + 1],
			($2::text[])[pi * 2 + ri + 1], ($1::text[])[ei + 1], ($2::text[])[ei * 2 + (1 - ri) + 1],
			CASE WHEN rev THEN -1 ELSE 1 END * ((g * 7919) % 200000 + 1)::numeric / 100,
			timestamptz '2026-07-01 08:00:00+08' + (g % 1000000) * interval '1 second',
			false, CASE WHEN rev THEN 'U' || lpad((g - 1)::text, 10, '0') END,
			substr(md5('s' || (g % 50000)::text), 1, 32), substr(md5('b' || (g % 70001)::text), 1, 32),
			'R' || g, true, true, $4
		FROM x`, provinces, regions, n, now)
	if err != nil {
		b.Fatal(err)
	}
	loaded := time.Since(start)
	closeAt := p.CutOff(st.Config().Settlement.CutOffGrace).Add(time.Hour)
	start = time.Now()
	if _, err := st.ClosePeriod(ctx, p, closeAt); err != nil {
		b.Fatal(err)
	}
	if _, err := st.SettlePeriod(ctx, p, prepay.Config{}, closeAt.Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	b.Logf("fixture: %d usages loaded in %s, closed and settled in %s", n, loaded.Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond))
	return st, p
}

// cpuTime is the process's user + system CPU time so far (the Go side of an
// export; PostgreSQL's work is in its own processes).
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStatusKiB reads a "Name: N kB" line of /proc/self/status.
func procStatusKiB(b *testing.B, name string) int64 {
	n, err := readStatusKiB(name)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func readStatusKiB(name string) (int64, error) {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/self/status", name)
}

// sampleRSS samples VmRSS every 5 ms until the returned stop is called,
// which returns the largest value seen (KiB).
func sampleRSS(b *testing.B) (stop func() int64) {
	var (
		mu   sync.Mutex
		peak = procStatusKiB(b, "VmRSS")
		done = make(chan struct{})
		end  = make(chan struct{})
	)
	go func() {
		defer close(end)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				v, err := readStatusKiB("VmRSS")
				if err != nil {
					continue
				}
				mu.Lock()
				peak = max(peak, v)
				mu.Unlock()
			}
		}
	}()
	return func() int64 {
		close(done)
		<-end
		mu.Lock()
		defer mu.Unlock()
		return max(peak, procStatusKiB(b, "VmRSS"))
	}
}
