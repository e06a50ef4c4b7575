package sharing

import (
	"gongji/ledger"
	"gongji/money"
)

// Account names of a province node's journal (docs/architecture.md, "Province
// node money"). A posting moves its amount into its account; every entry sums
// to zero, so the sum of all balances is always zero.
//
//	ext:funding          −  money that came into personal accounts from outside
//	person:<ref>         ≥0 a sharer's personal account, available part
//	quota:<id>           ≥0 earmarked, frozen, unused quota of one relationship
//	ext:paid:<KIND>      paid out to institutions for local usage (OWN: the holder's own spending);
//	                        at a payee node, a payee record books −amount here: the payable to its
//	                        own institution that the province advances and the clearing repays
//	due:clearing         payer side: value handed to the clearing centre for cross-province usage
//	                        (a quota moves into it, so its balance is ≥ 0 and equals what is owed)
//	due:from_clearing    ≥0 payee side: what the clearing centre owes this province
const (
	AccountFunding         = "ext:funding"
	AccountDueClearing     = "due:clearing"
	AccountDueFromClearing = "due:from_clearing"
	accountPaidOwn         = "ext:paid:OWN"
)

// AccountPerson names a personal account.
func AccountPerson(ref string) string { return "person:" + ref }

// AccountQuota names a relationship's quota account.
func AccountQuota(relationshipID string) string { return "quota:" + relationshipID }

// AccountPaid names the payout account of a usage kind.
func AccountPaid(k Kind) string { return "ext:paid:" + string(k) }

// AccountPaidOwn is the payout account of the holder's own spending.
func AccountPaidOwn() string { return accountPaidOwn }

// StaticAccounts are the accounts every province journal has from the start.
func StaticAccounts() []string {
	out := []string{AccountFunding, AccountDueClearing, AccountDueFromClearing, accountPaidOwn}
	for _, k := range Kinds {
		out = append(out, AccountPaid(k))
	}
	return out
}

// Journal entry kinds of a province node.
const (
	EntryCredit        = "CREDIT"         // ext:funding → person
	EntryOwnSpend      = "OWN_SPEND"      // person → ext:paid:OWN
	EntryEarmark       = "EARMARK"        // person → quota (raise)
	EntryQuotaReturn   = "QUOTA_RETURN"   // quota → person (lower, dissolve)
	EntryUsage         = "USAGE"          // quota → ext:paid:KIND (local) or due:clearing (payer)
	EntryReversal      = "REVERSAL"       // the inverse of a usage, up to what is not yet reversed
	EntryPayeeUsage    = "PAYEE_USAGE"    // ext:paid:KIND → due:from_clearing
	EntryPayeeReversal = "PAYEE_REVERSAL" // due:from_clearing → ext:paid:KIND
)

func move(from, to string, amount money.Yuan) ledger.Postings {
	return ledger.Postings{{Account: from, Amount: amount.Neg()}, {Account: to, Amount: amount}}
}

// CreditPostings deposits amount into a personal account.
func CreditPostings(ref string, amount money.Yuan) ledger.Postings {
	return move(AccountFunding, AccountPerson(ref), amount)
}

// OwnSpendPostings pays the holder's own cost from the available part only:
// earmarked money sits in quota accounts, out of reach (R8).
func OwnSpendPostings(ref string, amount money.Yuan) ledger.Postings {
	return move(AccountPerson(ref), accountPaidOwn, amount)
}

// QuotaPostings moves delta from the sharer's account into the relationship's
// quota account (delta > 0: earmark) or back (delta < 0: lower, return). Nil
// for zero.
func QuotaPostings(r Relationship, delta money.Yuan) ledger.Postings {
	switch {
	case delta.IsPositive():
		return move(AccountPerson(r.SharerRef), AccountQuota(r.ID), delta)
	case delta.IsNegative():
		return move(AccountQuota(r.ID), AccountPerson(r.SharerRef), delta.Neg())
	}
	return nil
}

// QuotaEntryKind is the entry kind of QuotaPostings(delta).
func QuotaEntryKind(delta money.Yuan) string {
	if delta.IsPositive() {
		return EntryEarmark
	}
	return EntryQuotaReturn
}

// usageTarget is where a usage's money goes at a node.
func usageTarget(u Usage) string {
	if u.Role == RolePayer {
		return AccountDueClearing
	}
	return AccountPaid(u.Kind)
}

// UsagePostings books a usage in its node's role: LOCAL and PAYER move the
// amount out of the quota (to the institution, or to the clearing centre);
// PAYEE records the receivable from the clearing centre against the payable to
// its institution.
func UsagePostings(u Usage) (kind string, ps ledger.Postings) {
	if u.Role == RolePayee {
		return EntryPayeeUsage, move(AccountPaid(u.Kind), AccountDueFromClearing, u.Amount)
	}
	return EntryUsage, move(AccountQuota(u.RelationshipID), usageTarget(u), u.Amount)
}

// ReversalPostings books the reversal of amount of u: the exact inverse of the
// usage's postings, except that at the authority the money goes back to the
// sharer's personal account instead of the quota once the relationship has
// ended (toQuota false, see Relationship.WithReversal).
func ReversalPostings(u Usage, amount money.Yuan, toQuota bool) (kind string, ps ledger.Postings) {
	if u.Role == RolePayee {
		return EntryPayeeReversal, move(AccountDueFromClearing, AccountPaid(u.Kind), amount)
	}
	back := AccountQuota(u.RelationshipID)
	if !toQuota {
		back = AccountPerson(u.SharerRef)
	}
	return EntryReversal, move(usageTarget(u), back, amount)
}
