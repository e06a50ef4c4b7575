package settlement

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"gongji/region"
)

// ErrBadReconcileInput: Reconcile got no report at all, or reports of
// different usage ids. A programming error in the caller (Internal).
var ErrBadReconcileInput = errors.New("settlement: bad reconciliation input")

// Source names who said something about a usage.
type Source string

const (
	SourcePayer  Source = "PAYER"  // the sharer's node, which debited the quota
	SourcePayee  Source = "PAYEE"  // the beneficiary's node, whose institution was paid
	SourceSwitch Source = "SWITCH" // the clearing switch's own record of the authorisation
)

// Report is one source's account of a usage, reversal or adjustment. In the
// switch's record a zero field (empty string, zero time, zero amount) means
// "not recorded" and never breaks a tie.
type Report struct {
	UsageID    string
	Type       EntryType
	Kind       Kind
	Row        // provinces, regions, signed amount
	OccurredAt time.Time
	ReversalOf string
}

// ExceptionKind classifies a reconciliation exception.
type ExceptionKind string

const (
	// ExcMismatch: both provinces reported the usage and one field differs.
	ExcMismatch ExceptionKind = "MISMATCH"
	// ExcPayerOnly: only the payer had reported the usage at close. It is
	// cleared from the payer's report (the payer debited the sharer).
	ExcPayerOnly ExceptionKind = "PAYER_ONLY"
	// ExcPayeeOnly: only the payee had reported the usage at close, and the
	// switch recorded the authorisation. It is cleared with the switch's amount.
	ExcPayeeOnly ExceptionKind = "PAYEE_ONLY"
	// ExcUnauthorised: only the payee reported it and the switch has no record
	// of authorising it. Nobody debited a sharer for it, so it is not cleared.
	ExcUnauthorised ExceptionKind = "UNAUTHORISED"
	// ExcSwitchMismatch: a field of the only report differs from the switch's
	// record (no second report to break the tie; the report's value is kept).
	ExcSwitchMismatch ExceptionKind = "SWITCH_MISMATCH"
)

// Exception is one reconciliation exception, listed on the statements of
// every province in Provinces (DESIGN §4: "on both provinces' statements").
type Exception struct {
	UsageID string
	Kind    ExceptionKind
	// Field is the compared field (one of ReconciledFields) for MISMATCH and
	// SWITCH_MISMATCH; "" for the one-sided kinds.
	Field string
	// The field's value in each source's canonical text ("" when that
	// source is absent or did not record it), and the value cleared.
	PayerValue  string
	PayeeValue  string
	SwitchValue string
	Cleared     string
	// DecidedBy is the source whose value was cleared ("" when not cleared).
	DecidedBy Source
	// Provinces that must see the exception: every province any report names
	// as payer or payee, sorted.
	Provinces []string
}

// ReconciledFields are the compared fields, in the order exceptions list them.
var ReconciledFields = []string{
	"amount", "entry_type", "kind", "payer_province", "payer_region",
	"payee_province", "payee_region", "occurred_at", "reversal_of",
}

func fieldValue(r *Report, field string) string {
	if r == nil {
		return ""
	}
	switch field {
	case "amount":
		if r.Amount.IsZero() {
			return ""
		}
		return r.Amount.String()
	case "entry_type":
		return string(r.Type)
	case "kind":
		return string(r.Kind)
	case "payer_province":
		return r.PayerProvince
	case "payer_region":
		return r.PayerRegion
	case "payee_province":
		return r.PayeeProvince
	case "payee_region":
		return r.PayeeRegion
	case "occurred_at":
		if r.OccurredAt.IsZero() {
			return ""
		}
		return r.OccurredAt.In(region.Shanghai).Format(time.RFC3339Nano)
	case "reversal_of":
		return r.ReversalOf
	}
	panic("settlement: unknown reconciled field " + field)
}

// copyField sets field of dst from src.
func copyField(dst, src *Report, field string) {
	switch field {
	case "amount":
		dst.Amount = src.Amount
	case "entry_type":
		dst.Type = src.Type
	case "kind":
		dst.Kind = src.Kind
	case "payer_province":
		dst.PayerProvince = src.PayerProvince
	case "payer_region":
		dst.PayerRegion = src.PayerRegion
	case "payee_province":
		dst.PayeeProvince = src.PayeeProvince
	case "payee_region":
		dst.PayeeRegion = src.PayeeRegion
	case "occurred_at":
		dst.OccurredAt = src.OccurredAt
	case "reversal_of":
		dst.ReversalOf = src.ReversalOf
	}
}

// Reconciled is what Reconcile decides for one usage id.
type Reconciled struct {
	// Record is the report that is cleared; meaningful only when Cleared.
	Record  Report
	Cleared bool
	// Exceptions in ReconciledFields order; empty when both reports agree.
	Exceptions []Exception
}

// Reconcile compares the payer's and the payee's reports of one usage field by
// field and decides what is cleared (DESIGN §4). Call it at close for every
// usage id of the period; a nil report is one that had not arrived.
//
// Rules, field by field:
//   - amount: the payer's report is authoritative; without it the switch's
//     authorised amount is used; with neither the usage is not cleared
//     (UNAUTHORISED: the payee claims money nobody authorised).
//   - every other field: if the payer and the payee agree, that value. If they
//     differ, the switch's record breaks the tie when it equals one of them;
//     otherwise (no switch value, or it matches neither) the payer's value.
//     Each difference is a MISMATCH exception naming all three values.
//   - a one-sided usage gets a PAYER_ONLY or PAYEE_ONLY exception; its fields
//     come from the only report, and each field that differs from a value the
//     switch recorded is a SWITCH_MISMATCH exception (amount included: for a
//     payee-only usage the switch's amount is cleared).
//
// Errors: ErrBadReconcileInput when all of payer, payee and switch are nil or
// their usage ids differ. Reconcile does not validate the cleared record; run
// Record.Validate on it before it is cleared.
func Reconcile(payer, payee, sw *Report) (Reconciled, error) {
	id := ""
	for _, r := range []*Report{payer, payee, sw} {
		if r == nil {
			continue
		}
		if id == "" {
			id = r.UsageID
		} else if r.UsageID != id {
			return Reconciled{}, fmt.Errorf("%w: usage ids %q and %q", ErrBadReconcileInput, id, r.UsageID)
		}
	}
	if id == "" {
		return Reconciled{}, fmt.Errorf("%w: no report and no usage id", ErrBadReconcileInput)
	}
	provinces := involvedProvinces(payer, payee, sw)
	exc := func(kind ExceptionKind, field, cleared string, by Source) Exception {
		e := Exception{UsageID: id, Kind: kind, Field: field, Cleared: cleared, DecidedBy: by, Provinces: provinces}
		if field != "" {
			e.PayerValue, e.PayeeValue, e.SwitchValue = fieldValue(payer, field), fieldValue(payee, field), fieldValue(sw, field)
		}
		return e
	}

	var out Reconciled
	switch {
	case payer != nil && payee != nil:
		out.Record, out.Cleared = *payer, true
		for _, f := range ReconciledFields {
			pv, ev, sv := fieldValue(payer, f), fieldValue(payee, f), fieldValue(sw, f)
			if pv == ev {
				continue
			}
			by := SourcePayer // the payer's amount is authoritative; the default otherwise
			if f != "amount" && sv != "" {
				switch sv {
				case ev:
					copyField(&out.Record, payee, f)
					by = SourceSwitch
				case pv:
					by = SourceSwitch
				}
			}
			out.Exceptions = append(out.Exceptions, exc(ExcMismatch, f, fieldValue(&out.Record, f), by))
		}
		return out, nil

	case payer != nil:
		out.Record, out.Cleared = *payer, true
		out.Exceptions = append(out.Exceptions, exc(ExcPayerOnly, "", "", SourcePayer))
		out.Exceptions = append(out.Exceptions, switchMismatches(payer, &out.Record, sw, SourcePayer, exc)...)
		return out, nil

	case payee != nil:
		if sw == nil || sw.Amount.IsZero() {
			out.Exceptions = append(out.Exceptions, exc(ExcUnauthorised, "", "", ""))
			return out, nil
		}
		out.Record, out.Cleared = *payee, true
		out.Record.Amount = sw.Amount // the payer's word is missing: the switch's authorised amount
		out.Exceptions = append(out.Exceptions, exc(ExcPayeeOnly, "", "", SourcePayee))
		out.Exceptions = append(out.Exceptions, switchMismatches(payee, &out.Record, sw, SourcePayee, exc)...)
		for i, e := range out.Exceptions {
			if e.Field == "amount" {
				out.Exceptions[i].DecidedBy = SourceSwitch
			}
		}
		return out, nil
	}
	// Only the switch's record: authorised, but neither node reported a
	// committed debit, so nothing moved and nothing is cleared. Not an
	// exception on any statement.
	return out, nil
}

// switchMismatches lists a SWITCH_MISMATCH exception for each field of the
// only report (sent by from) that differs from a value the switch recorded;
// Cleared is the field's value in the cleared record.
func switchMismatches(report, cleared, sw *Report, from Source, exc func(ExceptionKind, string, string, Source) Exception) []Exception {
	if sw == nil {
		return nil
	}
	var out []Exception
	for _, f := range ReconciledFields {
		rv, sv := fieldValue(report, f), fieldValue(sw, f)
		if sv == "" || rv == sv {
			continue
		}
		out = append(out, exc(ExcSwitchMismatch, f, fieldValue(cleared, f), from))
	}
	return out
}

func involvedProvinces(rs ...*Report) []string {
	var out []string
	for _, r := range rs {
		if r == nil {
			continue
		}
		for _, c := range []string{r.PayerProvince, r.PayeeProvince} {
			if c != "" && !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	slices.Sort(out)
	return out
}

// ToRecord turns a cleared report into the Record stored for the period.
func (r Report) ToRecord(a Assignment, sharerRef, beneficiaryRef string) Record {
	return Record{
		UsageID: r.UsageID, Period: a.Period, Type: r.Type, Kind: r.Kind, Row: r.Row,
		OccurredAt: r.OccurredAt, Late: a.Late, ReversalOf: r.ReversalOf,
		SharerRef: sharerRef, BeneficiaryRef: beneficiaryRef,
	}
}
