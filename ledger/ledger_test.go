package ledger_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"gongji/ledger"
	"gongji/money"
)

func y(s string) money.Yuan { return money.MustParse(s) }

func TestValidate(t *testing.T) {
	t.Parallel()
	over := y("9999999999999999.99").Add(y("0.01"))
	cases := map[string]struct {
		ps      ledger.Postings
		wantIdx int
		wantErr error
	}{
		"ok":          {ledger.Postings{{"a", y("1.00")}, {"b", y("-1.00")}}, -1, nil},
		"ok three":    {ledger.Postings{{"a", y("1.00")}, {"b", y("-0.40")}, {"c", y("-0.60")}}, -1, nil},
		"none":        {nil, -1, ledger.ErrTooFewPostings},
		"one":         {ledger.Postings{{"a", y("0")}}, -1, ledger.ErrTooFewPostings},
		"zero second": {ledger.Postings{{"a", y("1.00")}, {"b", y("0")}, {"c", y("-1.00")}}, 1, ledger.ErrZeroAmount},
		"no account":  {ledger.Postings{{"a", y("1.00")}, {"", y("-1.00")}}, 1, ledger.ErrEmptyAccount},
		"unbalanced":  {ledger.Postings{{"a", y("1.00")}, {"b", y("-0.99")}}, -1, ledger.ErrUnbalanced},
		"over range":  {ledger.Postings{{"a", over}, {"b", over.Neg()}}, 0, ledger.ErrOutOfRange},
	}
	for name, c := range cases {
		idx, err := c.ps.Validate()
		if idx != c.wantIdx || !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
			t.Errorf("%s: Validate() = %d, %v; want %d, %v", name, idx, err, c.wantIdx, c.wantErr)
		}
		var pe *ledger.PostingError
		if c.wantIdx >= 0 && (!errors.As(err, &pe) || pe.Index != c.wantIdx) {
			t.Errorf("%s: want *PostingError at %d, got %v", name, c.wantIdx, err)
		}
	}
	if _, err := (ledger.Entry{Postings: cases["ok"].ps}).Validate(); !errors.Is(err, ledger.ErrEmptyKind) {
		t.Errorf("entry without kind: %v", err)
	}
}

func TestReverseAndBalances(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 7, 1, 8, 0, 0, 0, time.UTC)
	e := ledger.Entry{ID: 7, Kind: "USAGE", At: at, Ref: "k1", Postings: ledger.Postings{{"quota:R1", y("-12.30")}, {"ext:paid:MEDICAL", y("12.30")}}}
	r := e.Reverse("REVERSAL", "k1-r", at.Add(time.Hour))
	if _, err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.ID != 0 || r.Kind != "REVERSAL" || r.Ref != "k1-r" {
		t.Fatalf("reverse header: %+v", r)
	}
	bal := ledger.Balances([]ledger.Entry{e, r})
	for acct, b := range bal {
		if !b.IsZero() {
			t.Errorf("%s = %s after entry + reversal, want 0", acct, b)
		}
	}
	net := ledger.Postings{{"b", y("1")}, {"a", y("2")}, {"b", y("-1")}, {"a", y("-0.5")}}.Net()
	if len(net) != 1 || net[0].Account != "a" || !net[0].Amount.Equal(y("1.5")) {
		t.Fatalf("Net = %+v", net)
	}
}

func chainFixture() []ledger.Entry {
	at := time.Date(2026, 7, 1, 8, 0, 0, 123456789, time.FixedZone("CST", 8*3600))
	var es []ledger.Entry
	for i := int64(1); i <= 5; i++ {
		es = append(es, ledger.Entry{ID: i, Kind: "CREDIT", At: at.Add(time.Duration(i) * time.Minute), Ref: "c",
			Postings: ledger.Postings{{"ext:funding", money.FromFen(-100 * i)}, {"person:x", money.FromFen(100 * i)}}})
	}
	return es
}

func TestChain(t *testing.T) {
	t.Parallel()
	es := chainFixture()
	hs := ledger.Chain(nil, es)
	head, err := ledger.VerifyChain(nil, es, hs)
	if err != nil || !bytes.Equal(head, hs[len(hs)-1]) {
		t.Fatalf("VerifyChain = %x, %v", head, err)
	}
	// A segment verifies from the hash before it.
	if _, err := ledger.VerifyChain(hs[1], es[2:], hs[2:]); err != nil {
		t.Fatalf("segment: %v", err)
	}
	// Microseconds: a time read back from PostgreSQL (nanoseconds dropped) hashes the same.
	e0 := es[0]
	e0.At = e0.At.Truncate(time.Microsecond).UTC()
	if !bytes.Equal(ledger.Hash(nil, e0), hs[0]) {
		t.Fatal("hash depends on sub-microsecond time or zone")
	}

	tamper := map[string]func(e *ledger.Entry){
		"amount": func(e *ledger.Entry) {
			e.Postings[0].Amount = e.Postings[0].Amount.Sub(y("0.01"))
			e.Postings[1].Amount = e.Postings[1].Amount.Add(y("0.01"))
		},
		"account": func(e *ledger.Entry) { e.Postings[1].Account = "person:y" },
		"kind":    func(e *ledger.Entry) { e.Kind = "DEBIT" },
		"ref":     func(e *ledger.Entry) { e.Ref = "d" },
		"id":      func(e *ledger.Entry) { e.ID = 99 },
		"time":    func(e *ledger.Entry) { e.At = e.At.Add(time.Microsecond) },
		"order":   func(e *ledger.Entry) { e.Postings[0], e.Postings[1] = e.Postings[1], e.Postings[0] },
	}
	for name, f := range tamper {
		es := chainFixture()
		f(&es[2])
		_, err := ledger.VerifyChain(nil, es, hs)
		var ce *ledger.ChainError
		if !errors.As(err, &ce) || ce.Index != 2 || !errors.Is(err, ledger.ErrChainBroken) {
			t.Errorf("tamper %s: %v, want chain broken at 2", name, err)
		}
	}
	// Unbalanced entry fails as invalid even with a matching hash.
	bad := chainFixture()
	bad[1].Postings[0].Amount = y("-1.00")
	if _, err := ledger.VerifyChain(nil, bad, ledger.Chain(nil, bad)); !errors.Is(err, ledger.ErrUnbalanced) {
		t.Errorf("unbalanced: %v", err)
	}
	if _, err := ledger.VerifyChain(nil, es, hs[:2]); !errors.Is(err, ledger.ErrChainLength) {
		t.Errorf("length: %v", err)
	}
}

// TestCanonicalGolden pins the encoding: a change here breaks every stored chain.
func TestCanonicalGolden(t *testing.T) {
	t.Parallel()
	e := ledger.Entry{ID: 1, Kind: "CREDIT", Ref: "k", At: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC),
		Postings: ledger.Postings{{"ext:funding", y("-1.5")}, {"person:x", y("1.5")}}}
	want := "22:gongji.ledger.entry.v1,1:1,6:CREDIT,27:2026-01-02T03:04:05.000006Z,1:k,1:2,11:ext:funding,5:-1.50,8:person:x,4:1.50,"
	if got := string(ledger.Canonical(e)); got != want {
		t.Fatalf("Canonical =\n%s\nwant\n%s", got, want)
	}
	if got := hex.EncodeToString(ledger.Hash(nil, e)); len(got) != 64 {
		t.Fatalf("hash %s", got)
	}
}

// FuzzCanonicalInjective: two entries that differ in a string field never
// share an encoding (the netstring framing cannot be forged by field content).
func FuzzCanonicalInjective(f *testing.F) {
	f.Add("a", "b,1:c", "x", "y")
	f.Add("1:a,", "", "", "1:")
	f.Fuzz(func(t *testing.T, kind1, ref1, kind2, ref2 string) {
		if kind1 == kind2 && ref1 == ref2 {
			return
		}
		e1 := ledger.Entry{Kind: kind1, Ref: ref1}
		e2 := ledger.Entry{Kind: kind2, Ref: ref2}
		if bytes.Equal(ledger.Canonical(e1), ledger.Canonical(e2)) {
			t.Fatalf("collision: %q/%q vs %q/%q", kind1, ref1, kind2, ref2)
		}
	})
}
