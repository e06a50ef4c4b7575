package audit

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"gongji/money"
	"gongji/region"
)

// Names of the files of a bundle (DESIGN §11).
const (
	FileUsages       = "usages.csv"
	FileGross        = "gross.csv"
	FilePositions    = "positions.csv"
	FileAllocation   = "allocation.csv"
	FileInstructions = "instructions.csv"
	FilePrepay       = "prepay.csv"
	FileManifest     = "manifest.json"
)

// CSVFiles lists the six CSV files in the order WriteBundle writes them.
// Do not modify.
var CSVFiles = []string{FileUsages, FileGross, FilePositions, FileAllocation, FileInstructions, FilePrepay}

// EntryType is the usages.csv entry_type column.
type EntryType string

// Entry types (DESIGN §11): a usage is positive, a reversal negative and names
// the usage it reverses, an adjustment has either sign and names the disputed
// usage.
const (
	EntryUsage      EntryType = "USAGE"
	EntryReversal   EntryType = "REVERSAL"
	EntryAdjustment EntryType = "ADJUSTMENT"
)

// Kind is the usages.csv kind column (R10).
type Kind string

// Usage kinds (R10).
const (
	KindMedical         Kind = "MEDICAL"
	KindPharmacy        Kind = "PHARMACY"
	KindResidentPremium Kind = "RESIDENT_PREMIUM"
	KindLTCPremium      Kind = "LTC_PREMIUM"
)

// Tier is the instructions.csv tier column (R16).
type Tier string

// Settlement tiers: national centre ↔ province, province ↔ pooling region.
const (
	TierNational Tier = "NATIONAL"
	TierProvince Tier = "PROVINCE"
)

// Errors wrapped by every refusal of the writer. Callers test with errors.Is;
// *RowError carries the file, line and column.
var (
	ErrInvalidRow        = errors.New("audit: invalid row")
	ErrUnsorted          = errors.New("audit: rows are not strictly ascending by key")
	ErrNotCanonical      = errors.New("audit: raw CSV line is not in canonical form")
	ErrLooksLikeIDNumber = errors.New("audit: value looks like a resident ID number")
	ErrControl           = errors.New("audit: source figures disagree with its usages")
	ErrBadMeta           = errors.New("audit: invalid bundle metadata")
	ErrDirNotEmpty       = errors.New("audit: output directory exists and is not empty")
	ErrNoRaw             = errors.New("audit: source has no raw CSV for this file")
	ErrTooManyRows       = errors.New("audit: too many rows to hold in memory")
	ErrLineTooLong       = errors.New("audit: CSV line too long")
)

// RowError names the row a refusal is about. Line is the 1-based line in the
// file as it would be written (the header is line 1, the first row line 2).
type RowError struct {
	File   string
	Line   int64
	Column string // "" when the whole row is meant
	Err    error
}

func (e *RowError) Error() string {
	if e.Column != "" {
		return fmt.Sprintf("%s line %d, column %s: %v", e.File, e.Line, e.Column, e.Err)
	}
	return fmt.Sprintf("%s line %d: %v", e.File, e.Line, e.Err)
}

func (e *RowError) Unwrap() error { return e.Err }

// UsageRow is one line of usages.csv: a cleared usage, reversal or adjustment.
type UsageRow struct {
	UsageID        string
	Period         region.Period // setlym: the period the row is cleared in
	EntryType      EntryType
	Kind           Kind
	PayerProvince  string // where the sharer's account is
	PayerRegion    string
	PayeeProvince  string // where the cost was paid
	PayeeRegion    string
	Amount         money.Yuan // signed: + usage, − reversal, ± adjustment
	OccurredAt     time.Time  // written in +08:00, whole seconds (truncated)
	Late           bool       // arrived after its own month's cut-off
	ReversalOf     string     // "" for a USAGE
	SharerRef      string     // keyed pseudonym, see Pseudonym
	BeneficiaryRef string
}

// GrossRow is one line of gross.csv: the sum of a (payer, payee) province pair.
type GrossRow struct {
	PayerProvince string
	PayeeProvince string
	Amount        money.Yuan
}

// PositionRow is one line of positions.csv (all 32 provincial units).
type PositionRow struct {
	ProvinceCode string
	Receivable   money.Yuan
	Payable      money.Yuan
	Net          money.Yuan // Receivable − Payable
}

// AllocationRow is one line of allocation.csv: a pooling region that appears
// in at least one row of usages.csv (as payer_region or payee_region).
type AllocationRow struct {
	ProvinceCode string
	RegionCode   string
	Receivable   money.Yuan
	Payable      money.Yuan
	Net          money.Yuan
}

// InstructionRow is one line of instructions.csv.
type InstructionRow struct {
	Tier     Tier
	FromCode string // payer: a province, a region, or the centre 000000
	ToCode   string
	Amount   money.Yuan // > 0
}

// PrepayRow is one line of prepay.csv (all 32 provincial units).
// DepositBefore and RequiredNext are inputs of the settlement; the other
// columns follow from them and the province's net (DESIGN §11).
type PrepayRow struct {
	ProvinceCode  string
	DepositBefore money.Yuan
	Drawn         money.Yuan
	Outstanding   money.Yuan
	DepositAfter  money.Yuan
	RequiredNext  money.Yuan
	Warning       bool
}

// ---- canonical field text ------------------------------------------------

const (
	idLenMax  = 128
	timeShape = "0000-00-00T00:00:00+08:00"
)

func fmtAmount(y money.Yuan) string {
	if f, ok := fenOf(y); ok {
		var b [24]byte
		return string(appendFen(b[:0], f))
	}
	return y.String()
}

func fmtBool(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// fmtTime writes whole seconds in +08:00. Truncation cannot move a row into
// another month, because month boundaries are whole seconds.
func fmtTime(t time.Time) string {
	return t.Truncate(time.Second).In(region.Shanghai).Format(time.RFC3339)
}

func parseAmount(s string) (money.Yuan, error) {
	y, err := money.Parse(s)
	if err != nil {
		return money.Yuan{}, err
	}
	if y.String() != s {
		return money.Yuan{}, fmt.Errorf("want exactly two decimals, no sign but '-', no leading zeros: %q", s)
	}
	return y, nil
}

func parseBool(s string) (bool, error) {
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("want true or false, got %q", s)
}

func parseTime(s string) (time.Time, error) {
	if len(s) != len(timeShape) || !strings.HasSuffix(s, "+08:00") {
		return time.Time{}, fmt.Errorf("want RFC 3339 whole seconds with +08:00, got %q", s)
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want RFC 3339 whole seconds with +08:00, got %q", s)
	}
	return t, nil
}

func parsePeriod(s string) (region.Period, error) {
	p, err := region.ParsePeriod(s)
	if err != nil {
		return region.Period{}, err
	}
	return p, nil
}

func isSixDigits(s string) bool {
	if len(s) != 6 {
		return false
	}
	for i := 0; i < 6; i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func checkRef(s string) error {
	if (len(s) != 32 && len(s) != 64) || !isLowerHex(s) {
		return fmt.Errorf("want 32 or 64 lowercase hex characters (a keyed pseudonym), got %d characters", len(s))
	}
	return nil
}

func checkID(s string) error {
	if s == "" || len(s) > idLenMax {
		return fmt.Errorf("want 1 to %d bytes, got %d", idLenMax, len(s))
	}
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) {
			return fmt.Errorf("control character %U", r)
		}
	}
	if looksLikeIDNumber(s) {
		return ErrLooksLikeIDNumber
	}
	return nil
}

// ---- row rules -------------------------------------------------------------

// fieldErr is a validation failure of one column; the emitter adds file and line.
type fieldErr struct {
	column string
	err    error
}

func (e *fieldErr) Error() string { return e.column + ": " + e.err.Error() }
func (e *fieldErr) Unwrap() error { return e.err }

func bad(column string, format string, args ...any) error {
	return &fieldErr{column, fmt.Errorf("%w: "+format, append([]any{ErrInvalidRow}, args...)...)}
}

func wrapBad(column string, err error) error {
	if errors.Is(err, ErrLooksLikeIDNumber) {
		return &fieldErr{column, err}
	}
	return &fieldErr{column, fmt.Errorf("%w: %v", ErrInvalidRow, err)}
}

func checkProvince(column, code string) error {
	if _, err := region.ParseProvince(code); err != nil {
		return wrapBad(column, err)
	}
	return nil
}

func checkRegionIn(column, code, province string) error {
	if _, err := region.ParseRegionIn(code, province); err != nil {
		return wrapBad(column, err)
	}
	return nil
}

func checkAmountRange(column string, y money.Yuan) error {
	if !y.InRange() {
		return bad(column, "%s exceeds NUMERIC(18,2)", y)
	}
	return nil
}

func (r *UsageRow) check(m *Meta) error {
	if err := checkID(r.UsageID); err != nil {
		return wrapBad("usage_id", err)
	}
	if r.Period != m.Period {
		return bad("setlym", "row is in %s, bundle is %s", r.Period, m.Period)
	}
	switch r.EntryType {
	case EntryUsage, EntryReversal, EntryAdjustment:
	default:
		return bad("entry_type", "unknown %q", r.EntryType)
	}
	switch r.Kind {
	case KindMedical, KindPharmacy, KindResidentPremium, KindLTCPremium:
	default:
		return bad("kind", "unknown %q", r.Kind)
	}
	if err := checkProvince("payer_province", r.PayerProvince); err != nil {
		return err
	}
	if err := checkRegionIn("payer_region", r.PayerRegion, r.PayerProvince); err != nil {
		return err
	}
	if err := checkProvince("payee_province", r.PayeeProvince); err != nil {
		return err
	}
	if err := checkRegionIn("payee_region", r.PayeeRegion, r.PayeeProvince); err != nil {
		return err
	}
	if r.PayerProvince == r.PayeeProvince {
		return bad("payee_province", "same province as the payer (%s): not cross-province (R13)", r.PayerProvince)
	}
	if err := checkAmountRange("amount", r.Amount); err != nil {
		return err
	}
	switch {
	case r.EntryType == EntryUsage && !r.Amount.IsPositive():
		return bad("amount", "a USAGE must be positive, got %s", r.Amount)
	case r.EntryType == EntryReversal && !r.Amount.IsNegative():
		return bad("amount", "a REVERSAL must be negative, got %s", r.Amount)
	case r.EntryType == EntryAdjustment && r.Amount.IsZero():
		return bad("amount", "an ADJUSTMENT must not be zero")
	}
	if r.OccurredAt.IsZero() {
		return bad("occurred_at", "missing")
	}
	op := region.PeriodOf(r.OccurredAt)
	if r.Late && !op.Before(r.Period) {
		return bad("occurred_at", "late row occurred in %s, want a month before %s", op, r.Period)
	}
	if !r.Late && op != r.Period {
		return bad("occurred_at", "row that is not late occurred in %s, want %s", op, r.Period)
	}
	if r.OccurredAt.After(m.ClosedAt) {
		return bad("occurred_at", "%s is after the period closed (%s)", fmtTime(r.OccurredAt), fmtTime(m.ClosedAt))
	}
	if r.EntryType == EntryUsage {
		if r.ReversalOf != "" {
			return bad("reversal_of", "a USAGE names no other usage, got %q", r.ReversalOf)
		}
	} else {
		if err := checkID(r.ReversalOf); err != nil {
			return wrapBad("reversal_of", err)
		}
		if r.ReversalOf == r.UsageID {
			return bad("reversal_of", "names the row itself")
		}
	}
	if err := checkRef(r.SharerRef); err != nil {
		return wrapBad("sharer_ref", err)
	}
	if err := checkRef(r.BeneficiaryRef); err != nil {
		return wrapBad("beneficiary_ref", err)
	}
	return nil
}

func (r *GrossRow) check(*Meta) error {
	if err := checkProvince("payer_province", r.PayerProvince); err != nil {
		return err
	}
	if err := checkProvince("payee_province", r.PayeeProvince); err != nil {
		return err
	}
	if r.PayerProvince == r.PayeeProvince {
		return bad("payee_province", "same as payer_province")
	}
	if r.Amount.IsZero() {
		return bad("amount", "zero sums are not listed")
	}
	return checkAmountRange("amount", r.Amount)
}

func checkRPN(rec, pay, net money.Yuan) error {
	for _, c := range []struct {
		n string
		y money.Yuan
	}{{"receivable", rec}, {"payable", pay}, {"net", net}} {
		if err := checkAmountRange(c.n, c.y); err != nil {
			return err
		}
	}
	if !rec.Sub(pay).Equal(net) {
		return bad("net", "want receivable − payable = %s, got %s", rec.Sub(pay), net)
	}
	return nil
}

func (r *PositionRow) check(*Meta) error {
	if err := checkProvince("province_code", r.ProvinceCode); err != nil {
		return err
	}
	return checkRPN(r.Receivable, r.Payable, r.Net)
}

func (r *AllocationRow) check(*Meta) error {
	if err := checkProvince("province_code", r.ProvinceCode); err != nil {
		return err
	}
	if err := checkRegionIn("region_code", r.RegionCode, r.ProvinceCode); err != nil {
		return err
	}
	return checkRPN(r.Receivable, r.Payable, r.Net)
}

func (r *InstructionRow) check(*Meta) error {
	if !isSixDigits(r.FromCode) {
		return bad("from_code", "want 6 digits, got %q", r.FromCode)
	}
	if !isSixDigits(r.ToCode) {
		return bad("to_code", "want 6 digits, got %q", r.ToCode)
	}
	switch r.Tier {
	case TierNational:
		switch {
		case r.FromCode == region.NationalCentre:
			if err := checkProvince("to_code", r.ToCode); err != nil {
				return err
			}
		case r.ToCode == region.NationalCentre:
			if err := checkProvince("from_code", r.FromCode); err != nil {
				return err
			}
		default:
			return bad("from_code", "a NATIONAL instruction is between a province and the centre %s", region.NationalCentre)
		}
	case TierProvince:
		if _, err := region.ParseProvince(r.FromCode); err == nil {
			if err := checkRegionIn("to_code", r.ToCode, r.FromCode); err != nil {
				return err
			}
		} else if err := checkProvince("to_code", r.ToCode); err != nil {
			return err
		} else if err := checkRegionIn("from_code", r.FromCode, r.ToCode); err != nil {
			return err
		}
	default:
		return bad("tier", "unknown %q", r.Tier)
	}
	if !r.Amount.IsPositive() {
		return bad("amount", "an instruction moves a positive amount, got %s", r.Amount)
	}
	return checkAmountRange("amount", r.Amount)
}

func (r *PrepayRow) check(*Meta) error {
	if err := checkProvince("province_code", r.ProvinceCode); err != nil {
		return err
	}
	for _, c := range []struct {
		n string
		y money.Yuan
	}{{"deposit_before", r.DepositBefore}, {"drawn", r.Drawn}, {"outstanding", r.Outstanding}, {"deposit_after", r.DepositAfter}, {"required_next", r.RequiredNext}} {
		if c.y.IsNegative() {
			return bad(c.n, "must not be negative, got %s", c.y)
		}
		if err := checkAmountRange(c.n, c.y); err != nil {
			return err
		}
	}
	if r.Drawn.GreaterThan(r.DepositBefore) {
		return bad("drawn", "%s exceeds deposit_before %s", r.Drawn, r.DepositBefore)
	}
	if !r.DepositBefore.Sub(r.Drawn).Equal(r.DepositAfter) {
		return bad("deposit_after", "want deposit_before − drawn = %s, got %s", r.DepositBefore.Sub(r.Drawn), r.DepositAfter)
	}
	return nil
}
