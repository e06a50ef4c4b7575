package provinceapi_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	provincev1 "gongji/proto/gen/gongji/province/v1"
)

// utf8Marker stands in for invalid UTF-8 while a request is built: the
// proto library refuses to encode invalid strings, so the marker's bytes
// are replaced in the encoded request by invalidUTF8 (same length).
const utf8Marker = "~~UTF8~~"

var invalidUTF8 = []byte{0xff, 0xfe, 0xfd, 0xc3, 0x28, 0xa0, 0xa1, 0xe2}

// rawCodec sends already-encoded bytes as they are (for invalid UTF-8).
type rawCodec struct{}

type rawBytes []byte

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(rawBytes))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

func (rawCodec) Name() string { return "proto" }

// hostile values by field kind. Every one must be refused with
// InvalidArgument naming the field.
func hostileStrings(t *testing.T, kind string) []string {
	huge := strings.Repeat("9", 100_000)
	common := []string{"", huge, utf8Marker}
	if kind != "id" {
		// An ID number typed into the wrong field must be refused and not
		// echoed; a key is no exception (keys are stored and exported in
		// clear, so one never carries an ID number).
		common = append(common, idNumber(t, "410105", "19800101", "777"))
	}
	switch kind {
	case "key":
		id := idNumber(t, "110101", "19900101", "123")
		return append(common, strings.Repeat("k", 65), "two words", "ключ", "a\x00b", "tab\tkey",
			"k-"+id, id+"-1", "u:"+strings.ToLower(id)+":2026")
	case "amount":
		return append(common, "0", "0.00", "-1.00", "NaN", "Inf", "1e9", "1.234", " 1.00", "1,00", "0x10",
			"10000000000000000.00", "١٢", "+-1")
	case "quota":
		return append(common, "-1.00", "-0.01", "NaN", "1e9", "1.234", "10000000000000000.00", "1.2.3")
	case "id":
		good := idNumber(t, "410105", "19800101", "777")
		wrongCheck := good[:17] + map[bool]string{true: "1", false: "2"}[good[17] != '1']
		return append(common, "123", good[:17]+"Y", wrongCheck, idNumber(t, "410105", "20991231", "001"),
			idNumber(t, "990105", "19800101", "001"), good+"0", " "+good[1:])
	case "ref":
		return append(common, strings.Repeat("A", 32), strings.Repeat("a", 31), strings.Repeat("a", 33),
			strings.Repeat("g", 32))
	case "province":
		return append(common, "41000", "999999", "410100", "abcdef", "4100000", "-41000")
	case "region":
		return append(common, "999999", regionOf(t, beijing), "410000", "41010", "4101000")
	case "relid":
		return append(common, "R"+strings.Repeat("A", 24), "X"+strings.Repeat("a", 24), "R"+strings.Repeat("a", 25),
			"R"+strings.Repeat("a", 23),
			// The right form, but holding a valid ID number (the naive id of
			// proposal key p-26652556 from Henan: sharing derives another).
			"R752284332352013102788470")
	}
	t.Fatalf("unknown kind %s", kind)
	return nil
}

var hostileEnums = []int32{0, 99, -1}

// hostileTimes: invalid, out of the years 2000-2999, or days ahead.
func hostileTimes() []*timestamppb.Timestamp {
	return []*timestamppb.Timestamp{
		{Seconds: -62135596801}, {Seconds: 1, Nanos: 2_000_000_000},
		timestamppb.New(time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC)),
		timestamppb.New(time.Date(3000, 1, 2, 0, 0, 0, 0, time.UTC)),
		timestamppb.New(time.Now().Add(72 * time.Hour)),
	}
}

// field of a request: dotted path and kind (string kinds as hostileStrings,
// "enum", "time", "time?" (optional), "message" (must be present)).
type field struct{ path, kind string }

// mutate sets (or clears, for a nil value) the field at path of m.
func mutate(m protoreflect.Message, path string, v *protoreflect.Value) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		m = m.Mutable(m.Descriptor().Fields().ByName(protoreflect.Name(p))).Message()
	}
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(parts[len(parts)-1]))
	if v == nil {
		m.Clear(fd)
		return
	}
	m.Set(fd, *v)
}

// TestBadInput sends hostile values in every field of every ProvinceService
// method (empty, huge, negative, NaN, exponents, too many decimals, invalid
// UTF-8, wrong codes, unknown enums, impossible times): each call must be
// InvalidArgument naming the field, nothing may be written, and money must
// still be conserved. Afterwards the unmodified requests are sent to show
// they were valid, so each refusal was the hostile field's.
func TestBadInput(t *testing.T) {
	t.Parallel()
	n := startNode(t, newCerts(t), henan, nodeOptions{})
	ctx := hang(t)
	sharerID := idNumber(t, "410105", "19700101", "011")
	benID := idNumber(t, "410105", "19980202", "022")
	otherID := idNumber(t, "410105", "19600101", "044")
	s, b, o := n.register(t, sharerID), n.register(t, benID), n.register(t, otherID)
	if _, err := n.client.CreditAccount(ctx, &provincev1.CreditAccountRequest{Person: byRef(s.GetPersonRef()), Amount: "500.00", CreditKey: "cr"}); err != nil {
		t.Fatal(err)
	}
	rel, err := n.client.ProposeRelationship(ctx, &provincev1.ProposeRelationshipRequest{
		Sharer: party(henan, s.GetPersonRef()), Beneficiary: party(henan, b.GetPersonRef()),
		Relation: provincev1.RelationType_RELATION_TYPE_CHILD, ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: "p",
	})
	if err != nil {
		t.Fatal(err)
	}
	id := rel.GetRelationshipId()
	if _, err := n.client.ConsentRelationship(ctx, &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "200.00", CommandKey: "q"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.Spend(ctx, spendReq(n, "u-1", id, "50.00")); err != nil {
		t.Fatal(err)
	}

	person := []field{{"person", "message"}, {"person.id_number", "id"}, {"person.person_ref", "ref"}}
	cmd := []field{{"relationship_id", "relid"}, {"by", "enum"}, {"command_key", "key"}}
	cases := []struct {
		method string
		req    proto.Message
		out    proto.Message
		fields []field
	}{
		{"RegisterPerson", &provincev1.RegisterPersonRequest{IdNumber: idNumber(t, "410105", "19850505", "055"),
			Scheme: provincev1.Scheme_SCHEME_EMPLOYEE, Mode: provincev1.AccountMode_ACCOUNT_MODE_POOLED_WITH_ACCOUNT,
			Status: provincev1.PersonStatus_PERSON_STATUS_ACTIVE, RegionCode: n.region, Insured: true},
			&provincev1.RegisterPersonResponse{},
			[]field{{"id_number", "id"}, {"scheme", "enum"}, {"mode", "enum"}, {"status", "enum"}, {"region_code", "region"}}},
		{"ChangeEnrollment", &provincev1.ChangeEnrollmentRequest{Person: byRef(o.GetPersonRef()),
			Change: provincev1.EnrollmentChange_ENROLLMENT_CHANGE_TRANSFER, NewRegionCode: secondRegionOf(t, henan),
			ChangeKey: "e-1", EffectiveAt: timestamppb.Now()},
			&provincev1.ChangeEnrollmentResponse{},
			append([]field{{"change", "enum"}, {"new_region_code", "region"}, {"change_key", "key"}, {"effective_at", "time?"}}, person...)},
		{"GetPerson", &provincev1.GetPersonRequest{Person: byRef(s.GetPersonRef())}, &provincev1.Person{}, person},
		{"CreditAccount", &provincev1.CreditAccountRequest{Person: byRef(s.GetPersonRef()), Amount: "1.00", CreditKey: "cr-2"},
			&provincev1.Account{}, append([]field{{"amount", "amount"}, {"credit_key", "key"}}, person...)},
		{"SpendOwn", &provincev1.SpendOwnRequest{Person: byRef(s.GetPersonRef()), Amount: "1.00", SpendKey: "own-1"},
			&provincev1.Account{}, append([]field{{"amount", "amount"}, {"spend_key", "key"}}, person...)},
		{"GetAccount", &provincev1.GetAccountRequest{Person: byRef(s.GetPersonRef())}, &provincev1.Account{}, person},
		{"ProposeRelationship", &provincev1.ProposeRelationshipRequest{Sharer: party(henan, s.GetPersonRef()),
			Beneficiary: party(henan, o.GetPersonRef()), Relation: provincev1.RelationType_RELATION_TYPE_PARENT,
			ProposedBy: provincev1.Side_SIDE_SHARER, ProposalKey: "p-2"},
			&provincev1.Relationship{},
			[]field{{"sharer", "message"}, {"sharer.province_code", "province"}, {"sharer.id_number", "id"}, {"sharer.person_ref", "ref"},
				{"beneficiary", "message"}, {"beneficiary.province_code", "province"}, {"beneficiary.id_number", "id"},
				{"beneficiary.person_ref", "ref"}, {"relation", "enum"}, {"proposed_by", "enum"}, {"proposal_key", "key"}}},
		{"ConsentRelationship", &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "c-2"},
			&provincev1.Relationship{}, cmd},
		{"DeclineRelationship", &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_BENEFICIARY, CommandKey: "d-2"},
			&provincev1.Relationship{}, cmd},
		{"GetRelationship", &provincev1.GetRelationshipRequest{RelationshipId: id}, &provincev1.Relationship{},
			[]field{{"relationship_id", "relid"}}},
		{"ListRelationships", &provincev1.ListRelationshipsRequest{Person: byRef(s.GetPersonRef())},
			&provincev1.ListRelationshipsResponse{}, person},
		{"SetQuota", &provincev1.SetQuotaRequest{RelationshipId: id, Quota: "150.00", CommandKey: "q-2"}, &provincev1.Relationship{},
			[]field{{"relationship_id", "relid"}, {"quota", "quota"}, {"command_key", "key"}}},
		{"Spend", spendReq(n, "u-2", id, "10.00"), &provincev1.SpendResponse{},
			[]field{{"usage_key", "key"}, {"relationship_id", "relid"}, {"kind", "enum"}, {"amount", "amount"},
				{"payee_region_code", "region"}, {"occurred_at", "time"}}},
		{"Reverse", reverseReq(n, "r-1", "u-1", "5.00"), &provincev1.ReverseResponse{},
			[]field{{"reversal_key", "key"}, {"usage_key", "key"}, {"amount", "amount"}, {"occurred_at", "time"}}},
		// Dissolve last: its base request ends the relationship.
		{"DissolveRelationship", &provincev1.RelationshipCommand{RelationshipId: id, By: provincev1.Side_SIDE_SHARER, CommandKey: "x-2"},
			&provincev1.Relationship{}, cmd},
	}
	covered := map[string]bool{}
	for _, c := range cases {
		covered[c.method] = true
	}
	for _, m := range provincev1.ProvinceService_ServiceDesc.Methods {
		if !covered[m.MethodName] {
			t.Fatalf("no bad-input cases for %s", m.MethodName)
		}
	}

	before := n.rowCounts(t)
	calls := 0
	for _, c := range cases {
		method := "/gongji.province.v1.ProvinceService/" + c.method
		for _, f := range c.fields {
			name := f.path[strings.LastIndex(f.path, ".")+1:]
			var variants []*protoreflect.Value
			switch f.kind {
			case "message":
				variants = []*protoreflect.Value{nil}
			case "enum":
				for _, e := range hostileEnums {
					v := protoreflect.ValueOfEnum(protoreflect.EnumNumber(e))
					variants = append(variants, &v)
				}
			case "time", "time?":
				if f.kind == "time" {
					variants = append(variants, nil)
				}
				for _, ts := range hostileTimes() {
					v := protoreflect.ValueOfMessage(ts.ProtoReflect())
					variants = append(variants, &v)
				}
			default:
				for _, s := range hostileStrings(t, f.kind) {
					v := protoreflect.ValueOfString(s)
					variants = append(variants, &v)
				}
			}
			for i, v := range variants {
				m := proto.Clone(c.req)
				mutate(m.ProtoReflect(), f.path, v)
				raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				if err != nil {
					t.Fatalf("%s %s #%d: marshal: %v", c.method, f.path, i, err)
				}
				raw = bytes.ReplaceAll(raw, []byte(utf8Marker), invalidUTF8)
				calls++
				err = n.clientConn.Invoke(ctx, method, rawBytes(raw), proto.Clone(c.out), grpc.ForceCodecV2(rawCodec{}))
				code, msg := codeOf(err)
				if code != codes.InvalidArgument || !strings.Contains(msg, name) {
					t.Errorf("%s with hostile %s #%d: %s %q, want InvalidArgument naming %s", c.method, f.path, i, code, msg, name)
				}
				if v != nil && v.Interface() != nil {
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
	if after := n.rowCounts(t); after != before {
		t.Fatalf("refused calls wrote: before %s, after %s", before, after)
	}
	n.conserved(t)
	t.Logf("%d hostile calls refused", calls)

	// The unmodified requests were valid: none is InvalidArgument.
	for _, c := range cases {
		err := n.clientConn.Invoke(ctx, "/gongji.province.v1.ProvinceService/"+c.method, c.req, proto.Clone(c.out))
		if code, msg := codeOf(err); code == codes.InvalidArgument {
			t.Errorf("base request of %s is itself invalid: %s", c.method, msg)
		}
	}
	n.conserved(t)
	// Hostile ID numbers (in any field) are not echoed into the call log either.
	n.noIDNumbersLogged(t, sharerID, benID, otherID, idNumber(t, "410105", "19800101", "777"))
}
