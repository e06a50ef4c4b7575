// Package auditlog writes the audit trail of gongji's two kinds of database
// (issue #10, item 10): one row in audit_records for every call of a
// state-changing RPC and for every state-changing operator command — who
// (the caller's certificate identity, or "operator-cli:<os user>"), what (the
// full gRPC method or the command path), when, the outcome, the request id,
// and a ref naming what the call acted on (a usage key, a relationship id, a
// period). It is not the §11 export bundle (package audit).
//
// # Same transaction
//
// A server interceptor (or the operator command) attaches a *Call to the
// request's context. The stores' transaction helpers (provincedb.tryTx,
// clearingdb.inTx, clearingdb.LogSwitch) ask Begin for the call's Attempt and
// insert the call's row inside their transaction, just before COMMIT (one
// INSERT … RETURNING, a prepared statement on a pooled connection), so the
// record commits or rolls back with the change it describes. The first
// transaction of a call that commits carries its row; later transactions of
// the same call write none. Helper transactions that are not the call's
// change (a clearing period created on demand, the CLOSING marker of a close)
// run under Without.
//
// A call that committed nothing — refused at the edge, failed, or answered
// from a stored first answer outside any transaction — gets its row from
// Finish, in a statement of its own after the handler returned, with the
// outcome of its error. That row is best effort: if it cannot be written the
// failure is logged and the caller's answer stands. A call that committed a
// row with outcome "ok" and then failed anyway (a later step of a
// multi-transaction operation) gets a second row with the error outcome, so
// the trail never shows a failed call as a plain success.
//
// # Outcomes
//
//   - "ok": the change committed;
//   - "replayed": an idempotent retry answered with the stored first answer
//     (when the store or the response says so; otherwise a replay is "ok");
//   - "refused: <reason>": a domain refusal that is itself committed as data
//     (a usage refused over quota is stored with its refusal; a statement
//     answer after the window commits the deemed confirmation), set with
//     SetOutcome or decided in SQL by InsertOutcomeFrom;
//   - "<gRPC code>" or "<gRPC code>: <ErrorInfo reason>" for a failed RPC,
//     "error: <message>" for a failed command (OutcomeOf).
//
// # Streams
//
// ReportUsage is one long stream: a row per stream would say nothing about
// what was stored. Its handler opens a Child call per batch (ref "batch <id>
// seq <first>-<last>"), which IngestBatch's transaction records. The stream's
// own row is written only when no batch was recorded (a stream refused or
// closed before its first batch).
//
// # Personal data
//
// Actors are certificate identities, refs are keys, ids, periods and person
// refs (HMAC). Every text that goes into a row passes Clean, which drops
// control characters, bounds the length and masks every 18-character window
// that is a GB 11643 identity number (pii.MaskAll, overlapping numbers
// included), so even a client that puts an ID number into a key or its
// request id leaves only "1101**********123X" behind. The stores refuse
// keys that contain an ID number before any transaction (sharing, clearingdb,
// and the gRPC edges), so such a call ends as a refusal; the masking here is
// for what reaches a row without passing those checks (a request id, the
// ref of a call refused at the edge).
//
// A ref is written masked, so SQL that finds an outcome by the ref
// (InsertOutcomeFrom's {ref}) cannot find a row stored under a key that
// contains an ID number: such a call would be recorded "ok" whatever it
// stored. That is why no store may accept such a key: provincedb's
// "refused: <REFUSAL>" lookup by usage key relies on sharing refusing them.
package auditlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"gongji/internal/pii"
)

// Outcomes of a successful call (see the package doc).
const (
	OutcomeOK       = "ok"
	OutcomeReplayed = "replayed"
)

// Refused is the outcome of a domain refusal committed as data.
func Refused(reason string) string { return "refused: " + reason }

// Column limits, in bytes (≤ characters), equal to the CHECK constraints of
// audit_records in both databases' migrations.
const (
	ActorLenMax     = 128
	MethodLenMax    = 128
	RequestIDLenMax = 128
	OutcomeLenMax   = 256
	RefLenMax       = 128
)

// RequestIDHeader is the gRPC metadata key of a request id: read from the
// incoming call when the client sent a usable one, sent back as a response
// header, and forwarded on the calls a server makes for the request
// (UnaryClientInterceptor), so one request id names the rows it left in
// every database of the federation.
const RequestIDHeader = "x-request-id"

// standaloneTimeout bounds Finish's own INSERT; it runs detached from the
// call's context, which may already be cancelled.
const standaloneTimeout = 5 * time.Second

// Querier runs one statement: a *pgxpool.Pool, a pgx.Tx or a connection.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Options configure New.
type Options struct {
	// DB receives the rows Finish writes in their own statement (a pool).
	// Required.
	DB Querier
	// Log receives the failures of those writes. Default nop.
	Log *zap.Logger
	// Clock is the "at" of a call (its start). Default time.Now; the
	// servers pass their operational clock (--clock-start).
	Clock func() time.Time
}

// Recorder starts calls on one database. Safe for concurrent use.
type Recorder struct {
	db  Querier
	log *zap.Logger
	now func() time.Time
}

// New returns a Recorder. Errors: a nil DB.
func New(o Options) (*Recorder, error) {
	if o.DB == nil {
		return nil, errors.New("auditlog: a DB is required")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	return &Recorder{db: o.DB, log: o.Log, now: o.Clock}, nil
}

// Call is one audited call in progress. Its methods are safe for concurrent
// use and do nothing on a nil *Call, so code that runs both with and without
// an audited caller needs no checks.
type Call struct {
	rec                      *Recorder
	parent                   *Call
	actor, method, requestID string
	at                       time.Time

	mu       sync.Mutex
	ref      string
	outcome  string // outcome of a successful call; "" = OutcomeOK
	recorded bool   // a row of this call committed
	stored   string // the outcome of that row
	children int    // rows of child calls committed
}

type ctxKey struct{}

// Start opens a call and returns a context carrying it. actor, method and
// requestID are cleaned (Clean); an empty or unusable request id (see
// RequestID) is replaced by a generated one.
func (r *Recorder) Start(ctx context.Context, actor, method, requestID string) (context.Context, *Call) {
	c := &Call{
		rec: r, actor: Clean(actor, ActorLenMax), method: Clean(method, MethodLenMax),
		requestID: RequestID(requestID), at: r.now(),
	}
	if c.actor == "" {
		c.actor = "unknown"
	}
	return context.WithValue(ctx, ctxKey{}, c), c
}

// FromContext returns the call of ctx, or nil.
func FromContext(ctx context.Context) *Call {
	c, _ := ctx.Value(ctxKey{}).(*Call)
	return c
}

// WithCall returns ctx carrying c.
func WithCall(ctx context.Context, c *Call) context.Context {
	return context.WithValue(ctx, ctxKey{}, c)
}

// Without returns ctx with no call: transactions run under it record
// nothing. For helper transactions that are not the change a call makes.
func Without(ctx context.Context) context.Context {
	return context.WithValue(ctx, ctxKey{}, (*Call)(nil))
}

// Child opens a call of its own for one part of the call in ctx (a batch of
// a stream): same actor, method and request id, its own ref and time, its
// own row. A committed child row counts as a row of the parent (Finish of
// the parent then writes none). Without a call in ctx it returns ctx and nil.
func Child(ctx context.Context, ref string) (context.Context, *Call) {
	p := FromContext(ctx)
	if p == nil {
		return ctx, nil
	}
	c := &Call{rec: p.rec, parent: p, actor: p.actor, method: p.method, requestID: p.requestID, at: p.rec.now(),
		ref: Clean(ref, RefLenMax)}
	return context.WithValue(ctx, ctxKey{}, c), c
}

// RequestIDOf is the request id of the call in ctx, or "".
func RequestIDOf(ctx context.Context) string { return FromContext(ctx).RequestID() }

// Actor, Method and RequestID return the call's fields ("" for nil).
func (c *Call) Actor() string {
	if c == nil {
		return ""
	}
	return c.actor
}

// Method is the call's method or command.
func (c *Call) Method() string {
	if c == nil {
		return ""
	}
	return c.method
}

// RequestID is the call's request id.
func (c *Call) RequestID() string {
	if c == nil {
		return ""
	}
	return c.requestID
}

// SetRef names what the call acts on (cleaned). The last value set before
// the row is written wins.
func (c *Call) SetRef(ref string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ref = Clean(ref, RefLenMax)
}

// SetOutcome sets the outcome the call's row will carry if the call
// succeeds (OutcomeReplayed, Refused(...)); the outcome of a failed call
// comes from its error. Inside a store transaction it applies to that
// attempt only: a rolled-back attempt restores the previous value.
func (c *Call) SetOutcome(outcome string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.outcome = Clean(outcome, OutcomeLenMax)
}

// SetRef sets the ref of the call in ctx, if any.
func SetRef(ctx context.Context, ref string) { FromContext(ctx).SetRef(ref) }

// SetOutcome sets the outcome of the call in ctx, if any.
func SetOutcome(ctx context.Context, outcome string) { FromContext(ctx).SetOutcome(outcome) }

// Recorded reports whether a row of c (or of a child) has committed, and the
// outcome of c's own row.
func (c *Call) Recorded() (bool, string) {
	if c == nil {
		return false, ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recorded || c.children > 0, c.stored
}

// markRecorded notes a committed row of c with outcome.
func (c *Call) markRecorded(outcome string) {
	c.mu.Lock()
	c.recorded, c.stored = true, outcome
	p := c.parent
	c.mu.Unlock()
	if p != nil {
		p.mu.Lock()
		p.children++
		p.mu.Unlock()
	}
}

// record returns the row's values with the given outcome ("" = the preset
// outcome or OutcomeOK).
func (c *Call) record(outcome string) []any {
	c.mu.Lock()
	defer c.mu.Unlock()
	if outcome == "" {
		outcome = c.outcome
	}
	if outcome == "" {
		outcome = OutcomeOK
	}
	var ref any
	if c.ref != "" {
		ref = c.ref
	}
	return []any{c.at, c.actor, c.method, c.requestID, outcome, ref}
}

// insertSQL is the INSERT of one row with its parameters numbered from
// first; outcomeExpr, when not empty, is a scalar SQL expression (it may use
// {ref} for the ref parameter) whose non-NULL value replaces the outcome.
func insertSQL(first int, outcomeExpr string) string {
	p := func(i int) string { return "$" + strconv.Itoa(first+i) }
	outcome := p(4)
	if outcomeExpr != "" {
		outcome = "coalesce(" + strings.ReplaceAll(outcomeExpr, "{ref}", p(5)+"::text") + ", " + p(4) + ")"
	}
	return `INSERT INTO audit_records (at, actor, method, request_id, outcome, ref) VALUES (` +
		p(0) + ", " + p(1) + ", " + p(2) + ", " + p(3) + ", " + outcome + ", " + p(5) + `) RETURNING outcome`
}

// Attempt is one transaction's part in recording its call. A store's
// transaction helper calls Begin when the transaction starts, Insert (or
// InsertOutcomeFrom, or Statement and Wrote) just before COMMIT, and End
// with the commit's result. Every method is a no-op on a nil *Attempt.
type Attempt struct {
	c       *Call
	saved   string // the call's preset outcome when the attempt began
	written string // the outcome this attempt inserted ("" = none)
}

// Begin returns the Attempt of the call in ctx, or nil when there is no
// call or its row has already committed (a later transaction of the call).
func Begin(ctx context.Context) *Attempt {
	c := FromContext(ctx)
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recorded {
		return nil
	}
	return &Attempt{c: c, saved: c.outcome}
}

// Insert writes the call's row with q, inside the caller's transaction.
// Errors: the database's (the transaction must then not commit).
func (a *Attempt) Insert(ctx context.Context, q Querier) error {
	return a.InsertOutcomeFrom(ctx, q, "")
}

// InsertOutcomeFrom is Insert with the outcome decided in the same statement
// by outcomeExpr, a scalar SQL expression over the transaction's rows that
// may name the call's ref as {ref}; when it yields NULL the call's outcome
// is used. One statement, so a store can derive the outcome from what it
// just wrote without another round trip.
func (a *Attempt) InsertOutcomeFrom(ctx context.Context, q Querier, outcomeExpr string) error {
	if a == nil {
		return nil
	}
	var got string
	if err := q.QueryRow(ctx, insertSQL(1, outcomeExpr), a.c.record("")...).Scan(&got); err != nil {
		return fmt.Errorf("audit record of %s: %w", a.c.method, err)
	}
	a.written = got
	return nil
}

// Statement returns the INSERT … RETURNING outcome of the call's row with
// its parameters numbered from first, and their values, for folding into
// another statement (a data-modifying CTE). Call Wrote with the returned
// outcome, then End. A nil Attempt returns "" and nil.
func (a *Attempt) Statement(first int) (string, []any) {
	if a == nil {
		return "", nil
	}
	return insertSQL(first, ""), a.c.record("")
}

// Wrote notes that the folded statement inserted the row with outcome.
func (a *Attempt) Wrote(outcome string) {
	if a != nil {
		a.written = outcome
	}
}

// End closes the attempt with the result of its COMMIT (or of its single
// autocommitted statement): on success the call is recorded, with the
// outcome the row carries; on failure nothing of the attempt counts and the
// outcome set during it is undone.
func (a *Attempt) End(err error) {
	if a == nil {
		return
	}
	if err == nil && a.written != "" {
		a.c.markRecorded(a.written)
		return
	}
	if err != nil {
		a.c.mu.Lock()
		a.c.outcome = a.saved
		a.c.mu.Unlock()
	}
}

// Finish ends a call with the error it answered (nil for success) and
// writes its row in a statement of its own when no transaction of the call
// recorded one (see the package doc for the cases). The write is detached
// from ctx's cancellation and bounded by a few seconds; a failure is logged,
// never returned: the audit row of a failed call must not change the
// caller's answer.
func (c *Call) Finish(ctx context.Context, err error) {
	if c == nil {
		return
	}
	recorded, stored := c.Recorded()
	outcome := ""
	switch {
	case err == nil && recorded:
		return
	case err == nil:
		// outcome "" = the preset one, or OK
	case !recorded:
		outcome = OutcomeOf(err)
	case stored == OutcomeOK || stored == OutcomeReplayed:
		// A step committed as a success, then the call failed.
		outcome = OutcomeOf(err)
	default:
		return // the committed row already says how the call ended
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), standaloneTimeout)
	defer cancel()
	var got string
	if werr := c.rec.db.QueryRow(wctx, insertSQL(1, ""), c.record(outcome)...).Scan(&got); werr != nil {
		c.rec.log.Error("audit record could not be written", zap.String("method", c.method),
			zap.String("request_id", c.requestID), zap.String("outcome", outcome), zap.Error(werr))
		return
	}
	c.markRecorded(got)
}

// OutcomeOf is the outcome of a failed call: the gRPC code of a status
// ("InvalidArgument"), with the reason of its google.rpc.ErrorInfo detail
// when it has one ("ResourceExhausted: QUOTA_EXCEEDED"); for an error that
// is not a status (an operator command), "error: " and its message, cleaned.
func OutcomeOf(err error) string {
	if err == nil {
		return OutcomeOK
	}
	st, ok := status.FromError(err)
	if !ok {
		return Clean("error: "+err.Error(), OutcomeLenMax)
	}
	out := st.Code().String()
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() != "" {
			return Clean(out+": "+info.GetReason(), OutcomeLenMax)
		}
	}
	return out
}

// RequestID returns s if it is a usable request id — 1 to RequestIDLenMax
// characters from [A-Za-z0-9._:/+=-] — with any identity number in it
// masked, else a new one (NewRequestID).
func RequestID(s string) string {
	if s == "" || len(s) > RequestIDLenMax {
		return NewRequestID()
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("._:/+=-", c) >= 0
		if !ok {
			return NewRequestID()
		}
	}
	return pii.MaskAll(s)
}

// NewRequestID returns a random version-4 UUID: unique, and with at most 12
// digits in a row it can never look like an identity number.
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Clean makes s fit an audit column: valid UTF-8 without control
// characters, at most max bytes (cut at a rune boundary), every GB 11643
// identity number in it masked (pii.MaskAll).
func Clean(s string, max int) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
	s = pii.MaskAll(s)
	if len(s) > max {
		n := max
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n]
	}
	return s
}
