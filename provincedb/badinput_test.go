package provincedb_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
	"gongji/sharing"
)

// snapshot fingerprints every table of the node's database: row count and an
// md5 of all rows in a fixed order. Two equal snapshots mean nothing changed.
func snapshot(t testing.TB, n *node) map[string]string {
	t.Helper()
	ctx := context.Background()
	rows, err := n.db.Pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if len(tables) < 10 {
		t.Fatalf("only %d tables: %v", len(tables), tables)
	}
	out := map[string]string{}
	for _, tbl := range tables {
		var fp string
		if err := n.db.Pool.QueryRow(ctx, `SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM `+tbl+` t`).Scan(&fp); err != nil {
			t.Fatal(err)
		}
		out[tbl] = fp
	}
	// Sequences advance even in rolled-back transactions; they are not data.
	return out
}

func sameSnapshot(t testing.TB, what string, before, after map[string]string) {
	t.Helper()
	for tbl, fp := range before {
		if after[tbl] != fp {
			t.Fatalf("%s: table %s changed (%s → %s)", what, tbl, fp, after[tbl])
		}
	}
}

// TestBadInput: every malformed or forbidden request is refused with the
// right sentinel before anything is written: the database is unchanged.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	sharer := n.register(t, employee(zhengzh))
	ben := n.register(t, employee(luoyang))
	uninsured := n.register(t, resident(luoyang, false))
	inactive := n.register(t, withStatus(employee(zhengzh), sharing.PersonSuspended))
	pooling := employee(zhengzh)
	pooling.Mode = sharing.ModePoolingOnly
	poolingOnly := n.register(t, pooling)
	n.credit(t, sharer, "100")
	r := n.activeRel(t, sharer, ben, "50")
	ru := n.activeRel(t, sharer, uninsured, "10")
	res, err := n.svc.Spend(ctx, spendReq(r, sharing.KindMedical, "5", clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	u := res.Usage

	over := y("9999999999999999.99").Add(y("0.01"))
	validID := newID(t, "410102")
	badCheck := validID[:17] + string("0123456789X"[(indexOf("0123456789X", validID[17])+1)%11])
	idInKey := []error{sharing.ErrInvalidInput, pii.ErrContainsID}
	spend := func(mut func(*sharing.UsageRequest)) error {
		req := spendReq(r, sharing.KindMedical, "1.00", clk.Now())
		mut(&req)
		_, err := n.svc.Spend(ctx, req)
		return err
	}
	// parseThen is what the edge does: parse the wire text, then call.
	parseThen := func(s string) error {
		a, err := sharing.ParseAmount("amount", s)
		if err != nil {
			return err
		}
		_, err = n.svc.Credit(ctx, sharing.MovementRequest{Key: key("c"), PersonRef: sharer, Amount: a})
		return err
	}
	cases := []struct {
		name string
		call func() error
		want []error
	}{
		{"zero amount", func() error {
			_, err := n.svc.Credit(ctx, sharing.MovementRequest{Key: key("c"), PersonRef: sharer, Amount: money.Zero})
			return err
		}, []error{sharing.ErrInvalidInput, money.ErrNotPositive}},
		{"negative amount", func() error { return spend(func(r *sharing.UsageRequest) { r.Amount = y("-1.00") }) }, []error{sharing.ErrInvalidInput, money.ErrNotPositive}},
		{"three decimals", func() error { return parseThen("1.005") }, []error{sharing.ErrInvalidInput, money.ErrTooPrecise}},
		{"exponent", func() error { return parseThen("1e3") }, []error{sharing.ErrInvalidInput, money.ErrSyntax}},
		{"over range (text)", func() error { return parseThen("10000000000000000.00") }, []error{sharing.ErrInvalidInput, money.ErrOutOfRange}},
		{"over range (value)", func() error { return spend(func(r *sharing.UsageRequest) { r.Amount = over }) }, []error{sharing.ErrInvalidInput, money.ErrOutOfRange}},
		{"quota over range", func() error {
			_, err := n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: over})
			return err
		}, []error{sharing.ErrInvalidInput, money.ErrOutOfRange}},
		{"unknown region", func() error {
			_, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: newID(t, "410102"), Enrollment: employee("410199")})
			return err
		}, []error{sharing.ErrInvalidInput, region.ErrUnknownRegion}},
		{"region of another province", func() error {
			_, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: newID(t, "410102"), Enrollment: employee(bjRegion)})
			return err
		}, []error{sharing.ErrInvalidInput, region.ErrWrongProvince}},
		{"payee region of another province", func() error { return spend(func(r *sharing.UsageRequest) { r.PayeeRegion = bjRegion }) }, []error{sharing.ErrInvalidInput, region.ErrWrongProvince}},
		{"payee province not this node", func() error {
			return spend(func(r *sharing.UsageRequest) { r.PayeeProvince, r.PayeeRegion = beijing, bjRegion })
		}, []error{sharing.ErrInvalidInput, sharing.ErrWrongProvince}},
		{"bad ID check digit", func() error {
			_, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: badCheck, Enrollment: employee(zhengzh)})
			return err
		}, []error{sharing.ErrInvalidInput, pii.ErrCheckDigit}},
		{"ID too short", func() error {
			_, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: validID[:17], Enrollment: employee(zhengzh)})
			return err
		}, []error{sharing.ErrInvalidInput, pii.ErrLength}},
		{"resident with personal account", func() error {
			e := resident(zhengzh, true)
			e.Mode = sharing.ModePooledWithAccount
			_, err := n.svc.RegisterPerson(ctx, sharing.RegisterPersonRequest{IDNumber: newID(t, "410102"), Enrollment: e})
			return err
		}, []error{sharing.ErrInvalidInput}},
		{"unknown kind", func() error { return spend(func(r *sharing.UsageRequest) { r.Kind = "MASSAGE" }) }, []error{sharing.ErrInvalidInput}},
		{"future occurred_at", func() error { return spend(func(r *sharing.UsageRequest) { r.OccurredAt = clk.Now().Add(time.Hour) }) }, []error{sharing.ErrInvalidInput}},
		{"empty usage key", func() error { return spend(func(r *sharing.UsageRequest) { r.Key = "" }) }, []error{sharing.ErrInvalidInput}},
		// Keys are stored, logged, reported and exported in clear: one
		// containing an ID number is refused, whichever key it is.
		{"usage key that is an ID number", func() error { return spend(func(r *sharing.UsageRequest) { r.Key = validID }) }, idInKey},
		{"usage key containing an ID number", func() error {
			return spend(func(r *sharing.UsageRequest) { r.Key = "u-" + strings.ToLower(validID) + "-1" })
		}, idInKey},
		{"reversal key containing an ID number", func() error {
			_, err := n.svc.Reverse(ctx, sharing.ReversalRequest{Key: "rv-" + validID, UsageKey: u.Key, Amount: y("1.00"), OccurredAt: clk.Now()})
			return err
		}, idInKey},
		{"reversed usage key containing an ID number", func() error {
			_, err := n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: validID, Amount: y("1.00"), OccurredAt: clk.Now()})
			return err
		}, idInKey},
		{"credit key containing an ID number", func() error {
			_, err := n.svc.Credit(ctx, sharing.MovementRequest{Key: "cr-" + validID, PersonRef: sharer, Amount: y("1.00")})
			return err
		}, idInKey},
		{"own spending key containing an ID number", func() error {
			_, err := n.svc.SpendOwn(ctx, sharing.MovementRequest{Key: validID, PersonRef: sharer, Amount: y("1.00")})
			return err
		}, idInKey},
		{"proposal key containing an ID number", func() error {
			p := proposal(henan, sharer, inactive, sharing.SideSharer)
			p.Key = "p-" + validID
			_, err := n.svc.Propose(ctx, p)
			return err
		}, idInKey},
		{"command key containing an ID number", func() error {
			_, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: "d-" + validID, RelationshipID: r.ID, By: sharing.SideSharer})
			return err
		}, idInKey},
		{"quota command key containing an ID number", func() error {
			_, err := n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: validID, RelationshipID: r.ID, Quota: y("1.00")})
			return err
		}, idInKey},
		{"change key containing an ID number", func() error {
			_, err := n.svc.UpdateEnrollment(ctx, sharing.EnrollmentChange{PersonRef: ben, Enrollment: withStatus(employee(luoyang), sharing.PersonSuspended),
				Key: "e-" + validID})
			return err
		}, idInKey},
		{"self-sharing", func() error {
			_, err := n.svc.Propose(ctx, proposal(henan, sharer, sharer, sharing.SideSharer))
			return err
		}, []error{sharing.ErrInvalidInput, sharing.ErrSelfSharing}},
		{"non-relative", func() error {
			p := proposal(henan, sharer, n.register(t, employee(luoyang)), sharing.SideSharer)
			p.Relation = "COLLEAGUE"
			before := snapshot(t, n) // the registration above is set-up, not the case
			_, err := n.svc.Propose(ctx, p)
			sameSnapshot(t, "non-relative", before, snapshot(t, n))
			return err
		}, []error{sharing.ErrInvalidInput, sharing.ErrNotRelative}},
		{"inactive sharer", func() error {
			_, err := n.svc.Propose(ctx, proposal(henan, inactive, ben, sharing.SideSharer))
			return err
		}, []error{sharing.ErrSharerInactive}},
		{"pooling-only sharer", func() error {
			_, err := n.svc.Propose(ctx, proposal(henan, poolingOnly, ben, sharing.SideBeneficiary))
			return err
		}, []error{sharing.ErrNoPersonalAccount}},
		{"uninsured beneficiary for MEDICAL", func() error {
			_, err := n.svc.Spend(ctx, spendReq(ru, sharing.KindMedical, "1.00", clk.Now()))
			return err
		}, []error{sharing.ErrBeneficiaryUninsured}},
		{"duplicate live relationship", func() error {
			_, err := n.svc.Propose(ctx, proposal(henan, sharer, ben, sharing.SideSharer))
			return err
		}, []error{sharing.ErrDuplicateRelationship}},
		{"raise quota beyond balance", func() error {
			_, err := n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y("90.01")})
			return err
		}, []error{sharing.ErrInsufficientBalance}},
		{"lower quota below used", func() error {
			_, err := n.svc.SetQuota(ctx, sharing.SetQuotaRequest{Key: key("q"), RelationshipID: r.ID, Quota: y("4.99")})
			return err
		}, []error{sharing.ErrBelowUsed}},
		{"own spending of earmarked money", func() error {
			_, err := n.svc.SpendOwn(ctx, sharing.MovementRequest{Key: key("o"), PersonRef: sharer, Amount: y("40.01")})
			return err
		}, []error{sharing.ErrInsufficientBalance}},
		{"reversal beyond the usage", func() error {
			_, err := n.svc.Reverse(ctx, sharing.ReversalRequest{Key: key("rv"), UsageKey: u.Key, Amount: y("5.01"), OccurredAt: clk.Now()})
			return err
		}, []error{sharing.ErrReversalExceedsUsage}},
		{"usage key reused", func() error {
			req := u.Request()
			req.Amount = y("6")
			_, err := n.svc.Spend(ctx, req)
			return err
		}, []error{sharing.ErrKeyReused}},
		{"debit paid in this province", func() error {
			_, err := n.svc.Debit(ctx, spendReq(r, sharing.KindMedical, "1", clk.Now()))
			return err
		}, []error{sharing.ErrInvalidInput}},
		{"consent by the proposer", func() error {
			_, err := n.svc.Consent(ctx, sharing.CommandRequest{Key: key("c"), RelationshipID: r.ID, By: sharing.SideSharer})
			return err
		}, []error{sharing.ErrBadTransition}},
		{"command from another province for a local party", func() error {
			_, err := n.svc.Dissolve(ctx, sharing.DissolveRequest{Key: key("d"), Origin: beijing, RelationshipID: r.ID, By: sharing.SideBeneficiary})
			return err
		}, []error{sharing.ErrWrongProvince}},
		{"replica of own relationship", func() error {
			_, err := n.svc.ApplyReplica(ctx, n.rel(t, r.ID))
			return err
		}, []error{sharing.ErrWrongProvince}},
	}
	for _, c := range cases {
		before := snapshot(t, n)
		err := c.call()
		wantErr(t, c.name, err, c.want...)
		if c.name != "non-relative" {
			sameSnapshot(t, c.name, before, snapshot(t, n))
		}
	}
	n.conserved(t)
}

// TestRelationshipIDWithoutIDNumber: a proposal key whose naive id ("R" +
// the first 24 hex of sha256) would contain a valid ID number gets a
// relationship id without one, which every later command names.
func TestRelationshipIDWithoutIDNumber(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := newNode(t, henan, newClock(), nil)
	sharer, ben := n.register(t, employee(zhengzh)), n.register(t, employee(luoyang))
	p := proposal(henan, sharer, ben, sharing.SideSharer)
	p.Key = "p-26652556" // naive id R752284332352013102788470 holds a valid number (found by search)
	r, err := n.svc.Propose(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if r.ID == "R752284332352013102788470" || pii.ContainsID(r.ID) || r.ID != sharing.RelationshipID(henan, p.Key) {
		t.Fatalf("relationship id %s", r.ID)
	}
	if r, err = n.svc.Consent(ctx, sharing.CommandRequest{Key: key("consent"), RelationshipID: r.ID, By: sharing.SideBeneficiary}); err != nil ||
		r.Status != sharing.StatusActive {
		t.Fatalf("consent: %+v, %v", r, err)
	}
	if again, err := n.svc.Propose(ctx, p); err != nil || again.ID != r.ID {
		t.Fatalf("retried proposal: %+v, %v", again, err)
	}
}

func indexOf(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// TestConservationDetects: the check finds each kind of damage an operator
// or a bug could do behind the store's back.
func TestConservationDetects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clk := newClock()
	n := newNode(t, henan, clk, nil)
	a := n.register(t, employee(zhengzh))
	b := n.register(t, employee(luoyang))
	n.credit(t, a, "100")
	r := n.activeRel(t, a, b, "50")
	res, err := n.svc.Spend(ctx, spendReq(r, sharing.KindMedical, "10", clk.Now()))
	if err != nil {
		t.Fatal(err)
	}
	n.conserved(t)
	damage := map[string]struct{ do, undo, want string }{
		"cached balance": {
			`UPDATE accounts SET balance = balance + 1 WHERE name = 'person:` + a + `'`,
			`UPDATE accounts SET balance = balance - 1 WHERE name = 'person:` + a + `'`,
			"cached balance differs from postings"},
		"used": {
			`UPDATE relationships SET used = used - 1 WHERE id = '` + r.ID + `'`,
			`UPDATE relationships SET used = used + 1 WHERE id = '` + r.ID + `'`,
			"used differs from usages"},
		"usage amount": {
			`UPDATE usages SET amount = amount + 1 WHERE usage_key = '` + res.Usage.Key + `'`,
			`UPDATE usages SET amount = amount - 1 WHERE usage_key = '` + res.Usage.Key + `'`,
			"payout or clearing account differs from usages"},
		"reversed": {
			`UPDATE usages SET reversed = 1 WHERE usage_key = '` + res.Usage.Key + `'`,
			`UPDATE usages SET reversed = 0 WHERE usage_key = '` + res.Usage.Key + `'`,
			"usage reversed total differs"},
	}
	for name, d := range damage {
		if _, err := n.db.Pool.Exec(ctx, d.do); err != nil {
			t.Fatal(err)
		}
		err := n.svc.CheckConservation(ctx)
		if !errors.Is(err, sharing.ErrConservation) || !strings.Contains(err.Error(), d.want) {
			t.Fatalf("%s: %v, want %q", name, err, d.want)
		}
		if _, err := n.db.Pool.Exec(ctx, d.undo); err != nil {
			t.Fatal(err)
		}
		n.conserved(t)
	}
	// The journal itself is append-only.
	if _, err := n.db.Pool.Exec(ctx, `UPDATE journal_postings SET amount = amount WHERE entry_id = 1`); err == nil {
		t.Fatal("journal postings can be updated")
	}
	if _, err := n.db.Pool.Exec(ctx, `DELETE FROM journal_entries`); err == nil {
		t.Fatal("journal entries can be deleted")
	}
	// An unbalanced entry cannot commit even when written behind the store's back.
	tx, err := n.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `WITH e AS (INSERT INTO journal_entries (kind, ref, at) VALUES ('X', 'x', now()) RETURNING id)
		INSERT INTO journal_postings (entry_id, idx, account, amount) SELECT id, 0, 'ext:funding', 1 FROM e`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("an unbalanced entry committed")
	}
	n.conserved(t)
}
