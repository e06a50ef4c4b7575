package provinceapi

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/pii"
	"gongji/money"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
	"gongji/settlement"
	"gongji/sharing"
)

// Limits of the edge.
const (
	// KeyLenMax bounds every idempotency key a node accepts (usage, reversal,
	// proposal, command, credit, spend and change keys). A usage's key becomes
	// its usage_id at the clearing service and in the audit export, which hold
	// at most settlement.UsageIDLenMax (64) bytes; accepting a longer key
	// would move money that can never be cleared. One limit for every key
	// keeps the rule simple for the systems that make them.
	KeyLenMax = settlement.UsageIDLenMax
	// FutureSkewMax bounds an effective_at (enrollment change) ahead of the
	// node's clock: business time from a request may be at most a day ahead
	// (docs/architecture.md, "Time"). occurred_at is bounded by the domain
	// (sharing.Config.ClockSkewMax), which is tighter.
	FutureSkewMax = 24 * time.Hour
	// yearMin, yearMax bound any timestamp a request carries (Asia/Shanghai),
	// as the clearing service does: anything outside is a bug or an attack,
	// and a period outside 2000–2999 cannot be written as setlym.
	yearMin, yearMax = 2000, 2999
)

// edge validates request fields before anything is called, keeping the first
// failure as an InvalidArgument status that names the field. Values are
// quoted only when they are short and printable; an ID number is never
// quoted (pii errors do not quote it either).
type edge struct{ err error }

func (c *edge) failf(field, format string, a ...any) {
	if c.err == nil {
		c.err = invalid(field + ": " + fmt.Sprintf(format, a...))
	}
}

// invalid is an InvalidArgument status with the INVALID_INPUT reason, like
// the domain's *FieldError after mapping.
func invalid(msg string) error {
	return withReason(status.New(codes.InvalidArgument, cleanMessage(msg)), "INVALID_INPUT").Err()
}

// keyOK: 1..KeyLenMax printable ASCII characters without spaces, and no
// GB 11643 identity number anywhere in it (pii.ContainsID).
//
// Every key a caller chooses (usage, reversal, proposal, command, credit,
// spend and change keys) is an opaque identifier that the node stores, logs,
// reports to the clearing service and, for a usage, the clearing service
// exports (usage_id of usages.csv). There is never a reason to put an ID
// number into one, and a masked key would no longer name its request, so a
// key containing one is refused here, before anything is called or written,
// like any other malformed key (sharing refuses it too, for callers that do
// not come through this edge).
func keyOK(s string) bool {
	if s == "" || len(s) > KeyLenMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return !pii.ContainsID(s)
}

func (c *edge) key(field, v string) string {
	if !keyOK(v) {
		c.failf(field, "must be 1 to %d printable ASCII characters without spaces, and contain no ID number", KeyLenMax)
	}
	return v
}

func (c *edge) relationshipID(field, v string) string {
	if !sharing.ValidRelationshipID(v) {
		c.failf(field, `must be a relationship id ("R" and 24 lowercase hex characters, containing no ID number)`)
	}
	return v
}

func (c *edge) ref(field, v string) string {
	if !pii.IsRef(v) {
		c.failf(field, "must be a person_ref (%d lowercase hex characters)", pii.RefLen)
	}
	return v
}

func (c *edge) province(field, v string) string {
	if _, err := region.ParseProvince(v); err != nil {
		c.failf(field, "%s", codeReason(err))
	}
	return v
}

// moneyErrs are the sentinels of money.Parse, most specific first.
var moneyErrs = []error{money.ErrEmpty, money.ErrInputTooLong, money.ErrSyntax, money.ErrTooPrecise,
	money.ErrOutOfRange, money.ErrNotPositive}

// moneyReason is the money sentinel's text alone: money's errors quote the
// offending text, and a hostile value (an ID number typed into the wrong
// field, a megabyte of junk) must not be echoed into replies and call logs.
func moneyReason(err error) string {
	for _, s := range moneyErrs {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return "not an amount"
}

// codeReason is a region error's text without a malformed value: only a
// code that is not six digits is quoted by the region package.
func codeReason(err error) string {
	if errors.Is(err, region.ErrBadCode) {
		return region.ErrBadCode.Error()
	}
	return err.Error()
}

// amount parses a positive amount (DESIGN §3): at most two decimals, in
// NUMERIC(18,2), greater than zero.
func (c *edge) amount(field, v string) money.Yuan {
	y, err := money.ParsePositive(v)
	if err != nil {
		c.failf(field, "%s", moneyReason(err))
	}
	return y
}

// quota parses a quota: like amount, but zero is allowed (R8: lowering to 0).
func (c *edge) quota(field, v string) money.Yuan {
	y, err := money.Parse(v)
	switch {
	case err != nil:
		c.failf(field, "%s", moneyReason(err))
	case y.IsNegative():
		c.failf(field, "must not be negative")
	}
	return y
}

// timestamp checks a business time: set (when required), valid, within the
// years 2000–2999 and, when futureMax > 0, at most futureMax after now.
func (c *edge) timestamp(field string, ts *timestamppb.Timestamp, required bool, now time.Time, futureMax time.Duration) time.Time {
	if ts == nil {
		if required {
			c.failf(field, "is required")
		}
		return time.Time{}
	}
	if err := ts.CheckValid(); err != nil {
		c.failf(field, "%v", err)
		return time.Time{}
	}
	t := ts.AsTime()
	if y := t.In(region.Shanghai).Year(); y < yearMin || y > yearMax {
		c.failf(field, "is outside the years %d-%d", yearMin, yearMax)
		return time.Time{}
	}
	if futureMax > 0 && t.After(now.Add(futureMax)) {
		c.failf(field, "is more than %s after the node's clock", futureMax)
		return time.Time{}
	}
	return t
}

// enum maps a proto enum to its domain value; UNSPECIFIED and unknown values
// are InvalidArgument.
func enum[D comparable, P ~int32](c *edge, field string, t enumTable[D, P], p P) D {
	d, ok := t.domain(p)
	if !ok {
		c.failf(field, "unknown or missing value %d", int32(p))
	}
	return d
}

// personRef turns a PersonId into a person_ref: an ID number is validated
// (GB 11643-1999) and pseudonymised here, at the edge, and dropped; only the
// ref goes on.
func (c *edge) personRef(svc *sharing.Service, field string, id *provincev1.PersonId) string {
	if id == nil {
		c.failf(field, "is required: id_number or person_ref")
		return ""
	}
	switch v := id.GetId().(type) {
	case *provincev1.PersonId_IdNumber:
		return c.idNumber(svc, field+".id_number", v.IdNumber)
	case *provincev1.PersonId_PersonRef:
		return c.ref(field+".person_ref", v.PersonRef)
	}
	c.failf(field, "is required: id_number or person_ref")
	return ""
}

// party turns a PartyRef into (province, person_ref). The ref of an ID
// number is computed with the national person key, so a person of another
// province can be named by ID number here without it leaving this node.
func (c *edge) party(svc *sharing.Service, field string, p *provincev1.PartyRef) (string, string) {
	if p == nil {
		c.failf(field, "is required")
		return "", ""
	}
	prov := c.province(field+".province_code", p.GetProvinceCode())
	switch v := p.GetId().(type) {
	case *provincev1.PartyRef_IdNumber:
		return prov, c.idNumber(svc, field+".id_number", v.IdNumber)
	case *provincev1.PartyRef_PersonRef:
		return prov, c.ref(field+".person_ref", v.PersonRef)
	}
	c.failf(field, "is required: id_number or person_ref")
	return prov, ""
}

func (c *edge) idNumber(svc *sharing.Service, field, v string) string {
	ref, err := svc.Ref(v)
	if err != nil {
		var fe *sharing.FieldError
		if errors.As(err, &fe) {
			err = fe.Err
		}
		c.failf(field, "%v", err)
		return ""
	}
	return ref
}
