package provinceapi_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"gongji/clearingapi"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/provinceapi"
)

// ackDropper is a clearing-side stream interceptor that, on ReportUsage,
// swallows every third acknowledgement after the batch was stored and ends
// the stream: the node does not learn that the batch arrived and must send
// it again, which the clearing service must recognise as duplicates.
type ackDropper struct{ acks, dropped atomic.Int64 }

type dropStream struct {
	grpc.ServerStream
	d *ackDropper
}

func (s dropStream) SendMsg(m any) error {
	if _, ok := m.(*clearingv1.ReportAck); ok && s.d.acks.Add(1)%3 == 0 {
		s.d.dropped.Add(1)
		return status.Error(codes.Unavailable, "test: acknowledgement lost")
	}
	return s.ServerStream.SendMsg(m)
}

func (d *ackDropper) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if strings.HasSuffix(info.FullMethod, "/ReportUsage") {
		ss = dropStream{ServerStream: ss, d: d}
	}
	return h(srv, ss)
}

// localUsageTotals reads what the clearing service counted of province's
// same-province usages: records and amount.
func (c *clearing) localUsageTotals(t testing.TB, province string) string {
	t.Helper()
	var records int64
	var amount string
	err := c.db.Pool.QueryRow(context.Background(), `SELECT coalesce(sum(records), 0), coalesce(sum(amount), 0)::text
		FROM local_usage_counts WHERE province = $1 AND entry_type = 'USAGE'`, province).Scan(&records, &amount)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d records, %s", records, amount)
}

// TestOutboxStreamSurvivesCutsAndRestarts: the streamer keeps delivering
// while acknowledgements are lost after the clearing service stored a batch
// and while the clearing service is stopped and started again on the same
// address; in the end the clearing service holds exactly every outbox
// record of the node, once, and counts every same-province usage once.
func TestOutboxStreamSurvivesCutsAndRestarts(t *testing.T) {
	t.Parallel()
	var drop ackDropper
	f := startFederation(t, drop.intercept)
	n := f.a
	n.runWorkers(t)
	ctx := hang(t)
	s := n.register(t, idNumber(t, "410105", "19700101", "011"))
	b := n.register(t, idNumber(t, "410105", "19980202", "022"))
	if _, err := n.client.CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: byRef(s.GetPersonRef()), Amount: "10000.00", CreditKey: "cr"}); err != nil {
		t.Fatal(err)
	}
	rel, err := n.client.ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
		Sharer: party(henan, s.GetPersonRef()), Beneficiary: party(henan, b.GetPersonRef()),
		Relation: provincev1.RelationType_RELATION_TYPE_SPOUSE, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: "p",
	})
	if err != nil {
		t.Fatal(err)
	}
	id := rel.GetRelationshipId()
	if _, err := n.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "5000.00", CommandKey: "q"}); err != nil {
		t.Fatal(err)
	}
	spend := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := n.client.Spend(ctx, spendReq(n, fmt.Sprintf("use-%03d", i), id, fmt.Sprintf("%d.25", i+1))); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := func(count int) string {
		total := 0
		for i := range count {
			total += (i + 1) * 100
		}
		return fmt.Sprintf("%d records, %d.%02d", count, (total+25*count)/100, (total+25*count)%100)
	}

	spend(0, 30)
	f.allReported(t, n)
	if drop.dropped.Load() == 0 {
		t.Fatal("no acknowledgement was dropped: the test did not cut a stream")
	}
	if got := f.clearing.localUsageTotals(t, henan); got != want(30) {
		t.Fatalf("clearing counted %s, want %s", got, want(30))
	}

	// The clearing service goes away; usages go on; it comes back on the same address.
	f.clearing.stop()
	spend(30, 45)
	f.clearing.restart(t)
	spend(45, 50)
	f.allReported(t, n)
	if got := f.clearing.localUsageTotals(t, henan); got != want(50) {
		t.Fatalf("after the restart the clearing counted %s, want %s", got, want(50))
	}
	rels := n.count(t, `SELECT count(*) FROM outbox WHERE kind = 'RELATIONSHIP'`)
	var events int
	if err := f.clearing.db.Pool.QueryRow(ctx, `SELECT count(*) FROM relationship_events WHERE reporter_province = $1`, henan).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != rels {
		t.Fatalf("clearing has %d relationship events, the node reported %d", events, rels)
	}
	n.conserved(t)
}

// TestReportBatchLimitMatchesClearing: a node never sends a batch the
// clearing service would refuse.
func TestReportBatchLimitMatchesClearing(t *testing.T) {
	if provinceapi.ReportBatchRecordsMax != clearingapi.DefaultReportBatchRecordsMax {
		t.Fatalf("node batch limit %d, clearing service's %d", provinceapi.ReportBatchRecordsMax, clearingapi.DefaultReportBatchRecordsMax)
	}
}
