package clearingdb_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"gongji/audit"
	"gongji/clearingdb"
	"gongji/internal/pii"
	"gongji/money"
	"gongji/prepay"
	"gongji/region"
)

// The export fixture: period 202607 with three provinces — 河南 410000 (the
// province of the scoped tests, with two pooling regions), 北京 110000 and
// 广东 440000 — built only through the public clearingdb API: deposits
// funded, both nodes' reports ingested (one usage reported by its payer
// only, a reversal, a late record of June, a key that needs CSV quoting, a
// pair that does not involve 河南), the period closed after its cut-off and
// settled.
const (
	exHenan     = "410000"
	exBeijing   = "110000"
	exGuangdong = "440000"
	exPeriod    = "202607"
)

// exPersonKey is the national person key of the fixture's synthetic people;
// exExportKeyHex the export key (hex, as in a key file).
var (
	exPersonKey    = []byte("gongji-export-test-national-person-key")
	exExportKeyHex = "5c0ffee5a11ce0b05c0ffee5a11ce0b05c0ffee5a11ce0b05c0ffee5a11ce0b0"
)

func exportKey(t testing.TB) audit.PseudonymKey {
	t.Helper()
	k, err := audit.ParsePseudonymKey(exExportKeyHex)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// exIDNumber completes a 17-digit body with its GB 11643 check character.
func exIDNumber(t testing.TB, body17 string) string {
	t.Helper()
	c, err := pii.CheckDigit(body17)
	if err != nil {
		t.Fatal(err)
	}
	return body17 + string(c)
}

// exPeople are synthetic resident ID numbers; only their person_refs reach
// the clearing database, and only keyed pseudonyms of those an export.
func exPeople(t testing.TB) []string {
	return []string{
		exIDNumber(t, "41010219800101123"), exIDNumber(t, "11010519750302456"),
		exIDNumber(t, "44030519920715789"), exIDNumber(t, "41030319881111012"),
		exIDNumber(t, "11010819601231345"), exIDNumber(t, "44010619990909678"),
	}
}

type exportFixture struct {
	bundle
	period    region.Period
	people    []string // ID numbers
	refs      []string // their person_refs, as stored
	closedAt  time.Time
	settledAt time.Time
}

// exUsage describes one cross-province usage or reversal of the fixture.
type exUsage struct {
	key, reversalOf string
	payer, payee    string
	payerRegion     int // index into the province's regions
	payeeRegion     int
	amount          string
	at              time.Time
	sharer, benef   int // indexes into people
	payeeReports    bool
}

func exRegion(t testing.TB, province string, i int) string {
	p, err := region.ParseProvince(province)
	if err != nil {
		t.Fatal(err)
	}
	return p.Regions[i%len(p.Regions)].Code
}

// newExportFixture builds and settles the fixture period; closeOnly stops
// after the close (the period is then CLOSED, not SETTLED).
func newExportFixture(t *testing.T, closeOnly bool) exportFixture {
	t.Helper()
	f := exportFixture{bundle: setup(t), period: mustPeriod(t, exPeriod), people: exPeople(t)}
	for _, id := range f.people {
		f.refs = append(f.refs, pii.PersonRef(exPersonKey, id))
	}
	ctx, st := f.ctx, f.store
	for i, d := range []struct{ prov, amount string }{{exHenan, "1000.00"}, {exBeijing, "500.00"}, {exGuangdong, "300.00"}} {
		if _, err := st.FundPrepay(ctx, clearingdb.PrepayMovement{Province: d.prov, Amount: money.MustParse(d.amount),
			Key: fmt.Sprintf("fund-%d", i)}, t0); err != nil {
			t.Fatal(err)
		}
	}
	jul := func(day, hour int) time.Time {
		return time.Date(2026, time.July, day, hour, 30, 15, 0, region.Shanghai)
	}
	usages := []exUsage{
		{key: "410000-U0001", payer: exHenan, payee: exBeijing, amount: "1000.00", at: jul(2, 9), sharer: 0, benef: 1, payeeReports: true},
		{key: "410000-U0002", payer: exHenan, payerRegion: 1, payee: exGuangdong, amount: "250.50", at: jul(3, 10), sharer: 3, benef: 2, payeeReports: true},
		{key: "110000-U0003", payer: exBeijing, payee: exHenan, payeeRegion: 1, amount: "380.00", at: jul(4, 11), sharer: 1, benef: 3, payeeReports: true},
		{key: "110000-U0004", payer: exBeijing, payee: exGuangdong, amount: "600.00", at: jul(5, 12), sharer: 4, benef: 5, payeeReports: true},
		// reported by its payer only: cleared all the same, a ONE_SIDED exception
		{key: "440000-U0005", payer: exGuangdong, payee: exBeijing, amount: "75.25", at: jul(6, 13), sharer: 5, benef: 4},
		// a key that needs RFC 4180 quoting in usages.csv
		{key: `440000-PH,7"x`, payer: exGuangdong, payee: exHenan, amount: "100.00", at: jul(7, 14), sharer: 2, benef: 0, payeeReports: true},
		// a partial refund of U0002 at the pharmacy
		{key: "410000-R0001", reversalOf: "410000-U0002", payer: exHenan, payerRegion: 1, payee: exGuangdong, amount: "50.50", at: jul(9, 15), sharer: 3, benef: 2, payeeReports: true},
		// occurred in June, reported after June's cut-off: cleared in July, late
		{key: "110000-L0001", payer: exBeijing, payee: exHenan, amount: "42.10",
			at: time.Date(2026, time.June, 28, 8, 0, 0, 0, region.Shanghai), sharer: 4, benef: 0, payeeReports: true},
	}
	out := map[string][]clearingdb.Record{}
	for _, u := range usages {
		r := clearingdb.Record{
			Kind: clearingdb.RecordUsage, UsageKey: u.key, ReversalOf: u.reversalOf, UsageKind: "MEDICAL",
			PayerProvince: u.payer, PayerRegion: exRegion(t, u.payer, u.payerRegion),
			PayeeProvince: u.payee, PayeeRegion: exRegion(t, u.payee, u.payeeRegion),
			Amount: u.amount, OccurredAt: u.at, SharerRef: f.refs[u.sharer], BeneficiaryRef: f.refs[u.benef],
			RelationshipID: "R-" + strings.ReplaceAll(u.key, `"`, ""),
		}
		if u.reversalOf != "" {
			r.Kind, r.UsageKind = clearingdb.RecordReversal, "PHARMACY"
		}
		pr := r
		pr.Role, pr.Seq = clearingdb.RolePayer, int64(len(out[u.payer])+1)
		out[u.payer] = append(out[u.payer], pr)
		if u.payeeReports {
			pe := r
			pe.Role, pe.Seq = clearingdb.RolePayee, int64(len(out[u.payee])+1)
			out[u.payee] = append(out[u.payee], pe)
		}
	}
	now := jul(20, 10)
	for _, prov := range []string{exHenan, exBeijing, exGuangdong} {
		ack := ingest(t, f.bundle, prov, now, out[prov]...)
		if len(ack.Rejected) > 0 {
			t.Fatalf("%s: rejected %+v", prov, ack.Rejected)
		}
	}
	f.closedAt = f.period.CutOff(st.Config().Settlement.CutOffGrace)
	if _, err := st.ClosePeriod(ctx, f.period, f.closedAt.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if closeOnly {
		return f
	}
	f.settledAt = f.closedAt.Add(2 * time.Hour)
	if _, err := st.SettlePeriod(ctx, f.period, prepay.Config{}, f.settledAt); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f exportFixture) source(t testing.TB, province string) *clearingdb.ExportSource {
	t.Helper()
	src, err := f.store.ExportSource(f.ctx, f.period, clearingdb.ExportOptions{Key: exportKey(t), Province: province})
	if err != nil {
		t.Fatal(err)
	}
	return src
}
