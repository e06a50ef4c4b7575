package prepay

import (
	"fmt"
	"time"

	"gongji/ledger"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// Accounts of the prepayment ledger in the clearing journal. Every posting
// moves its amount into its account (package ledger's convention), so an
// account's balance is the money it holds.
//
//	account              meaning                                              normal balance
//	ext:bank             the outside world: provinces' fiscal special         ≤ 0 (net inflow)
//	                     accounts that fund the pool and receive payments
//	deposit:<prov>       the province's prepayment deposit at the centre      ≥ 0
//	centre:pool          transit of one settlement or shortfall payment       0 after every operation
//	receivable:<prov>    shortfall the payer province still owes              ≤ 0
//	payable:<prov>       what the centre still owes the receiver province     ≥ 0
//
// Conservation: Σ all balances = 0 (every entry balanced), −Σ receivable =
// Σ payable (every unpaid yuan is owed by some payer), hence
// −ext:bank = Σ deposit: what came in from outside, net, is exactly what the
// deposits hold.
const (
	AccountBank = "ext:bank"
	AccountPool = "centre:pool"
)

// DepositAccount is "deposit:<prov>".
func DepositAccount(province string) string { return "deposit:" + province }

// ReceivableAccount is "receivable:<prov>".
func ReceivableAccount(province string) string { return "receivable:" + province }

// PayableAccount is "payable:<prov>".
func PayableAccount(province string) string { return "payable:" + province }

// Entry kinds of prepayment movements in the clearing journal.
const (
	// KindFund: a province pays money into its deposit (initial deposit,
	// re-sizing, emergency top-up). ext:bank → deposit:<prov>.
	KindFund = "PREPAY_FUND"
	// KindDraw: a net payer's obligation enters the pool: what its deposit
	// covers from deposit:<prov>, the rest as a claim on it from
	// receivable:<prov> (the shortfall). → centre:pool.
	KindDraw = "PREPAY_DRAW"
	// KindPayReceiver: a net receiver's due leaves the pool: the covered part
	// to ext:bank (paid), the rest to payable:<prov> (still owed).
	KindPayReceiver = "PREPAY_PAY_RECEIVER"
	// KindReplenish: a payer restores what was drawn. ext:bank → deposit:<prov>.
	KindReplenish = "PREPAY_REPLENISH"
	// KindShortfallSettlement: a payer pays (part of) its shortfall:
	// ext:bank → receivable:<prov>, and the same amount goes at once from the
	// unpaid receivers' payable:<prov> accounts to ext:bank, pro rata.
	KindShortfallSettlement = "PREPAY_SHORTFALL_SETTLEMENT"
)

// Row is one prepay.csv row (all 32 provincial units, in code order).
type Row struct {
	Province      string
	DepositBefore money.Yuan
	Drawn         money.Yuan
	Outstanding   money.Yuan
	DepositAfter  money.Yuan
	RequiredNext  money.Yuan
	Warning       bool
}

// Due is what the payer must pay after the settlement: Drawn (to replenish
// its deposit) plus Outstanding (its shortfall, passed on to receivers);
// together −net for a payer, 0 for anyone else.
func (r Row) Due() money.Yuan { return r.Drawn.Add(r.Outstanding) }

// Payout is what a net receiver gets from the pool in a settlement.
type Payout struct {
	Province string
	Due      money.Yuan // its net
	Paid     money.Yuan // paid now from the draws
	Unpaid   money.Yuan // Due − Paid, owed until the payers' shortfalls are paid
}

// TopUpRequest is the emergency top-up asked of a province whose draw raised
// a warning or left a shortfall (R18, DESIGN §10).
type TopUpRequest struct {
	Province string
	Warning  bool
	// Outstanding is the shortfall to pay now (PayShortfall); it goes to the
	// unpaid receivers.
	Outstanding money.Yuan
	// DepositAfter and RequiredNext: the deposit now and the re-sized target.
	DepositAfter money.Yuan
	RequiredNext money.Yuan
	// DepositTopUp = max(RequiredNext − DepositAfter, 0): what brings the
	// deposit back to its re-sized level (it includes replenishing the draw).
	DepositTopUp money.Yuan
}

// SettleInput is one period's settlement input.
type SettleInput struct {
	Period region.Period
	// Positions of the closed period: all 32 provincial units in code order
	// (settlement.Result.Positions).
	Positions []settlement.Position
	// DepositsBefore per province; absent means 0.
	DepositsBefore map[string]money.Yuan
	// PriorPayables per province: monthly payables of the months before
	// Period, oldest first (at most TrailingMonths−1 are used). The period's
	// own payable is appended from Positions.
	PriorPayables map[string][]money.Yuan
	// At is the booking time of the journal entries.
	At time.Time
}

// Settlement is the outcome of one period's prepayment settlement.
type Settlement struct {
	Period  region.Period
	Rows    []Row          // prepay.csv
	Payouts []Payout       // net receivers, code order
	TopUps  []TopUpRequest // code order
	// Entries: one KindDraw per net payer, then one KindPayReceiver per net
	// receiver, in code order; each balanced, centre:pool back to zero.
	Entries []ledger.Entry
}

// Covered is Σ drawn, which equals Σ paid to receivers.
func (s Settlement) Covered() money.Yuan {
	t := money.Zero
	for _, r := range s.Rows {
		t = t.Add(r.Drawn)
	}
	return t
}

// Shortfall is Σ outstanding, which equals Σ unpaid.
func (s Settlement) Shortfall() money.Yuan {
	t := money.Zero
	for _, r := range s.Rows {
		t = t.Add(r.Outstanding)
	}
	return t
}

// checkPositions: the 32 units in code order, net = receivable − payable,
// nets summing to zero.
func checkPositions(ps []settlement.Position) error {
	codes := region.ProvinceCodes()
	if len(ps) != len(codes) {
		return fmt.Errorf("%w: %d positions, want %d", ErrBadPositions, len(ps), len(codes))
	}
	sum := money.Zero
	for i, p := range ps {
		if p.Province != codes[i] {
			return fmt.Errorf("%w: position %d is %q, want %s", ErrBadPositions, i, p.Province, codes[i])
		}
		if !p.Net.Equal(p.Receivable.Sub(p.Payable)) {
			return fmt.Errorf("%w: %s net %s ≠ receivable − payable", ErrBadPositions, p.Province, p.Net)
		}
		sum = sum.Add(p.Net)
	}
	if !sum.IsZero() {
		return fmt.Errorf("%w: nets sum to %s", ErrBadPositions, sum)
	}
	return nil
}

// Settle runs one period's prepayment settlement: every net payer's
// obligation is drawn from its deposit (Draw), receivers are paid what the
// draws cover (pro rata when they do not cover everything), each province's
// deposit is re-sized (RequiredNext over PriorPayables + this period's
// payable), and a TopUpRequest is raised for every warning or shortfall.
// The result passes CheckSettlement before it is returned. Pure: the caller
// writes rows and entries in one transaction.
//
// Errors: ErrBadPositions; ErrUnknownProvince (a deposit or history keyed by
// an unknown code); ErrNegativeDeposit; ErrBadAmount; ErrInconsistent (a bug).
func (c Config) Settle(in SettleInput) (Settlement, error) {
	if err := checkPositions(in.Positions); err != nil {
		return Settlement{}, err
	}
	for code := range in.DepositsBefore {
		if err := checkProvince(code); err != nil {
			return Settlement{}, fmt.Errorf("deposit: %w", err)
		}
	}
	for code := range in.PriorPayables {
		if err := checkProvince(code); err != nil {
			return Settlement{}, fmt.Errorf("prior payables: %w", err)
		}
	}
	s := Settlement{Period: in.Period}
	ref := func(prov string) string { return in.Period.String() + ":" + prov }
	var receivers []settlement.Position
	var dues []money.Yuan
	for _, p := range in.Positions {
		d, err := c.Draw(in.DepositsBefore[p.Province], p.Net)
		if err != nil {
			return Settlement{}, fmt.Errorf("%s: %w", p.Province, err)
		}
		hist := append(append([]money.Yuan(nil), in.PriorPayables[p.Province]...), p.Payable)
		req, err := c.RequiredNext(hist)
		if err != nil {
			return Settlement{}, fmt.Errorf("%s: %w", p.Province, err)
		}
		row := Row{
			Province: p.Province, DepositBefore: d.DepositBefore, Drawn: d.Drawn,
			Outstanding: d.Outstanding, DepositAfter: d.DepositAfter, RequiredNext: req, Warning: d.Warning,
		}
		s.Rows = append(s.Rows, row)
		if p.Net.IsNegative() {
			s.Entries = append(s.Entries, ledger.Entry{Kind: KindDraw, Ref: ref(p.Province), At: in.At, Postings: nonZero(
				ledger.Posting{Account: AccountPool, Amount: p.Net.Neg()},
				ledger.Posting{Account: DepositAccount(p.Province), Amount: d.Drawn.Neg()},
				ledger.Posting{Account: ReceivableAccount(p.Province), Amount: d.Outstanding.Neg()},
			)})
		}
		if p.Net.IsPositive() {
			receivers = append(receivers, p)
			dues = append(dues, p.Net)
		}
		if row.Warning || row.Outstanding.IsPositive() {
			s.TopUps = append(s.TopUps, TopUpRequest{
				Province: p.Province, Warning: row.Warning, Outstanding: row.Outstanding,
				DepositAfter: row.DepositAfter, RequiredNext: row.RequiredNext,
				DepositTopUp: row.RequiredNext.Sub(row.DepositAfter).Max(money.Zero),
			})
		}
	}
	paid, err := ProRata(s.Covered(), dues)
	if err != nil {
		return Settlement{}, fmt.Errorf("%w: pay receivers: %w", ErrInconsistent, err)
	}
	for i, p := range receivers {
		po := Payout{Province: p.Province, Due: p.Net, Paid: paid[i], Unpaid: p.Net.Sub(paid[i])}
		s.Payouts = append(s.Payouts, po)
		s.Entries = append(s.Entries, ledger.Entry{Kind: KindPayReceiver, Ref: ref(p.Province), At: in.At, Postings: nonZero(
			ledger.Posting{Account: AccountPool, Amount: po.Due.Neg()},
			ledger.Posting{Account: AccountBank, Amount: po.Paid},
			ledger.Posting{Account: PayableAccount(p.Province), Amount: po.Unpaid},
		)})
	}
	if err := c.CheckSettlement(s, in.Positions); err != nil {
		return Settlement{}, err
	}
	return s, nil
}

func nonZero(ps ...ledger.Posting) ledger.Postings {
	out := make(ledger.Postings, 0, len(ps))
	for _, p := range ps {
		if !p.Amount.IsZero() {
			out = append(out, p)
		}
	}
	return out
}

// CheckSettlement recomputes a settlement's invariants against the period's
// positions, whoever produced it (Settle or the SQL adapter), and names the
// first violation (errors wrap ErrInconsistent):
//
//   - one row per provincial unit, in code order, matching Draw(deposit_before,
//     net) and warning exactly; drawn + outstanding = −net for payers, 0 else;
//   - payouts for exactly the net receivers, paid + unpaid = net, paid ≥ 0,
//     Σ paid = Σ drawn, Σ unpaid = Σ outstanding;
//   - every entry balanced (ledger.Entry.Validate) and centre:pool nets to
//     zero over the settlement; deposits move by −drawn, receivables by
//     −outstanding, payables by +unpaid, ext:bank by +Σ paid.
func (c Config) CheckSettlement(s Settlement, positions []settlement.Position) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInconsistent, s.Period, fmt.Sprintf(format, args...))
	}
	if len(s.Rows) != len(positions) {
		return fail("%d rows for %d positions", len(s.Rows), len(positions))
	}
	want := map[string]money.Yuan{}
	add := func(acct string, y money.Yuan) { want[acct] = want[acct].Add(y) }
	paidTotal, unpaidTotal := money.Zero, money.Zero
	payouts := map[string]Payout{}
	for _, po := range s.Payouts {
		if _, dup := payouts[po.Province]; dup {
			return fail("second payout for %s", po.Province)
		}
		payouts[po.Province] = po
	}
	for i, p := range positions {
		r := s.Rows[i]
		if r.Province != p.Province {
			return fail("row %d is %s, want %s", i, r.Province, p.Province)
		}
		d, err := c.Draw(r.DepositBefore, p.Net)
		if err != nil {
			return fail("%s: %v", p.Province, err)
		}
		if !r.Drawn.Equal(d.Drawn) || !r.Outstanding.Equal(d.Outstanding) || !r.DepositAfter.Equal(d.DepositAfter) || r.Warning != d.Warning {
			return fail("%s: row drawn %s outstanding %s after %s warning %v; rule gives %s %s %s %v", p.Province,
				r.Drawn, r.Outstanding, r.DepositAfter, r.Warning, d.Drawn, d.Outstanding, d.DepositAfter, d.Warning)
		}
		if r.RequiredNext.IsNegative() || r.RequiredNext.LessThan(c.Floor) {
			return fail("%s: required_next %s below floor %s", p.Province, r.RequiredNext, c.Floor)
		}
		add(DepositAccount(p.Province), r.Drawn.Neg())
		add(ReceivableAccount(p.Province), r.Outstanding.Neg())
		po, isPaid := payouts[p.Province]
		if p.Net.IsPositive() != isPaid {
			return fail("%s: net %s but payout present=%v", p.Province, p.Net, isPaid)
		}
		if isPaid {
			if !po.Due.Equal(p.Net) || !po.Paid.Add(po.Unpaid).Equal(p.Net) || po.Paid.IsNegative() || po.Unpaid.IsNegative() {
				return fail("%s: payout due %s paid %s unpaid %s for net %s", p.Province, po.Due, po.Paid, po.Unpaid, p.Net)
			}
			paidTotal, unpaidTotal = paidTotal.Add(po.Paid), unpaidTotal.Add(po.Unpaid)
			add(PayableAccount(p.Province), po.Unpaid)
		}
	}
	if !paidTotal.Equal(s.Covered()) || !unpaidTotal.Equal(s.Shortfall()) {
		return fail("paid %s / unpaid %s, drawn %s / outstanding %s", paidTotal, unpaidTotal, s.Covered(), s.Shortfall())
	}
	add(AccountBank, paidTotal)
	for i, e := range s.Entries {
		if _, err := e.Validate(); err != nil {
			return fail("entry %d (%s %s): %v", i, e.Kind, e.Ref, err)
		}
	}
	got := ledger.Balances(s.Entries)
	for acct, w := range want {
		if !got[acct].Equal(w) {
			return fail("journal moves %s by %s, rows say %s", acct, got[acct], w)
		}
	}
	for acct, g := range got {
		if _, ok := want[acct]; !ok && !g.IsZero() {
			return fail("journal moves %s by %s, rows say 0.00", acct, g)
		}
	}
	return nil
}
