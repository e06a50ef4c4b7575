package provinceapi_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/sharing"
)

// peerField is a field of a PeerService request: a dotted path and its kind:
// a kind of hostileStrings; "region-bj" (a pooling region of Beijing);
// "other" (a provincial unit other than the node's own); "idnumber" (an ID
// number in a party: never accepted from another province); "enum",
// "enum?" (optional: UNSPECIFIED is valid); "time" (required, at most a day
// ahead), "rtime" (a snapshot's time: required, valid, years 2000-2999),
// "rtime?" (the same, optional); "quota?" (a quota, optional: empty is valid);
// "version" (≥ 1); "message" (must be present); "unread" (the method does
// not read the field in this case: said where it is listed). name is what
// the refusal must mention (default: the path).
type peerField struct{ path, kind, name string }

// peerLeaves lists the leaf paths of a request type (Timestamps are leaves).
func peerLeaves(md protoreflect.MessageDescriptor, prefix string, depth int) []string {
	var out []string
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		p := prefix + string(fd.Name())
		if fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() != "google.protobuf.Timestamp" && depth < 6 {
			out = append(out, peerLeaves(fd.Message(), p+".", depth+1)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// peerFingerprint is every table of the node's database with its row count
// and a hash of its rows: any insert, update or delete changes it. The audit
// trail is left out: it records every state-changing call, refused ones too
// (peerAuditRefusals checks those rows).
func (n *node) peerFingerprint(t testing.TB) map[string]string {
	t.Helper()
	ctx := context.Background()
	rows, err := n.db.Pool.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, tb := range tables {
		if tb == "audit_records" {
			continue
		}
		var c int64
		var h string
		q := fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(t::text, E'\n' ORDER BY t::text)), '') FROM %q t`, tb)
		if err := n.db.Pool.QueryRow(ctx, q).Scan(&c, &h); err != nil {
			t.Fatalf("%s: %v", tb, err)
		}
		out[tb] = fmt.Sprintf("%d/%s", c, h)
	}
	return out
}

// auditHead is the last audit_records id (0 when there is none, or no such
// table).
func (n *node) auditHead(t testing.TB) int64 {
	t.Helper()
	var id int64
	if err := n.db.Pool.QueryRow(context.Background(), `SELECT coalesce(max(id), 0) FROM audit_records`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// peerAuditRefusals fails if an audit row written after id since records
// a call as done (ok, replayed): every hostile call was refused.
func (n *node) peerAuditRefusals(t testing.TB, since int64) int {
	t.Helper()
	rows, err := n.db.Pool.Query(context.Background(), `SELECT method, outcome FROM audit_records WHERE id > $1`, since)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	count := 0
	for rows.Next() {
		var method, outcome string
		if err := rows.Scan(&method, &outcome); err != nil {
			t.Fatal(err)
		}
		count++
		if outcome == "ok" || outcome == "replayed" {
			t.Errorf("audit trail records a hostile call of %s as %s", method, outcome)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return count
}

// peerVariants are the hostile values of f (nil: clear the field).
func peerVariants(t *testing.T, f peerField, self string, now time.Time) []*protoreflect.Value {
	var out []*protoreflect.Value
	str := func(ss ...string) {
		for _, s := range ss {
			v := protoreflect.ValueOfString(s)
			out = append(out, &v)
		}
	}
	switch f.kind {
	case "message":
		return []*protoreflect.Value{nil}
	case "unread":
		return nil
	case "enum", "enum?":
		for _, e := range hostileEnums {
			if e == 0 && f.kind == "enum?" {
				continue
			}
			v := protoreflect.ValueOfEnum(protoreflect.EnumNumber(e))
			out = append(out, &v)
		}
	case "time", "rtime", "rtime?":
		if f.kind != "rtime?" {
			out = append(out, nil)
		}
		for _, ts := range hostileTimes() {
			if f.kind != "time" && ts.AsTime().After(now) && ts.AsTime().Year() < 3000 {
				continue // a snapshot's times are the authority's; only their form is checked
			}
			v := protoreflect.ValueOfMessage(ts.ProtoReflect())
			out = append(out, &v)
		}
	case "version":
		for _, n := range []int64{0, -1, math.MinInt64} {
			v := protoreflect.ValueOfInt64(n)
			out = append(out, &v)
		}
	case "other":
		str(append(hostileStrings(t, "province"), self)...)
	case "idnumber":
		str(idNumber(t, "110105", "19800101", "777"), idNumber(t, "410105", "19800101", "778"), "", utf8Marker)
	case "quota?": // optional: empty is valid (derived from the other fields)
		str(slices.DeleteFunc(hostileStrings(t, "quota"), func(s string) bool { return s == "" })...)
	case "region-bj":
		str("", strings.Repeat("9", 100_000), utf8Marker, idNumber(t, "410105", "19800101", "777"),
			"999999", regionOf(t, henan), beijing, "11010", "1101000", "abcdef")
	default:
		str(hostileStrings(t, f.kind)...)
	}
	return out
}

// TestPeerBadInput sends hostile values in every field of every PeerService
// method (what the clearing switch delivers from other provinces), as the
// clearing service: each call must be InvalidArgument naming the field,
// without echoing the value, and nothing may be written (every table of the
// node's database but the audit trail fingerprinted before and after; the
// audit rows of the calls record refusals); money is still conserved.
// The switch passes some fields on unchecked (clearingapi/badinput_test.go,
// "routed"): the node is where they are refused. Afterwards the unmodified
// requests are sent to show that they were valid.
func TestPeerBadInput(t *testing.T) {
	t.Parallel()
	n := startNode(t, newCerts(t), henan, nodeOptions{})
	ctx := hang(t)
	peer := provincev1.NewPeerServiceClient(n.dialAs(t, clearingID))
	sharer := n.register(t, idNumber(t, "410105", "19700101", "011"))
	if _, err := n.client.CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: byRef(sharer.GetPersonRef()), Amount: "500.00", CreditKey: "cr"}); err != nil {
		t.Fatal(err)
	}
	ben := refOf(t, idNumber(t, "110105", "19980202", "022"))
	now := n.clock.now()
	proposal := func(key, benRef string) *provincev1.ApplyRelationshipCommandRequest {
		return &provincev1.ApplyRelationshipCommandRequest{Action: provincev1.RelationshipAction_RELATIONSHIP_ACTION_PROPOSE,
			CommandKey: key, OriginProvince: beijing, BeneficiaryRegion: regionOf(t, beijing),
			Proposal: &provincev1.ProposeRelationshipRequest{Sharer: party(henan, sharer.GetPersonRef()), Beneficiary: party(beijing, benRef),
				Relation: provincev1.RelationType_RELATION_TYPE_PARENT, ProposedBy: provincev1.Side_SIDE_BENEFICIARY, ProposalKey: key}}
	}
	// A relationship this node is the authority of: proposed from Beijing,
	// consented and given a quota here, one usage debited.
	rel, err := peer.ApplyRelationshipCommand(ctx, proposal("px-1", ben))
	if err != nil {
		t.Fatal(err)
	}
	id := rel.GetRelationshipId()
	if _, err := n.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_SHARER, CommandKey: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "200.00", CommandKey: "q"}); err != nil {
		t.Fatal(err)
	}
	at := timestamppb.New(now.Add(-time.Minute))
	debit := func(key string) *provincev1.DebitRequest {
		return &provincev1.DebitRequest{UsageKey: key, RelationshipId: id, Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY,
			Amount: "10.00", PayeeProvince: beijing, PayeeRegionCode: regionOf(t, beijing), OccurredAt: at, BeneficiaryRef: ben}
	}
	if _, err := peer.Debit(ctx, debit("pd-0")); err != nil {
		t.Fatal(err)
	}
	command := func(action provincev1.RelationshipAction, key string) *provincev1.ApplyRelationshipCommandRequest {
		return &provincev1.ApplyRelationshipCommandRequest{Action: action, CommandKey: key, OriginProvince: beijing,
			RelationshipId: id, By: provincev1.Side_SIDE_BENEFICIARY}
	}
	auto := command(provincev1.RelationshipAction_RELATIONSHIP_ACTION_DISSOLVE_AUTO, "auto-1")
	auto.By, auto.Reason = provincev1.Side_SIDE_UNSPECIFIED, provincev1.DissolveReason_DISSOLVE_REASON_TRANSFER
	// A replica: the sharer in Beijing, the beneficiary here.
	snapshot := &provincev1.Relationship{RelationshipId: sharing.RelationshipID(beijing, "sx-1"), SharerRef: refOf(t, "sharer-bj"),
		SharerProvince: beijing, SharerRegion: regionOf(t, beijing), BeneficiaryRef: sharer.GetPersonRef(), BeneficiaryProvince: henan,
		Relation: provincev1.RelationType_RELATION_TYPE_CHILD, ProposedBy: provincev1.Side_SIDE_SHARER,
		Status: provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE, Quota: "100.00", Used: "0.00", Version: 2,
		ProposedAt: timestamppb.New(now.Add(-48 * time.Hour)), ExpiresAt: timestamppb.New(now.Add(-24 * time.Hour)), UpdatedAt: at}

	party := func(prefix string) []peerField {
		return []peerField{{prefix, "message", ""}, {prefix + ".province_code", "province", ""},
			{prefix + ".person_ref", "ref", ""}, {prefix + ".id_number", "idnumber", prefix}}
	}
	rf := "relationship."
	cases := []struct {
		method string
		req    proto.Message
		out    proto.Message
		fields []peerField
	}{
		{"Debit", debit("pd-1"), &provincev1.DebitResponse{},
			[]peerField{{"usage_key", "key", ""}, {"relationship_id", "relid", ""}, {"kind", "enum", ""}, {"amount", "amount", ""},
				{"payee_province", "other", ""}, {"payee_region_code", "region-bj", ""}, {"occurred_at", "time", ""},
				{"beneficiary_ref", "ref", ""}}},
		{"ReverseDebit", &provincev1.ReverseDebitRequest{ReversalKey: "rv-1", UsageKey: "pd-0", Amount: "1.00", OccurredAt: at, PayeeProvince: beijing},
			&provincev1.ReverseResponse{},
			[]peerField{{"reversal_key", "key", ""}, {"usage_key", "key", ""}, {"amount", "amount", ""}, {"occurred_at", "time", ""},
				{"payee_province", "other", ""}}},
		{"ApplyRelationshipCommand", proposal("px-2", refOf(t, "ben-2")), &provincev1.Relationship{},
			append(append([]peerField{{"action", "enum", ""}, {"command_key", "key", ""}, {"origin_province", "other", ""},
				{"proposal", "message", ""}, {"proposal.relation", "enum", ""}, {"proposal.proposed_by", "enum", ""},
				{"proposal.proposal_key", "key", ""},
				// The authority records no beneficiary region: the
				// beneficiary's node keeps it (and the clearing switch
				// checks it in transit).
				{"beneficiary_region", "unread", ""},
				// A PROPOSE names no relationship (its id derives from the
				// origin and the key) and no side or reason.
				{"relationship_id", "unread", ""}, {"by", "unread", ""}, {"reason", "unread", ""}},
				party("proposal.sharer")...), party("proposal.beneficiary")...)},
		{"ApplyRelationshipCommand", command(provincev1.RelationshipAction_RELATIONSHIP_ACTION_CONSENT, "cs-1"), &provincev1.Relationship{},
			[]peerField{{"relationship_id", "relid", ""}, {"by", "enum", ""}, {"reason", "enum?", ""}}},
		{"ApplyRelationshipSnapshot", &provincev1.ApplyRelationshipSnapshotRequest{Relationship: snapshot},
			&provincev1.ApplyRelationshipSnapshotResponse{},
			[]peerField{{"relationship", "message", ""}, {rf + "relationship_id", "relid", ""}, {rf + "sharer_ref", "ref", ""},
				{rf + "sharer_province", "province", ""}, {rf + "sharer_region", "region-bj", ""}, {rf + "beneficiary_ref", "ref", ""},
				{rf + "beneficiary_province", "province", ""}, {rf + "relation", "enum", ""}, {rf + "proposed_by", "enum", ""},
				{rf + "status", "enum", ""}, {rf + "dissolve_reason", "enum?", ""}, {rf + "quota", "quota", ""},
				{rf + "used", "quota", ""}, {rf + "version", "version", ""}, {rf + "proposed_at", "rtime", ""},
				{rf + "expires_at", "rtime", ""}, {rf + "updated_at", "rtime", ""}, {rf + "returned", "quota?", ""},
				{rf + "activated_at", "rtime?", ""}, {rf + "ended_at", "rtime?", ""}}},
		// Last: its base request ends the relationship.
		{"ApplyRelationshipCommand", auto, &provincev1.Relationship{}, []peerField{{"reason", "enum", ""}}},
	}
	sd := provincev1.File_gongji_province_v1_province_proto.Services().ByName("PeerService")
	for i := 0; i < sd.Methods().Len(); i++ {
		md := sd.Methods().Get(i)
		named := map[string]bool{}
		has := false
		for _, c := range cases {
			if c.method == string(md.Name()) {
				has = true
				for _, f := range c.fields {
					named[f.path] = true
				}
			}
		}
		if !has {
			t.Fatalf("no bad-input cases for PeerService.%s", md.Name())
		}
		for _, leaf := range peerLeaves(md.Input(), "", 0) {
			if !named[leaf] {
				t.Errorf("PeerService.%s: field %s has no bad-input case", md.Name(), leaf)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	cc := n.dialAs(t, clearingID)
	before, auditFrom := n.peerFingerprint(t), n.auditHead(t)
	calls := 0
	for _, c := range cases {
		method := "/gongji.province.v1.PeerService/" + c.method
		for _, f := range c.fields {
			name := f.name
			if name == "" {
				name = f.path
			}
			for i, v := range peerVariants(t, f, henan, n.clock.now()) {
				m := proto.Clone(c.req)
				mutate(m.ProtoReflect(), f.path, v)
				raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				if err != nil {
					t.Fatalf("%s %s #%d: marshal: %v", c.method, f.path, i, err)
				}
				raw = bytes.ReplaceAll(raw, []byte(utf8Marker), invalidUTF8)
				calls++
				err = cc.Invoke(ctx, method, rawBytes(raw), proto.Clone(c.out), grpc.ForceCodecV2(rawCodec{}))
				code, msg := codeOf(err)
				if code != codes.InvalidArgument || !strings.Contains(msg, name) {
					t.Errorf("%s with hostile %s #%d: %s %.300q, want InvalidArgument naming %s", c.method, f.path, i, code, msg, name)
				}
				if v != nil {
					if sv, ok := v.Interface().(string); ok && len(sv) >= 12 && strings.Contains(msg, sv) {
						t.Errorf("%s with hostile %s #%d: the reply echoes the value", c.method, f.path, i)
					}
				}
				if len(msg) > 2048 {
					t.Errorf("%s with hostile %s #%d: message of %d bytes echoes the input", c.method, f.path, i, len(msg))
				}
			}
		}
	}
	after := n.peerFingerprint(t)
	var diff []string
	for tb, fp := range before {
		if after[tb] != fp {
			diff = append(diff, fmt.Sprintf("%s (%s → %s)", tb, fp, after[tb]))
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 {
		t.Fatalf("refused calls wrote: %s", strings.Join(diff, "; "))
	}
	audited := n.peerAuditRefusals(t, auditFrom)
	n.conserved(t)
	t.Logf("figures: %d PeerService methods, %d hostile calls refused, nothing written (%d audit rows, each a refusal)",
		sd.Methods().Len(), calls, audited)

	// The unmodified requests were valid: none is InvalidArgument.
	for _, c := range cases {
		err := cc.Invoke(ctx, "/gongji.province.v1.PeerService/"+c.method, c.req, proto.Clone(c.out))
		if code, msg := codeOf(err); code == codes.InvalidArgument || code == codes.Internal {
			t.Errorf("base request of %s is itself refused: %s %s", c.method, code, msg)
		}
	}
	n.conserved(t)
	n.noIDNumbersLogged(t, idNumber(t, "410105", "19800101", "777"), idNumber(t, "110105", "19800101", "777"))
}
