package console

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"

	"gongji/clearingdb"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// The view models: what each page shows and its /api/ endpoint returns as
// JSON. One builder per page makes both, so the table a page renders and the
// JSON its charts draw are the same figures. Money is money.Yuan (a JSON
// string with two decimals); times are in Asia/Shanghai (RFC 3339, +08:00).

// Label is a code with its Chinese name from regions.csv (the national
// centre 000000 is 全国清算中心).
type Label struct {
	Code string `json:"code"`
	Name string `json:"name"`
}

// codeLabel names a province, a pooling region or the national centre.
func codeLabel(code string) Label {
	switch {
	case code == region.NationalCentre:
		return Label{Code: code, Name: "全国清算中心"}
	case region.ProvinceName(code) != "":
		return Label{Code: code, Name: region.ProvinceName(code)}
	}
	return Label{Code: code, Name: region.RegionName(code)}
}

// PeriodInfo is a period's state and timetable.
type PeriodInfo struct {
	Setlym    string     `json:"setlym"`
	State     string     `json:"state"`
	Start     time.Time  `json:"month_start"`
	End       time.Time  `json:"month_end"`
	CutOff    time.Time  `json:"cut_off"`
	CreatedAt time.Time  `json:"created_at"`
	ClosingAt *time.Time `json:"closing_at,omitempty"`
	ClosedAt  *time.Time `json:"closed_at,omitempty"`
	SettledAt *time.Time `json:"settled_at,omitempty"`
	// Frozen: CLOSED or SETTLED, the figures are final. Settled: the
	// prepayment rows and the export exist.
	Frozen  bool `json:"frozen"`
	Settled bool `json:"settled"`
}

func sh(t time.Time) time.Time { return t.In(region.Shanghai) }

func shp(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	x := sh(t)
	return &x
}

func periodInfo(p clearingdb.Period) PeriodInfo {
	return PeriodInfo{
		Setlym: p.Setlym.String(), State: string(p.State),
		Start: sh(p.Setlym.Start()), End: sh(p.Setlym.End()), CutOff: sh(p.CutOff), CreatedAt: sh(p.CreatedAt),
		ClosingAt: shp(p.ClosingAt), ClosedAt: shp(p.ClosedAt), SettledAt: shp(p.SettledAt),
		Frozen: p.State.Frozen(), Settled: p.State == settlement.PeriodSettled,
	}
}

// Scope says whose data a view holds: "" national, else the province code.
type Scope struct {
	Province string `json:"province,omitempty"`
	Name     string `json:"province_name,omitempty"`
}

func scopeOf(v viewer) Scope {
	if v.operator() {
		return Scope{}
	}
	return Scope{Province: v.id.Province, Name: region.ProvinceName(v.id.Province)}
}

// Periods is the period chooser: every period, newest first.
type Periods struct {
	Periods []PeriodInfo `json:"periods"`
	// Default is the period a bare visit opens: the newest closed or
	// settled one, else the newest.
	Default string `json:"default"`
}

func (s *Server) periods(ctx context.Context) (Periods, error) {
	ps, err := s.o.Store.ListPeriods(ctx)
	if err != nil {
		return Periods{}, err
	}
	out := Periods{Periods: make([]PeriodInfo, 0, len(ps))}
	for i := len(ps) - 1; i >= 0; i-- {
		out.Periods = append(out.Periods, periodInfo(ps[i]))
	}
	for _, p := range out.Periods {
		if p.Frozen {
			out.Default = p.Setlym
			break
		}
	}
	if out.Default == "" && len(out.Periods) > 0 {
		out.Default = out.Periods[0].Setlym
	}
	return out, nil
}

// period reads one period. Errors: clearingdb.ErrNotFound.
func (s *Server) period(ctx context.Context, p region.Period) (clearingdb.Period, error) {
	return s.o.Store.GetPeriod(ctx, p)
}

// ---- overview ----

// Overview is the period overview (operators only).
type Overview struct {
	Period PeriodInfo `json:"period"`
	// Usages and Late count the period's stored records (usages, reversals,
	// adjustments); Exceptions the reconciliation exceptions (while OPEN,
	// plus the records still reported by one side).
	Usages          int64 `json:"usages"`
	Late            int64 `json:"late"`
	Exceptions      int64 `json:"exceptions"`
	OneSidedAtClose int64 `json:"one_sided_at_close"`
	// Gross is Σ of the signed amounts (= Σ of the gross matrix).
	Gross money.Yuan `json:"gross"`
	// Frozen periods only: Σ|gross cells|, Σ positive nets (what the
	// settlement actually moves), netting efficiency (1 − moved ÷ Σ|gross|,
	// decimal text and as a percentage) and the journal head at close.
	GrossAbs             *money.Yuan `json:"gross_abs,omitempty"`
	PositiveNetTotal     *money.Yuan `json:"positive_net_total,omitempty"`
	NettingEfficiency    string      `json:"netting_efficiency,omitempty"`
	NettingEfficiencyPct string      `json:"netting_efficiency_pct,omitempty"`
	JournalHead          string      `json:"journal_head,omitempty"`
	Payers               int         `json:"payers"`
	Receivers            int         `json:"receivers"`
	// Statements counts the provinces' statements by effective status (an
	// ISSUED one past its deadline counts as DEEMED_CONFIRMED).
	Statements []StatusCount `json:"statements"`
	Prepay     *PrepayTotals `json:"prepay,omitempty"`
	Phases     []Phase       `json:"phases"`
	Milestones []Milestone   `json:"milestones"`
	Now        time.Time     `json:"now"`
}

// StatusCount is a number of statements in one status.
type StatusCount struct {
	Status string `json:"status"`
	Count  int    `json:"count"`
}

// PrepayTotals sums the settlement's prepayment rows.
type PrepayTotals struct {
	Drawn       money.Yuan `json:"drawn"`
	Outstanding money.Yuan `json:"outstanding"`
	Unpaid      money.Yuan `json:"unpaid"`
	Warnings    int        `json:"warnings"`
	Shortfalls  int        `json:"shortfalls"`
}

// Phase is one span of the period's timetable; State is done, current or
// pending at the service clock's now. End is nil while open-ended.
type Phase struct {
	Key   string     `json:"key"`
	Name  string     `json:"name"`
	Start time.Time  `json:"start"`
	End   *time.Time `json:"end,omitempty"`
	State string     `json:"state"`
}

// Milestone is one instant of the timetable (nil: not reached).
type Milestone struct {
	Name string     `json:"name"`
	At   *time.Time `json:"at,omitempty"`
}

func (s *Server) overview(ctx context.Context, p region.Period) (Overview, error) {
	st, err := s.o.Store.PeriodStatus(ctx, p)
	if err != nil {
		return Overview{}, err
	}
	now := sh(s.o.Clock())
	o := Overview{Period: periodInfo(st.Period), Usages: st.UsageCount, Late: st.LateCount, Exceptions: st.ExceptionCount,
		OneSidedAtClose: st.OneSidedAtClose, Gross: st.Gross, Now: now, Statements: []StatusCount{}}
	if st.Frozen() {
		o.NettingEfficiency = st.NettingEfficiency.StringFixed(6)
		o.NettingEfficiencyPct = st.NettingEfficiency.Shift(2).StringFixed(2)
		o.JournalHead = st.JournalHead.String()
	}
	var stmts []statementRow
	err = s.read(ctx, func(tx pgx.Tx) error {
		if !st.Frozen() {
			return nil
		}
		cf, ok, err := qCloseFigures(ctx, tx, p)
		if err != nil {
			return err
		}
		if ok {
			o.GrossAbs, o.PositiveNetTotal = &cf.grossAbs, &cf.positiveNet
		}
		pos, err := qPositions(ctx, tx, p, "")
		if err != nil {
			return err
		}
		for _, r := range pos {
			switch {
			case r.net.IsNegative():
				o.Payers++
			case r.net.IsPositive():
				o.Receivers++
			}
		}
		if stmts, err = qStatements(ctx, tx, p, ""); err != nil {
			return err
		}
		if o.Period.Settled {
			rows, err := qPrepay(ctx, tx, p, "")
			if err != nil {
				return err
			}
			t := &PrepayTotals{}
			for _, r := range rows {
				t.Drawn, t.Outstanding, t.Unpaid = t.Drawn.Add(r.drawn), t.Outstanding.Add(r.outstanding), t.Unpaid.Add(r.unpaid)
				if r.warning {
					t.Warnings++
				}
				if r.outstanding.IsPositive() {
					t.Shortfalls++
				}
			}
			o.Prepay = t
		}
		return nil
	})
	if err != nil {
		return Overview{}, err
	}
	counts := map[string]int{}
	var issued, confirmBy time.Time
	for _, r := range stmts {
		counts[effectiveStatus(r, now)]++
		if issued.IsZero() || r.issuedAt.Before(issued) {
			issued = r.issuedAt
		}
		if r.confirmBy.After(confirmBy) {
			confirmBy = r.confirmBy
		}
	}
	for _, k := range []settlement.StatementStatus{settlement.StatusIssued, settlement.StatusConfirmed,
		settlement.StatusDisputed, settlement.StatusDeemedConfirmed} {
		if counts[string(k)] > 0 {
			o.Statements = append(o.Statements, StatusCount{Status: string(k), Count: counts[string(k)]})
		}
	}
	o.Phases, o.Milestones = timeline(st.Period, issued, confirmBy, now)
	return o, nil
}

// effectiveStatus is a statement's status as GetStatement would report it:
// ISSUED past its deadline is DEEMED_CONFIRMED (R17), without writing that
// down (the console is read-only; the service's sweep records it).
func effectiveStatus(r statementRow, now time.Time) string {
	if r.status == string(settlement.StatusIssued) && now.After(r.confirmBy) {
		return string(settlement.StatusDeemedConfirmed)
	}
	return r.status
}

// timeline builds the phases and milestones of a period: collection (the
// month), the cut-off grace (late reports still belong to the month), close
// and settlement (cut-off → settled), and the statements' confirmation
// window.
func timeline(p clearingdb.Period, issued, confirmBy, now time.Time) ([]Phase, []Milestone) {
	state := func(start time.Time, end *time.Time, done bool) string {
		switch {
		case done || end != nil && !now.Before(*end):
			return "done"
		case !now.Before(start):
			return "current"
		}
		return "pending"
	}
	start, end, cut := sh(p.Setlym.Start()), sh(p.Setlym.End()), sh(p.CutOff)
	phases := []Phase{
		{Key: "collection", Name: "归集 collection", Start: start, End: &end},
		{Key: "grace", Name: "补报 cut-off grace", Start: end, End: &cut},
		{Key: "settlement", Name: "清算 close and settle", Start: cut, End: shp(p.SettledAt)},
	}
	phases[0].State = state(start, &end, false)
	phases[1].State = state(end, &cut, false)
	phases[2].State = state(cut, phases[2].End, p.State == settlement.PeriodSettled)
	if p.State != settlement.PeriodSettled {
		phases[2].End = nil
		if p.State == settlement.PeriodOpen && now.Before(cut) {
			phases[2].State = "pending"
		} else {
			phases[2].State = "current"
		}
	}
	if !issued.IsZero() {
		cb := sh(confirmBy)
		phases = append(phases, Phase{Key: "confirmation", Name: "确认 confirmation window", Start: sh(issued), End: &cb,
			State: state(issued, &cb, false)})
	}
	ms := []Milestone{
		{Name: "period created", At: shp(p.CreatedAt)},
		{Name: "month end", At: &end},
		{Name: "cut-off", At: &cut},
		{Name: "close started", At: shp(p.ClosingAt)},
		{Name: "closed (as of)", At: shp(p.ClosedAt)},
		{Name: "settled", At: shp(p.SettledAt)},
		{Name: "statements issued", At: shp(issued)},
		{Name: "confirmation deadline", At: shp(confirmBy)},
	}
	return phases, ms
}

// ---- positions ----

// Positions is the net position of every province (a province: its own).
type Positions struct {
	Period PeriodInfo    `json:"period"`
	Scope  Scope         `json:"scope"`
	Rows   []PositionRow `json:"rows"` // net descending (receivers first), then code
	// Totals over Rows; NetSum is 0.00 for the national view (R15).
	TotalReceivable money.Yuan `json:"total_receivable"`
	TotalPayable    money.Yuan `json:"total_payable"`
	NetSum          money.Yuan `json:"net_sum"`
	Payers          int        `json:"payers"`
	Receivers       int        `json:"receivers"`
}

// PositionRow is one province's figures; Role is payer (net < 0), receiver
// (net > 0) or even.
type PositionRow struct {
	Province     Label      `json:"province"`
	Receivable   money.Yuan `json:"receivable"`
	Payable      money.Yuan `json:"payable"`
	Net          money.Yuan `json:"net"`
	Role         string     `json:"role"`
	PayerEntries int64      `json:"payer_entries"`
	PayeeEntries int64      `json:"payee_entries"`
}

func roleOf(net money.Yuan) string {
	switch {
	case net.IsNegative():
		return "payer"
	case net.IsPositive():
		return "receiver"
	}
	return "even"
}

func positionOf(r positionRow) PositionRow {
	return PositionRow{Province: codeLabel(r.province), Receivable: r.receivable, Payable: r.payable, Net: r.net,
		Role: roleOf(r.net), PayerEntries: r.payerEntries, PayeeEntries: r.payeeEntries}
}

func (s *Server) positions(ctx context.Context, v viewer, p region.Period) (Positions, error) {
	per, err := s.period(ctx, p)
	if err != nil {
		return Positions{}, err
	}
	out := Positions{Period: periodInfo(per), Scope: scopeOf(v), Rows: []PositionRow{}}
	if !per.State.Frozen() {
		return out, nil
	}
	var rows []positionRow
	if err := s.read(ctx, func(tx pgx.Tx) error {
		rows, err = qPositions(ctx, tx, p, v.filter())
		return err
	}); err != nil {
		return Positions{}, err
	}
	for _, r := range rows {
		pr := positionOf(r)
		out.Rows = append(out.Rows, pr)
		out.TotalReceivable, out.TotalPayable = out.TotalReceivable.Add(r.receivable), out.TotalPayable.Add(r.payable)
		out.NetSum = out.NetSum.Add(r.net)
		switch pr.Role {
		case "payer":
			out.Payers++
		case "receiver":
			out.Receivers++
		}
	}
	sort.SliceStable(out.Rows, func(i, j int) bool {
		if c := out.Rows[i].Net.Cmp(out.Rows[j].Net); c != 0 {
			return c > 0
		}
		return out.Rows[i].Province.Code < out.Rows[j].Province.Code
	})
	return out, nil
}

// ---- flows ----

// Flows is the gross matrix: what each payer province owes each payee
// province (a province: the pairs where it pays or receives).
type Flows struct {
	Period    PeriodInfo `json:"period"`
	Scope     Scope      `json:"scope"`
	Provinces []Label    `json:"provinces"` // the matrix axes: all 32 in code order
	Cells     []FlowCell `json:"cells"`     // largest first, then payer, payee
	Total     money.Yuan `json:"total"`
	Pairs     int        `json:"pairs"`
	// LinesMax: the map draws the largest LinesMax pairs.
	LinesMax int `json:"lines_max"`
}

// FlowCell is one non-zero gross pair.
type FlowCell struct {
	Payer  Label      `json:"payer"`
	Payee  Label      `json:"payee"`
	Amount money.Yuan `json:"amount"`
}

func allProvinces() []Label {
	out := make([]Label, 0, 32)
	for _, c := range region.ProvinceCodes() {
		out = append(out, codeLabel(c))
	}
	return out
}

func (s *Server) flows(ctx context.Context, v viewer, p region.Period) (Flows, error) {
	per, err := s.period(ctx, p)
	if err != nil {
		return Flows{}, err
	}
	out := Flows{Period: periodInfo(per), Scope: scopeOf(v), Provinces: allProvinces(), Cells: []FlowCell{}, LinesMax: FlowLinesMax}
	if !per.State.Frozen() {
		return out, nil
	}
	var rows []grossRow
	if err := s.read(ctx, func(tx pgx.Tx) error {
		rows, err = qGross(ctx, tx, p, v.filter())
		return err
	}); err != nil {
		return Flows{}, err
	}
	for _, g := range rows {
		out.Cells = append(out.Cells, FlowCell{Payer: codeLabel(g.payer), Payee: codeLabel(g.payee), Amount: g.amount})
		out.Total = out.Total.Add(g.amount)
	}
	out.Pairs = len(out.Cells)
	return out, nil
}

// ---- prepayment ----

// Prepay is the prepayment pool in a settled period: each province's
// deposit before the settlement, what was drawn, what stayed outstanding,
// against the warning threshold; and the accounts as they stand now.
type Prepay struct {
	Period PeriodInfo `json:"period"`
	Scope  Scope      `json:"scope"`
	// Threshold: a draw of at least this share of deposit_before warns
	// (decimal text, and as a percentage).
	Threshold    string      `json:"threshold"`
	ThresholdPct string      `json:"threshold_pct"`
	Rows         []PrepayRow `json:"rows"` // code order
	Totals       PrepaySums  `json:"totals"`
	Warnings     int         `json:"warnings"`
	Accounts     []Account   `json:"accounts"` // now, code order
}

// PrepayRow is one province's prepay.csv row, with the payout it received as
// a net receiver (due, paid, unpaid) and an emergency top-up request.
type PrepayRow struct {
	Province      Label      `json:"province"`
	DepositBefore money.Yuan `json:"deposit_before"`
	Drawn         money.Yuan `json:"drawn"`
	Outstanding   money.Yuan `json:"outstanding"`
	DepositAfter  money.Yuan `json:"deposit_after"`
	RequiredNext  money.Yuan `json:"required_next"`
	Warning       bool       `json:"warning"`
	// DrawPct is drawn ÷ deposit_before in percent (two places, rounded
	// half-even), "" when there was no deposit.
	DrawPct string      `json:"draw_pct"`
	Due     money.Yuan  `json:"payout_due"`
	Paid    money.Yuan  `json:"payout_paid"`
	Unpaid  money.Yuan  `json:"payout_unpaid"`
	TopUp   *money.Yuan `json:"topup_requested,omitempty"`
}

// PrepaySums totals the rows.
type PrepaySums struct {
	DepositBefore money.Yuan `json:"deposit_before"`
	Drawn         money.Yuan `json:"drawn"`
	Outstanding   money.Yuan `json:"outstanding"`
	DepositAfter  money.Yuan `json:"deposit_after"`
	RequiredNext  money.Yuan `json:"required_next"`
	Unpaid        money.Yuan `json:"payout_unpaid"`
}

// Account is a province's standing with the pool now (clearingdb.PrepayAccount).
type Account struct {
	Province     Label      `json:"province"`
	Deposit      money.Yuan `json:"deposit"`
	Required     money.Yuan `json:"required"`
	Outstanding  money.Yuan `json:"outstanding"`
	Unpaid       money.Yuan `json:"unpaid"`
	ReplenishDue money.Yuan `json:"replenish_due"`
	Warning      bool       `json:"warning"`
}

// thresholdText writes a threshold with at least two decimals ("0.70").
func thresholdText(d decimal.Decimal) string {
	if d.Equal(d.Round(2)) {
		return d.StringFixed(2)
	}
	return d.String()
}

func percent(num, den money.Yuan) string {
	if !den.IsPositive() {
		return ""
	}
	return num.Decimal().Shift(2).DivRound(den.Decimal(), 4).RoundBank(2).StringFixed(2)
}

func prepayOf(r prepayRow) PrepayRow {
	return PrepayRow{Province: codeLabel(r.province), DepositBefore: r.depositBefore, Drawn: r.drawn,
		Outstanding: r.outstanding, DepositAfter: r.depositAfter, RequiredNext: r.reqNext, Warning: r.warning,
		DrawPct: percent(r.drawn, r.depositBefore), Due: r.due, Paid: r.paid, Unpaid: r.unpaid, TopUp: r.topUp}
}

func (s *Server) prepay(ctx context.Context, v viewer, p region.Period) (Prepay, error) {
	per, err := s.period(ctx, p)
	if err != nil {
		return Prepay{}, err
	}
	out := Prepay{Period: periodInfo(per), Scope: scopeOf(v), Threshold: thresholdText(s.o.WarningThreshold),
		ThresholdPct: s.o.WarningThreshold.Shift(2).StringFixed(0), Rows: []PrepayRow{}, Accounts: []Account{}}
	if per.State == settlement.PeriodSettled {
		var rows []prepayRow
		if err := s.read(ctx, func(tx pgx.Tx) error {
			rows, err = qPrepay(ctx, tx, p, v.filter())
			return err
		}); err != nil {
			return Prepay{}, err
		}
		for _, r := range rows {
			out.Rows = append(out.Rows, prepayOf(r))
			t := &out.Totals
			t.DepositBefore, t.Drawn, t.Outstanding = t.DepositBefore.Add(r.depositBefore), t.Drawn.Add(r.drawn), t.Outstanding.Add(r.outstanding)
			t.DepositAfter, t.RequiredNext, t.Unpaid = t.DepositAfter.Add(r.depositAfter), t.RequiredNext.Add(r.reqNext), t.Unpaid.Add(r.unpaid)
			if r.warning {
				out.Warnings++
			}
		}
	}
	st, err := s.o.Store.PrepayStatus(ctx, v.filter())
	if err != nil {
		return Prepay{}, err
	}
	for _, a := range st.Accounts {
		out.Accounts = append(out.Accounts, Account{Province: codeLabel(a.Province), Deposit: a.Deposit, Required: a.Required,
			Outstanding: a.Outstanding, Unpaid: a.Unpaid, ReplenishDue: a.ReplenishDue, Warning: a.Warning})
	}
	return out, nil
}

// ---- exceptions ----

// Exceptions is what needs attention in a period: reconciliation exceptions,
// late records, disputed statement items and prepayment shortfalls (a
// province: those that name it). Lists hold at most RowsMax rows; totals are
// exact.
type Exceptions struct {
	Period  PeriodInfo `json:"period"`
	Scope   Scope      `json:"scope"`
	RowsMax int        `json:"rows_max"`
	// ByKind counts the reconciliation exceptions (ONE_SIDED,
	// AMOUNT_DIFFERS, FIELD_DIFFERS, REJECTED).
	ByKind     []KindCount `json:"by_kind"`
	ReconTotal int64       `json:"recon_total"`
	Recon      []ReconRow  `json:"recon"`
	// PendingOneSided: an OPEN or CLOSING period's records still reported by
	// one side only; they become ONE_SIDED at close.
	PendingOneSided int64        `json:"pending_one_sided"`
	LateTotal       int64        `json:"late_total"`
	LateAmount      money.Yuan   `json:"late_amount"`
	Late            []LateRow    `json:"late"`
	DisputesTotal   int64        `json:"disputes_total"`
	Disputes        []DisputeRow `json:"disputes"`
	// Shortfalls: payers whose deposit did not cover their obligation
	// (outstanding) and receivers left unpaid for it.
	Shortfalls []ShortfallRow `json:"shortfalls"`
	// ByProvince: the counts per province the chart stacks (provinces with
	// anything to show, code order).
	ByProvince []ProvinceExceptions `json:"by_province"`
}

// KindCount counts one kind of reconciliation exception.
type KindCount struct {
	Kind  string `json:"kind"`
	Count int64  `json:"count"`
}

// ReconRow is one reconciliation exception.
type ReconRow struct {
	UsageID    string    `json:"usage_id"`
	Kind       string    `json:"kind"`
	Payer      Label     `json:"payer"`
	Payee      Label     `json:"payee"`
	Field      string    `json:"field,omitempty"`
	PayerValue string    `json:"payer_value,omitempty"`
	PayeeValue string    `json:"payee_value,omitempty"`
	Detail     string    `json:"detail"`
	CreatedAt  time.Time `json:"created_at"`
}

// LateRow is one record that arrived after its own month's cut-off.
type LateRow struct {
	UsageID     string     `json:"usage_id"`
	EntryType   string     `json:"entry_type"`
	Kind        string     `json:"kind"`
	Payer       Label      `json:"payer"`
	PayerRegion Label      `json:"payer_region"`
	Payee       Label      `json:"payee"`
	PayeeRegion Label      `json:"payee_region"`
	Amount      money.Yuan `json:"amount"`
	OccurredAt  time.Time  `json:"occurred_at"`
	ArrivedAt   time.Time  `json:"arrived_at"`
}

// DisputeRow is one disputed statement item and its resolution.
type DisputeRow struct {
	Province         Label       `json:"province"` // who disputed
	UsageID          string      `json:"usage_id"`
	Payer            Label       `json:"payer"`
	Payee            Label       `json:"payee"`
	Cleared          money.Yuan  `json:"cleared_amount"`
	Claimed          money.Yuan  `json:"claimed_amount"`
	Reason           string      `json:"reason"`
	DisputedAt       time.Time   `json:"disputed_at"`
	Resolved         bool        `json:"resolved"`
	ResolvedAt       *time.Time  `json:"resolved_at,omitempty"`
	Accepted         bool        `json:"accepted"`
	AdjustmentID     string      `json:"adjustment_id,omitempty"`
	AdjustmentPeriod string      `json:"adjustment_setlym,omitempty"`
	Adjustment       *money.Yuan `json:"adjustment_amount,omitempty"`
}

// ShortfallRow is a payer's outstanding shortfall or a receiver's unpaid
// payout in the settlement.
type ShortfallRow struct {
	Province    Label      `json:"province"`
	Role        string     `json:"role"` // payer or receiver
	Outstanding money.Yuan `json:"outstanding"`
	Unpaid      money.Yuan `json:"unpaid"`
}

// ProvinceExceptions is one province's counts.
type ProvinceExceptions struct {
	Province      Label      `json:"province"`
	OneSided      int64      `json:"one_sided"`
	AmountDiffers int64      `json:"amount_differs"`
	FieldDiffers  int64      `json:"field_differs"`
	Rejected      int64      `json:"rejected"`
	Late          int64      `json:"late"`
	Disputes      int64      `json:"disputes"`
	Outstanding   money.Yuan `json:"outstanding"`
	Unpaid        money.Yuan `json:"unpaid"`
}

func (pe ProvinceExceptions) empty() bool {
	return pe.OneSided+pe.AmountDiffers+pe.FieldDiffers+pe.Rejected+pe.Late+pe.Disputes == 0 &&
		pe.Outstanding.IsZero() && pe.Unpaid.IsZero()
}

var reconKinds = []string{clearingdb.ExcOneSided, clearingdb.ExcAmountDiffers, clearingdb.ExcFieldDiffers, clearingdb.ExcRejected}

func (s *Server) exceptions(ctx context.Context, v viewer, p region.Period) (Exceptions, error) {
	per, err := s.period(ctx, p)
	if err != nil {
		return Exceptions{}, err
	}
	f := v.filter()
	out := Exceptions{Period: periodInfo(per), Scope: scopeOf(v), RowsMax: RowsShownMax, ByKind: []KindCount{},
		Recon: []ReconRow{}, Late: []LateRow{}, Disputes: []DisputeRow{}, Shortfalls: []ShortfallRow{}, ByProvince: []ProvinceExceptions{}}
	byProv := map[string]*ProvinceExceptions{}
	prov := func(code string) *ProvinceExceptions {
		if x, ok := byProv[code]; ok {
			return x
		}
		x := &ProvinceExceptions{Province: codeLabel(code)}
		byProv[code] = x
		return x
	}
	err = s.read(ctx, func(tx pgx.Tx) error {
		totals, err := qReconTotal(ctx, tx, p, f)
		if err != nil {
			return err
		}
		for _, k := range reconKinds {
			out.ByKind = append(out.ByKind, KindCount{Kind: k, Count: totals[k]})
			out.ReconTotal += totals[k]
		}
		recon, err := qRecon(ctx, tx, p, f, RowsShownMax)
		if err != nil {
			return err
		}
		for _, r := range recon {
			out.Recon = append(out.Recon, ReconRow{UsageID: r.usageID, Kind: r.kind, Payer: codeLabel(r.payer), Payee: codeLabel(r.payee),
				Field: r.field, PayerValue: r.payerValue, PayeeValue: r.payeeValue, Detail: r.detail, CreatedAt: sh(r.createdAt)})
		}
		counts, err := qReconCounts(ctx, tx, p, f)
		if err != nil {
			return err
		}
		for _, c := range counts {
			x := prov(c.province)
			switch c.kind {
			case clearingdb.ExcOneSided:
				x.OneSided += c.n
			case clearingdb.ExcAmountDiffers:
				x.AmountDiffers += c.n
			case clearingdb.ExcFieldDiffers:
				x.FieldDiffers += c.n
			case clearingdb.ExcRejected:
				x.Rejected += c.n
			}
		}
		if !per.State.Frozen() {
			if out.PendingOneSided, err = qPendingOneSided(ctx, tx, p, f); err != nil {
				return err
			}
		}
		pairs, err := qLateCounts(ctx, tx, p, f)
		if err != nil {
			return err
		}
		for _, lp := range pairs {
			out.LateTotal += lp.n
			out.LateAmount = out.LateAmount.Add(lp.amount)
			if f == "" || lp.payer == f {
				prov(lp.payer).Late += lp.n
			}
			if f == "" || lp.payee == f {
				prov(lp.payee).Late += lp.n
			}
		}
		late, err := qLate(ctx, tx, p, f, RowsShownMax)
		if err != nil {
			return err
		}
		for _, r := range late {
			out.Late = append(out.Late, LateRow{UsageID: r.usageID, EntryType: r.entryType, Kind: r.kind,
				Payer: codeLabel(r.payer), PayerRegion: codeLabel(r.payerRegion), Payee: codeLabel(r.payee),
				PayeeRegion: codeLabel(r.payeeRegion), Amount: r.amount, OccurredAt: sh(r.occurredAt), ArrivedAt: sh(r.firstAt)})
		}
		disputes, total, err := qDisputes(ctx, tx, p, f, RowsShownMax)
		if err != nil {
			return err
		}
		out.DisputesTotal = total
		for _, d := range disputes {
			row := DisputeRow{Province: codeLabel(d.province), UsageID: d.usageID, Payer: codeLabel(d.payer), Payee: codeLabel(d.payee),
				Cleared: d.cleared, Claimed: d.claimed, Reason: d.reason, DisputedAt: sh(d.disputedAt), Resolved: d.resolved,
				Accepted: d.accepted, AdjustmentID: d.adjustmentID, Adjustment: d.adjustment}
			if d.resolved {
				row.ResolvedAt = shp(d.resolvedAt)
			}
			if d.adjustmentSetlym != 0 {
				row.AdjustmentPeriod = fmt.Sprintf("%06d", d.adjustmentSetlym)
			}
			out.Disputes = append(out.Disputes, row)
			prov(d.province).Disputes++
		}
		if per.State != settlement.PeriodSettled {
			return nil
		}
		rows, err := qPrepay(ctx, tx, p, f)
		if err != nil {
			return err
		}
		for _, r := range rows {
			switch {
			case r.outstanding.IsPositive():
				out.Shortfalls = append(out.Shortfalls, ShortfallRow{Province: codeLabel(r.province), Role: "payer", Outstanding: r.outstanding})
				prov(r.province).Outstanding = r.outstanding
			case r.unpaid.IsPositive():
				out.Shortfalls = append(out.Shortfalls, ShortfallRow{Province: codeLabel(r.province), Role: "receiver", Unpaid: r.unpaid})
				prov(r.province).Unpaid = r.unpaid
			}
		}
		return nil
	})
	if err != nil {
		return Exceptions{}, err
	}
	codes := make([]string, 0, len(byProv))
	for c, x := range byProv {
		if !x.empty() {
			codes = append(codes, c)
		}
	}
	sort.Strings(codes)
	for _, c := range codes {
		out.ByProvince = append(out.ByProvince, *byProv[c])
	}
	return out, nil
}

// ---- province page ----

// ProvinceView is one province in a period, drilled down to its pooling
// regions.
type ProvinceView struct {
	Period   PeriodInfo   `json:"period"`
	Province Label        `json:"province"`
	Position *PositionRow `json:"position,omitempty"` // nil until the close
	// Regions: every pooling region of the province (regions.csv order),
	// zero figures where nothing moved; RegionSum must equal Position.
	Regions   []RegionRow `json:"regions"`
	RegionSum RegionSum   `json:"region_sum"`
	// National: the province's NATIONAL instruction (nil when its net is 0);
	// Instructions: the PROVINCE tier inside it.
	National       *InstructionRow  `json:"national_instruction,omitempty"`
	Instructions   []InstructionRow `json:"province_instructions"`
	Counterparties []Counterparty   `json:"counterparties"` // by |net| descending
	Statement      *StatementInfo   `json:"statement,omitempty"`
	Prepay         *PrepayRow       `json:"prepay,omitempty"`
	Account        *Account         `json:"account,omitempty"`
	Exceptions     int64            `json:"exceptions"`
	Late           int64            `json:"late"`
	Disputes       int64            `json:"disputes"`
}

// RegionRow is one pooling region's figures.
type RegionRow struct {
	Region     Label      `json:"region"`
	Receivable money.Yuan `json:"receivable"`
	Payable    money.Yuan `json:"payable"`
	Net        money.Yuan `json:"net"`
	Moved      bool       `json:"moved"` // listed in allocation.csv
}

// RegionSum totals the regions.
type RegionSum struct {
	Receivable money.Yuan `json:"receivable"`
	Payable    money.Yuan `json:"payable"`
	Net        money.Yuan `json:"net"`
	// Matches: the sums equal the province's position (R15), checked here
	// on every read.
	Matches bool `json:"matches"`
}

// InstructionRow is one settlement instruction: From pays To.
type InstructionRow struct {
	Tier   string     `json:"tier"`
	From   Label      `json:"from"`
	To     Label      `json:"to"`
	Amount money.Yuan `json:"amount"`
}

// Counterparty is what the province pays another (gross P→X) and receives
// from it (gross X→P).
type Counterparty struct {
	Province Label      `json:"province"`
	Pays     money.Yuan `json:"pays"`
	Receives money.Yuan `json:"receives"`
	Net      money.Yuan `json:"net"`
}

// StatementInfo is the province's statement state.
type StatementInfo struct {
	Status     string     `json:"status"` // effective (see effectiveStatus)
	IssuedAt   time.Time  `json:"issued_at"`
	ConfirmBy  time.Time  `json:"confirm_by"`
	AnsweredAt *time.Time `json:"answered_at,omitempty"`
}

func (s *Server) provinceView(ctx context.Context, v viewer, p region.Period, code string) (ProvinceView, error) {
	prov, err := region.ParseProvince(code)
	if err != nil {
		return ProvinceView{}, errNoProvince
	}
	if !v.mayRead(code) {
		return ProvinceView{}, errForbidden
	}
	per, err := s.period(ctx, p)
	if err != nil {
		return ProvinceView{}, err
	}
	out := ProvinceView{Period: periodInfo(per), Province: codeLabel(code), Regions: []RegionRow{},
		Instructions: []InstructionRow{}, Counterparties: []Counterparty{}}
	alloc := map[string]allocationRow{}
	err = s.read(ctx, func(tx pgx.Tx) error {
		totals, err := qReconTotal(ctx, tx, p, code)
		if err != nil {
			return err
		}
		for _, n := range totals {
			out.Exceptions += n
		}
		late, err := qLateCounts(ctx, tx, p, code)
		if err != nil {
			return err
		}
		for _, l := range late {
			out.Late += l.n
		}
		if _, out.Disputes, err = qDisputes(ctx, tx, p, code, 0); err != nil {
			return err
		}
		if !per.State.Frozen() {
			return nil
		}
		pos, err := qPositions(ctx, tx, p, code)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return fmt.Errorf("console: period %s has %d position rows for %s, want 1", p, len(pos), code)
		}
		pr := positionOf(pos[0])
		out.Position = &pr
		rows, err := qAllocation(ctx, tx, p, code)
		if err != nil {
			return err
		}
		for _, a := range rows {
			alloc[a.region] = a
		}
		ins, err := qInstructions(ctx, tx, p, code)
		if err != nil {
			return err
		}
		for _, in := range ins {
			row := InstructionRow{Tier: in.tier, From: codeLabel(in.from), To: codeLabel(in.to), Amount: in.amount}
			if in.tier == string(settlement.TierNational) {
				out.National = &row
				continue
			}
			out.Instructions = append(out.Instructions, row)
		}
		gross, err := qGross(ctx, tx, p, code)
		if err != nil {
			return err
		}
		cps := map[string]*Counterparty{}
		for _, g := range gross {
			other, pays := g.payee, true
			if g.payee == code {
				other, pays = g.payer, false
			}
			c, ok := cps[other]
			if !ok {
				c = &Counterparty{Province: codeLabel(other)}
				cps[other] = c
			}
			if pays {
				c.Pays = c.Pays.Add(g.amount)
			} else {
				c.Receives = c.Receives.Add(g.amount)
			}
		}
		for _, c := range cps {
			c.Net = c.Receives.Sub(c.Pays)
			out.Counterparties = append(out.Counterparties, *c)
		}
		sort.Slice(out.Counterparties, func(i, j int) bool {
			a, b := out.Counterparties[i], out.Counterparties[j]
			if c := a.Net.Abs().Cmp(b.Net.Abs()); c != 0 {
				return c > 0
			}
			return a.Province.Code < b.Province.Code
		})
		stmts, err := qStatements(ctx, tx, p, code)
		if err != nil {
			return err
		}
		if len(stmts) == 1 {
			r := stmts[0]
			out.Statement = &StatementInfo{Status: effectiveStatus(r, s.o.Clock()), IssuedAt: sh(r.issuedAt),
				ConfirmBy: sh(r.confirmBy), AnsweredAt: shp(r.answeredAt)}
		}
		if per.State == settlement.PeriodSettled {
			pp, err := qPrepay(ctx, tx, p, code)
			if err != nil {
				return err
			}
			if len(pp) == 1 {
				row := prepayOf(pp[0])
				out.Prepay = &row
			}
		}
		return nil
	})
	if err != nil {
		return ProvinceView{}, err
	}
	for _, r := range prov.Regions {
		a, moved := alloc[r.Code]
		out.Regions = append(out.Regions, RegionRow{Region: codeLabel(r.Code), Receivable: a.receivable, Payable: a.payable, Net: a.net, Moved: moved})
		out.RegionSum.Receivable = out.RegionSum.Receivable.Add(a.receivable)
		out.RegionSum.Payable = out.RegionSum.Payable.Add(a.payable)
		out.RegionSum.Net = out.RegionSum.Net.Add(a.net)
	}
	if len(alloc) != countMoved(out.Regions) {
		return ProvinceView{}, fmt.Errorf("console: period %s: allocation of %s names a region outside regions.csv", p, code)
	}
	if out.Position != nil {
		out.RegionSum.Matches = out.RegionSum.Receivable.Equal(out.Position.Receivable) &&
			out.RegionSum.Payable.Equal(out.Position.Payable) && out.RegionSum.Net.Equal(out.Position.Net)
	}
	st, err := s.o.Store.PrepayStatus(ctx, code)
	if err != nil {
		return ProvinceView{}, err
	}
	if len(st.Accounts) == 1 {
		a := st.Accounts[0]
		out.Account = &Account{Province: codeLabel(a.Province), Deposit: a.Deposit, Required: a.Required,
			Outstanding: a.Outstanding, Unpaid: a.Unpaid, ReplenishDue: a.ReplenishDue, Warning: a.Warning}
	}
	return out, nil
}

func countMoved(rs []RegionRow) int {
	n := 0
	for _, r := range rs {
		if r.Moved {
			n++
		}
	}
	return n
}

// errors of the builders, mapped to statuses by the handlers.
var (
	errForbidden  = errors.New("console: this certificate may not see that")
	errNoProvince = errors.New("console: no such provincial unit")
	errBadPeriod  = errors.New("console: setlym must be a month YYYYMM")
	errNoPage     = errors.New("console: no such page")
)
