package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/migrations"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
)

// ingestWork is the reporting workload: per province, its outbox as the
// batches its node sends, in order. Every cross-province usage is reported
// by its payer's node (PAYER) and its payee's node (PAYEE), in the order the
// usages happened; a share of every batch are replays of records the node
// already sent (the same seq again, as after a reconnect: the node resends
// what it has not seen acknowledged).
type ingestWork struct {
	provinces []string
	batches   map[string][]*clearingv1.ReportBatch
	records   int // records sent, replays included
	distinct  int // distinct (province, seq)
	usages    int
	totalFen  int64   // the sum of the usages' amounts, in fen
	rows      [][]any // the baseline's rows: one usages-shaped row per record sent
}

var usageKinds = []provincev1.UsageKind{provincev1.UsageKind_USAGE_KIND_MEDICAL, provincev1.UsageKind_USAGE_KIND_PHARMACY,
	provincev1.UsageKind_USAGE_KIND_RESIDENT_PREMIUM, provincev1.UsageKind_USAGE_KIND_LTC_PREMIUM}

func makeIngestWork(records, batch, nProv int, dupShare float64, now time.Time) ingestWork {
	all := region.Provinces()
	w := ingestWork{batches: map[string][]*clearingv1.ReportBatch{}}
	for _, p := range all[:nProv] {
		w.provinces = append(w.provinces, p.Code)
	}
	rng := rand.New(rand.NewPCG(11, 13))
	fresh := max(1, int(float64(batch)*(1-dupShare)+0.5)) // new records per batch
	w.usages = int(float64(records)*(1-dupShare)) / 2
	start := region.PeriodOf(now).Start()
	span := now.Add(-time.Hour).Sub(start)
	outbox := map[string][]*clearingv1.UsageRecord{}
	for i := range w.usages {
		pi := rng.IntN(nProv)
		ei := (pi + 1 + rng.IntN(nProv-1)) % nProv
		payer, payee := all[pi], all[ei]
		fen := 1 + rng.Int64N(200_000)
		w.totalFen += fen
		at := start.Add(span * time.Duration(i) / time.Duration(w.usages))
		rec := &clearingv1.UsageRecord{
			Kind: clearingv1.RecordKind_RECORD_KIND_USAGE, UsageKey: fmt.Sprintf("U%s-%010d", payee.Code, i),
			UsageKind:     usageKinds[rng.IntN(4)],
			PayerProvince: payer.Code, PayerRegion: payer.Regions[rng.IntN(len(payer.Regions))].Code,
			PayeeProvince: payee.Code, PayeeRegion: payee.Regions[rng.IntN(len(payee.Regions))].Code,
			Amount: fmt.Sprintf("%d.%02d", fen/100, fen%100), OccurredAt: timestamppb.New(at),
			SharerRef: fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64()), BeneficiaryRef: fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64()),
			RelationshipId: fmt.Sprintf("R%024x", rng.Uint64()),
		}
		pr := proto.Clone(rec).(*clearingv1.UsageRecord)
		pr.Role = clearingv1.ReporterRole_REPORTER_ROLE_PAYER
		pr.Seq = int64(len(outbox[payer.Code]) + 1)
		outbox[payer.Code] = append(outbox[payer.Code], pr)
		pe := proto.Clone(rec).(*clearingv1.UsageRecord)
		pe.Role = clearingv1.ReporterRole_REPORTER_ROLE_PAYEE
		pe.Seq = int64(len(outbox[payee.Code]) + 1)
		outbox[payee.Code] = append(outbox[payee.Code], pe)
	}
	var id int64
	for _, p := range w.provinces {
		ob := outbox[p]
		w.distinct += len(ob)
		for at := 0; at < len(ob); at += fresh {
			cur := ob[at:min(at+fresh, len(ob))]
			b := &clearingv1.ReportBatch{BatchId: id, Records: append([]*clearingv1.UsageRecord(nil), cur...)}
			id++
			for range int(float64(len(cur))*dupShare/(1-dupShare) + 0.5) {
				// a replay of a record sent before (or earlier in this batch)
				b.Records = append(b.Records, ob[rng.IntN(at+len(cur))])
			}
			w.records += len(b.Records)
			w.batches[p] = append(w.batches[p], b)
		}
	}
	// The baseline's rows: every record sent as a usages row (unique keys:
	// the key, the role and the position, since the bare table has the
	// usages primary key and replays would collide).
	w.rows = make([][]any, 0, w.records)
	first := pgtype.Timestamptz{Time: now, Valid: true}
	for _, p := range w.provinces {
		for _, b := range w.batches[p] {
			for _, rec := range b.Records {
				var fen int64
				for _, c := range rec.Amount {
					if c != '.' {
						fen = fen*10 + int64(c-'0')
					}
				}
				w.rows = append(w.rows, []any{int32(region.PeriodOf(now).Int()), rec.PayerProvince,
					fmt.Sprintf("%s/%d/%d", rec.UsageKey, rec.Role, len(w.rows)), "USAGE", rec.UsageKind.String()[11:],
					rec.PayerRegion, rec.PayeeProvince, rec.PayeeRegion, pgtype.Numeric{Int: big.NewInt(fen), Exp: -2, Valid: true},
					rec.OccurredAt.AsTime(), false, nil, rec.SharerRef, rec.BeneficiaryRef, rec.RelationshipId,
					rec.Role == clearingv1.ReporterRole_REPORTER_ROLE_PAYER, rec.Role == clearingv1.ReporterRole_REPORTER_ROLE_PAYEE,
					first, nil})
			}
		}
	}
	return w
}

// ingest runs row 1: the workload streamed by every province's node over
// its own ReportUsage stream (mTLS, its own certificate) into a clearing
// service on a fresh database, against a raw COPY of as many usages-shaped
// rows into a bare table with the usages primary key.
func (r *run) ingest(ctx context.Context) error {
	c := r.cfg
	now := time.Date(2026, time.July, 20, 12, 0, 0, 0, region.Shanghai)
	t0 := time.Now()
	w := makeIngestWork(c.ingestRecords, c.ingestBatch, c.ingestProvinces, c.ingestDupShare, now)
	logf("ingest: workload of %d records (%d distinct, %d usages, %d provinces) built in %s",
		w.records, w.distinct, w.usages, len(w.provinces), time.Since(t0).Round(time.Millisecond))

	db, err := r.pg.newDB(ctx, migrations.Clearing, 0)
	if err != nil {
		return err
	}
	defer db.drop()
	copyBefore, err := rawCopy(ctx, db, "bare_before", w.rows)
	if err != nil {
		return err
	}

	// The clearing service as `clearing serve` runs it: the pool with
	// pgxpool's default size (max(4, CPUs)), the reporting limit of 5,000.
	cs, err := r.startClearing(db.Pool, map[string]string{}, func() time.Time { return now })
	if err != nil {
		return err
	}
	defer cs.stop()
	if _, err := cs.store.EnsurePeriod(ctx, region.PeriodOf(now), now); err != nil {
		return err
	}
	meter := startCPU(ctx, db.Pool)
	secs, stored, dups, err := r.stream(ctx, cs.addr, w, c.ingestStreams)
	if err != nil {
		return err
	}
	cpuSelf, cpuServer := meter.stop(ctx)
	logf("ingest: %d records in %.2fs = %.0f rows/s (stored %d, duplicates %d); %s", w.records, secs, float64(w.records)/secs,
		stored, dups, cpuNote(cpuSelf, cpuServer, w.records, "record"))

	// Durable and deduplicated: every usage once, with both sides; every
	// distinct seq receipted once; nothing rejected.
	var rows, both, receipts, rejects, exceptions, fen int64
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM usages), (SELECT count(*) FROM usages WHERE payer_reported AND payee_reported),
		(SELECT count(*) FROM report_receipts), (SELECT count(*) FROM report_rejects), (SELECT count(*) FROM recon_exceptions),
		(SELECT (sum(amount) * 100)::bigint FROM usages)`).Scan(&rows, &both, &receipts, &rejects, &exceptions, &fen); err != nil {
		return err
	}
	if rows != int64(w.usages) || both != int64(w.usages) || receipts != int64(w.distinct) || rejects != 0 || exceptions != 0 ||
		fen != w.totalFen || stored != int64(w.distinct) || stored+dups != int64(w.records) {
		return fmt.Errorf("ingest check: usages %d (both sides %d), want %d; receipts %d, want %d; rejects %d, exceptions %d; amount %d fen, want %d; stored %d + duplicates %d, want %d + %d",
			rows, both, w.usages, receipts, w.distinct, rejects, exceptions, fen, w.totalFen, stored, dups, w.distinct, w.records-w.distinct)
	}
	copyAfter, err := rawCopy(ctx, db, "bare_after", w.rows)
	if err != nil {
		return err
	}
	copySecs := (copyBefore + copyAfter) / 2
	ours, base := float64(w.records)/secs, float64(len(w.rows))/copySecs
	rt := ratio(ours, base)
	r.add(Row{Name: "ingest " + millions(w.records), Ours: ours, Baseline: base, Unit: "rows/s", Ratio: rt, Goal: "≥ 0.50", Met: boolp(rt >= 0.5),
		Note: fmt.Sprintf("%d provinces' ReportUsage streams (mTLS, %d at a time, batches of %d, %.0f%% replayed seqs) into clearing; %d usages stored once with both sides; vs raw COPY into a bare table with the usages PK (mean of before %.2fs and after %.2fs); %s",
			len(w.provinces), c.ingestStreams, c.ingestBatch, c.ingestDupShare*100, w.usages, copyBefore, copyAfter,
			cpuNote(cpuSelf, cpuServer, w.records, "record"))})
	return nil
}

// stream sends every province's batches over its own stream, at most
// concurrent batches in flight at once, and waits for every ack.
func (r *run) stream(ctx context.Context, addr string, w ingestWork, concurrent int) (secs float64, stored, dups int64, err error) {
	type nodeStream struct {
		st clearingv1.ReportingService_ReportUsageClient
	}
	streams := map[string]nodeStream{}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, p := range w.provinces {
		cc, err := r.dialAs(addr, provinceID(p), clearingID)
		if err != nil {
			return 0, 0, 0, err
		}
		defer cc.Close()
		st, err := clearingv1.NewReportingServiceClient(cc).ReportUsage(sctx)
		if err != nil {
			return 0, 0, 0, err
		}
		streams[p] = nodeStream{st}
	}
	sem := make(chan struct{}, concurrent)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	var nStored, nDups atomic.Int64
	start := time.Now()
	for _, p := range w.provinces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := streams[p].st
			for _, b := range w.batches[p] {
				sem <- struct{}{}
				err := st.Send(b)
				var ack *clearingv1.ReportAck
				if err == nil {
					ack, err = st.Recv()
				}
				<-sem
				if err == nil && (ack.GetBatchId() != b.BatchId || len(ack.GetRejected()) > 0) {
					err = fmt.Errorf("batch %d: ack for %d with %d rejections", b.BatchId, ack.GetBatchId(), len(ack.GetRejected()))
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("province %s: %w", p, err))
					cancel()
					return
				}
				nStored.Add(ack.GetStored())
				nDups.Add(ack.GetDuplicates())
			}
			if err := st.CloseSend(); err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			if _, err := st.Recv(); !errors.Is(err, io.EOF) {
				firstErr.CompareAndSwap(nil, fmt.Errorf("province %s: stream end: %v", p, err))
			}
		}()
	}
	wg.Wait()
	secs = time.Since(start).Seconds()
	if e, ok := firstErr.Load().(error); ok && e != nil {
		return 0, 0, 0, e
	}
	return secs, nStored.Load(), nDups.Load(), nil
}

// rawCopy COPYs rows into a new bare table shaped like usages with its
// primary key, and returns the seconds the COPY took.
func rawCopy(ctx context.Context, db *benchDB, table string, rows [][]any) (float64, error) {
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE `+table+` (LIKE usages INCLUDING DEFAULTS, PRIMARY KEY (setlym, payer_province, usage_id))`); err != nil {
		return 0, err
	}
	cols := []string{"setlym", "payer_province", "usage_id", "entry_type", "kind", "payer_region", "payee_province",
		"payee_region", "amount", "occurred_at", "late", "reversal_of", "sharer_ref", "beneficiary_ref", "relationship_id",
		"payer_reported", "payee_reported", "first_at", "both_at"}
	meter := startCPU(ctx, db.Pool)
	t0 := time.Now()
	got, err := db.Pool.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromRows(rows))
	if err != nil || got != int64(len(rows)) {
		return 0, fmt.Errorf("raw copy: %d of %d rows: %v", got, len(rows), err)
	}
	secs := time.Since(t0).Seconds()
	self, server := meter.stop(ctx)
	logf("ingest: raw COPY of %d rows into %s: %.2fs = %.0f rows/s; %s", len(rows), table, secs, float64(len(rows))/secs,
		cpuNote(self, server, len(rows), "row"))
	_, err = db.Pool.Exec(ctx, `DROP TABLE `+table)
	return secs, err
}
