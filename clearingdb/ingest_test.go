package clearingdb_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"gongji/clearingdb"
	"gongji/internal/pii"
	"gongji/money"
	"gongji/settlement"
)

func TestBothSidesOneRow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pr, pe := pair(t, "U1", bj, sh, "12.30", t0)

	ack := ingest(t, b, sh, t0, withSeq(pe, 7))
	if ack.Stored != 1 || ack.Duplicates != 0 || len(ack.Rejected) != 0 || !slices.Equal(ack.Seqs, []int64{7}) {
		t.Fatalf("payee ack = %+v", ack)
	}
	ack = ingest(t, b, bj, t0.Add(time.Minute), withSeq(pr, 3))
	if ack.Stored != 1 || ack.Duplicates != 0 || len(ack.Rejected) != 0 {
		t.Fatalf("payer ack = %+v", ack)
	}
	us, err := b.store.Usages(b.ctx, mustPeriod(t, "202607"))
	if err != nil {
		t.Fatal(err)
	}
	if len(us) != 1 {
		t.Fatalf("usages = %+v, want one row", us)
	}
	u := us[0]
	if u.UsageID != "U1" || !u.PayerReported || !u.PayeeReported || u.Amount.String() != "12.30" ||
		u.Late || u.Type != settlement.EntryUsage || u.BothAt.IsZero() || !u.FirstAt.Equal(t0) {
		t.Fatalf("row = %+v", u)
	}
	if err := u.Record.Validate(); err != nil {
		t.Fatalf("stored row is not a valid settlement record: %v", err)
	}
	exc, err := b.store.Exceptions(b.ctx, mustPeriod(t, "202607"), "")
	if err != nil || len(exc) != 0 {
		t.Fatalf("exceptions = %+v, %v; want none", exc, err)
	}
	k, err := b.store.GetKey(b.ctx, "U1")
	if err != nil || k.PayerFrom != bj || k.PayerSeq != 3 || k.PayeeFrom != sh || k.PayeeSeq != 7 {
		t.Fatalf("key = %+v, %v", k, err)
	}
}

func TestReplayedBatchAndSeqDedup(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var recs []clearingdb.Record
	for i, key := range []string{"A", "B", "C"} {
		pr, _ := pair(t, key, bj, sh, "1.00", t0)
		recs = append(recs, withSeq(pr, int64(i+1)))
	}
	ack := ingest(t, b, bj, t0, recs...)
	if ack.Stored != 3 || ack.Duplicates != 0 {
		t.Fatalf("first ack = %+v", ack)
	}
	// The same batch again: every seq is a duplicate, nothing changes.
	ack = ingest(t, b, bj, t0, recs...)
	if ack.Stored != 0 || ack.Duplicates != 3 || !slices.Equal(ack.Seqs, []int64{1, 2, 3}) {
		t.Fatalf("replay ack = %+v", ack)
	}
	// A batch overlapping the first (seq 3 again, twice) plus a new one.
	pd, _ := pair(t, "D", bj, sh, "1.00", t0)
	ack = ingest(t, b, bj, t0, recs[2], withSeq(pd, 4), recs[2])
	if ack.Stored != 1 || ack.Duplicates != 2 || !slices.Equal(ack.Seqs, []int64{3, 4}) {
		t.Fatalf("overlap ack = %+v", ack)
	}
	// The same usage again under a new seq with the same payload: a key duplicate.
	ack = ingest(t, b, bj, t0, withSeq(recs[0], 9))
	if ack.Stored != 0 || ack.Duplicates != 1 || len(ack.Rejected) != 0 {
		t.Fatalf("re-outboxed ack = %+v", ack)
	}
	if got := usageSet(t, b, mustPeriod(t, "202607")); len(got) != 4 {
		t.Fatalf("usages = %v", got)
	}
	// The same seq from another province is a different record.
	_, pe := pair(t, "A", bj, sh, "1.00", t0)
	ack = ingest(t, b, sh, t0, withSeq(pe, 1))
	if ack.Stored != 1 || ack.Duplicates != 0 {
		t.Fatalf("other province ack = %+v", ack)
	}
}

func TestReorderedReportsAndReversal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ur, ue := pair(t, "U", bj, sh, "50.00", t0)
	rr, re := reversal(t, "U-R1", "U", bj, sh, "20.00", t0.Add(time.Hour))
	// The payee's reversal arrives first, then the payer's reversal, then the
	// payee's usage, then the payer's usage.
	ingest(t, b, sh, t0.Add(2*time.Hour), withSeq(re, 2))
	ingest(t, b, bj, t0.Add(2*time.Hour), withSeq(rr, 2))
	ingest(t, b, sh, t0.Add(3*time.Hour), withSeq(ue, 1))
	ingest(t, b, bj, t0.Add(3*time.Hour), withSeq(ur, 1))
	got := usageSet(t, b, mustPeriod(t, "202607"))
	want := map[string]string{
		"U":    "202607 USAGE 110000>310000 50.00 late=false payer=true payee=true rev=",
		"U-R1": "202607 REVERSAL 110000>310000 -20.00 late=false payer=true payee=true rev=U",
	}
	if !mapsEqual(got, want) {
		t.Fatalf("usages:\n got %v\nwant %v", got, want)
	}
}

func TestOneSidedAtClose(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := mustPeriod(t, "202607")
	a, _ := pair(t, "ONLY-PAYER", bj, sh, "5.00", t0)
	_, c := pair(t, "ONLY-PAYEE", bj, gd, "6.00", t0)
	dr, de := pair(t, "BOTH", bj, sh, "7.00", t0)
	ingest(t, b, bj, t0, withSeq(a, 1), withSeq(dr, 2))
	ingest(t, b, gd, t0, withSeq(c, 1))
	ingest(t, b, sh, t0, withSeq(de, 1))

	if _, err := b.store.OneSidedAtClose(b.ctx, p, t0); !errors.Is(err, clearingdb.ErrPeriodNotClosing) {
		t.Fatalf("OneSidedAtClose on an OPEN period: %v, want ErrPeriodNotClosing", err)
	}
	setState(t, b, p, "CLOSING")
	n, err := b.store.OneSidedAtClose(b.ctx, p, t0)
	if err != nil || n != 2 {
		t.Fatalf("OneSidedAtClose = %d, %v; want 2", n, err)
	}
	if n, err := b.store.OneSidedAtClose(b.ctx, p, t0); err != nil || n != 0 {
		t.Fatalf("second OneSidedAtClose = %d, %v; want 0", n, err)
	}
	exc, err := b.store.Exceptions(b.ctx, p, gd)
	if err != nil || len(exc) != 1 || exc[0].UsageID != "ONLY-PAYEE" || exc[0].Kind != clearingdb.ExcOneSided ||
		!strings.Contains(exc[0].Detail, "only the payee (440000)") || !slices.Equal(exc[0].Provinces, []string{bj, gd}) {
		t.Fatalf("exceptions for %s = %+v, %v", gd, exc, err)
	}
	exc, err = b.store.Exceptions(b.ctx, p, bj)
	if err != nil || len(exc) != 2 {
		t.Fatalf("exceptions for %s = %+v, %v", bj, exc, err)
	}
}

func TestAmountMismatchPayerWins(t *testing.T) {
	t.Parallel()
	for _, payerFirst := range []bool{false, true} {
		t.Run(map[bool]string{false: "payee first", true: "payer first"}[payerFirst], func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			pr, pe := pair(t, "M", bj, sh, "90.00", t0)
			pe.Amount = "100.00"
			pe.PayeeRegion = "319900" // a field difference as well
			steps := []func(){
				func() { ingest(t, b, sh, t0, withSeq(pe, 1)) },
				func() { ingest(t, b, bj, t0, withSeq(pr, 1)) },
			}
			if payerFirst {
				steps[0], steps[1] = steps[1], steps[0]
			}
			steps[0]()
			steps[1]()
			u, err := b.store.GetUsage(b.ctx, "M")
			if err != nil {
				t.Fatal(err)
			}
			if !u.Amount.Equal(money.MustParse("90.00")) || u.PayeeRegion != "310100" || !u.PayerReported || !u.PayeeReported {
				t.Fatalf("row = %+v, want the payer's amount and fields", u)
			}
			exc, err := b.store.Exceptions(b.ctx, mustPeriod(t, "202607"), sh)
			if err != nil || len(exc) != 2 {
				t.Fatalf("exceptions = %+v, %v", exc, err)
			}
			am, fd := exc[0], exc[1]
			if am.Kind != clearingdb.ExcAmountDiffers || am.Field != "amount" || am.PayerValue != "90.00" || am.PayeeValue != "100.00" {
				t.Fatalf("amount exception = %+v", am)
			}
			if fd.Kind != clearingdb.ExcFieldDiffers || fd.Field != "payee_region" || fd.PayerValue != "310100" || fd.PayeeValue != "319900" {
				t.Fatalf("field exception = %+v", fd)
			}
		})
	}
}

func TestSameSideDifferentPayloadRejected(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pr, _ := pair(t, "K", bj, sh, "10.00", t0)
	ingest(t, b, bj, t0, withSeq(pr, 1))
	changed := pr
	changed.Amount = "99.00"
	ack := ingest(t, b, bj, t0, withSeq(changed, 2))
	if ack.Stored != 0 || len(ack.Rejected) != 1 || ack.Rejected[0].Seq != 2 ||
		!strings.Contains(ack.Rejected[0].Reason, "different payload") {
		t.Fatalf("ack = %+v", ack)
	}
	u, err := b.store.GetUsage(b.ctx, "K")
	if err != nil || u.Amount.String() != "10.00" {
		t.Fatalf("row = %+v, %v; want the first report unchanged", u, err)
	}
	exc, err := b.store.Exceptions(b.ctx, mustPeriod(t, "202607"), "")
	if err != nil || len(exc) != 1 || exc[0].Kind != clearingdb.ExcRejected || exc[0].ReporterSeq != 2 {
		t.Fatalf("exceptions = %+v, %v", exc, err)
	}
	rj, err := b.store.Rejects(b.ctx, bj)
	if err != nil || len(rj) != 1 || rj[0].Seq != 2 || rj[0].UsageID != "K" || !strings.Contains(string(rj[0].Record), `"99.00"`) {
		t.Fatalf("rejects = %+v, %v", rj, err)
	}
	// Two conflicting reports of a new key in one batch: the lower seq wins.
	a1, _ := pair(t, "K2", bj, sh, "1.00", t0)
	a2 := a1
	a2.Amount = "2.00"
	ack = ingest(t, b, bj, t0, withSeq(a2, 11), withSeq(a1, 10))
	if ack.Stored != 1 || len(ack.Rejected) != 1 || ack.Rejected[0].Seq != 11 {
		t.Fatalf("in-batch conflict ack = %+v", ack)
	}
	if u, err := b.store.GetUsage(b.ctx, "K2"); err != nil || u.Amount.String() != "1.00" {
		t.Fatalf("K2 = %+v, %v", u, err)
	}
}

func TestCallerMayReportOnlyItsOwnRecords(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pr, pe := pair(t, "X", bj, sh, "10.00", t0)
	// 上海 sends the payer's report, 北京 the payee's: both refused.
	ack := ingest(t, b, sh, t0, withSeq(pr, 1))
	if len(ack.Rejected) != 1 || !strings.Contains(ack.Rejected[0].Reason, "payer_province 310000") {
		t.Fatalf("ack = %+v", ack)
	}
	ack = ingest(t, b, bj, t0, withSeq(pe, 1))
	if len(ack.Rejected) != 1 || ack.Stored != 0 {
		t.Fatalf("ack = %+v", ack)
	}
	if _, err := b.store.GetUsage(b.ctx, "X"); !errors.Is(err, clearingdb.ErrNotFound) {
		t.Fatalf("GetUsage = %v, want ErrNotFound", err)
	}
	// A replay of the rejected record is a duplicate, not a second reject.
	ack = ingest(t, b, bj, t0, withSeq(pe, 1))
	if ack.Duplicates != 1 || len(ack.Rejected) != 0 {
		t.Fatalf("replay ack = %+v", ack)
	}
	rj, err := b.store.Rejects(b.ctx, "")
	if err != nil || len(rj) != 2 {
		t.Fatalf("rejects = %+v, %v", rj, err)
	}
}

func TestValidationAtTheEdge(t *testing.T) {
	t.Parallel()
	b := setup(t)
	good, _ := pair(t, "G", bj, sh, "10.00", t0)
	cases := map[string]func(r *clearingdb.Record){
		"amount three decimals": func(r *clearingdb.Record) { r.Amount = "1.005" },
		"amount zero":           func(r *clearingdb.Record) { r.Amount = "0" },
		"amount negative":       func(r *clearingdb.Record) { r.Amount = "-1.00" },
		"amount float syntax":   func(r *clearingdb.Record) { r.Amount = "1e3" },
		"amount too large":      func(r *clearingdb.Record) { r.Amount = "99999999999999999.00" },
		"unknown region":        func(r *clearingdb.Record) { r.PayerRegion = "110200" },
		"region of another":     func(r *clearingdb.Record) { r.PayerRegion = "310100" },
		"bad province":          func(r *clearingdb.Record) { r.PayeeProvince, r.PayeeRegion = "999999", "999900" },
		"not cross-province":    func(r *clearingdb.Record) { r.PayeeProvince, r.PayeeRegion = bj, "110100" },
		"unknown kind":          func(r *clearingdb.Record) { r.UsageKind = "DENTAL" },
		"empty key":             func(r *clearingdb.Record) { r.UsageKey = "" },
		"long key":              func(r *clearingdb.Record) { r.UsageKey = strings.Repeat("k", 65) },
		"key with space":        func(r *clearingdb.Record) { r.UsageKey = "a b" },
		"reversal without of":   func(r *clearingdb.Record) { r.Kind = clearingdb.RecordReversal },
		"usage with of":         func(r *clearingdb.Record) { r.ReversalOf = "Z" },
		"no time":               func(r *clearingdb.Record) { r.OccurredAt = time.Time{} },
		"future time":           func(r *clearingdb.Record) { r.OccurredAt = t0.Add(time.Hour) },
		"bad sharer ref":        func(r *clearingdb.Record) { r.SharerRef = "110101199001011234 " },
		"unknown role":          func(r *clearingdb.Record) { r.Role = "BROKER" },
		"unknown record kind":   func(r *clearingdb.Record) { r.Kind = "GIFT" },
		"relationship missing":  func(r *clearingdb.Record) { r.Kind = clearingdb.RecordRelationship },
		"local cross-province":  func(r *clearingdb.Record) { r.Role = clearingdb.RoleLocal },
	}
	var recs []clearingdb.Record
	seq := int64(0)
	for _, f := range cases {
		r := good
		seq++
		r.Seq = seq
		r.UsageKey = "bad-" + strings.Repeat("x", int(seq))
		f(&r)
		recs = append(recs, r)
	}
	good.Seq = 100
	recs = append(recs, good)
	ack := ingest(t, b, bj, t0, recs...)
	if ack.Stored != 1 || int(ack.Duplicates) != 0 || len(ack.Rejected) != len(cases) || len(ack.Seqs) != len(cases)+1 {
		t.Fatalf("ack: stored %d dups %d rejected %d (%+v)", ack.Stored, ack.Duplicates, len(ack.Rejected), ack.Rejected)
	}
	if got := usageSet(t, b, mustPeriod(t, "202607")); len(got) != 1 {
		t.Fatalf("usages = %v", got)
	}
	// Whole-batch errors.
	if _, err := b.store.IngestBatch(b.ctx, "110100", recs, t0); !errors.Is(err, clearingdb.ErrBadProvince) {
		t.Fatalf("caller 110100: %v", err)
	}
	if _, err := b.store.IngestBatch(b.ctx, bj, []clearingdb.Record{good, {Seq: 0}}, t0); !errors.Is(err, clearingdb.ErrBadSeq) {
		t.Fatalf("seq 0: %v", err)
	}
	big := make([]clearingdb.Record, clearingdb.DefaultBatchRowsMax+1)
	if _, err := b.store.IngestBatch(b.ctx, bj, big, t0); !errors.Is(err, clearingdb.ErrBatchTooLarge) {
		t.Fatalf("too large: %v", err)
	}
}

func TestLocalAndRelationshipRecordsCounted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	local := clearingdb.Record{
		Seq: 1, Kind: clearingdb.RecordUsage, Role: clearingdb.RoleLocal, UsageKey: "L1", UsageKind: "MEDICAL",
		PayerProvince: gd, PayerRegion: "440100", PayeeProvince: gd, PayeeRegion: "440300",
		Amount: "8.50", OccurredAt: t0, SharerRef: "s", BeneficiaryRef: "b",
	}
	local2 := local
	local2.Seq, local2.UsageKey, local2.Amount = 2, "L2", "1.50"
	localRev := local
	localRev.Seq, localRev.Kind, localRev.UsageKey, localRev.ReversalOf, localRev.Amount = 3, clearingdb.RecordReversal, "L1-R", "L1", "0.50"
	rel := clearingdb.Record{Seq: 4, Kind: clearingdb.RecordRelationship, Relationship: &clearingdb.RelationshipChange{
		RelationshipID: "Rabc", Version: 2, Status: "ACTIVE", SharerProvince: gd, BeneficiaryProvince: sh, ChangedAt: t0,
	}}
	ack := ingest(t, b, gd, t0, local, local2, localRev, rel)
	if ack.Stored != 4 || len(ack.Rejected) != 0 {
		t.Fatalf("ack = %+v", ack)
	}
	ack = ingest(t, b, gd, t0, local, local2, localRev, rel) // replay: counted once
	if ack.Duplicates != 4 {
		t.Fatalf("replay ack = %+v", ack)
	}
	p := mustPeriod(t, "202607")
	lc, err := b.store.LocalCounts(b.ctx, p)
	if err != nil || len(lc) != 2 {
		t.Fatalf("local counts = %+v, %v", lc, err)
	}
	if lc[0].EntryType != "REVERSAL" || lc[0].Records != 1 || lc[0].Amount.String() != "-0.50" ||
		lc[1].EntryType != "USAGE" || lc[1].Records != 2 || lc[1].Amount.String() != "10.00" {
		t.Fatalf("local counts = %+v", lc)
	}
	if n, err := b.store.RelationshipEvents(b.ctx, p); err != nil || n != 1 {
		t.Fatalf("relationship events = %d, %v", n, err)
	}
	if got := usageSet(t, b, p); len(got) != 0 {
		t.Fatalf("local usage was cleared: %v", got)
	}
	// A relationship of two other provinces is not gd's to report.
	other := rel
	other.Seq = 5
	other.Relationship = &clearingdb.RelationshipChange{RelationshipID: "Rx", Version: 1, Status: "PENDING",
		SharerProvince: bj, BeneficiaryProvince: sh, ChangedAt: t0}
	if ack := ingest(t, b, gd, t0, other); len(ack.Rejected) != 1 {
		t.Fatalf("foreign relationship ack = %+v", ack)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestPayerCorrectsPayeeClaimedProvince: the payee names the wrong payer
// province; when the payer's report arrives the row moves to the payer's
// province (the distribution key is never updated in place) and the
// difference is listed for all three provinces.
func TestPayerCorrectsPayeeClaimedProvince(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pr, pe := pair(t, "W", bj, sh, "8.00", t0)
	pe.PayerProvince, pe.PayerRegion = gd, "440100"
	ingest(t, b, sh, t0, withSeq(pe, 1))
	if k, err := b.store.GetKey(b.ctx, "W"); err != nil || k.PayerProvince != gd {
		t.Fatalf("key before = %+v, %v", k, err)
	}
	ingest(t, b, bj, t0, withSeq(pr, 1))
	k, err := b.store.GetKey(b.ctx, "W")
	if err != nil || k.PayerProvince != bj {
		t.Fatalf("key after = %+v, %v", k, err)
	}
	got := usageSet(t, b, mustPeriod(t, "202607"))
	if len(got) != 1 || got["W"] != "202607 USAGE 110000>310000 8.00 late=false payer=true payee=true rev=" {
		t.Fatalf("usages = %v", got)
	}
	u, err := b.store.GetUsage(b.ctx, "W")
	if err != nil || u.PayerRegion != "110100" || !u.FirstAt.Equal(t0) {
		t.Fatalf("row = %+v, %v", u, err)
	}
	exc, err := b.store.Exceptions(b.ctx, mustPeriod(t, "202607"), gd)
	if err != nil || len(exc) != 2 || exc[0].Field != "payer_province" || exc[0].PayerValue != bj ||
		exc[0].PayeeValue != gd || !slices.Equal(exc[0].Provinces, []string{bj, sh, gd}) {
		t.Fatalf("exceptions = %+v, %v", exc, err)
	}
}

// idNumber builds a valid GB 11643 number (address, birth date, sequence).
func idNumber(t *testing.T, addr, birth, seq string) string {
	t.Helper()
	c, err := pii.CheckDigit(addr + birth + seq)
	if err != nil {
		t.Fatal(err)
	}
	return addr + birth + seq + string(c)
}

// TestRejectedRecordsMaskIDNumbers: a record refused at ingest is kept in
// report_rejects, but an ID number a node put into any of its text fields
// (a key, a ref, a code, an amount, the kinds — the reason quotes some of
// those) is stored masked: no column of any report_rejects row, the jsonb
// record included, has a window that pii.Validate accepts. Keys and refs
// containing one are refused like malformed ones. The records are still
// rejected and acknowledged as before, a replay is a duplicate, and a
// conflicting record (stored from its staged, validated columns) has none
// either.
func TestRejectedRecordsMaskIDNumbers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := idNumber(t, "110105", "19800101", "777")
	id2 := idNumber(t, "310101", "19991231", "042")
	good, _ := pair(t, "G", bj, sh, "10.00", t0)
	cases := map[string]func(r *clearingdb.Record){
		"usage key is an ID number":       func(r *clearingdb.Record) { r.UsageKey = id },
		"usage key contains an ID number": func(r *clearingdb.Record) { r.UsageKey = "u-" + id + "-" + id2 },
		"reversal of an ID number":        func(r *clearingdb.Record) { r.Kind, r.ReversalOf = clearingdb.RecordReversal, "rv-"+id },
		"relationship id with an ID":      func(r *clearingdb.Record) { r.RelationshipID = "R" + id },
		"sharer ref with an ID":           func(r *clearingdb.Record) { r.SharerRef = "s_" + id },
		"beneficiary ref is an ID":        func(r *clearingdb.Record) { r.BeneficiaryRef = id },
		"usage kind is an ID number":      func(r *clearingdb.Record) { r.UsageKind = id },
		"record kind is an ID number":     func(r *clearingdb.Record) { r.Kind = clearingdb.RecordKind(id) },
		"role is an ID number":            func(r *clearingdb.Record) { r.Role = clearingdb.Role("x" + id) },
		"payer region is an ID number":    func(r *clearingdb.Record) { r.PayerRegion = id },
		"payee province is an ID number":  func(r *clearingdb.Record) { r.PayeeProvince = id },
		"amount is an ID number":          func(r *clearingdb.Record) { r.Amount = id },
		"ID numbers everywhere, NUL too":  func(r *clearingdb.Record) { r.UsageKey, r.Amount, r.SharerRef = id+"\x00", id2, id },
		"relationship snapshot with an ID": func(r *clearingdb.Record) {
			r.Kind = clearingdb.RecordRelationship
			r.Relationship = &clearingdb.RelationshipChange{RelationshipID: "R" + id2, Version: 1, Status: id, SharerProvince: bj, BeneficiaryProvince: sh, ChangedAt: t0}
		},
	}
	var recs []clearingdb.Record
	seq := int64(0)
	for _, f := range cases {
		r := good
		seq++
		r.Seq = seq
		r.UsageKey = fmt.Sprintf("bad-%d", seq)
		f(&r)
		recs = append(recs, r)
	}
	good.Seq = 100
	recs = append(recs, good)
	ack := ingest(t, b, bj, t0, recs...)
	if ack.Stored != 1 || ack.Duplicates != 0 || len(ack.Rejected) != len(cases) || len(ack.Seqs) != len(cases)+1 {
		t.Fatalf("ack: stored %d dups %d rejected %d of %d (%+v)", ack.Stored, ack.Duplicates, len(ack.Rejected), len(cases), ack.Rejected)
	}
	for _, rj := range ack.Rejected {
		if pii.ContainsID(rj.Reason) {
			t.Errorf("the rejection of seq %d quotes an ID number: %q", rj.Seq, rj.Reason)
		}
	}
	// A replay of the batch: every record a duplicate, nothing rejected again.
	if again := ingest(t, b, bj, t0, recs...); again.Duplicates != int64(len(recs)) || len(again.Rejected) != 0 || again.Stored != 0 {
		t.Fatalf("replayed batch: %+v", again)
	}
	// A conflicting report (same key and side, another payload): rejected
	// through the staged rows.
	conflict := good
	conflict.Seq, conflict.Amount = 200, "11.00"
	if ack := ingest(t, b, bj, t0, conflict); len(ack.Rejected) != 1 || ack.Rejected[0].Seq != 200 {
		t.Fatalf("conflict: %+v", ack)
	}

	rows, err := b.db.Pool.Query(b.ctx, `SELECT seq, usage_id, reason, record::text, t::text FROM report_rejects t WHERE province = $1 ORDER BY seq`, bj)
	if err != nil {
		t.Fatal(err)
	}
	type reject struct {
		seq                           int64
		usageID, reason, record, full string
	}
	var stored []reject
	var r reject
	if _, err := pgx.ForEachRow(rows, []any{&r.seq, &r.usageID, &r.reason, &r.record, &r.full}, func() error {
		stored = append(stored, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(stored) != len(cases)+1 {
		t.Fatalf("%d rejects stored, want %d", len(stored), len(cases)+1)
	}
	masked := 0
	for _, r := range stored {
		for what, s := range map[string]string{"usage_id": r.usageID, "reason": r.reason, "record": r.record, "row": r.full} {
			if pii.ContainsID(s) {
				t.Errorf("seq %d: %s holds an ID number in clear: %s", r.seq, what, s)
			}
		}
		if strings.Contains(r.record, pii.Mask(id)) || strings.Contains(r.record, pii.Mask(id2)) {
			masked++
		}
	}
	// Every case put an ID number into a text field: the record keeps it masked.
	if masked != len(cases) {
		t.Errorf("%d of %d rejected records show the masked number", masked, len(cases))
	}
	// The record is what the node sent, masked: its other fields are intact.
	var rec map[string]any
	for _, r := range stored {
		if r.seq == 200 {
			if err := json.Unmarshal([]byte(r.record), &rec); err != nil || rec["Amount"] != "11.00" || rec["UsageKey"] != "G" {
				t.Errorf("conflicting record stored as %s (%v)", r.record, err)
			}
		}
		if r.usageID == pii.Mask(id) && !strings.Contains(r.record, `"UsageKey": "`+pii.Mask(id)+`"`) {
			t.Errorf("seq %d: usage_id %s but record %s", r.seq, r.usageID, r.record)
		}
	}
	if u, err := b.store.GetUsage(b.ctx, "G"); err != nil || u.Amount.String() != "10.00" {
		t.Fatalf("the valid record: %+v, %v", u, err)
	}
}
