package clearingdb_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/clearingdb"
	"gongji/region"
)

var opBenchCloseRows = flag.Int("close.rows", 200_000, "BenchmarkClose: usages rows in the period that is closed")

// BenchmarkClose measures ClosePeriod on a period of -close.rows usages
// spread over all 32 provinces and 387 pooling regions (2 % reversals, 5 %
// late), against a baseline: the bare GROUP BY (payer region, payee region)
// sum over a plain, unpartitioned NUMERIC(18,2) table holding the same rows —
// the least any close must do. Reported per close: close-ms, baseline-ms and
// ratio (close ÷ baseline); also part-ms and part-ratio, the same bare GROUP
// BY over the period's usages partition, whose rows are about twice as wide
// (keys, references, timestamps), so that the close's own overhead can be
// told from the cost of scanning the wider table. Each iteration closes a fresh period filled from
// the plain table (outside the timer), so run it with -benchtime=Nx:
//
//	go test ./clearingdb -run '^$' -bench BenchmarkClose -benchtime=3x -close.rows=10000000
func BenchmarkClose(b *testing.B) {
	n := *opBenchCloseRows
	ob := opSetup(b)
	ctx := ob.ctx

	// The same rows once, in the plain table.
	provinces := region.Provinces()
	rng := rand.New(rand.NewPCG(7, 11))
	if _, err := ob.db.Pool.Exec(ctx, `CREATE TABLE bench_plain (
		payer_province text NOT NULL, payer_region text NOT NULL,
		payee_province text NOT NULL, payee_region text NOT NULL,
		amount numeric(18,2) NOT NULL, late boolean NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := ob.db.Pool.CopyFrom(ctx, pgx.Identifier{"bench_plain"},
		[]string{"payer_province", "payer_region", "payee_province", "payee_region", "amount", "late"},
		pgx.CopyFromFunc(func() func() ([]any, error) {
			i := 0
			return func() ([]any, error) {
				if i == n {
					return nil, nil
				}
				i++
				pi := rng.IntN(len(provinces))
				ei := (pi + 1 + rng.IntN(len(provinces)-1)) % len(provinces)
				payer, payee := provinces[pi], provinces[ei]
				fen := 1 + rng.Int64N(200_000)
				if rng.IntN(50) == 0 {
					fen = -fen
				}
				return []any{payer.Code, payer.Regions[rng.IntN(len(payer.Regions))].Code,
					payee.Code, payee.Regions[rng.IntN(len(payee.Regions))].Code,
					fmt.Sprintf("%d.%02d", fen/100, abs64(fen%100)), rng.IntN(20) == 0}, nil
			}
		}())); err != nil {
		b.Fatal(err)
	}
	if _, err := ob.db.Pool.Exec(ctx, `ANALYZE bench_plain`); err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded %d rows into bench_plain in %s", n, time.Since(start).Round(time.Millisecond))

	p := opPeriod(b, "203001")
	var closeTotal, baseTotal, partTotal time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		p = p.Next()
		at := p.Start().Add(time.Hour)
		if _, err := ob.store.EnsurePeriod(ctx, p, at); err != nil {
			b.Fatal(err)
		}
		if _, err := ob.db.Pool.Exec(ctx, `INSERT INTO usages (setlym, payer_province, usage_id, entry_type, kind,
				payer_region, payee_province, payee_region, amount, occurred_at, late, reversal_of, sharer_ref,
				beneficiary_ref, relationship_id, payer_reported, payee_reported, first_at)
			SELECT $1, payer_province, 'U' || n, CASE WHEN amount < 0 THEN 'REVERSAL' ELSE 'USAGE' END, 'MEDICAL',
				payer_region, payee_province, payee_region, amount, $2, late,
				CASE WHEN amount < 0 THEN 'U' || (n - 1) END, 's', 'b', 'R', true, true, $2
			FROM (SELECT *, row_number() OVER () AS n FROM bench_plain) x`, p.Int(), at); err != nil {
			b.Fatal(err)
		}
		if _, err := ob.db.Pool.Exec(ctx, fmt.Sprintf(`VACUUM ANALYZE usages_p%d`, p.Int())); err != nil {
			b.Fatal(err)
		}

		t0 := time.Now()
		rows, err := ob.db.Pool.Query(ctx, `SELECT payer_province, payer_region, payee_province, payee_region, sum(amount)
			FROM bench_plain GROUP BY payer_province, payer_region, payee_province, payee_region`)
		if err != nil {
			b.Fatal(err)
		}
		groups := 0
		for rows.Next() {
			groups++
		}
		if err := rows.Err(); err != nil {
			b.Fatal(err)
		}
		base := time.Since(t0)
		baseTotal += base

		t0 = time.Now()
		if _, err := ob.db.Pool.Exec(ctx, `SELECT count(*) FROM (SELECT payer_province, payer_region, payee_province,
				payee_region, sum(amount) FROM usages WHERE setlym = $1
				GROUP BY payer_province, payer_region, payee_province, payee_region) x`, p.Int()); err != nil {
			b.Fatal(err)
		}
		part := time.Since(t0)
		partTotal += part

		// Time each step of the close (the step hook runs at its end).
		var steps []string
		last := time.Now()
		hooked := clearingdb.WithStepHook(ctx, func(name string) error {
			steps = append(steps, fmt.Sprintf("%s %s", name, time.Since(last).Round(time.Millisecond)))
			last = time.Now()
			return nil
		})
		b.StartTimer()
		t1 := time.Now()
		st, err := ob.store.ClosePeriod(hooked, p, opAfterCutOff(p))
		closed := time.Since(t1)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if st.UsageCount != int64(n) {
			b.Fatalf("closed %d rows, want %d", st.UsageCount, n)
		}
		closeTotal += closed
		b.Logf("%s: %d rows, %d region pairs: close %s, baseline %s (×%.2f), on the partition %s (×%.2f); steps: %v",
			p, n, groups, closed.Round(time.Millisecond), base.Round(time.Millisecond), float64(closed)/float64(base),
			part.Round(time.Millisecond), float64(closed)/float64(part), steps)
		b.StartTimer()
	}
	b.StopTimer()
	iters := float64(b.N)
	b.ReportMetric(float64(closeTotal.Milliseconds())/iters, "close-ms")
	b.ReportMetric(float64(baseTotal.Milliseconds())/iters, "baseline-ms")
	b.ReportMetric(float64(closeTotal)/float64(baseTotal), "ratio")
	b.ReportMetric(float64(partTotal.Milliseconds())/iters, "part-ms")
	b.ReportMetric(float64(closeTotal)/float64(partTotal), "part-ratio")
	b.ReportMetric(float64(n)*iters/closeTotal.Seconds(), "rows/s")
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
