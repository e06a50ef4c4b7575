package clearingdb_test

import (
	"context"
	"flag"
	"fmt"
	"math/big"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"gongji/clearingdb"
	"gongji/internal/pgtest"
	"gongji/migrations"
	"gongji/region"
)

var (
	benchRecords = flag.Int("ingest.records", 200_000, "BenchmarkIngest: records per run, duplicates included")
	benchBatch   = flag.Int("ingest.batch", 5_000, "BenchmarkIngest: records per IngestBatch")
	benchStreams = flag.Int("ingest.streams", 1, "BenchmarkIngest: provinces' streams ingesting concurrently")
)

// benchWorkload: usages between 8 provinces, each reported by its payer and
// its payee, in the order the usages happened, plus 10% replayed records
// (the same seq again, as after a reconnect). Split into per-province
// outboxes and batches.
type benchWorkload struct {
	batches map[string][][]clearingdb.Record
	records int
}

func makeWorkload(b *testing.B, records, batch int) benchWorkload {
	provinces := []string{"110000", "310000", "440000", "510000", "320000", "330000", "420000", "610000"}
	regions := map[string][]string{}
	for _, p := range provinces {
		pr, err := region.ParseProvince(p)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range pr.Regions {
			regions[p] = append(regions[p], r.Code)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	usages := records * 9 / 10 / 2
	outbox := map[string][]clearingdb.Record{}
	kinds := []string{"MEDICAL", "PHARMACY", "RESIDENT_PREMIUM", "LTC_PREMIUM"}
	for i := range usages {
		pi := rng.IntN(len(provinces))
		ei := (pi + 1 + rng.IntN(len(provinces)-1)) % len(provinces)
		payer, payee := provinces[pi], provinces[ei]
		at := time.Date(2026, time.July, 1+i*14/usages, 8, 0, 0, 0, region.Shanghai).Add(time.Duration(i) * time.Millisecond)
		r := clearingdb.Record{
			Kind: clearingdb.RecordUsage, UsageKey: fmt.Sprintf("%s-%09d", payee, i), UsageKind: kinds[i%4],
			PayerProvince: payer, PayerRegion: regions[payer][rng.IntN(len(regions[payer]))],
			PayeeProvince: payee, PayeeRegion: regions[payee][rng.IntN(len(regions[payee]))],
			Amount: fmt.Sprintf("%d.%02d", 1+rng.IntN(2000), rng.IntN(100)), OccurredAt: at,
			SharerRef: fmt.Sprintf("%032x", rng.Uint64()), BeneficiaryRef: fmt.Sprintf("%032x", rng.Uint64()),
			RelationshipID: fmt.Sprintf("R%023x", rng.Uint64()),
		}
		pr, pe := r, r
		pr.Role, pe.Role = clearingdb.RolePayer, clearingdb.RolePayee
		pr.Seq = int64(len(outbox[payer]) + 1)
		outbox[payer] = append(outbox[payer], pr)
		pe.Seq = int64(len(outbox[payee]) + 1)
		outbox[payee] = append(outbox[payee], pe)
	}
	w := benchWorkload{batches: map[string][][]clearingdb.Record{}}
	for p, ob := range outbox {
		var sent []clearingdb.Record
		for at := 0; at < len(ob); at += batch * 10 / 11 {
			cur := ob[at:min(at+batch*10/11, len(ob))]
			bt := append([]clearingdb.Record(nil), cur...)
			for range len(cur) / 10 { // replays of records already sent (or of this batch)
				if len(sent) > 0 {
					bt = append(bt, sent[rng.IntN(len(sent))])
				} else {
					bt = append(bt, cur[rng.IntN(len(cur))])
				}
			}
			sent = append(sent, cur...)
			w.batches[p] = append(w.batches[p], bt)
			w.records += len(bt)
		}
	}
	return w
}

// BenchmarkIngest measures IngestBatch on a fresh clearing database and, in
// the same run and database, a raw COPY of as many rows into a bare table
// with the usages columns and primary key; it reports both rates and their
// ratio. Flags: -ingest.records, -ingest.batch, -ingest.streams.
//
//	go test -run '^$' -bench BenchmarkIngest -benchtime 1x ./clearingdb/
func BenchmarkIngest(b *testing.B) {
	ctx := context.Background()
	w := makeWorkload(b, *benchRecords, *benchBatch)

	var ingestRate, copyRate float64
	for range b.N {
		b.StopTimer()
		db := pgtest.New(b, migrations.Clearing)
		st, err := clearingdb.New(db.Pool, clearingdb.Config{})
		if err != nil {
			b.Fatal(err)
		}
		now := time.Date(2026, time.July, 20, 12, 0, 0, 0, region.Shanghai)
		if _, err := st.EnsurePeriod(ctx, region.PeriodOf(now), now); err != nil {
			b.Fatal(err)
		}
		provinces := make([]string, 0, len(w.batches))
		for p := range w.batches {
			provinces = append(provinces, p)
		}
		// The baseline runs before and after the ingest, in the same database
		// (the machine is shared: the mean of the two is the fairer figure).
		copyBefore := rawCopy(b, ctx, db, "bare_before", w.records)
		b.StartTimer()

		// Deliver batch i of every province before batch i+1 of any, as
		// concurrent streams would; -ingest.streams workers share the work.
		start := time.Now()
		var stored, dups int64
		var mu sync.Mutex
		rounds := 0
		for _, bs := range w.batches {
			rounds = max(rounds, len(bs))
		}
		for round := range rounds {
			work := make(chan []any, len(provinces))
			for _, p := range provinces {
				if round < len(w.batches[p]) {
					work <- []any{p, w.batches[p][round]}
				}
			}
			close(work)
			var wg sync.WaitGroup
			var firstErr error
			for range *benchStreams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for item := range work {
						ack, err := st.IngestBatch(ctx, item[0].(string), item[1].([]clearingdb.Record), now)
						mu.Lock()
						if err != nil && firstErr == nil {
							firstErr = err
						}
						stored += ack.Stored
						dups += ack.Duplicates
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if firstErr != nil {
				b.Fatal(firstErr)
			}
		}
		ingestSecs := time.Since(start).Seconds()
		b.StopTimer()
		if stored+dups != int64(w.records) {
			b.Fatalf("stored %d + duplicates %d != %d records", stored, dups, w.records)
		}
		ingestRate = float64(w.records) / ingestSecs

		copySecs := (copyBefore + rawCopy(b, ctx, db, "bare_after", w.records)) / 2
		copyRate = float64(w.records) / copySecs
		b.Logf("records %d (stored %d, duplicates %d), streams %d, batch %d: ingest %.2fs = %.0f rows/s; raw COPY %.2fs = %.0f rows/s; ratio %.2f",
			w.records, stored, dups, *benchStreams, *benchBatch, ingestSecs, ingestRate, copySecs, copyRate, ingestRate/copyRate)
		b.StartTimer()
	}
	b.ReportMetric(ingestRate, "ingest_rows/s")
	b.ReportMetric(copyRate, "copy_rows/s")
	b.ReportMetric(ingestRate/copyRate, "ratio")
}

// rawCopy COPYs n rows shaped like usages rows into a new bare table with
// the same columns and primary key, and returns the seconds it took.
func rawCopy(b *testing.B, ctx context.Context, db *pgtest.DB, table string, n int) float64 {
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE `+table+` (LIKE usages INCLUDING DEFAULTS, PRIMARY KEY (setlym, payer_province, usage_id))`); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	at := time.Date(2026, time.July, 10, 8, 0, 0, 0, region.Shanghai)
	rows := make([][]any, n)
	for i := range rows {
		rows[i] = []any{int32(202607), "110000", fmt.Sprintf("310000-%09d", i), "USAGE", "PHARMACY", "110100", "310000", "310100",
			pgtype.Numeric{Int: big.NewInt(int64(1 + rng.IntN(200000))), Exp: -2, Valid: true}, at, false, nil,
			fmt.Sprintf("%032x", rng.Uint64()), fmt.Sprintf("%032x", rng.Uint64()), fmt.Sprintf("R%023x", rng.Uint64()),
			true, false, at, nil}
	}
	cols := []string{"setlym", "payer_province", "usage_id", "entry_type", "kind", "payer_region", "payee_province",
		"payee_region", "amount", "occurred_at", "late", "reversal_of", "sharer_ref", "beneficiary_ref", "relationship_id",
		"payer_reported", "payee_reported", "first_at", "both_at"}
	start := time.Now()
	got, err := db.Pool.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromRows(rows))
	if err != nil || got != int64(n) {
		b.Fatalf("raw copy: %d rows, %v", got, err)
	}
	return time.Since(start).Seconds()
}
