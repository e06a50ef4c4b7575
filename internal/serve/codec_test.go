package serve

import (
	"strings"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	provincev1 "gongji/proto/gen/gongji/province/v1"
)

// TestSanitizeUTF8 checks the server codec's repair: only string fields,
// nested messages included; everything else byte for byte.
func TestSanitizeUTF8(t *testing.T) {
	req := &provincev1.ProposeRelationshipRequest{
		Sharer:      &provincev1.PartyRef{ProvinceCode: "XXXXXX", Id: &provincev1.PartyRef_PersonRef{PersonRef: "ref"}},
		Beneficiary: &provincev1.PartyRef{ProvinceCode: "110000"},
		Relation:    provincev1.RelationType_RELATION_TYPE_CHILD, ProposalKey: "YYYY",
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.Replace(strings.Replace(string(b), "XXXXXX", "\xff\xfe41\x00\xc3", 1), "YYYY", "k\xe2\x82y", 1))
	b = protowire.AppendTag(b, 99, protowire.BytesType) // an unknown field stays as it is
	b = protowire.AppendBytes(b, []byte{0xff})

	var got provincev1.ProposeRelationshipRequest
	if err := proto.Unmarshal(b, &got); err == nil {
		t.Fatal("the test input is valid UTF-8")
	}
	fixed, changed, err := sanitizeUTF8(b, got.ProtoReflect().Descriptor(), 0)
	if err != nil || !changed {
		t.Fatalf("sanitize: %v, changed=%t", err, changed)
	}
	if err := proto.Unmarshal(fixed, &got); err != nil {
		t.Fatal(err)
	}
	if got.GetSharer().GetProvinceCode() != "\uFFFD41\x00\uFFFD" || got.GetProposalKey() != "k\uFFFDy" ||
		got.GetBeneficiary().GetProvinceCode() != "110000" || got.GetRelation() != provincev1.RelationType_RELATION_TYPE_CHILD ||
		len(got.ProtoReflect().GetUnknown()) == 0 {
		t.Fatalf("sanitized: %+v", &got)
	}
	// The server codec does the same on the wire.
	var viaCodec provincev1.ProposeRelationshipRequest
	if err := ServerCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &viaCodec); err != nil || !proto.Equal(&viaCodec, &got) {
		t.Fatalf("server codec: %+v, %v", &viaCodec, err)
	}
	// Malformed wire data keeps its error.
	if _, _, err := sanitizeUTF8([]byte{0x0a, 0x05, 'a'}, got.ProtoReflect().Descriptor(), 0); err == nil {
		t.Fatal("truncated message sanitized")
	}
}
