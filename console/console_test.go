package console_test

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/shopspring/decimal"

	"gongji/audit"
	"gongji/audit/verify"
	"gongji/clearingdb"
	"gongji/console"
	"gongji/internal/pgtest"
	"gongji/internal/tlsconf"
	"gongji/migrations"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// The JSON shapes the tests read (a subset of the console's view types,
// decoded from the wire as a client would).
type (
	jLabel struct{ Code, Name string }
	jPos   struct {
		Province   jLabel
		Receivable string
		Payable    string
		Net        string
		Role       string
	}
	jPositions struct {
		Rows              []jPos
		TotalReceivable   string `json:"total_receivable"`
		TotalPayable      string `json:"total_payable"`
		NetSum            string `json:"net_sum"`
		Payers, Receivers int
		Scope             struct{ Province string }
		Period            struct{ Frozen bool }
	}
	jFlows struct {
		Cells []struct {
			Payer, Payee jLabel
			Amount       string
		}
		Total string
		Pairs int
	}
	jPrepayRow struct {
		Province           jLabel
		DepositBefore      string `json:"deposit_before"`
		Drawn, Outstanding string
		DepositAfter       string `json:"deposit_after"`
		RequiredNext       string `json:"required_next"`
		Warning            bool
		DrawPct            string `json:"draw_pct"`
	}
	jPrepay struct {
		Rows     []jPrepayRow
		Warnings int
		Accounts []struct {
			Province                       jLabel
			Deposit, Required, Outstanding string
			Unpaid                         string
			ReplenishDue                   string `json:"replenish_due"`
		}
		Threshold string
	}
	jExceptions struct {
		ByKind []struct {
			Kind  string
			Count int64
		} `json:"by_kind"`
		ReconTotal int64 `json:"recon_total"`
		Recon      []struct {
			UsageID      string `json:"usage_id"`
			Kind         string
			Payer, Payee jLabel
		}
		LateTotal  int64  `json:"late_total"`
		LateAmount string `json:"late_amount"`
		Late       []struct {
			UsageID      string `json:"usage_id"`
			Payer, Payee jLabel
			Amount       string
		}
		DisputesTotal int64 `json:"disputes_total"`
		Disputes      []struct {
			Province           jLabel
			UsageID            string `json:"usage_id"`
			Payer, Payee       jLabel
			Resolved, Accepted bool
			AdjustmentPeriod   string `json:"adjustment_setlym"`
		}
		Shortfalls []struct {
			Province            jLabel
			Role                string
			Outstanding, Unpaid string
		}
		ByProvince []struct{ Province jLabel } `json:"by_province"`
	}
	jProvince struct {
		Province jLabel
		Position *jPos
		Regions  []struct {
			Region                   jLabel
			Receivable, Payable, Net string
			Moved                    bool
		}
		RegionSum struct {
			Receivable, Payable, Net string
			Matches                  bool
		} `json:"region_sum"`
		National *struct {
			From, To jLabel
			Amount   string
		} `json:"national_instruction"`
		Instructions []struct {
			Tier     string
			From, To jLabel
			Amount   string
		} `json:"province_instructions"`
		Counterparties []struct {
			Province            jLabel
			Pays, Receives, Net string
		}
		Statement *struct{ Status string }
		Prepay    *jPrepayRow
		Disputes  int64
		Late      int64
	}
	jOverview struct {
		Usages, Late, Exceptions int64
		Gross                    string
		NettingEfficiency        string `json:"netting_efficiency"`
		Payers, Receivers        int
		JournalHead              string `json:"journal_head"`
		Statements               []struct {
			Status string
			Count  int
		}
		Prepay *struct {
			Drawn, Outstanding string
			Warnings           int
		}
		Phases []struct{ Key, State string }
	}
)

// TestConsole builds one demo-sized period and checks every page and API
// endpoint, every authorisation case and the downloads against the
// clearing database read through clearingdb (the API's figures must be the
// store's), with the console served over real mutual TLS.
func TestConsole(t *testing.T) {
	fx := buildFixture(t, 3000)
	e := startConsole(t, fx, console.Options{})
	feedLive(t, e)
	ctx := context.Background()
	res, err := fx.store.PeriodResult(ctx, fxCur)
	if err != nil {
		t.Fatal(err)
	}
	prepayRows, err := fx.store.PrepayRows(ctx, fxCur)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("overview equals the period status", func(t *testing.T) {
		t.Parallel()
		st, err := fx.store.PeriodStatus(ctx, fxCur)
		if err != nil {
			t.Fatal(err)
		}
		var o jOverview
		e.getJSON(operator, "/api/period/202610/overview", http.StatusOK, &o)
		if o.Usages != st.UsageCount || o.Late != st.LateCount || o.Exceptions != st.ExceptionCount || o.Gross != st.Gross.String() ||
			o.NettingEfficiency != st.NettingEfficiency.StringFixed(6) || o.JournalHead != st.JournalHead.String() {
			t.Errorf("overview %+v, status %+v", o, st)
		}
		if o.Late != 24 || o.Payers+o.Receivers == 0 {
			t.Errorf("late %d (want the fixture's 24), payers %d receivers %d", o.Late, o.Payers, o.Receivers)
		}
		got := map[string]int{}
		n := 0
		for _, s := range o.Statements {
			got[s.Status] = s.Count
			n += s.Count
		}
		if n != 32 || got["CONFIRMED"] != 10 || got["DISPUTED"] != 1 || got["ISSUED"] != 21 {
			t.Errorf("statements %v", o.Statements)
		}
		if o.Prepay == nil || o.Prepay.Warnings == 0 || !money.MustParse(o.Prepay.Outstanding).IsPositive() {
			t.Errorf("prepay totals %+v: the fixture has warnings and shortfalls", o.Prepay)
		}
		states := map[string]string{}
		for _, p := range o.Phases {
			states[p.Key] = p.State
		}
		if states["collection"] != "done" || states["settlement"] != "done" || states["confirmation"] != "current" {
			t.Errorf("phases %v", o.Phases)
		}
	})

	t.Run("positions equal the period result", func(t *testing.T) {
		t.Parallel()
		var got jPositions
		e.getJSON(operator, "/api/period/202610/positions", http.StatusOK, &got)
		if len(got.Rows) != 32 || got.NetSum != "0.00" {
			t.Fatalf("%d rows, net sum %s", len(got.Rows), got.NetSum)
		}
		want := map[string]settlement.Position{}
		rec := money.Zero
		for _, p := range res.Positions {
			want[p.Province] = p
			rec = rec.Add(p.Receivable)
		}
		for i, r := range got.Rows {
			w := want[r.Province.Code]
			if r.Receivable != w.Receivable.String() || r.Payable != w.Payable.String() || r.Net != w.Net.String() ||
				r.Province.Name != region.ProvinceName(w.Province) {
				t.Errorf("row %+v, want %+v", r, w)
			}
			if i > 0 && money.MustParse(got.Rows[i-1].Net).LessThan(money.MustParse(r.Net)) {
				t.Errorf("rows not sorted by net: %s before %s", got.Rows[i-1].Net, r.Net)
			}
			if wantRole := map[int]string{-1: "payer", 0: "even", 1: "receiver"}[w.Net.Cmp(money.Zero)]; r.Role != wantRole {
				t.Errorf("%s role %s, want %s", r.Province.Code, r.Role, wantRole)
			}
		}
		if got.TotalReceivable != rec.String() {
			t.Errorf("total receivable %s, want %s", got.TotalReceivable, rec)
		}
	})

	t.Run("flows equal the gross matrix", func(t *testing.T) {
		t.Parallel()
		var got jFlows
		e.getJSON(operator, "/api/period/202610/flows", http.StatusOK, &got)
		if got.Pairs != len(res.Gross) || len(got.Cells) != len(res.Gross) || got.Total != res.GrossTotal().String() {
			t.Fatalf("%d pairs total %s, want %d, %s", got.Pairs, got.Total, len(res.Gross), res.GrossTotal())
		}
		want := map[[2]string]string{}
		for _, g := range res.Gross {
			want[[2]string{g.PayerProvince, g.PayeeProvince}] = g.Amount.String()
		}
		for i, c := range got.Cells {
			if want[[2]string{c.Payer.Code, c.Payee.Code}] != c.Amount {
				t.Errorf("cell %s→%s %s, want %s", c.Payer.Code, c.Payee.Code, c.Amount, want[[2]string{c.Payer.Code, c.Payee.Code}])
			}
			if i > 0 && money.MustParse(got.Cells[i-1].Amount).LessThan(money.MustParse(c.Amount)) {
				t.Errorf("cells not largest first at %d", i)
			}
		}
	})

	t.Run("prepayment equals the settlement and the accounts", func(t *testing.T) {
		t.Parallel()
		var got jPrepay
		e.getJSON(operator, "/api/period/202610/prepay", http.StatusOK, &got)
		if len(got.Rows) != len(prepayRows) || got.Threshold != "0.70" {
			t.Fatalf("%d rows threshold %s", len(got.Rows), got.Threshold)
		}
		warnings, short := 0, 0
		for i, w := range prepayRows {
			r := got.Rows[i]
			if r.Province.Code != w.Province || r.DepositBefore != w.DepositBefore.String() || r.Drawn != w.Drawn.String() ||
				r.Outstanding != w.Outstanding.String() || r.DepositAfter != w.DepositAfter.String() ||
				r.RequiredNext != w.RequiredNext.String() || r.Warning != w.Warning {
				t.Errorf("row %+v, want %+v", r, w)
			}
			if w.DepositBefore.IsPositive() {
				pct := w.Drawn.Decimal().Shift(2).DivRound(w.DepositBefore.Decimal(), 4).RoundBank(2).StringFixed(2)
				if r.DrawPct != pct {
					t.Errorf("%s draw %% %s, want %s", w.Province, r.DrawPct, pct)
				}
			}
			if w.Warning {
				warnings++
			}
			if w.Outstanding.IsPositive() {
				short++
			}
		}
		if got.Warnings != warnings || warnings == 0 || short == 0 {
			t.Errorf("warnings %d (want %d), shortfalls %d: the fixture must have both", got.Warnings, warnings, short)
		}
		st, err := fx.store.PrepayStatus(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		for i, a := range st.Accounts {
			g := got.Accounts[i]
			if g.Province.Code != a.Province || g.Deposit != a.Deposit.String() || g.Outstanding != a.Outstanding.String() ||
				g.ReplenishDue != a.ReplenishDue.String() || g.Unpaid != a.Unpaid.String() || g.Required != a.Required.String() {
				t.Errorf("account %+v, want %+v", g, a)
			}
		}
	})

	t.Run("exceptions equal the store's", func(t *testing.T) {
		t.Parallel()
		var got jExceptions
		e.getJSON(operator, "/api/period/202610/exceptions", http.StatusOK, &got)
		all, err := fx.store.Exceptions(ctx, fxCur, "")
		if err != nil {
			t.Fatal(err)
		}
		if got.ReconTotal != int64(len(all)) || len(got.Recon) != min(len(all), console.RowsShownMax) {
			t.Fatalf("recon total %d, %d rows; store has %d", got.ReconTotal, len(got.Recon), len(all))
		}
		kinds := map[string]int64{}
		for i, x := range all {
			kinds[x.Kind]++
			if i < len(got.Recon) && (got.Recon[i].UsageID != x.UsageID || got.Recon[i].Kind != x.Kind) {
				t.Errorf("recon %d: %s %s, want %s %s", i, got.Recon[i].UsageID, got.Recon[i].Kind, x.UsageID, x.Kind)
			}
		}
		for _, k := range got.ByKind {
			if k.Count != kinds[k.Kind] {
				t.Errorf("%s: %d, want %d", k.Kind, k.Count, kinds[k.Kind])
			}
		}
		for _, k := range []string{clearingdb.ExcOneSided, clearingdb.ExcAmountDiffers, clearingdb.ExcFieldDiffers, clearingdb.ExcRejected} {
			if kinds[k] == 0 {
				t.Errorf("the fixture has no %s exception", k)
			}
		}
		us, err := fx.store.Usages(ctx, fxCur)
		if err != nil {
			t.Fatal(err)
		}
		var late int64
		lateSum := money.Zero
		for _, u := range us {
			if u.Late {
				late++
				lateSum = lateSum.Add(u.Amount)
			}
		}
		if got.LateTotal != late || got.LateAmount != lateSum.String() || len(got.Late) != int(late) {
			t.Errorf("late %d %s (%d rows), want %d %s", got.LateTotal, got.LateAmount, len(got.Late), late, lateSum)
		}
		if got.DisputesTotal != 2 || len(got.Disputes) != 2 {
			t.Fatalf("disputes %+v", got.Disputes)
		}
		d := got.Disputes[0]
		if d.Province.Code != fx.disputer || d.UsageID != fx.disputed[0] || !d.Resolved || !d.Accepted || d.AdjustmentPeriod != "202611" ||
			got.Disputes[1].Resolved {
			t.Errorf("disputes %+v", got.Disputes)
		}
		var short []string
		for _, r := range prepayRows {
			if r.Outstanding.IsPositive() {
				short = append(short, r.Province)
			}
		}
		var gotShort []string
		for _, s := range got.Shortfalls {
			if s.Role == "payer" {
				gotShort = append(gotShort, s.Province.Code)
			}
		}
		if !slices.Equal(short, gotShort) || len(short) == 0 {
			t.Errorf("shortfalls %v, want %v", gotShort, short)
		}
	})

	t.Run("every province drills down to its regions", func(t *testing.T) {
		t.Parallel()
		alloc := map[string]settlement.RegionPosition{}
		for _, a := range res.Allocation {
			alloc[a.Region] = a
		}
		for _, p := range region.Provinces() {
			var got jProvince
			e.getJSON(operator, "/api/period/202610/province/"+p.Code, http.StatusOK, &got)
			if got.Position == nil || !got.RegionSum.Matches || got.RegionSum.Net != got.Position.Net || len(got.Regions) != len(p.Regions) {
				t.Fatalf("%s: %+v", p.Code, got)
			}
			for i, r := range got.Regions {
				a, moved := alloc[r.Region.Code]
				if r.Region.Code != p.Regions[i].Code || r.Region.Name != p.Regions[i].Name || r.Moved != moved ||
					moved && (r.Net != a.Net.String() || r.Receivable != a.Receivable.String() || r.Payable != a.Payable.String()) {
					t.Errorf("%s region %+v, want %+v", p.Code, r, a)
				}
				if !moved && r.Net != "0.00" {
					t.Errorf("%s: unmoved region %s has net %s", p.Code, r.Region.Code, r.Net)
				}
			}
			var wantIns []settlement.Instruction
			for _, in := range res.Instructions {
				if in.Tier == settlement.TierProvince && (in.From == p.Code || in.To == p.Code) {
					wantIns = append(wantIns, in)
				}
				if in.Tier == settlement.TierNational && (in.From == p.Code || in.To == p.Code) &&
					(got.National == nil || got.National.Amount != in.Amount.String() || got.National.From.Code != in.From) {
					t.Errorf("%s national instruction %+v, want %+v", p.Code, got.National, in)
				}
			}
			if len(got.Instructions) != len(wantIns) {
				t.Errorf("%s: %d province instructions, want %d", p.Code, len(got.Instructions), len(wantIns))
			}
			for i := range min(len(got.Instructions), len(wantIns)) {
				g, w := got.Instructions[i], wantIns[i]
				if g.From.Code != w.From || g.To.Code != w.To || g.Amount != w.Amount.String() {
					t.Errorf("%s instruction %+v, want %+v", p.Code, g, w)
				}
			}
			pays, receives := money.Zero, money.Zero
			for _, c := range got.Counterparties {
				pays, receives = pays.Add(money.MustParse(c.Pays)), receives.Add(money.MustParse(c.Receives))
			}
			if pays.String() != got.Position.Payable || receives.String() != got.Position.Receivable {
				t.Errorf("%s: counterparties pay %s receive %s, position %+v", p.Code, pays, receives, got.Position)
			}
			if got.Statement == nil || got.Prepay == nil || got.Prepay.Province.Code != p.Code {
				t.Errorf("%s: statement %+v prepay %+v", p.Code, got.Statement, got.Prepay)
			}
		}
	})

	t.Run("periods and the default period", func(t *testing.T) {
		t.Parallel()
		var got struct {
			Periods []struct{ Setlym, State string }
			Default string
		}
		e.getJSON(provinceID("440000"), "/api/periods", http.StatusOK, &got)
		if got.Default != "202610" || len(got.Periods) != 3 || got.Periods[0].Setlym != "202611" || got.Periods[0].State != "OPEN" ||
			got.Periods[2].State != "SETTLED" {
			t.Errorf("%+v", got)
		}
		for id, loc := range map[tlsconf.Identity]string{operator: "/period/202610/overview", provinceID("440000"): "/period/202610/province/440000"} {
			resp, _ := e.get(id, "/")
			if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != loc {
				t.Errorf("/ as %s: %d %s, want %s", id, resp.StatusCode, resp.Header.Get("Location"), loc)
			}
		}
		resp, _ := e.get(operator, "/go?period=202609&page=flows")
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/period/202609/flows" {
			t.Errorf("/go: %d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
		resp, _ = e.get(operator, "/go?period=202610&page=province&province=650000")
		if resp.Header.Get("Location") != "/period/202610/province/650000" {
			t.Errorf("/go province: %s", resp.Header.Get("Location"))
		}
	})

	t.Run("an open period shows live counts and no figures", func(t *testing.T) {
		t.Parallel()
		var o jOverview
		e.getJSON(operator, "/api/period/202611/overview", http.StatusOK, &o)
		if o.Usages != 1 || o.NettingEfficiency != "" { // the accepted dispute's adjustment
			t.Errorf("open overview %+v", o)
		}
		var p jPositions
		e.getJSON(operator, "/api/period/202611/positions", http.StatusOK, &p)
		if p.Period.Frozen || len(p.Rows) != 0 {
			t.Errorf("open positions %+v", p)
		}
		resp, body := e.get(operator, "/period/202611/positions")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "appear when the period is closed") {
			t.Errorf("open positions page %d", resp.StatusCode)
		}
		resp, body = e.get(operator, "/period/202611/download/bundle.zip")
		if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "not settled yet") {
			t.Errorf("download of an open period: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("live rates from the registry", func(t *testing.T) {
		t.Parallel()
		var got console.Live
		e.getJSON(operator, "/api/live", http.StatusOK, &got)
		l := got.Latest
		if !got.Available || len(got.Points) != 2 || l == nil || got.IntervalSeconds != 2 {
			t.Fatalf("%+v", got)
		}
		if l.IngestPerSec != 100 || l.DupPerSec != 2 || l.ApprovedPerSec != 25 || l.RefusedPerSec != 5 || l.FailedPerSec != 1 ||
			l.ReversalPerSec != 3 || l.RouteMillis != 4 {
			t.Errorf("rates %+v", l)
		}
		if got.Totals.Stored != 400 || got.Totals.Approved != 100 || got.Totals.Refused != 20 || got.Totals.Reversals != 12 {
			t.Errorf("totals %+v", got.Totals)
		}
		if len(got.ByProvince) != 2 || got.ByProvince[0].Province.Code != "410000" || got.ByProvince[0].Stored != 240 ||
			got.ByProvince[0].PerSec != 60 || got.ByProvince[1].PerSec != 40 {
			t.Errorf("by province %+v", got.ByProvince)
		}
	})

	t.Run("pages render the figures, self-contained", func(t *testing.T) {
		t.Parallel()
		var pos jPositions
		e.getJSON(operator, "/api/period/202610/positions", http.StatusOK, &pos)
		pages := []string{"/period/202610/overview", "/period/202610/positions", "/period/202610/flows", "/period/202610/prepay",
			"/period/202610/exceptions", "/period/202610/province/410000", "/period/202609/overview", "/live"}
		for _, p := range pages {
			resp, body := e.get(operator, p)
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Fatalf("%s: %d %s", p, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			csp := resp.Header.Get("Content-Security-Policy")
			if !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
				t.Errorf("%s: CSP %q", p, csp)
			}
			html := string(body)
			// No outside reference of any kind: scripts, styles, fonts and
			// data come from the console itself.
			for _, bad := range []string{"http://", "https://", "//cdn", "@import", "fonts.g"} {
				if strings.Contains(html, bad) {
					t.Errorf("%s refers outside: %q", p, bad)
				}
			}
			if !strings.Contains(html, `src="/static/vendor/echarts.min.js"`) || !strings.Contains(html, `src="/static/console.js"`) {
				t.Errorf("%s: scripts missing", p)
			}
		}
		_, body := e.get(operator, "/period/202610/positions")
		for _, r := range pos.Rows {
			want := `data-field="rows.`
			if !strings.Contains(string(body), r.Province.Name) || !strings.Contains(string(body), groupDigits(r.Net)) || !strings.Contains(string(body), want) {
				t.Errorf("positions page lacks %s %s", r.Province.Name, groupDigits(r.Net))
			}
		}
		_, body = e.get(operator, "/period/202610/flows")
		if !strings.Contains(string(body), `src="/static/vendor/china.js"`) {
			t.Error("flows page does not load the map")
		}
		for path, ct := range map[string]string{"/static/console.js": "text/javascript; charset=utf-8", "/static/console.css": "text/css; charset=utf-8",
			"/static/vendor/echarts.min.js": "text/javascript; charset=utf-8", "/static/vendor/china.js": "text/javascript; charset=utf-8"} {
			resp, b := e.get(operator, path)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ct || len(b) < 1000 {
				t.Errorf("%s: %d %s %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(b))
			}
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		t.Parallel()
		for path, status := range map[string]int{
			"/api/period/2026/positions":         http.StatusBadRequest,
			"/api/period/202613/positions":       http.StatusBadRequest,
			"/api/period/202701/positions":       http.StatusNotFound,
			"/api/period/202610/nosuch":          http.StatusNotFound,
			"/api/period/202610/province/999999": http.StatusNotFound,
			"/api/period/202610/province/410100": http.StatusNotFound, // a region, not a province
			"/period/202610/download/other.zip":  http.StatusNotFound,
			"/period/202701/download/bundle.zip": http.StatusNotFound,
			"/static/nosuch.js":                  http.StatusNotFound,
			"/static/vendor/":                    http.StatusNotFound,
			"/nosuch":                            http.StatusNotFound,
			"/period/202701/overview":            http.StatusNotFound,
		} {
			resp, body := e.get(operator, path)
			if resp.StatusCode != status {
				t.Errorf("%s: %d, want %d: %s", path, resp.StatusCode, status, body)
			}
		}
		c := e.client(e.certs, operator)
		resp, err := c.Post("https://"+e.addr+"/api/periods", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST: %d, want 405 (the console is read-only)", resp.StatusCode)
		}
	})

	t.Run("downloads come from the export code path", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		src, err := fx.store.ExportSource(ctx, fxCur, clearingdb.ExportOptions{Key: exportKey})
		if err != nil {
			t.Fatal(err)
		}
		ref := filepath.Join(dir, "ref")
		if _, err := src.WriteBundle(ctx, ref); err != nil {
			t.Fatal(err)
		}
		wb := filepath.Join(dir, "ref.xlsx")
		if err := audit.WriteWorkbook(ctx, wb, src); err != nil {
			t.Fatal(err)
		}
		resp, zipped := e.get(operator, "/period/202610/download/bundle.zip")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/zip" ||
			resp.Header.Get("Content-Disposition") != `attachment; filename="gongji-202610.zip"` {
			t.Fatalf("bundle: %d %v", resp.StatusCode, resp.Header)
		}
		got := unzip(t, zipped, filepath.Join(dir, "got"))
		for _, n := range append(slices.Clone(audit.CSVFiles), audit.FileManifest) {
			want, err := os.ReadFile(filepath.Join(ref, n))
			if err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(got, n)); err != nil || !bytes.Equal(b, want) {
				t.Errorf("%s differs from clearing export's (%v)", n, err)
			}
		}
		if err := verify.VerifyFS(ctx, os.DirFS(got), verify.Options{WarningThreshold: decimal.RequireFromString("0.70")}); err != nil {
			t.Errorf("downloaded bundle does not verify: %v", err)
		}
		_, again := e.get(operator, "/period/202610/download/bundle.zip")
		if !bytes.Equal(again, zipped) {
			t.Error("two downloads of the bundle differ")
		}
		resp, xlsx := e.get(operator, "/period/202610/download/workbook.xlsx")
		want, err := os.ReadFile(wb)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Equal(xlsx, want) {
			t.Errorf("workbook: %d, %d bytes, want the %d bytes of clearing export --workbook", resp.StatusCode, len(xlsx), len(want))
		}

		// A province gets its own scoped bundle and workbook.
		resp, zipped = e.get(provinceID("410000"), "/period/202610/download/bundle.zip")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Disposition") != `attachment; filename="gongji-202610-410000.zip"` {
			t.Fatalf("province bundle: %d %v", resp.StatusCode, resp.Header)
		}
		got = unzip(t, zipped, filepath.Join(dir, "prov"))
		if p, err := clearingdb.BundleProvince(os.DirFS(got)); err != nil || p != "410000" {
			t.Errorf("province bundle names %q, %v", p, err)
		}
		if err := clearingdb.VerifyProvinceBundle(ctx, os.DirFS(got), clearingdb.ProvinceVerifyOptions{National: os.DirFS(ref)}); err != nil {
			t.Errorf("province bundle does not verify against the national one: %v", err)
		}
		resp, xlsx = e.get(provinceID("410000"), "/period/202610/download/workbook.xlsx")
		if resp.StatusCode != http.StatusOK || bytes.Equal(xlsx, want) || len(xlsx) == 0 {
			t.Errorf("province workbook: %d, %d bytes (must be the province's, not the national one)", resp.StatusCode, len(xlsx))
		}
	})

	t.Run("authorisation", func(t *testing.T) {
		t.Parallel()
		own, other := provinceID("410000"), provinceID("110000")
		// National pages are refused to a province certificate.
		for _, path := range []string{"/api/period/202610/overview", "/period/202610/overview", "/api/live", "/live",
			"/api/period/202610/province/110000", "/period/202610/province/110000"} {
			resp, body := e.get(own, path)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s as %s: %d, want 403: %s", path, own, resp.StatusCode, body)
			}
		}
		// A clearing-service certificate is neither operator nor province.
		for _, path := range []string{"/api/periods", "/period/202610/positions", "/static/console.js"} {
			if resp, _ := e.get(clearingID, path); resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s as the clearing service: %d, want 403", path, resp.StatusCode)
			}
		}
		// Filtered pages: the province's own rows only.
		var pos jPositions
		e.getJSON(own, "/api/period/202610/positions", http.StatusOK, &pos)
		if len(pos.Rows) != 1 || pos.Rows[0].Province.Code != "410000" || pos.Scope.Province != "410000" {
			t.Errorf("positions as 410000: %+v", pos.Rows)
		}
		var flows jFlows
		e.getJSON(own, "/api/period/202610/flows", http.StatusOK, &flows)
		n := 0
		for _, g := range res.Gross {
			if g.PayerProvince == "410000" || g.PayeeProvince == "410000" {
				n++
			}
		}
		if len(flows.Cells) != n || n == 0 {
			t.Errorf("flows as 410000: %d cells, want %d", len(flows.Cells), n)
		}
		for _, c := range flows.Cells {
			if c.Payer.Code != "410000" && c.Payee.Code != "410000" {
				t.Errorf("flows as 410000 show %s→%s", c.Payer.Code, c.Payee.Code)
			}
		}
		var pp jPrepay
		e.getJSON(own, "/api/period/202610/prepay", http.StatusOK, &pp)
		if len(pp.Rows) != 1 || pp.Rows[0].Province.Code != "410000" || len(pp.Accounts) != 1 || pp.Accounts[0].Province.Code != "410000" {
			t.Errorf("prepay as 410000: %+v", pp)
		}
		var ex jExceptions
		e.getJSON(own, "/api/period/202610/exceptions", http.StatusOK, &ex)
		mine, err := fx.store.Exceptions(ctx, fxCur, "410000")
		if err != nil {
			t.Fatal(err)
		}
		if ex.ReconTotal != int64(len(mine)) || len(mine) == 0 {
			t.Errorf("exceptions as 410000: %d, store %d", ex.ReconTotal, len(mine))
		}
		for _, l := range ex.Late {
			if l.Payer.Code != "410000" && l.Payee.Code != "410000" {
				t.Errorf("late record %s of %s→%s shown to 410000", l.UsageID, l.Payer.Code, l.Payee.Code)
			}
		}
		for _, bp := range ex.ByProvince {
			if bp.Province.Code != "410000" {
				t.Errorf("exception counts of %s shown to 410000", bp.Province.Code)
			}
		}
		var otherEx jExceptions
		e.getJSON(other, "/api/period/202610/exceptions", http.StatusOK, &otherEx)
		for _, d := range otherEx.Disputes {
			if d.Province.Code != "110000" && d.Payer.Code != "110000" && d.Payee.Code != "110000" {
				t.Errorf("110000 sees dispute %s of %s", d.UsageID, d.Province.Code)
			}
		}
		if ex.DisputesTotal != 2 {
			t.Errorf("410000 sees %d of its disputes, want 2", ex.DisputesTotal)
		}
		var prov jProvince
		e.getJSON(own, "/api/period/202610/province/410000", http.StatusOK, &prov)
		if prov.Province.Code != "410000" || prov.Position == nil {
			t.Errorf("own province page: %+v", prov)
		}
		// The menu of a province has no national page.
		_, body := e.get(own, "/period/202610/positions")
		if strings.Contains(string(body), `href="/period/202610/overview"`) || strings.Contains(string(body), `href="/live"`) ||
			!strings.Contains(string(body), `href="/period/202610/province/410000"`) {
			t.Error("a province's menu offers national pages or lacks its own page")
		}
	})

	t.Run("transport refuses callers without a good certificate", func(t *testing.T) {
		t.Parallel()
		if err := e.tlsRefused(e.client(e.certs, tlsconf.Identity{}), "/api/periods"); err != nil {
			t.Errorf("no client certificate: %v", err)
		}
		if err := e.tlsRefused(e.client(e.foreign, operator), "/api/periods"); err != nil {
			t.Errorf("operator certificate of a foreign CA: %v", err)
		}
		if err := e.tlsRefused(e.client(e.foreign, provinceID("410000")), "/period/202610/province/410000"); err != nil {
			t.Errorf("province certificate of a foreign CA: %v", err)
		}
	})
}

// TestMissingVendor: a binary built without `make console-assets` answers
// its pages with an error page naming the missing files; the API works.
func TestMissingVendor(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t, migrations.Clearing)
	st, err := clearingdb.New(db.Pool, clearingdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{db: db, store: st}
	assets := fstest.MapFS{
		"console.js":       {Data: []byte("// test")},
		"console.css":      {Data: []byte("/* test */")},
		"vendor/README.md": {Data: []byte("fetched by make console-assets")},
	}
	e := startConsole(t, fx, console.Options{Assets: assets})
	resp, body := e.get(operator, "/live")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "console/assets/vendor/echarts.min.js") ||
		!strings.Contains(string(body), "make build") || strings.Contains(string(body), "<script") {
		t.Errorf("page without vendor files: %d %s", resp.StatusCode, body)
	}
	resp, body = e.get(operator, "/static/vendor/echarts.min.js")
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "make build") {
		t.Errorf("vendor file: %d %s", resp.StatusCode, body)
	}
	e.getJSON(operator, "/api/periods", http.StatusOK, nil)
}

// unzip writes a downloaded bundle into dir and returns its <setlym> folder.
func unzip(t *testing.T, b []byte, dir string) string {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, filepath.FromSlash(f.Name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"202610/usages.csv", "202610/gross.csv", "202610/positions.csv", "202610/allocation.csv",
		"202610/instructions.csv", "202610/prepay.csv", "202610/manifest.json"}
	if !slices.Equal(names, want) {
		t.Errorf("zip entries %v, want %v", names, want)
	}
	return filepath.Join(dir, "202610")
}

// groupDigits is the page's amount format (thousands separators).
func groupDigits(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	ip, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range ip {
		if i > 0 && (len(ip)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String() + "." + frac
}
