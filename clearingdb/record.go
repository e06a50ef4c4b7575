package clearingdb

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strings"
	"time"

	"gongji/internal/pii"
	"gongji/money"
	"gongji/region"
	"gongji/settlement"
)

// RecordKind is what an outbox record reports (proto RecordKind).
type RecordKind string

const (
	RecordUsage        RecordKind = "USAGE"
	RecordReversal     RecordKind = "REVERSAL"
	RecordRelationship RecordKind = "RELATIONSHIP"
)

// Role is the reporting node's side of a usage (proto ReporterRole).
type Role string

const (
	RolePayer Role = "PAYER" // the sharer's node: it debited the quota
	RolePayee Role = "PAYEE" // the beneficiary's node: its institution was paid
	RoleLocal Role = "LOCAL" // same-province sharing: counted, settled inside the province
)

// Record is one outbox record as a node sent it (proto UsageRecord), in wire
// form: IngestBatch validates every field, so the gRPC layer only copies.
type Record struct {
	Seq        int64 // the node's outbox sequence number, > 0
	Kind       RecordKind
	Role       Role   // USAGE and REVERSAL; ignored for RELATIONSHIP
	UsageKey   string // the usage's key; for a reversal the reversal's own key
	ReversalOf string // REVERSAL: the reversed usage's key
	UsageKind  string // MEDICAL, PHARMACY, RESIDENT_PREMIUM, LTC_PREMIUM
	// Codes (6-digit GB/T 2260); each region must lie in its province.
	PayerProvince, PayerRegion string
	PayeeProvince, PayeeRegion string
	// Amount in yuan, a positive decimal with at most two places; a
	// reversal's sign comes from its kind.
	Amount     string
	OccurredAt time.Time
	// SharerRef and BeneficiaryRef are person pseudonyms, never ID numbers.
	SharerRef, BeneficiaryRef string
	RelationshipID            string
	Relationship              *RelationshipChange // RELATIONSHIP records only
}

// RelationshipChange is the part of a relationship snapshot the clearing
// service counts.
type RelationshipChange struct {
	RelationshipID      string
	Version             int64
	Status              string // PENDING, ACTIVE, DECLINED, EXPIRED, DISSOLVED
	SharerProvince      string
	BeneficiaryProvince string
	ChangedAt           time.Time
}

// Rejection names a record refused at the edge; it is acknowledged all the
// same (proto RecordRejection).
type Rejection struct {
	Seq    int64
	Reason string
}

// Ack answers one batch (proto ReportAck).
type Ack struct {
	// Seqs: every distinct seq of the batch, ascending. All are durably
	// handled: stored, recognised as duplicates, or rejected.
	Seqs []int64
	// Stored counts records that changed the clearing state: a new usage row,
	// the second side of a usage, a relationship event, a counted local usage.
	Stored int64
	// Duplicates counts records already handled: a seq seen before (in an
	// earlier batch or twice in this one), or the same usage key from the same
	// side with the same payload under another seq.
	Duplicates int64
	// Rejected lists refused records in seq order (only those of this call;
	// a replayed rejected record counts as a duplicate).
	Rejected []Rejection
}

// Field limits checked at the edge.
const (
	keyLenMax = settlement.UsageIDLenMax // usage, reversal and relationship ids
	refLenMax = 64                       // person pseudonyms
	// hashLen: the payload hash compared between reports of the same side is
	// the first 16 bytes of a SHA-256 (128 bits: no accidental collision).
	hashLen = 16
)

// Stage statuses set at the edge; the SQL pipeline sets the others (new,
// merge, dupkey, conflict).
const (
	statusInvalid = "invalid"
	statusRel     = "rel"
	statusLocal   = "local"
)

// stageRow is one row of the staging table, in COPY column order.
type stageRow struct {
	seq             int64
	status          *string
	recKind         string
	role            string
	usageID         string
	reversalOf      *string
	kind            string
	entryType       string
	payerProvince   string
	payerRegion     string
	payeeProvince   string
	payeeRegion     string
	amountFen       int64 // signed
	occurredAt      time.Time
	own             region.Period // own month; setlym/late are set after assignment
	setlym          int32
	late            bool
	sharerRef       string
	beneficiaryRef  string
	relationshipID  string
	relVersion      int64
	relStatus       string
	relBeneficiary  string
	hash            []byte
	reject          string
	raw             []byte // JSON of the record, for rejects found at the edge
	needsAssignment bool   // a cleared row: its period must be assigned and locked
}

// validKey: 1..n printable ASCII characters without space, and no GB 11643
// identity number anywhere in it (pii.ContainsID).
//
// Every key the clearing database takes from a caller — usage and reversal
// keys and relationship ids of reports, statement answer keys, disputed and
// resolved usage ids, resolution keys, prepay movement keys, switch log keys
// — is an opaque identifier stored, logged and (usage ids) exported in
// usages.csv as it is. A key containing an ID number is refused like any
// malformed key, before anything is written (a report record carrying one is
// rejected, stored masked in report_rejects and acknowledged): there is no
// reason to ever put an ID number into a key, and a masked key would no
// longer name what it names.
func validKey(s string, n int) bool {
	if s == "" || len(s) > n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return !pii.ContainsID(s)
}

// validRef: 1..64 characters of [0-9A-Za-z_-], not shaped like an ID number,
// and containing none unless it has the exact person_ref form: only
// pseudonyms leave a province (docs/architecture.md, "Identity and personal
// data"), so a citizen identity number in a ref field is refused before it
// could be stored, exported or logged. A person_ref (32 lowercase hex, an
// HMAC) is accepted whatever digits it holds: about one in 10^6 has a run
// of 18 digits that reads as a valid number by chance, and refusing it
// would refuse every usage of a real person.
func validRef(s string) bool {
	if s == "" || len(s) > refLenMax || looksLikeIDNumber(s) || (!pii.IsRef(s) && pii.ContainsID(s)) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// looksLikeIDNumber: 18 characters, 17 digits and a digit or X (GB
// 11643-1999 shape), whatever the check digit: a mistyped number is personal
// data too.
func looksLikeIDNumber(s string) bool {
	if len(s) != 18 {
		return false
	}
	for i := 0; i < 17; i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	c := s[17]
	return c >= '0' && c <= '9' || c == 'X' || c == 'x'
}

// reasonOf is the text of a money or region error without the value it
// quotes: a rejection reason is stored, acknowledged to the node and logged,
// and must not carry a hostile value (an ID number in the wrong field, a
// megabyte of junk). Six-digit codes are named by the region package as they
// are, which is safe.
func reasonOf(err error) string {
	for _, s := range []error{money.ErrEmpty, money.ErrInputTooLong, money.ErrSyntax, money.ErrTooPrecise,
		money.ErrOutOfRange, money.ErrNotPositive, region.ErrBadCode} {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return err.Error()
}

// codeText is code when it has the form of a code (six ASCII digits), else
// a description: a reason never repeats a malformed value.
func codeText(code string) string {
	if len(code) != 6 {
		return "(not a six-digit code)"
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return "(not a six-digit code)"
		}
	}
	return code
}

// storable replaces NUL and invalid UTF-8 with U+FFFD (PostgreSQL text and
// jsonb hold neither), then masks every GB 11643 identity number
// (pii.MaskAll): a record refused at ingest is kept for the province's
// support staff, and an ID number a node typed into one of its text fields
// (a key, a ref, a code, an amount) must not be stored in clear. Masking
// rather than refusing, because losing the rejected record would leave
// support staff nothing to work with; the record is rejected anyway.
func storable(s string) string {
	return pii.MaskAll(strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", "\uFFFD"), "\uFFFD"))
}

// storableRecordJSON is a rejected record as report_rejects keeps it: every
// text field storable (valid text, ID numbers masked).
type storableRecordJSON struct {
	Seq                                       int64
	Kind, Role, UsageKey, ReversalOf          string
	UsageKind, PayerProvince, PayerRegion     string
	PayeeProvince, PayeeRegion, Amount        string
	OccurredAt                                time.Time
	SharerRef, BeneficiaryRef, RelationshipID string
	Relationship                              *RelationshipChange
}

func storableRecord(r Record) storableRecordJSON {
	out := storableRecordJSON{Seq: r.Seq, Kind: storable(string(r.Kind)), Role: storable(string(r.Role)),
		UsageKey: storable(r.UsageKey), ReversalOf: storable(r.ReversalOf), UsageKind: storable(r.UsageKind),
		PayerProvince: storable(r.PayerProvince), PayerRegion: storable(r.PayerRegion),
		PayeeProvince: storable(r.PayeeProvince), PayeeRegion: storable(r.PayeeRegion), Amount: storable(r.Amount),
		OccurredAt: r.OccurredAt, SharerRef: storable(r.SharerRef), BeneficiaryRef: storable(r.BeneficiaryRef),
		RelationshipID: storable(r.RelationshipID)}
	if c := r.Relationship; c != nil {
		out.Relationship = &RelationshipChange{RelationshipID: storable(c.RelationshipID), Version: c.Version,
			Status: storable(c.Status), SharerProvince: storable(c.SharerProvince),
			BeneficiaryProvince: storable(c.BeneficiaryProvince), ChangedAt: c.ChangedAt}
	}
	return out
}

// validateRecord checks r as reported by caller and builds its stage row.
// An invalid record gets status "invalid" and a reason; it is still staged
// so that it is receipted (and acknowledged) exactly once.
func validateRecord(caller string, r *Record, now time.Time, skewMax time.Duration, h hash.Hash) stageRow {
	row := stageRow{seq: r.Seq, recKind: string(r.Kind), role: string(r.Role), usageID: r.UsageKey}
	if reason := fillRow(caller, r, now, skewMax, &row); reason != "" {
		// A rejected record is stored as it came (report_rejects), but text
		// columns cannot hold NUL or invalid UTF-8 (those become U+FFFD),
		// and every ID number in it is masked (storable), in the record,
		// its usage_id column and the reason alike. The reason is also
		// the acknowledgement's: the same masked text goes back to the node.
		st := statusInvalid
		clean := storableRecord(*r)
		row = stageRow{seq: r.Seq, status: &st, recKind: clean.Kind, role: clean.Role, reject: storable(reason)}
		if len(clean.UsageKey) <= keyLenMax {
			row.usageID = clean.UsageKey
		}
		row.raw, _ = json.Marshal(clean) // plain struct of strings and times: cannot fail
		return row
	}
	if row.needsAssignment {
		row.hash = contentHash(h, r, row.amountFen)
	}
	return row
}

// fillRow validates and fills row; it returns "" or the reason for refusal.
func fillRow(caller string, r *Record, now time.Time, skewMax time.Duration, row *stageRow) string {
	switch r.Kind {
	case RecordUsage, RecordReversal:
	case RecordRelationship:
		return fillRelationship(caller, r, now, skewMax, row)
	default:
		return fmt.Sprintf("unknown record kind %q", r.Kind)
	}
	if !validKey(r.UsageKey, keyLenMax) {
		return fmt.Sprintf("usage key must be 1..%d printable ASCII characters, containing no ID number", keyLenMax)
	}
	if r.Kind == RecordReversal {
		if !validKey(r.ReversalOf, keyLenMax) || r.ReversalOf == r.UsageKey {
			return "a reversal must name the usage it reverses (reversal_of: a key containing no ID number)"
		}
		rev := r.ReversalOf
		row.reversalOf = &rev
		row.entryType = string(settlement.EntryReversal)
	} else {
		if r.ReversalOf != "" {
			return "a usage has no reversal_of"
		}
		row.entryType = string(settlement.EntryUsage)
	}
	kind, err := settlement.ParseKind(r.UsageKind)
	if err != nil {
		return err.Error()
	}
	row.kind = string(kind)
	for _, p := range []struct{ side, province string }{{"payer", r.PayerProvince}, {"payee", r.PayeeProvince}} {
		if _, err := region.ParseProvince(p.province); err != nil {
			return p.side + ": " + reasonOf(err)
		}
	}
	if _, err := region.ParseRegionIn(r.PayerRegion, r.PayerProvince); err != nil {
		return "payer: " + reasonOf(err)
	}
	if _, err := region.ParseRegionIn(r.PayeeRegion, r.PayeeProvince); err != nil {
		return "payee: " + reasonOf(err)
	}
	row.payerProvince, row.payerRegion = r.PayerProvince, r.PayerRegion
	row.payeeProvince, row.payeeRegion = r.PayeeProvince, r.PayeeRegion
	amount, err := money.ParsePositive(r.Amount)
	if err != nil {
		return "amount: " + reasonOf(err)
	}
	row.amountFen = amount.Fen()
	if r.Kind == RecordReversal {
		row.amountFen = -row.amountFen
	}
	if reason := checkTime(r.OccurredAt, now, skewMax); reason != "" {
		return "occurred_at " + reason
	}
	row.occurredAt = r.OccurredAt.Truncate(time.Microsecond) // PostgreSQL precision
	row.own = region.PeriodOf(row.occurredAt)
	if !validRef(r.SharerRef) || !validRef(r.BeneficiaryRef) {
		return fmt.Sprintf("sharer_ref and beneficiary_ref must be 1..%d characters of [0-9A-Za-z_-], never an ID number", refLenMax)
	}
	row.sharerRef, row.beneficiaryRef = r.SharerRef, r.BeneficiaryRef
	if r.RelationshipID != "" && !validKey(r.RelationshipID, keyLenMax) {
		return fmt.Sprintf("relationship_id must be at most %d printable ASCII characters, containing no ID number", keyLenMax)
	}
	row.relationshipID = r.RelationshipID
	cross := r.PayerProvince != r.PayeeProvince
	switch r.Role {
	case RolePayer:
		if r.PayerProvince != caller {
			return fmt.Sprintf("a PAYER report of %s must have payer_province %s, not %s", caller, caller, codeText(r.PayerProvince))
		}
	case RolePayee:
		if r.PayeeProvince != caller {
			return fmt.Sprintf("a PAYEE report of %s must have payee_province %s, not %s", caller, caller, codeText(r.PayeeProvince))
		}
	case RoleLocal:
		if r.PayerProvince != caller || r.PayeeProvince != caller {
			return fmt.Sprintf("a LOCAL report of %s must have payer and payee in %s", caller, caller)
		}
		st := statusLocal
		row.status = &st
		row.setlym = int32(row.own.Int())
		return ""
	default:
		return fmt.Sprintf("unknown reporter role %q", r.Role)
	}
	if !cross {
		return fmt.Sprintf("a %s report must be cross-province (payer and payee both %s): same-province usage is LOCAL (R13)", r.Role, r.PayerProvince)
	}
	row.needsAssignment = true
	return ""
}

func fillRelationship(caller string, r *Record, now time.Time, skewMax time.Duration, row *stageRow) string {
	c := r.Relationship
	if c == nil {
		return "a RELATIONSHIP record needs the relationship"
	}
	if !validKey(c.RelationshipID, keyLenMax) {
		return fmt.Sprintf("relationship id must be 1..%d printable ASCII characters, containing no ID number", keyLenMax)
	}
	if r.RelationshipID != "" && r.RelationshipID != c.RelationshipID {
		return "relationship_id differs from the relationship's id"
	}
	if c.Version < 1 {
		return "relationship version must be >= 1"
	}
	switch c.Status {
	case "PENDING", "ACTIVE", "DECLINED", "EXPIRED", "DISSOLVED":
	default:
		return fmt.Sprintf("unknown relationship status %q", c.Status)
	}
	if _, err := region.ParseProvince(c.SharerProvince); err != nil {
		return "sharer: " + reasonOf(err)
	}
	if _, err := region.ParseProvince(c.BeneficiaryProvince); err != nil {
		return "beneficiary: " + reasonOf(err)
	}
	if caller != c.SharerProvince && caller != c.BeneficiaryProvince {
		return fmt.Sprintf("%s is neither the sharer's (%s) nor the beneficiary's (%s) province", caller, c.SharerProvince, c.BeneficiaryProvince)
	}
	if reason := checkTime(c.ChangedAt, now, skewMax); reason != "" {
		return "relationship updated_at " + reason
	}
	st := statusRel
	row.status = &st
	row.usageID = ""
	row.relationshipID = c.RelationshipID
	row.relVersion = c.Version
	row.relStatus = c.Status
	row.payerProvince = c.SharerProvince
	row.relBeneficiary = c.BeneficiaryProvince
	row.occurredAt = c.ChangedAt.Truncate(time.Microsecond)
	row.own = region.PeriodOf(row.occurredAt)
	row.setlym = int32(row.own.Int())
	return ""
}

func checkTime(t, now time.Time, skewMax time.Duration) string {
	if t.IsZero() {
		return "is not set"
	}
	if t.After(now.Add(skewMax)) {
		return fmt.Sprintf("%s is more than %s after the clearing service's clock", t.In(region.Shanghai).Format(time.RFC3339), skewMax)
	}
	if y := t.In(region.Shanghai).Year(); y < 2000 || y > 2999 {
		return "is outside the years 2000-2999"
	}
	return ""
}

// contentHash is the first 16 bytes of a SHA-256 over the record's content:
// every field the two sides' reports are compared on, but not the reporting
// role, so that the payer's and the payee's reports of one usage hash alike
// exactly when they agree. Two reports from the same side with the same hash
// are the same report (a duplicate); with different hashes, a conflict.
func contentHash(h hash.Hash, r *Record, amountFen int64) []byte {
	h.Reset()
	var buf [8]byte
	for _, f := range [...]string{string(r.Kind), r.UsageKey, r.ReversalOf, r.UsageKind,
		r.PayerProvince, r.PayerRegion, r.PayeeProvince, r.PayeeRegion,
		r.SharerRef, r.BeneficiaryRef, r.RelationshipID} {
		h.Write([]byte(f))
		h.Write([]byte{0x1f})
	}
	binary.BigEndian.PutUint64(buf[:], uint64(amountFen))
	h.Write(buf[:])
	binary.BigEndian.PutUint64(buf[:], uint64(r.OccurredAt.Truncate(time.Microsecond).UnixMicro()))
	h.Write(buf[:])
	return h.Sum(nil)[:hashLen]
}

func newHash() hash.Hash { return sha256.New() }
