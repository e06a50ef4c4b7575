package serve

import (
	"errors"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	// Registers the "proto" codec that serverCodec wraps.
	_ "google.golang.org/grpc/encoding/proto"
)

// sanitizeDepthMax bounds the nesting serverCodec walks (a limit on every
// loop). The deepest request of gongji.clearing.v1 nests four levels (a
// relayed proposal's party), of gongji.province.v1 three; the bound leaves
// room, and anything deeper is not one of ours and keeps its decode error.
const sanitizeDepthMax = 16

var errTooDeep = errors.New("serve: message nested too deeply")

// serverCodec is the gRPC "proto" codec of gongji's servers (province nodes
// and the clearing service) with one difference: a request whose only defect
// is invalid UTF-8 in a string field is decoded with each invalid sequence
// replaced by U+FFFD, instead of failing. grpc-go turns every decode error
// into codes.Internal before a handler runs, so without this a hostile ID
// number, key or code made of invalid bytes would look like a server bug.
// With it, the handler sees a string that cannot pass its field's validation
// (keys, codes, amounts, refs, ID numbers and periods are ASCII; a dispute's
// free-text reason may not contain U+FFFD, settlement.AnswerStatement) and
// answers InvalidArgument naming the field. Nothing else is relaxed:
// malformed wire data keeps its decode error.
type serverCodec struct{ base encoding.CodecV2 }

// ServerCodec returns the codec both gongji servers force with
// grpc.ForceServerCodecV2 (see the package's codec doc).
func ServerCodec() encoding.CodecV2 { return serverCodec{base: encoding.GetCodecV2("proto")} }

// Name is "proto": the codec serves the standard content-subtype.
func (serverCodec) Name() string { return "proto" }

// Marshal is the standard proto codec's.
func (c serverCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

// Unmarshal decodes data into v; see serverCodec.
func (c serverCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	fixed, changed, serr := sanitizeUTF8(data.Materialize(), m.ProtoReflect().Descriptor(), 0)
	if serr != nil || !changed {
		return err
	}
	if uerr := proto.Unmarshal(fixed, m); uerr != nil {
		return err
	}
	return nil
}

// sanitizeUTF8 copies the wire encoding b of a message of type md, replacing
// invalid UTF-8 in string fields (nested messages included) with U+FFFD. It
// reports whether anything changed. Errors: malformed wire data, errTooDeep.
func sanitizeUTF8(b []byte, md protoreflect.MessageDescriptor, depth int) ([]byte, bool, error) {
	if depth > sanitizeDepthMax {
		return nil, false, errTooDeep
	}
	out := make([]byte, 0, len(b))
	changed := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false, protowire.ParseError(n)
		}
		fd := md.Fields().ByNumber(num)
		if typ == protowire.BytesType && fd != nil {
			v, m := protowire.ConsumeBytes(b[n:])
			if m < 0 {
				return nil, false, protowire.ParseError(m)
			}
			switch fd.Kind() {
			case protoreflect.StringKind:
				if !utf8.Valid(v) {
					v, changed = []byte(strings.ToValidUTF8(string(v), "\uFFFD")), true
				}
			case protoreflect.MessageKind:
				sub, c, err := sanitizeUTF8(v, fd.Message(), depth+1)
				if err != nil {
					return nil, false, err
				}
				v, changed = sub, changed || c
			}
			out = protowire.AppendTag(out, num, typ)
			out = protowire.AppendBytes(out, v)
			b = b[n+m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, false, protowire.ParseError(m)
		}
		out = append(out, b[:n+m]...)
		b = b[n+m:]
	}
	return out, changed, nil
}
