package clearingapi_test

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/clearingdb"
	"gongji/internal/pii"
	"gongji/money"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
)

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: code %v (%v), want %v", what, got, err, want)
	}
}

// oneRow checks that the switch log holds exactly the given outcomes for
// key, in order, and returns the rows.
func wantRows(t *testing.T, f *fixture, payer, key string, outcomes ...clearingdb.SwitchOutcome) []clearingdb.SwitchEntry {
	t.Helper()
	rows := f.switchRows(t, payer, key)
	var got []clearingdb.SwitchOutcome
	for _, r := range rows {
		got = append(got, r.Outcome)
	}
	if !slices.Equal(got, outcomes) {
		t.Fatalf("switch log of %s/%s: %v, want %v", payer, key, got, outcomes)
	}
	return rows
}

func TestAuthorizeRoutedReplayedAndRefused(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{peers: []string{henan}})
	node := f.peers[henan]
	node.setQuota("R1", "100.00")
	cli := f.switchClient(t, beijing)
	ctx := hang(t)

	req := &clearingv1.AuthorizeRequest{Debit: debit(t, "u-1", "R1", beijing, "30.00"), PayerProvince: henan}
	first, err := cli.Authorize(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	d := first.GetDebit()
	if d.GetUsageKey() != "u-1" || d.GetAmount() != "30.00" || d.GetQuotaRemaining() != "70.00" || d.GetReplayed() ||
		d.GetPayerProvince() != henan || d.GetPayerRegion() != regionOf(t, henan) {
		t.Fatalf("first answer %v", d)
	}

	// The same key again: the payer's first answer, replayed; no money moves twice (R11).
	again, err := cli.Authorize(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(d).(*provincev1.DebitResponse)
	want.Replayed = true
	if !proto.Equal(again.GetDebit(), want) {
		t.Fatalf("replay %v, want %v", again.GetDebit(), want)
	}
	if r := node.remaining("R1"); !r.Equal(money.MustParse("70.00")) {
		t.Fatalf("quota after replay %s, want 70.00", r)
	}

	// The payer's refusals pass through unchanged, code and message.
	refusals := []struct {
		name string
		req  *clearingv1.AuthorizeRequest
		code codes.Code
		msg  string
	}{
		{"same key, other amount", &clearingv1.AuthorizeRequest{Debit: debit(t, "u-1", "R1", beijing, "31.00"), PayerProvince: henan},
			codes.AlreadyExists, "usage key u-1 was used for another request"},
		{"over quota", &clearingv1.AuthorizeRequest{Debit: debit(t, "u-2", "R1", beijing, "70.01"), PayerProvince: henan},
			codes.ResourceExhausted, "usage 70.01 exceeds the remaining quota 70.00"},
		{"unknown relationship", &clearingv1.AuthorizeRequest{Debit: debit(t, "u-3", "R9", beijing, "1.00"), PayerProvince: henan},
			codes.NotFound, "relationship R9 not found"},
	}
	for _, r := range refusals {
		_, err := cli.Authorize(ctx, r.req)
		wantCode(t, r.name, err, r.code)
		if got := status.Convert(err).Message(); got != r.msg {
			t.Errorf("%s: message %q, want the node's %q", r.name, got, r.msg)
		}
	}
	if r := node.remaining("R1"); !r.Equal(money.MustParse("70.00")) {
		t.Fatalf("quota after refusals %s, want 70.00", r)
	}

	// A reversal (R12) goes the same way, and is idempotent too.
	rv := &clearingv1.AuthorizeReversalRequest{PayerProvince: henan, Reversal: &provincev1.ReverseDebitRequest{
		ReversalKey: "rv-1", UsageKey: "u-1", Amount: "10.00", OccurredAt: timestamppb.New(t0.Add(-time.Minute)),
		PayeeProvince: beijing,
	}}
	for i := range 2 {
		resp, err := cli.AuthorizeReversal(ctx, rv)
		if err != nil {
			t.Fatal(err)
		}
		if r := resp.GetReversal(); r.GetAmount() != "10.00" || r.GetQuotaRemaining() != "80.00" || r.GetReplayed() != (i == 1) {
			t.Fatalf("reversal answer %d: %v", i, r)
		}
	}
	over := proto.Clone(rv).(*clearingv1.AuthorizeReversalRequest)
	over.Reversal.ReversalKey, over.Reversal.Amount = "rv-2", "20.01"
	_, err = cli.AuthorizeReversal(ctx, over)
	wantCode(t, "reversal over the usage", err, codes.FailedPrecondition)

	// The switch log: every routed call, with what the switch saw.
	rows := wantRows(t, f, henan, "u-1", clearingdb.OutcomeApproved, clearingdb.OutcomeApproved, clearingdb.OutcomeRefused)
	for _, r := range rows[:2] {
		if r.Op != clearingdb.OpAuthorize || r.CallerProvince != beijing || r.TargetProvince != henan ||
			!r.Amount.Equal(money.MustParse("30.00")) || r.Kind != "PHARMACY" || r.PayerRegion != regionOf(t, henan) ||
			r.PayeeProvince != beijing || r.PayeeRegion != regionOf(t, beijing) || r.RelationshipID != "R1" ||
			!r.OccurredAt.Equal(t0.Add(-time.Hour)) || !r.StartedAt.Equal(t0) || r.FinishedAt.Before(r.StartedAt) {
			t.Errorf("approved row %+v", r)
		}
	}
	if r := rows[2]; r.Code != "AlreadyExists" || r.Detail != "usage key u-1 was used for another request" {
		t.Errorf("refused row %+v", r)
	}
	if r := wantRows(t, f, henan, "u-2", clearingdb.OutcomeRefused)[0]; r.Code != "ResourceExhausted" || !r.Amount.Equal(money.MustParse("70.01")) {
		t.Errorf("over-quota row %+v", r)
	}
	wantRows(t, f, henan, "u-3", clearingdb.OutcomeRefused)
	if r := wantRows(t, f, henan, "rv-1", clearingdb.OutcomeApproved, clearingdb.OutcomeApproved)[0]; r.Op != clearingdb.OpReversal || r.ReversalOf != "u-1" {
		t.Errorf("reversal row %+v", r)
	}
	wantRows(t, f, henan, "rv-2", clearingdb.OutcomeRefused)

	// The node only ever saw the clearing service's certificate.
	for _, c := range node.callerLog() {
		if c != clearingID.String() {
			t.Errorf("the node was called by %s", c)
		}
	}
	if got := f.metric(t, "gongji_switch_calls_total", map[string]string{"op": "AUTHORIZE", "outcome": "approved"}); got != 2 {
		t.Errorf("approved authorisations counted %v, want 2", got)
	}
	if got := f.metric(t, "gongji_switch_calls_total", map[string]string{"op": "AUTHORIZE", "outcome": "refused"}); got != 3 {
		t.Errorf("refused authorisations counted %v, want 3", got)
	}

	// One structured line per routed call, with outcome and latency, and no
	// value that is an ID number.
	routed := f.logs.FilterMessage("routed call").All()
	if len(routed) != 8 {
		t.Errorf("%d routed-call log lines, want 8", len(routed))
	}
	for _, e := range routed {
		m := e.ContextMap()
		if m["outcome"] == nil || m["latency"] == nil || m["target"] != henan {
			t.Errorf("log line %v", m)
		}
		for k, v := range m {
			if s, ok := v.(string); ok && pii.Validate(s) == nil {
				t.Errorf("log field %s carries an ID number", k)
			}
		}
	}
}

func TestAuthorizeRetriesOnlyUnavailable(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{peers: []string{henan}})
	node := f.peers[henan]
	node.setQuota("R1", "100.00")
	cli := f.switchClient(t, beijing)
	ctx := hang(t)

	// Unavailable before the node did anything: retried, answered once.
	node.mu.Lock()
	node.failBefore = 1
	node.mu.Unlock()
	resp, err := cli.Authorize(ctx, &clearingv1.AuthorizeRequest{Debit: debit(t, "u-a", "R1", beijing, "10.00"), PayerProvince: henan})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDebit().GetReplayed() || resp.GetDebit().GetQuotaRemaining() != "90.00" {
		t.Fatalf("answer %v", resp.GetDebit())
	}

	// Unavailable after the node committed: the retry with the same key
	// gets the stored answer, and the quota moves once.
	node.mu.Lock()
	node.failAfter = 1
	node.mu.Unlock()
	resp, err = cli.Authorize(ctx, &clearingv1.AuthorizeRequest{Debit: debit(t, "u-b", "R1", beijing, "15.00"), PayerProvince: henan})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetDebit().GetReplayed() || resp.GetDebit().GetQuotaRemaining() != "75.00" {
		t.Fatalf("answer after a lost commit %v", resp.GetDebit())
	}
	if r := node.remaining("R1"); !r.Equal(money.MustParse("75.00")) {
		t.Fatalf("quota %s, want 75.00", r)
	}

	// A refusal is not retried.
	_, err = cli.Authorize(ctx, &clearingv1.AuthorizeRequest{Debit: debit(t, "u-c", "R1", beijing, "500.00"), PayerProvince: henan})
	wantCode(t, "over quota", err, codes.ResourceExhausted)

	// Unavailable every time: the attempts are bounded (3) and the caller
	// gets Unavailable.
	node.mu.Lock()
	node.failBefore = 100
	node.mu.Unlock()
	_, err = cli.Authorize(ctx, &clearingv1.AuthorizeRequest{Debit: debit(t, "u-d", "R1", beijing, "1.00"), PayerProvince: henan})
	wantCode(t, "always unavailable", err, codes.Unavailable)

	wantCalls := []string{"Debit:u-a", "Debit:u-a", "Debit:u-b", "Debit:u-b", "Debit:u-c", "Debit:u-d", "Debit:u-d", "Debit:u-d"}
	if got := node.callLog(); !slices.Equal(got, wantCalls) {
		t.Fatalf("node calls %v, want %v", got, wantCalls)
	}
	wantRows(t, f, henan, "u-a", clearingdb.OutcomeApproved)
	wantRows(t, f, henan, "u-b", clearingdb.OutcomeApproved)
	wantRows(t, f, henan, "u-d", clearingdb.OutcomeUnavailable)
}

func TestAuthorizeNodeDownAndNodesReload(t *testing.T) {
	t.Parallel()
	// An address where nothing listens: a node that is down.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := lis.Addr().String()
	lis.Close()
	f := setup(t, fixtureOptions{extra: map[string]string{henan: down}})
	cli := f.switchClient(t, beijing)
	ctx := hang(t)

	req := &clearingv1.AuthorizeRequest{Debit: debit(t, "u-1", "R1", beijing, "12.30"), PayerProvince: henan}
	_, err = cli.Authorize(ctx, req)
	wantCode(t, "node down", err, codes.Unavailable)
	if r := wantRows(t, f, henan, "u-1", clearingdb.OutcomeUnavailable)[0]; r.Code != "Unavailable" {
		t.Errorf("row %+v", r)
	}

	// A province missing from the nodes file: Unavailable too (the file may
	// be fixed and re-read without a restart).
	xinjiang := "650000"
	_, err = cli.Authorize(ctx, &clearingv1.AuthorizeRequest{Debit: debit(t, "u-2", "R1", beijing, "1.00"), PayerProvince: xinjiang})
	wantCode(t, "no node", err, codes.Unavailable)
	if r := wantRows(t, f, xinjiang, "u-2", clearingdb.OutcomeUnavailable)[0]; r.Code != "NO_NODE" {
		t.Errorf("row %+v", r)
	}

	// The node comes up at another address; the file is re-read (as on
	// SIGHUP); the same key now goes through.
	node := startTestPeer(t, f.certs, henan)
	node.setQuota("R1", "50.00")
	writeNodes(t, f.nodesFile, map[string]string{henan: node.addr})
	if err := f.reg.Reload(); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Authorize(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDebit().GetQuotaRemaining() != "37.70" {
		t.Fatalf("answer %v", resp.GetDebit())
	}
	wantRows(t, f, henan, "u-1", clearingdb.OutcomeUnavailable, clearingdb.OutcomeApproved)

	// A broken file is refused and the previous addresses stay in use.
	if err := os.WriteFile(f.nodesFile, []byte(`{"410000": "no port"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.Reload(); err == nil {
		t.Fatal("a nodes file with a bad address was accepted")
	}
	if _, err := cli.Authorize(ctx, req); err != nil {
		t.Fatalf("after a failed reload: %v", err)
	}
}

func TestAuthorizeDeadlines(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{peers: []string{henan}, timeout: time.Second})
	node := f.peers[henan]
	node.setQuota("R1", "100.00")
	block := make(chan struct{})
	node.mu.Lock()
	node.block = block
	node.mu.Unlock()
	cli := f.switchClient(t, beijing)

	// The node does not answer within the switch's RPC timeout while the
	// caller still waits: Unavailable (retry with the same key).
	_, err := cli.Authorize(hang(t), &clearingv1.AuthorizeRequest{Debit: debit(t, "u-1", "R1", beijing, "1.00"), PayerProvince: henan})
	wantCode(t, "slow node", err, codes.Unavailable)
	wantRows(t, f, henan, "u-1", clearingdb.OutcomeUnavailable)

	// The caller's own deadline is shorter: it is respected and reported as such.
	ctx, cancel := context.WithTimeout(hang(t), 50*time.Millisecond)
	defer cancel()
	_, err = cli.Authorize(ctx, &clearingv1.AuthorizeRequest{Debit: debit(t, "u-2", "R1", beijing, "1.00"), PayerProvince: henan})
	wantCode(t, "caller's deadline", err, codes.DeadlineExceeded)

	close(block)
	if _, err := cli.Authorize(hang(t), &clearingv1.AuthorizeRequest{Debit: debit(t, "u-1", "R1", beijing, "1.00"), PayerProvince: henan}); err != nil {
		t.Fatalf("after the node recovered: %v", err)
	}
}

func TestAuthorizeValidatesAtTheEdge(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{peers: []string{henan}})
	node := f.peers[henan]
	node.setQuota("R1", "100.00")
	cli := f.switchClient(t, beijing)
	ctx := hang(t)

	cases := map[string]func(r *clearingv1.AuthorizeRequest){
		"amount with three decimals":  func(r *clearingv1.AuthorizeRequest) { r.Debit.Amount = "1.234" },
		"zero amount":                 func(r *clearingv1.AuthorizeRequest) { r.Debit.Amount = "0.00" },
		"negative amount":             func(r *clearingv1.AuthorizeRequest) { r.Debit.Amount = "-5.00" },
		"float amount":                func(r *clearingv1.AuthorizeRequest) { r.Debit.Amount = "1e3" },
		"amount over NUMERIC(18,2)":   func(r *clearingv1.AuthorizeRequest) { r.Debit.Amount = "10000000000000000.00" },
		"empty usage key":             func(r *clearingv1.AuthorizeRequest) { r.Debit.UsageKey = "" },
		"usage key with space":        func(r *clearingv1.AuthorizeRequest) { r.Debit.UsageKey = "a b" },
		"usage key over 64 bytes":     func(r *clearingv1.AuthorizeRequest) { r.Debit.UsageKey = strings.Repeat("k", 65) },
		"non-ASCII usage key":         func(r *clearingv1.AuthorizeRequest) { r.Debit.UsageKey = "键" },
		"empty relationship":          func(r *clearingv1.AuthorizeRequest) { r.Debit.RelationshipId = "" },
		"payer is the payee":          func(r *clearingv1.AuthorizeRequest) { r.PayerProvince = beijing },
		"payer not a province":        func(r *clearingv1.AuthorizeRequest) { r.PayerProvince = "410100" },
		"payer unknown":               func(r *clearingv1.AuthorizeRequest) { r.PayerProvince = "990000" },
		"payee region elsewhere":      func(r *clearingv1.AuthorizeRequest) { r.Debit.PayeeRegionCode = regionOf(t, henan) },
		"kind unspecified":            func(r *clearingv1.AuthorizeRequest) { r.Debit.Kind = provincev1.UsageKind_USAGE_KIND_UNSPECIFIED },
		"kind unknown":                func(r *clearingv1.AuthorizeRequest) { r.Debit.Kind = 42 },
		"no occurred_at":              func(r *clearingv1.AuthorizeRequest) { r.Debit.OccurredAt = nil },
		"occurred_at two days ahead":  func(r *clearingv1.AuthorizeRequest) { r.Debit.OccurredAt = timestamppb.New(t0.Add(48 * time.Hour)) },
		"occurred_at in 1990":         func(r *clearingv1.AuthorizeRequest) { r.Debit.OccurredAt = timestamppb.New(t0.AddDate(-36, 0, 0)) },
		"ID number as beneficiary":    func(r *clearingv1.AuthorizeRequest) { r.Debit.BeneficiaryRef = "11010519491231002X" },
		"upper-case beneficiary_ref":  func(r *clearingv1.AuthorizeRequest) { r.Debit.BeneficiaryRef = strings.ToUpper(ref("x")) },
		"no debit":                    func(r *clearingv1.AuthorizeRequest) { r.Debit = nil },
		"no beneficiary_ref":          func(r *clearingv1.AuthorizeRequest) { r.Debit.BeneficiaryRef = "" },
		"invalid occurred_at nanos":   func(r *clearingv1.AuthorizeRequest) { r.Debit.OccurredAt.Nanos = -1 },
		"unspecified payer province":  func(r *clearingv1.AuthorizeRequest) { r.PayerProvince = "" },
		"payee region not a region":   func(r *clearingv1.AuthorizeRequest) { r.Debit.PayeeRegionCode = "11x100" },
		"relationship id with spaces": func(r *clearingv1.AuthorizeRequest) { r.Debit.RelationshipId = "R 1" },
	}
	for name, mutate := range cases {
		r := &clearingv1.AuthorizeRequest{Debit: debit(t, "u-"+strings.ReplaceAll(name, " ", "-"), "R1", beijing, "10.00"), PayerProvince: henan}
		mutate(r)
		_, err := cli.Authorize(ctx, r)
		wantCode(t, name, err, codes.InvalidArgument)
	}
	rvCases := map[string]func(r *provincev1.ReverseDebitRequest){
		"reversal key is the usage key": func(r *provincev1.ReverseDebitRequest) { r.ReversalKey = r.UsageKey },
		"no usage key":                  func(r *provincev1.ReverseDebitRequest) { r.UsageKey = "" },
		"amount with three decimals":    func(r *provincev1.ReverseDebitRequest) { r.Amount = "0.001" },
		"no occurred_at":                func(r *provincev1.ReverseDebitRequest) { r.OccurredAt = nil },
	}
	for name, mutate := range rvCases {
		r := &provincev1.ReverseDebitRequest{ReversalKey: "rv", UsageKey: "u", Amount: "1.00",
			OccurredAt: timestamppb.New(t0), PayeeProvince: beijing}
		mutate(r)
		_, err := cli.AuthorizeReversal(ctx, &clearingv1.AuthorizeReversalRequest{Reversal: r, PayerProvince: henan})
		wantCode(t, "reversal: "+name, err, codes.InvalidArgument)
	}
	// Nothing reached the payer, nothing was routed, so nothing was logged.
	if calls := node.callLog(); len(calls) != 0 {
		t.Fatalf("the node was called: %v", calls)
	}
	if n := len(f.logs.FilterMessage("routed call").All()); n != 0 {
		t.Fatalf("%d routed calls logged", n)
	}
	var rows int
	if err := f.db.Pool.QueryRow(ctx, `SELECT count(*) FROM switch_log`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("switch_log rows %d, %v", rows, err)
	}
}

func TestRelayRelationship(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{peers: []string{henan, beijing}})
	ctx := hang(t)
	fromBeijing := f.switchClient(t, beijing)
	fromHenan := f.switchClient(t, henan)

	// A proposal from the beneficiary's side (Beijing) to the authority, the
	// sharer's node (Henan), which answers with its snapshot.
	propose := &clearingv1.RelayRelationshipCommandRequest{TargetProvince: henan, Command: &provincev1.ApplyRelationshipCommandRequest{
		Action: provincev1.RelationshipAction_RELATIONSHIP_ACTION_PROPOSE, CommandKey: "c-1", OriginProvince: beijing,
		BeneficiaryRegion: regionOf(t, beijing),
		Proposal: &provincev1.ProposeRelationshipRequest{
			Sharer:      &provincev1.PartyRef{ProvinceCode: henan, Id: &provincev1.PartyRef_PersonRef{PersonRef: ref("mother")}},
			Beneficiary: &provincev1.PartyRef{ProvinceCode: beijing, Id: &provincev1.PartyRef_PersonRef{PersonRef: ref("son")}},
			Relation:    provincev1.RelationType_RELATION_TYPE_CHILD, ProposedBy: provincev1.Side_SIDE_BENEFICIARY,
			ProposalKey: "p-1",
		},
	}}
	resp, err := fromBeijing.RelayRelationshipCommand(ctx, propose)
	if err != nil {
		t.Fatal(err)
	}
	rel := resp.GetRelationship()
	if rel.GetSharerProvince() != henan || rel.GetStatus() != provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING || rel.GetVersion() != 1 {
		t.Fatalf("snapshot %v", rel)
	}
	again, err := fromBeijing.RelayRelationshipCommand(ctx, propose)
	if err != nil || !proto.Equal(again.GetRelationship(), rel) {
		t.Fatalf("replayed command: %v, %v", again, err)
	}
	if r := wantRows(t, f, henan, "c-1", clearingdb.OutcomeApproved, clearingdb.OutcomeApproved)[0]; r.Op != clearingdb.OpRelationshipCommand ||
		r.CallerProvince != beijing || r.RelationshipID != rel.GetRelationshipId() {
		t.Errorf("row %+v", r)
	}

	// An ID number never crosses a province border.
	withID := proto.Clone(propose).(*clearingv1.RelayRelationshipCommandRequest)
	withID.Command.CommandKey = "c-2"
	withID.Command.Proposal.Sharer.Id = &provincev1.PartyRef_IdNumber{IdNumber: "41010519491231002X"}
	_, err = fromBeijing.RelayRelationshipCommand(ctx, withID)
	wantCode(t, "ID number in a proposal", err, codes.InvalidArgument)
	// The target must be another province, and for PROPOSE the sharer's.
	self := proto.Clone(propose).(*clearingv1.RelayRelationshipCommandRequest)
	self.TargetProvince = beijing
	_, err = fromBeijing.RelayRelationshipCommand(ctx, self)
	wantCode(t, "target is the origin", err, codes.InvalidArgument)
	elsewhere := proto.Clone(propose).(*clearingv1.RelayRelationshipCommandRequest)
	elsewhere.TargetProvince = hainan
	_, err = fromBeijing.RelayRelationshipCommand(ctx, elsewhere)
	wantCode(t, "target is not the sharer's province", err, codes.InvalidArgument)
	// Beijing may not speak for Hainan.
	foreign := proto.Clone(propose).(*clearingv1.RelayRelationshipCommandRequest)
	foreign.Command.OriginProvince = hainan
	_, err = fromBeijing.RelayRelationshipCommand(ctx, foreign)
	wantCode(t, "origin is another province", err, codes.PermissionDenied)

	// The authority pushes its snapshot to the replica, the beneficiary's node.
	rel.Version = 2
	rel.Status = provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE
	rel.Quota, rel.Used = "500.00", "0.00"
	snap := &clearingv1.RelayRelationshipSnapshotRequest{Relationship: rel, TargetProvince: beijing}
	sr, err := fromHenan.RelayRelationshipSnapshot(ctx, snap)
	if err != nil || !sr.GetApplied() || sr.GetVersion() != 2 {
		t.Fatalf("snapshot relay: %v, %v", sr, err)
	}
	sr, err = fromHenan.RelayRelationshipSnapshot(ctx, snap)
	if err != nil || sr.GetApplied() || sr.GetVersion() != 2 {
		t.Fatalf("repeated snapshot: %v, %v", sr, err)
	}
	if r := wantRows(t, f, henan, rel.GetRelationshipId()+"@2", clearingdb.OutcomeApproved, clearingdb.OutcomeApproved)[0]; r.Op != clearingdb.OpRelationshipSnapshot ||
		r.CallerProvince != henan || r.TargetProvince != beijing {
		t.Errorf("row %+v", r)
	}
	// Only the authority sends snapshots, only to the beneficiary's province.
	_, err = fromBeijing.RelayRelationshipSnapshot(ctx, snap)
	wantCode(t, "snapshot from the replica", err, codes.PermissionDenied)
	mismatch := proto.Clone(snap).(*clearingv1.RelayRelationshipSnapshotRequest)
	mismatch.TargetProvince = hainan
	_, err = fromHenan.RelayRelationshipSnapshot(ctx, mismatch)
	wantCode(t, "target is not the beneficiary's province", err, codes.InvalidArgument)
	negative := proto.Clone(snap).(*clearingv1.RelayRelationshipSnapshotRequest)
	negative.Relationship.Quota = "-1.00"
	_, err = fromHenan.RelayRelationshipSnapshot(ctx, negative)
	wantCode(t, "negative quota", err, codes.InvalidArgument)
}

// TestSwitchChecksNodeIdentity: a nodes file that points a province at
// another province's node must not let that node answer for it.
func TestSwitchChecksNodeIdentity(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{peers: []string{beijing}})
	impostor := f.peers[beijing]
	impostor.setQuota("R1", "100.00")
	writeNodes(t, f.nodesFile, map[string]string{henan: impostor.addr, beijing: impostor.addr})
	if err := f.reg.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err := f.switchClient(t, hainan).Authorize(hang(t), &clearingv1.AuthorizeRequest{
		Debit: debit(t, "u-1", "R1", hainan, "1.00"), PayerProvince: henan})
	wantCode(t, "Beijing's node standing in for Henan", err, codes.Unavailable)
	if calls := impostor.callLog(); len(calls) != 0 {
		t.Fatalf("the impostor was called: %v", calls)
	}
	if r := wantRows(t, f, henan, "u-1", clearingdb.OutcomeUnavailable)[0]; !strings.Contains(r.Detail, "not the expected identity") {
		t.Errorf("row detail %q", r.Detail)
	}
}
