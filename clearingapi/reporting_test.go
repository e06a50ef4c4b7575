package clearingapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/clearingapi"
	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/settlement"
)

// occurred is the business time of the reported usages: in July 2026, before
// the clearing clock t0.
var occurred = t0.Add(-2 * time.Hour)

// usageRecord is one cross-province usage as a node's outbox reports it.
func usageRecord(t testing.TB, seq int64, key string, role clearingv1.ReporterRole, payer, payee, amount string) *clearingv1.UsageRecord {
	return &clearingv1.UsageRecord{
		Seq: seq, Kind: clearingv1.RecordKind_RECORD_KIND_USAGE, Role: role, UsageKey: key,
		UsageKind:     provincev1.UsageKind_USAGE_KIND_MEDICAL,
		PayerProvince: payer, PayerRegion: regionOf(t, payer), PayeeProvince: payee, PayeeRegion: regionOf(t, payee),
		Amount: amount, OccurredAt: timestamppb.New(occurred),
		SharerRef: ref("s-" + key), BeneficiaryRef: ref("b-" + key), RelationshipId: "R-" + key,
	}
}

func (f *fixture) report(t *testing.T, ctx context.Context, province string) clearingv1.ReportingService_ReportUsageClient {
	t.Helper()
	st, err := clearingv1.NewReportingServiceClient(f.dial(t, provinceID(province))).ReportUsage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// exchange sends one batch and waits for its ack.
func exchange(t *testing.T, st clearingv1.ReportingService_ReportUsageClient, b *clearingv1.ReportBatch) *clearingv1.ReportAck {
	t.Helper()
	if err := st.Send(b); err != nil {
		t.Fatalf("send batch %d: %v", b.GetBatchId(), err)
	}
	ack, err := st.Recv()
	if err != nil {
		t.Fatalf("ack of batch %d: %v", b.GetBatchId(), err)
	}
	if ack.GetBatchId() != b.GetBatchId() {
		t.Fatalf("ack for batch %d, sent %d", ack.GetBatchId(), b.GetBatchId())
	}
	return ack
}

func seqRange(from, to int64) []int64 {
	var out []int64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func TestReportUsageAckedDeduplicatedRejected(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{})
	ctx := hang(t)
	bj := f.report(t, ctx, beijing)

	first := &clearingv1.ReportBatch{BatchId: 1, Records: []*clearingv1.UsageRecord{
		usageRecord(t, 1, "k1", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "10.00"),
		usageRecord(t, 2, "k2", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "20.50"),
		usageRecord(t, 3, "k3", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "0.01"),
	}}
	ack := exchange(t, bj, first)
	if !slices.Equal(ack.GetSeqs(), []int64{1, 2, 3}) || ack.GetStored() != 3 || ack.GetDuplicates() != 0 || len(ack.GetRejected()) != 0 {
		t.Fatalf("first ack %v", ack)
	}
	// The same batch again (a node that lost the ack): all duplicates.
	first.BatchId = 2
	ack = exchange(t, bj, first)
	if !slices.Equal(ack.GetSeqs(), []int64{1, 2, 3}) || ack.GetStored() != 0 || ack.GetDuplicates() != 3 || len(ack.GetRejected()) != 0 {
		t.Fatalf("replayed ack %v", ack)
	}

	// Invalid records are acknowledged as rejected, never applied.
	foreign := usageRecord(t, 4, "k4", clearingv1.ReporterRole_REPORTER_ROLE_PAYER, henan, beijing, "5.00")
	badAmount := usageRecord(t, 5, "k5", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "1.234")
	noRel := &clearingv1.UsageRecord{Seq: 6, Kind: clearingv1.RecordKind_RECORD_KIND_RELATIONSHIP}
	noRole := usageRecord(t, 7, "k7", clearingv1.ReporterRole_REPORTER_ROLE_UNSPECIFIED, henan, beijing, "5.00")
	noKind := usageRecord(t, 8, "k8", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "5.00")
	noKind.UsageKind = provincev1.UsageKind_USAGE_KIND_UNSPECIFIED
	local := usageRecord(t, 9, "k9", clearingv1.ReporterRole_REPORTER_ROLE_LOCAL, beijing, beijing, "7.00")
	rel := &clearingv1.UsageRecord{Seq: 10, Kind: clearingv1.RecordKind_RECORD_KIND_RELATIONSHIP, RelationshipId: "R-k1",
		Relationship: &provincev1.Relationship{RelationshipId: "R-k1", Version: 2, SharerProvince: henan, BeneficiaryProvince: beijing,
			Status: provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE, UpdatedAt: timestamppb.New(occurred)}}
	mixed := &clearingv1.ReportBatch{BatchId: 3, Records: []*clearingv1.UsageRecord{foreign, badAmount, noRel, noRole, noKind, local, rel}}
	ack = exchange(t, bj, mixed)
	var rejected []int64
	for _, r := range ack.GetRejected() {
		rejected = append(rejected, r.GetSeq())
		if r.GetReason() == "" {
			t.Errorf("rejection of seq %d without a reason", r.GetSeq())
		}
	}
	if !slices.Equal(ack.GetSeqs(), seqRange(4, 10)) || ack.GetStored() != 2 || !slices.Equal(rejected, []int64{4, 5, 6, 7, 8}) {
		t.Fatalf("mixed ack %v", ack)
	}
	if r := ack.GetRejected()[0].GetReason(); !strings.Contains(r, "PAYER report of 110000 must have payer_province 110000") {
		t.Errorf("reason for another province's record: %q", r)
	}
	mixed.BatchId = 4
	ack = exchange(t, bj, mixed)
	if ack.GetStored() != 0 || ack.GetDuplicates() != 7 || len(ack.GetRejected()) != 0 {
		t.Fatalf("replayed mixed ack %v", ack)
	}

	// The payer's reports of the same usages complete them.
	hn := f.report(t, ctx, henan)
	ack = exchange(t, hn, &clearingv1.ReportBatch{BatchId: 1, Records: []*clearingv1.UsageRecord{
		usageRecord(t, 100, "k1", clearingv1.ReporterRole_REPORTER_ROLE_PAYER, henan, beijing, "10.00"),
		usageRecord(t, 101, "k2", clearingv1.ReporterRole_REPORTER_ROLE_PAYER, henan, beijing, "20.50"),
	}})
	if ack.GetStored() != 2 {
		t.Fatalf("payer ack %v", ack)
	}
	for _, k := range []string{"k1", "k2", "k3"} {
		u, err := f.store.GetUsage(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if u.PayerReported != (k != "k3") || !u.PayeeReported || u.PayerProvince != henan || u.PayeeProvince != beijing {
			t.Errorf("usage %s: %+v", k, u)
		}
	}
	for _, k := range []string{"k4", "k5", "k7", "k8", "k9"} {
		if _, err := f.store.GetUsage(ctx, k); err == nil {
			t.Errorf("usage %s was stored", k)
		}
	}

	// A node closing its side ends the stream cleanly.
	if err := bj.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bj.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v", err)
	}

	// Arrival time is the clearing clock.
	var n int
	if err := f.db.Pool.QueryRow(ctx, `SELECT count(*) FROM report_receipts WHERE province = $1 AND received_at = $2`, beijing, t0).Scan(&n); err != nil || n != 10 {
		t.Fatalf("receipts of %s at the clearing clock: %d, %v", beijing, n, err)
	}
	for outcome, want := range map[string]float64{"stored": 5, "duplicate": 10, "rejected": 5} {
		if got := f.metric(t, "gongji_report_records_total", map[string]string{"province": beijing, "outcome": outcome}); got != want {
			t.Errorf("records %s counted %v, want %v", outcome, got, want)
		}
	}
}

func TestReportUsageRefusesWholeBatches(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{})
	ctx := hang(t)

	// Over the batch limit: the stream ends with InvalidArgument, nothing stored.
	big := &clearingv1.ReportBatch{BatchId: 1}
	for i := range int64(5001) {
		big.Records = append(big.Records, usageRecord(t, i+1, fmt.Sprintf("big-%d", i), clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, hainan, "1.00"))
	}
	st := f.report(t, ctx, hainan)
	if err := st.Send(big); err != nil {
		t.Fatal(err)
	}
	_, err := st.Recv()
	wantCode(t, "batch of 5001", err, codes.InvalidArgument)

	// A record without a usable seq cannot be acknowledged: the batch is refused.
	st = f.report(t, ctx, hainan)
	if err := st.Send(&clearingv1.ReportBatch{BatchId: 2, Records: []*clearingv1.UsageRecord{
		usageRecord(t, 1, "ok", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, hainan, "1.00"),
		usageRecord(t, 0, "zero", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, hainan, "1.00"),
	}}); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	wantCode(t, "seq 0", err, codes.InvalidArgument)

	// A message over the size limit is refused by the transport.
	huge := usageRecord(t, 1, strings.Repeat("x", clearingapi.RecvMsgBytesMax), clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, hainan, "1.00")
	st = f.report(t, ctx, hainan)
	if err := st.Send(&clearingv1.ReportBatch{BatchId: 3, Records: []*clearingv1.UsageRecord{huge}}); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	wantCode(t, "message over the size limit", err, codes.ResourceExhausted)

	var n int
	if err := f.db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM report_receipts) + (SELECT count(*) FROM usages)`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows after refused batches: %d, %v", n, err)
	}
}

// TestReportUsageCutAndResumed cuts a stream right after sending a batch (the
// node crashes or the network drops, before or during the ingest), then
// resumes as a node does: everything not acknowledged is sent again. The
// clearing database must then hold exactly the records sent, row by row.
func TestReportUsageCutAndResumed(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{})
	var recs []*clearingv1.UsageRecord
	for i := range int64(30) {
		amount := money.FromFen(100*i + 37).String()
		recs = append(recs, usageRecord(t, i+1, fmt.Sprintf("cut-%02d", i), clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, amount))
	}
	acked := map[int64]bool{}
	note := func(a *clearingv1.ReportAck) {
		for _, s := range a.GetSeqs() {
			acked[s] = true
		}
	}

	cutCtx, cut := context.WithCancel(hang(t))
	st := f.report(t, cutCtx, beijing)
	note(exchange(t, st, &clearingv1.ReportBatch{BatchId: 1, Records: recs[:10]}))
	if err := st.Send(&clearingv1.ReportBatch{BatchId: 2, Records: recs[10:20]}); err != nil {
		t.Fatal(err)
	}
	cut()
	if _, err := st.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cut stream: %v", err)
	}

	// Resume: the node sends what is still unacknowledged, in batches.
	st = f.report(t, hang(t), beijing)
	var pending []*clearingv1.UsageRecord
	for _, r := range recs {
		if !acked[r.GetSeq()] {
			pending = append(pending, r)
		}
	}
	if len(pending) != 20 {
		t.Fatalf("%d records unacknowledged after the cut, want 20", len(pending))
	}
	var stored, dups int64
	for i := 0; i < len(pending); i += 10 {
		a := exchange(t, st, &clearingv1.ReportBatch{BatchId: int64(10 + i), Records: pending[i : i+10]})
		note(a)
		stored += a.GetStored()
		dups += a.GetDuplicates()
	}
	if len(acked) != 30 || stored+dups != 20 {
		t.Fatalf("acked %d, stored %d + duplicates %d after resuming", len(acked), stored, dups)
	}

	// Row by row: exactly the set sent.
	got, err := f.store.Usages(hang(t), region.PeriodOf(occurred))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d usages stored, %d sent", len(got), len(recs))
	}
	for i, u := range got { // usage_id order = the order sent
		r := recs[i]
		want := settlement.Record{
			UsageID: r.GetUsageKey(), Period: region.PeriodOf(occurred), Type: settlement.EntryUsage, Kind: settlement.KindMedical,
			Row: settlement.Row{PayerProvince: henan, PayerRegion: r.GetPayerRegion(), PayeeProvince: beijing,
				PayeeRegion: r.GetPayeeRegion(), Amount: money.MustParse(r.GetAmount())},
			OccurredAt: occurred, SharerRef: r.GetSharerRef(), BeneficiaryRef: r.GetBeneficiaryRef(),
		}
		u.OccurredAt = u.OccurredAt.In(occurred.Location())
		if !recordEqual(u.Record, want) || u.RelationshipID != r.GetRelationshipId() || u.PayerReported || !u.PayeeReported {
			t.Errorf("row %d: %+v\nwant %+v", i, u, want)
		}
	}
	var receipts []int64
	rows, err := f.db.Pool.Query(hang(t), `SELECT seq FROM report_receipts WHERE province = $1 ORDER BY seq`, beijing)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s int64
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		receipts = append(receipts, s)
	}
	if err := rows.Err(); err != nil || !slices.Equal(receipts, seqRange(1, 30)) {
		t.Fatalf("receipts %v, %v", receipts, err)
	}
}

func recordEqual(a, b settlement.Record) bool {
	return a.UsageID == b.UsageID && a.Period == b.Period && a.Type == b.Type && a.Kind == b.Kind &&
		a.PayerProvince == b.PayerProvince && a.PayerRegion == b.PayerRegion && a.PayeeProvince == b.PayeeProvince &&
		a.PayeeRegion == b.PayeeRegion && a.Amount.Equal(b.Amount) && a.OccurredAt.Equal(b.OccurredAt) &&
		a.Late == b.Late && a.ReversalOf == b.ReversalOf && a.SharerRef == b.SharerRef && a.BeneficiaryRef == b.BeneficiaryRef
}

func TestReportUsageEndsOnShutdown(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{})
	st := f.report(t, hang(t), beijing)
	exchange(t, st, &clearingv1.ReportBatch{BatchId: 1, Records: []*clearingv1.UsageRecord{
		usageRecord(t, 1, "s1", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "3.00"),
	}})
	f.rep.Shutdown()
	_, err := st.Recv()
	wantCode(t, "open stream at shutdown", err, codes.Unavailable)
	// The batch acknowledged before is stored.
	if _, err := f.store.GetUsage(hang(t), "s1"); err != nil {
		t.Fatal(err)
	}
}
