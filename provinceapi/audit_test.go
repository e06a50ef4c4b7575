package provinceapi_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/internal/auditlog"
	"gongji/internal/pgtest"
	"gongji/internal/pii"
	"gongji/internal/tlsconf"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/provinceapi"
	"gongji/sharing"
)

// nodeServices are the services a province node serves, from their
// descriptors.
func nodeServices() []protoreflect.ServiceDescriptor {
	sds := provincev1.File_gongji_province_v1_province_proto.Services()
	return []protoreflect.ServiceDescriptor{sds.ByName("ProvinceService"), sds.ByName("PeerService")}
}

// auditRows returns the audit rows of one request id in db.
func auditRows(t testing.TB, db *pgtest.DB, reqID string) []auditlog.Record {
	t.Helper()
	rs, err := auditlog.List(context.Background(), db.Pool, auditlog.Filter{RequestID: reqID})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// noIDNumbersInAudit fails if any text of any audit row of db holds a GB
// 11643 identity number (an 18-character window that pii.Validate accepts).
func noIDNumbersInAudit(t testing.TB, db *pgtest.DB) {
	t.Helper()
	rs, err := auditlog.List(context.Background(), db.Pool, auditlog.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) == 0 {
		t.Fatal("no audit rows to scan")
	}
	for _, r := range rs {
		for _, s := range []string{r.Actor, r.Method, r.RequestID, r.Outcome, r.Ref} {
			for i := 0; i+pii.IDLen <= len(s); i++ {
				if pii.Validate(s[i:i+pii.IDLen]) == nil {
					t.Fatalf("audit row %d holds an ID number: %+v", r.ID, r)
				}
			}
		}
	}
}

// invokeAs calls method with req over cc under request id reqID and
// returns the answer, the error and the request id the server announced.
func invokeAs(t *testing.T, cc *grpc.ClientConn, method string, req proto.Message, reqID string) (proto.Message, string, error) {
	t.Helper()
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", ".")))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	md := desc.(protoreflect.MethodDescriptor)
	resp := dynamicpb.NewMessage(md.Output())
	ctx := metadata.AppendToOutgoingContext(hang(t), auditlog.RequestIDHeader, reqID)
	var header metadata.MD
	err = cc.Invoke(ctx, method, req, resp, grpc.Header(&header))
	return resp, strings.Join(header.Get(auditlog.RequestIDHeader), ","), err
}

// auditCase is one call of the audit table: the method, who calls, a
// request, and what its single audit row must say.
type auditCase struct {
	method  string
	as      tlsconf.Identity
	req     proto.Message
	ref     string
	outcome string     // default "ok"
	code    codes.Code // the call's code (OK unless a refusal is the point)
}

// auditCases drive every state-changing method of ProvinceService and
// PeerService once or more with a valid request, in an order that builds
// what the next needs: people and money, a local relationship (consent,
// quota, usage, reversal, then a refusal and a replay of the usage,
// dissolution), a declined proposal, and a relationship with a beneficiary
// in Beijing that the clearing service consents to, debits and reverses for
// Beijing, plus a replica snapshot from Beijing.
func auditCases(t *testing.T, n *node) []auditCase {
	sharerID := idNumber(t, "410105", "19650505", "101")
	benID := idNumber(t, "410105", "19900101", "202")
	otherID := idNumber(t, "410105", "19700707", "303")
	s, ben, other := refOf(t, sharerID), refOf(t, benID), refOf(t, otherID)
	bjBen := pii.PersonRef([]byte("beijing"), "remote beneficiary")
	bjSharer := pii.PersonRef([]byte("beijing"), "remote sharer")
	own, peer := provinceID(henan), clearingID
	r1, r2, r3 := sharing.RelationshipID(henan, "p-1"), sharing.RelationshipID(henan, "p-2"), sharing.RelationshipID(henan, "p-3")
	rBJ := sharing.RelationshipID(beijing, "bj-p-1")
	now := n.clock.now()
	at := timestamppb.New(now.Add(-time.Minute))
	register := func(id string) *provincev1.RegisterPersonRequest {
		return &provincev1.RegisterPersonRequest{IdNumber: id, Scheme: provincev1.Scheme_SCHEME_EMPLOYEE,
			Mode: provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT, Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE,
			RegionCode: n.region, Insured: true}
	}
	cmd := func(id string, by provincev1.Side, key string) *provincev1.RelationshipCommand {
		return &provincev1.RelationshipCommand{RelationshipId: id, By: by, CommandKey: key}
	}
	propose := func(benParty *provincev1.PartyRef, key string) *provincev1.ProposeRelationshipRequest {
		return &provincev1.ProposeRelationshipRequest{Sharer: partyID(henan, sharerID), Beneficiary: benParty,
			Relation: provincev1.RelationType_RELATION_TYPE_PARENT, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: key}
	}
	use := spendReq(n, "u-1", r1, "10.00")
	debit := &provincev1.DebitRequest{UsageKey: "d-1", RelationshipId: r3, Kind: provincev1.UsageKind_USAGE_KIND_PHARMACY,
		Amount: "3.00", PayeeProvince: beijing, PayeeRegionCode: regionOf(t, beijing), OccurredAt: at, BeneficiaryRef: bjBen}
	ps, pp := "/gongji.province.v1.ProvinceService/", "/gongji.province.v1.PeerService/"
	return []auditCase{
		{method: ps + "RegisterPerson", as: own, req: register(sharerID), ref: s},
		{method: ps + "RegisterPerson", as: own, req: register(benID), ref: ben},
		{method: ps + "RegisterPerson", as: own, req: register(otherID), ref: other},
		{method: ps + "CreditAccount", as: own, req: &provincev1.CreditAccountRequest{Person: byID(sharerID), Amount: "100.00", CreditKey: "c-1"}, ref: "c-1"},
		{method: ps + "SpendOwn", as: own, req: &provincev1.SpendOwnRequest{Person: byRef(s), Amount: "1.00", SpendKey: "o-1"}, ref: "o-1"},
		{method: ps + "ChangeEnrollment", as: own, ref: other, req: &provincev1.ChangeEnrollmentRequest{Person: byID(otherID),
			Change: provincev1.EnrollmentChange_ENROLLMENT_CHANGE_TRANSFER, NewRegionCode: secondRegionOf(t, henan),
			ChangeKey: "e-1", EffectiveAt: timestamppb.New(now)}},
		{method: ps + "ProposeRelationship", as: own, req: propose(partyID(henan, benID), "p-1"), ref: r1},
		{method: ps + "ConsentRelationship", as: own, req: cmd(r1, provincev1.Side_SIDE_BENEFICIARY, "k-1"), ref: r1},
		{method: ps + "SetQuota", as: own, req: &provincev1.SetQuotaRequest{RelationshipId: r1, Quota: "50.00", CommandKey: "q-1"}, ref: r1},
		{method: ps + "Spend", as: own, req: use, ref: "u-1"},
		{method: ps + "Reverse", as: own, req: reverseReq(n, "v-1", "u-1", "5.00"), ref: "v-1"},
		{method: ps + "Spend", as: own, req: spendReq(n, "u-2", r1, "1000.00"), ref: "u-2",
			outcome: "refused: QUOTA_EXCEEDED", code: codes.ResourceExhausted},
		{method: ps + "Spend", as: own, req: use, ref: "u-1", outcome: "replayed"},
		{method: ps + "DissolveRelationship", as: own, req: cmd(r1, provincev1.Side_SIDE_SHARER, "k-2"), ref: r1},
		{method: ps + "ProposeRelationship", as: own, req: propose(partyID(henan, otherID), "p-2"), ref: r2},
		{method: ps + "DeclineRelationship", as: own, req: cmd(r2, provincev1.Side_SIDE_BENEFICIARY, "k-3"), ref: r2},

		{method: ps + "ProposeRelationship", as: own, req: propose(party(beijing, bjBen), "p-3"), ref: r3},
		{method: pp + "ApplyRelationshipCommand", as: peer, ref: r3, req: &provincev1.ApplyRelationshipCommandRequest{
			Action: provincev1.RelationshipAction_RELATIONSHIP_ACTION_CONSENT, CommandKey: "bj-k-1", OriginProvince: beijing,
			RelationshipId: r3, By: provincev1.Side_SIDE_BENEFICIARY}},
		{method: ps + "SetQuota", as: own, req: &provincev1.SetQuotaRequest{RelationshipId: r3, Quota: "30.00", CommandKey: "q-2"}, ref: r3},
		{method: pp + "Debit", as: peer, req: debit, ref: "d-1"},
		{method: pp + "Debit", as: peer, req: debit, ref: "d-1", outcome: "replayed"},
		{method: pp + "ReverseDebit", as: peer, ref: "dv-1", req: &provincev1.ReverseDebitRequest{ReversalKey: "dv-1", UsageKey: "d-1",
			Amount: "1.00", OccurredAt: timestamppb.New(now.Add(-time.Second)), PayeeProvince: beijing}},
		{method: pp + "ApplyRelationshipSnapshot", as: peer, ref: rBJ + "@1", req: &provincev1.ApplyRelationshipSnapshotRequest{
			Relationship: &provincev1.Relationship{RelationshipId: rBJ, SharerRef: bjSharer, SharerProvince: beijing,
				SharerRegion: regionOf(t, beijing), BeneficiaryRef: ben, BeneficiaryProvince: henan,
				Relation: provincev1.RelationType_RELATION_TYPE_CHILD, ProposedBy: provincev1.Side_SIDE_SHARER,
				Status: provincev1.RelationshipStatus_RELATIONSHIP_STATUS_PENDING, Quota: "0.00", Used: "0.00", Version: 1,
				ProposedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(7 * 24 * time.Hour)), UpdatedAt: timestamppb.New(now)}}},
	}
}

// TestAuditEveryStateChangingMethod is generated from the service
// descriptors: every method of ProvinceService and PeerService is classified
// (provinceapi.AuditPolicy), every state-changing one has a case in the
// table, and each call leaves exactly one audit row in the node's database
// — the caller's certificate identity, the full method, the request id the
// client sent (and the server announced back), the outcome and the ref —
// while read-only methods leave none. No row holds an ID number, though
// several requests name people by theirs.
func TestAuditEveryStateChangingMethod(t *testing.T) {
	t.Parallel()
	n := startNode(t, newCerts(t), henan, nodeOptions{})
	policy := provinceapi.AuditPolicy(n.svc)
	if un := policy.Unclassified(nodeServices()...); len(un) > 0 {
		t.Fatalf("methods missing from provinceapi.AuditPolicy: %v", un)
	}
	known := map[string]bool{}
	for _, sd := range nodeServices() {
		for i := 0; i < sd.Methods().Len(); i++ {
			known[auditlog.FullMethod(sd.Methods().Get(i))] = true
		}
	}
	for m := range policy {
		if !known[m] {
			t.Errorf("AuditPolicy names %s, which no service has", m)
		}
	}

	cases := auditCases(t, n)
	covered := map[string]bool{}
	for _, c := range cases {
		covered[c.method] = true
	}
	for m := range known {
		if policy.Audited(m) && !covered[m] {
			t.Errorf("state-changing method %s has no case in auditCases", m)
		}
	}

	conns := map[tlsconf.Identity]*grpc.ClientConn{}
	conn := func(id tlsconf.Identity) *grpc.ClientConn {
		if conns[id] == nil {
			conns[id] = n.dialAs(t, id)
		}
		return conns[id]
	}
	for i, c := range cases {
		reqID := fmt.Sprintf("audit-%02d-%s", i, c.method[strings.LastIndex(c.method, "/")+1:])
		_, announced, err := invokeAs(t, conn(c.as), c.method, c.req, reqID)
		if code, msg := codeOf(err); code != c.code {
			t.Fatalf("%s: %s (%s), want %s", reqID, code, msg, c.code)
		}
		if announced != reqID {
			t.Errorf("%s: the server announced request id %q", reqID, announced)
		}
		want := c.outcome
		if want == "" {
			want = "ok"
		}
		rs := auditRows(t, n.db, reqID)
		if len(rs) != 1 {
			t.Fatalf("%s: %d audit rows, want 1: %+v", reqID, len(rs), rs)
		}
		r := rs[0]
		if r.Actor != c.as.String() || r.Method != c.method || r.Outcome != want || r.Ref != c.ref {
			t.Errorf("%s: row %+v, want actor %s, outcome %q, ref %q", reqID, r, c.as, want, c.ref)
		}
	}

	// Read-only methods leave no row.
	sharerID := idNumber(t, "410105", "19650505", "101")
	for i, rc := range []struct {
		method string
		req    proto.Message
	}{
		{"GetPerson", &provincev1.GetPersonRequest{Person: byID(sharerID)}},
		{"GetAccount", &provincev1.GetAccountRequest{Person: byID(sharerID)}},
		{"GetRelationship", &provincev1.GetRelationshipRequest{RelationshipId: sharing.RelationshipID(henan, "p-1")}},
		{"ListRelationships", &provincev1.ListRelationshipsRequest{Person: byID(sharerID)}},
	} {
		reqID := fmt.Sprintf("read-%d", i)
		if _, _, err := invokeAs(t, conn(provinceID(henan)), "/gongji.province.v1.ProvinceService/"+rc.method, rc.req, reqID); err != nil {
			t.Fatalf("%s: %v", rc.method, err)
		}
		if rs := auditRows(t, n.db, reqID); len(rs) != 0 {
			t.Errorf("read-only %s wrote audit rows %+v", rc.method, rs)
		}
	}
	noIDNumbersInAudit(t, n.db)
	n.conserved(t)
}

// TestAuditFailedCalls: every state-changing method called with an invalid
// (empty) request, or by another province, leaves exactly one audit row
// with the error's code and nothing else; read-only methods leave none.
func TestAuditFailedCalls(t *testing.T) {
	t.Parallel()
	n := startNode(t, newCerts(t), henan, nodeOptions{})
	policy := provinceapi.AuditPolicy(n.svc)
	before := n.rowCounts(t)
	for _, run := range []struct {
		as      tlsconf.Identity
		service protoreflect.ServiceDescriptor
		outcome string
	}{
		{provinceID(henan), nodeServices()[0], "InvalidArgument: INVALID_INPUT"},
		{clearingID, nodeServices()[1], "InvalidArgument: INVALID_INPUT"},
		{provinceID(hainan), nodeServices()[0], "PermissionDenied"},
		{provinceID(henan), nodeServices()[1], "PermissionDenied"},
	} {
		cc := n.dialAs(t, run.as)
		for i := 0; i < run.service.Methods().Len(); i++ {
			md := run.service.Methods().Get(i)
			method := auditlog.FullMethod(md)
			reqID := fmt.Sprintf("fail-%s-%s", run.as, md.Name())
			_, _, err := invokeAs(t, cc, method, dynamicpb.NewMessage(md.Input()), reqID)
			if err == nil {
				t.Fatalf("%s: an empty request as %s succeeded", method, run.as)
			}
			rs := auditRows(t, n.db, reqID)
			if !policy.Audited(method) {
				if len(rs) != 0 {
					t.Errorf("read-only %s wrote %+v", method, rs)
				}
				continue
			}
			if len(rs) != 1 || rs[0].Outcome != run.outcome || rs[0].Actor != run.as.String() || rs[0].Method != method {
				t.Errorf("%s as %s: rows %+v, want one with outcome %q", method, run.as, rs, run.outcome)
			}
		}
	}
	if after := n.rowCounts(t); after != before {
		t.Fatalf("failed calls wrote: before %s, after %s", before, after)
	}
}

// TestAuditRequestIDAcrossTheFederation: a cross-province spend leaves one
// row under the same request id in each of the three databases it changes —
// the payee's node (Spend), the clearing service (Authorize) and the payer's
// node (Debit) — each naming its own caller.
func TestAuditRequestIDAcrossTheFederation(t *testing.T) {
	t.Parallel()
	f := startFederation(t, nil)
	f.a.runWorkers(t)
	f.b.runWorkers(t)
	a, b := f.a, f.b
	ctx := hang(t)
	sharerID, benID := idNumber(t, "410105", "19650505", "101"), idNumber(t, "110105", "19950606", "202")
	s, ben := a.register(t, sharerID), b.register(t, benID)
	if _, err := a.client.CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: byID(sharerID), Amount: "100.00", CreditKey: "cr-1"}); err != nil {
		t.Fatal(err)
	}
	_, _, err := invokeAs(t, b.clientConn, "/gongji.province.v1.ProvinceService/ProposeRelationship",
		&provincev1.ProposeRelationshipRequest{Sharer: party(henan, s.GetPersonRef()), Beneficiary: party(beijing, ben.GetPersonRef()),
			Relation: provincev1.RelationType_RELATION_TYPE_PARENT, ProposedBy: provincev1.Side_SIDE_BENEFICIARY, ProposalKey: "bj-p"},
		"fed-propose")
	if err != nil {
		t.Fatal(err)
	}
	id := sharing.RelationshipID(beijing, "bj-p")
	if _, err := a.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_SHARER, CommandKey: "c"}); err != nil {
		t.Fatal(err)
	}
	q, err := a.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "50.00", CommandKey: "q"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica in Beijing has the quota", func() (bool, error) {
		return b.relationship(t, id).GetVersion() == q.GetVersion(), nil
	})
	if _, _, err := invokeAs(t, b.clientConn, "/gongji.province.v1.ProvinceService/Spend", spendReq(b, "fed-u", id, "10.00"), "fed-spend"); err != nil {
		t.Fatal(err)
	}

	for _, want := range []struct {
		where          string
		db             *pgtest.DB
		reqID, method  string
		actor, ref     string
		outcomePrefix  string
		alsoAtTheOther bool
	}{
		{"payee node", b.db, "fed-propose", "/gongji.province.v1.ProvinceService/ProposeRelationship", provinceID(beijing).String(), id, "ok", false},
		{"clearing", f.clearing.db, "fed-propose", "/gongji.clearing.v1.SwitchService/RelayRelationshipCommand", provinceID(beijing).String(), "bj-p", "ok", false},
		{"payer node", a.db, "fed-propose", "/gongji.province.v1.PeerService/ApplyRelationshipCommand", clearingID.String(), id, "ok", false},
		{"payee node", b.db, "fed-spend", "/gongji.province.v1.ProvinceService/Spend", provinceID(beijing).String(), "fed-u", "ok", false},
		{"clearing", f.clearing.db, "fed-spend", "/gongji.clearing.v1.SwitchService/Authorize", provinceID(beijing).String(), "fed-u", "ok", false},
		{"payer node", a.db, "fed-spend", "/gongji.province.v1.PeerService/Debit", clearingID.String(), "fed-u", "ok", false},
	} {
		rs := auditRows(t, want.db, want.reqID)
		if len(rs) != 1 || rs[0].Method != want.method || rs[0].Actor != want.actor || rs[0].Ref != want.ref || rs[0].Outcome != want.outcomePrefix {
			t.Errorf("%s, %s: rows %+v, want one %s by %s on %s", want.where, want.reqID, rs, want.method, want.actor, want.ref)
		}
	}
	for _, db := range []*pgtest.DB{a.db, b.db, f.clearing.db} {
		noIDNumbersInAudit(t, db)
	}
}
