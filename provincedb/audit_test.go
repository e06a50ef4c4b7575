package provincedb_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gongji/internal/auditlog"
	"gongji/internal/pii"
	"gongji/sharing"
)

// auditNode is a node with a usable relationship and an audit Recorder on
// its database.
type auditNode struct {
	*node
	rec *auditlog.Recorder
	rel sharing.Relationship
	at  time.Time
}

func newAuditNode(t *testing.T) auditNode {
	t.Helper()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	sharer, ben := n.register(t, employee(zhengzh)), n.register(t, employee(luoyang))
	n.credit(t, sharer, "100.00")
	rel := n.activeRel(t, sharer, ben, "50.00")
	rec, err := auditlog.New(auditlog.Options{DB: n.db.Pool})
	if err != nil {
		t.Fatal(err)
	}
	return auditNode{node: n, rec: rec, rel: rel, at: clk.Now()}
}

// spend runs a Spend as the interceptor would: a call with the usage key as
// ref, finished with the result.
func (a auditNode) spend(t *testing.T, reqID, amount string) (sharing.UsageRequest, error) {
	t.Helper()
	ctx, c := a.rec.Start(context.Background(), "gongji:province:410000", "/gongji.province.v1.ProvinceService/Spend", reqID)
	req := spendReq(a.rel, sharing.KindPharmacy, amount, a.at)
	c.SetRef(req.Key)
	_, err := a.svc.Spend(ctx, req)
	c.Finish(ctx, err)
	return req, err
}

func (a auditNode) rows(t *testing.T, reqID string) []auditlog.Record {
	t.Helper()
	rs, err := auditlog.List(context.Background(), a.db.Pool, auditlog.Filter{RequestID: reqID})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestAuditInStoreTransaction: the audit row of a call is written by the
// store's transaction helper inside the transaction of the change — the same
// PostgreSQL transaction id as the usage row — and a refused usage, stored
// with its refusal, is audited as refused, not ok.
func TestAuditInStoreTransaction(t *testing.T) {
	t.Parallel()
	a := newAuditNode(t)

	req, err := a.spend(t, "r-approved", "10.00")
	wantErr(t, "spend", err)
	rs := a.rows(t, "r-approved")
	if len(rs) != 1 || rs[0].Outcome != "ok" || rs[0].Ref != req.Key || rs[0].Actor != "gongji:province:410000" {
		t.Fatalf("approved spend: %+v", rs)
	}
	same := a.count(t, `SELECT count(*) FROM audit_records r JOIN usages u ON u.xmin::text = r.xmin::text
		WHERE r.request_id = 'r-approved' AND u.usage_key = $1`, req.Key)
	if same != 1 {
		t.Fatal("the audit row and the usage were not written by one transaction")
	}

	req, err = a.spend(t, "r-refused", "1000.00")
	wantErr(t, "spend over quota", err, sharing.ErrQuotaExceeded)
	if rs := a.rows(t, "r-refused"); len(rs) != 1 || rs[0].Outcome != "refused: QUOTA_EXCEEDED" || rs[0].Ref != req.Key {
		t.Fatalf("refused spend: %+v", rs)
	}
	if a.count(t, `SELECT count(*) FROM usages WHERE usage_key = $1 AND NOT approved`, req.Key) != 1 {
		t.Fatal("the refusal is not stored")
	}
}

// TestAuditKeyWithIDNumber: a spend over quota whose usage key is an ID
// number. Such a key used to be accepted: the refusal was stored under the
// clear key while the audit row's ref was masked, so the outcome lookup by
// ref (auditOutcome) found nothing and the refusal was recorded "ok". Now
// the key is refused before any transaction: nothing is stored, and the
// call's own row records the refusal of the input, with the ref masked.
func TestAuditKeyWithIDNumber(t *testing.T) {
	t.Parallel()
	a := newAuditNode(t)
	id := newID(t, "410102")
	before := a.count(t, `SELECT count(*) FROM usages`)
	ctx, c := a.rec.Start(context.Background(), "gongji:province:410000", "/gongji.province.v1.ProvinceService/Spend", "r-id-key")
	req := spendReq(a.rel, sharing.KindPharmacy, "1000.00", a.at)
	req.Key = id
	c.SetRef(req.Key)
	_, err := a.svc.Spend(ctx, req)
	c.Finish(ctx, err)
	wantErr(t, "spend with an ID number as its key", err, sharing.ErrInvalidInput, pii.ErrContainsID)
	if n := a.count(t, `SELECT count(*) FROM usages`); n != before {
		t.Fatalf("%d usages after the refused spend, %d before", n, before)
	}
	rs := a.rows(t, "r-id-key")
	if len(rs) != 1 || rs[0].Outcome == auditlog.OutcomeOK || !strings.HasPrefix(rs[0].Outcome, "error: ") || rs[0].Ref != pii.Mask(id) {
		t.Fatalf("audit rows of the refused spend: %+v", rs)
	}
	if a.count(t, `SELECT count(*) FROM audit_records WHERE ref LIKE '%' || $1 || '%'`, id[4:14]) != 0 {
		t.Fatal("the ID number is in the audit trail")
	}
}

// TestAuditRolledBackWithChange: when the transaction fails at COMMIT, after
// its audit row was inserted, neither the usage nor the row survives; the
// call's failure is then recorded on its own.
func TestAuditRolledBackWithChange(t *testing.T) {
	t.Parallel()
	a := newAuditNode(t)
	ctx := context.Background()
	// A deferred constraint trigger: it fires at COMMIT, after every
	// statement of the transaction (the audit INSERT included) succeeded.
	if _, err := a.db.Pool.Exec(ctx, `
		CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'GJ999'; END $$;
		CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON audit_records
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
			WHEN (NEW.request_id = 'r-fail' AND NEW.outcome = 'ok') EXECUTE FUNCTION fail_at_commit()`); err != nil {
		t.Fatal(err)
	}
	before := map[string]int{}
	tables := []string{"usages", "journal_entries", "journal_postings", "outbox"}
	for _, tb := range tables {
		before[tb] = a.count(t, `SELECT count(*) FROM `+tb)
	}
	used := a.rel.Used

	req, err := a.spend(t, "r-fail", "10.00")
	if err == nil || errors.Is(err, sharing.ErrQuotaExceeded) {
		t.Fatalf("spend failing at commit: %v", err)
	}
	for _, tb := range tables {
		if n := a.count(t, `SELECT count(*) FROM `+tb); n != before[tb] {
			t.Errorf("%s: %d rows after the failed commit, %d before", tb, n, before[tb])
		}
	}
	if got := a.node.rel(t, a.rel.ID).Used; !eq(got, used) {
		t.Errorf("quota used %s after the failed commit, %s before", got, used)
	}
	rs := a.rows(t, "r-fail")
	if len(rs) != 1 || rs[0].Outcome == "ok" || rs[0].Ref != req.Key {
		t.Fatalf("want only the failure's own row, got %+v", rs)
	}
	a.conserved(t)
}

// BenchmarkSpendAudit measures what the audit row adds to a local spend
// (one Authorize transaction): the same spends with and without an audited
// call in the context.
func BenchmarkSpendAudit(b *testing.B) {
	clk := newClock()
	n := newNode(b, henan, clk, nil)
	sharer, ben := n.register(b, employee(zhengzh)), n.register(b, employee(luoyang))
	n.credit(b, sharer, "100000000.00")
	rel := n.activeRel(b, sharer, ben, "100000000.00")
	rec, err := auditlog.New(auditlog.Options{DB: n.db.Pool})
	if err != nil {
		b.Fatal(err)
	}
	for _, audited := range []bool{false, true} {
		b.Run(map[bool]string{false: "without", true: "with"}[audited], func(b *testing.B) {
			for b.Loop() {
				ctx := context.Background()
				req := spendReq(rel, sharing.KindPharmacy, "0.01", clk.Now())
				var c *auditlog.Call
				if audited {
					ctx, c = rec.Start(ctx, "gongji:province:410000", "/gongji.province.v1.ProvinceService/Spend", "")
					c.SetRef(req.Key)
				}
				_, err := n.svc.Spend(ctx, req)
				c.Finish(ctx, err)
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
