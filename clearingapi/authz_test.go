package clearingapi_test

import (
	"crypto/tls"
	"errors"
	"io"
	"slices"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	"gongji/clearingapi"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
)

// legitimate is, for every method of SwitchService and ReportingService, the
// province entitled to make the call and a request that is valid for it. The
// table test fails for a method missing here, so a new RPC cannot go untested.
func legitimate(t *testing.T) map[string]struct {
	caller string
	req    proto.Message
} {
	at := timestamppb.New(t0.Add(-1))
	return map[string]struct {
		caller string
		req    proto.Message
	}{
		"gongji.clearing.v1.SwitchService.Authorize": {beijing,
			&clearingv1.AuthorizeRequest{Debit: debit(t, "authz-u", "R1", beijing, "1.00"), PayerProvince: henan}},
		"gongji.clearing.v1.SwitchService.AuthorizeReversal": {beijing, &clearingv1.AuthorizeReversalRequest{PayerProvince: henan,
			Reversal: &provincev1.ReverseDebitRequest{ReversalKey: "authz-rv", UsageKey: "authz-u", Amount: "1.00", OccurredAt: at, PayeeProvince: beijing}}},
		"gongji.clearing.v1.SwitchService.RelayRelationshipCommand": {beijing, &clearingv1.RelayRelationshipCommandRequest{TargetProvince: henan,
			Command: &provincev1.ApplyRelationshipCommandRequest{Action: provincev1.RelationshipAction_RELATIONSHIP_ACTION_CONSENT,
				CommandKey: "authz-c", OriginProvince: beijing, RelationshipId: "R1", By: provincev1.Side_SIDE_BENEFICIARY}}},
		"gongji.clearing.v1.SwitchService.RelayRelationshipSnapshot": {henan, &clearingv1.RelayRelationshipSnapshotRequest{TargetProvince: beijing,
			Relationship: withSnapshotFields(&provincev1.Relationship{RelationshipId: "R1", SharerRef: ref("s"), SharerProvince: henan, BeneficiaryRef: ref("b"),
				BeneficiaryProvince: beijing, Relation: provincev1.RelationType_RELATION_TYPE_SPOUSE,
				Status: provincev1.RelationshipStatus_RELATIONSHIP_STATUS_ACTIVE, Quota: "10.00", Used: "0.00", Version: 7}, regionOf(t, henan))}},
		"gongji.clearing.v1.ReportingService.ReportUsage": {beijing, &clearingv1.ReportBatch{BatchId: 1,
			Records: []*clearingv1.UsageRecord{usageRecord(t, 1, "authz-r", clearingv1.ReporterRole_REPORTER_ROLE_PAYEE, henan, beijing, "2.00")}}},
	}
}

// call invokes method generically (from its descriptor) on cc and returns
// the first answer and its error.
func call(t *testing.T, cc *grpc.ClientConn, md protoreflect.MethodDescriptor, req proto.Message) (proto.Message, error) {
	t.Helper()
	ctx := hang(t)
	name := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		t.Fatal(err)
	}
	resp := mt.New().Interface()
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		return resp, cc.Invoke(ctx, name, req, resp)
	}
	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: md.IsStreamingClient(), ServerStreams: md.IsStreamingServer()}, name)
	if err != nil {
		return nil, err
	}
	if err := st.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if err := st.CloseSend(); err != nil {
		return nil, err
	}
	return resp, st.RecvMsg(resp)
}

// TestWrongIdentities calls every RPC of SwitchService and ReportingService,
// found by iterating the service descriptors, with every identity that may
// not make it. Nothing of it may reach a province node or the database.
func TestWrongIdentities(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{peers: []string{henan, beijing}})
	f.peers[henan].setQuota("R1", "100.00")
	reqs := legitimate(t)

	// A client certificate from a CA the federation does not trust.
	foreignCA, err := tlsconf.NewCA(tlsconf.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caPool := reloader(t, f.certs, clearingID).Pool()
	clientTLS := func(id tlsconf.Identity, ca *tlsconf.CA) *tls.Config {
		leaf, err := ca.Issue(tlsconf.LeafRequest{Identity: id})
		if err != nil {
			t.Fatal(err)
		}
		c := leaf.TLSCertificate()
		return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: caPool, ServerName: "localhost",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }}
	}

	// The same services on a server without TLS: the handlers themselves
	// must refuse a caller with no verified certificate.
	pm := serve.NewMetrics("plain")
	plain := serve.NewServer(zap.NewNop(), pm, serve.GRPCOptions(zap.NewNop(), pm, clearingapi.CallerName)...)
	if err := f.services.Register(plain.GRPC); err != nil {
		t.Fatal(err)
	}
	plainAddr := runServer(t, plain, f.rep)
	plainConn, err := grpc.NewClient(plainAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plainConn.Close() })

	type caller struct {
		name string
		conn func(legit string) *grpc.ClientConn
		// want: the code for a switch method; for ReportUsage see below.
		want codes.Code
	}
	other := map[string]string{beijing: hainan, henan: hainan}
	callers := []caller{
		{"another province", func(legit string) *grpc.ClientConn { return f.dial(t, provinceID(other[legit])) }, codes.PermissionDenied},
		{"the payer instead of the payee", func(legit string) *grpc.ClientConn {
			if legit == beijing {
				return f.dial(t, provinceID(henan))
			}
			return f.dial(t, provinceID(beijing))
		}, codes.PermissionDenied},
		{"operator", func(string) *grpc.ClientConn { return f.dial(t, operatorID) }, codes.PermissionDenied},
		{"clearing", func(string) *grpc.ClientConn { return f.dial(t, clearingID) }, codes.PermissionDenied},
		{"no certificate", func(string) *grpc.ClientConn {
			return f.dialTLS(t, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: caPool, ServerName: "localhost"})
		}, codes.Unavailable},
		{"foreign CA", func(legit string) *grpc.ClientConn { return f.dialTLS(t, clientTLS(provinceID(legit), foreignCA)) }, codes.Unavailable},
		{"no TLS", func(string) *grpc.ClientConn { return plainConn }, codes.Unauthenticated},
	}

	var methods int
	services := clearingv1.File_gongji_clearing_v1_clearing_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		if sd.Name() != "SwitchService" && sd.Name() != "ReportingService" {
			continue
		}
		for j := range sd.Methods().Len() {
			md := sd.Methods().Get(j)
			methods++
			l, ok := reqs[string(md.FullName())]
			if !ok {
				t.Fatalf("no legitimate request for %s: add it to legitimate()", md.FullName())
			}
			for _, c := range callers {
				resp, err := call(t, c.conn(l.caller), md, l.req)
				code := status.Code(err)
				if md.Name() == "ReportUsage" && (c.name == "another province" || c.name == "the payer instead of the payee") {
					// Any province may report, but only its own records: the
					// other province's PAYEE record is acknowledged as rejected.
					ack, _ := resp.(*clearingv1.ReportAck)
					if err != nil || len(ack.GetRejected()) != 1 || ack.GetStored() != 0 || !slices.Equal(ack.GetSeqs(), []int64{1}) {
						t.Errorf("%s as %s: %v, ack %v", md.FullName(), c.name, err, ack)
					}
					continue
				}
				// No certificate / foreign CA: the handshake is refused, so the
				// RPC never starts and the client sees the connection fail.
				if code != c.want {
					t.Errorf("%s as %s: %v, want %v", md.FullName(), c.name, err, c.want)
				}
			}
		}
	}
	if methods != 5 {
		t.Fatalf("%d methods in SwitchService and ReportingService, want 5 (update the table)", methods)
	}
	for code, p := range f.peers {
		if calls := p.callLog(); len(calls) != 0 {
			t.Errorf("node %s was called: %v", code, calls)
		}
	}
	var n int
	if err := f.db.Pool.QueryRow(hang(t), `SELECT (SELECT count(*) FROM switch_log) + (SELECT count(*) FROM usages)`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows written by refused calls: %d, %v", n, err)
	}

	// The legitimate callers get through (the table above is not refusing
	// everything for some unrelated reason).
	for name, l := range reqs {
		md, err := findMethod(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := call(t, f.dial(t, provinceID(l.caller)), md, l.req); err != nil &&
			(status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated) {
			t.Errorf("%s as %s: %v", name, l.caller, err)
		}
	}
}

func findMethod(full string) (protoreflect.MethodDescriptor, error) {
	services := clearingv1.File_gongji_clearing_v1_clearing_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			if md := sd.Methods().Get(j); string(md.FullName()) == full {
				return md, nil
			}
		}
	}
	return nil, errors.New("no method " + full)
}

// TestReflectionListsServices is what `grpcurl list` does: the reflection
// service names the clearing services (to a client with a valid certificate).
func TestReflectionListsServices(t *testing.T) {
	t.Parallel()
	f := setup(t, fixtureOptions{})
	stream, err := reflectionpb.NewServerReflectionClient(f.dial(t, provinceID(beijing))).ServerReflectionInfo(hang(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"gongji.clearing.v1.SwitchService", "gongji.clearing.v1.ReportingService", "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
	_ = stream.CloseSend()
}
