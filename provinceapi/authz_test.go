package provinceapi_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"gongji/internal/tlsconf"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/provinceapi"
)

// rowCounts is a fingerprint of everything a node stores, to show that a
// refused call wrote nothing.
func (n *node) rowCounts(t testing.TB) string {
	t.Helper()
	var out string
	for _, table := range []string{"persons", "accounts", "journal_entries", "journal_postings", "relationships",
		"usages", "reversals", "commands", "outbox", "relay_queue"} {
		out += fmt.Sprintf("%s=%d ", table, n.count(t, `SELECT count(*) FROM `+table))
	}
	return out
}

// invokeEmpty calls every method of service with an empty request over cc
// and returns the codes by method.
func invokeEmpty(t *testing.T, cc *grpc.ClientConn, service string) map[string]codes.Code {
	t.Helper()
	sd := provincev1.File_gongji_province_v1_province_proto.Services().ByName(protoreflect.Name(service))
	if sd == nil {
		t.Fatalf("no service %s", service)
	}
	out := map[string]codes.Code{}
	for i := 0; i < sd.Methods().Len(); i++ {
		m := sd.Methods().Get(i)
		in, resp := dynamicpb.NewMessage(m.Input()), dynamicpb.NewMessage(m.Output())
		err := cc.Invoke(hang(t), fmt.Sprintf("/%s/%s", sd.FullName(), m.Name()), in, resp)
		out[string(m.Name())], _ = codeOf(err)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no methods", service)
	}
	return out
}

// TestWrongIdentities: ProvinceService is for this province's own
// certificate, PeerService for the clearing service's; every method of each
// (iterated from the service descriptors) refuses every other identity with
// PermissionDenied before reading the request, and writes nothing.
func TestWrongIdentities(t *testing.T) {
	t.Parallel()
	certs := newCerts(t)
	n := startNode(t, certs, henan, nodeOptions{})
	before := n.rowCounts(t)
	for _, tc := range []struct {
		service string
		allowed tlsconf.Identity
		refused []tlsconf.Identity
	}{
		{"ProvinceService", provinceID(henan), []tlsconf.Identity{provinceID(hainan), provinceID(beijing), clearingID, operatorID}},
		{"PeerService", clearingID, []tlsconf.Identity{provinceID(henan), provinceID(hainan), operatorID}},
	} {
		for _, id := range tc.refused {
			for method, code := range invokeEmpty(t, n.dialAs(t, id), tc.service) {
				if code != codes.PermissionDenied {
					t.Errorf("%s.%s as %s: %s, want PermissionDenied", tc.service, method, id, code)
				}
			}
		}
		// The allowed identity gets past authorisation: an empty request is bad input.
		for method, code := range invokeEmpty(t, n.dialAs(t, tc.allowed), tc.service) {
			if code != codes.InvalidArgument {
				t.Errorf("%s.%s as %s with an empty request: %s, want InvalidArgument", tc.service, method, tc.allowed, code)
			}
		}
	}
	if after := n.rowCounts(t); after != before {
		t.Fatalf("refused calls wrote: before %s, after %s", before, after)
	}

	// Without a client certificate the TLS handshake fails: no handler runs.
	noCert := tlsconf.ClientConfigFor(reloader(t, certs, provinceID(henan)), "localhost", provinceID(henan))
	noCert.GetClientCertificate = nil
	cc, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(credentials.NewTLS(noCert)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = provincev1.NewProvinceServiceClient(cc).GetPerson(hang(t), &provincev1.GetPersonRequest{})
	wantCode(t, "no client certificate", err, codes.Unavailable)
}

// TestUnauthenticated: a call that reaches a handler without a verified
// certificate (no TLS peer in its context) is Unauthenticated, for every
// method of both services.
func TestUnauthenticated(t *testing.T) {
	t.Parallel()
	n := startNode(t, newCerts(t), henan, nodeOptions{})
	opts := provinceapi.Options{Service: n.svc}
	ps, err := provinceapi.NewProvinceServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := provinceapi.NewPeerServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		desc grpc.ServiceDesc
		impl any
	}{{provincev1.ProvinceService_ServiceDesc, ps}, {provincev1.PeerService_ServiceDesc, peer}} {
		for _, m := range s.desc.Methods {
			_, err := m.Handler(s.impl, context.Background(), func(any) error { return nil }, nil)
			if code, _ := codeOf(err); code != codes.Unauthenticated {
				t.Errorf("%s.%s without a peer: %s, want Unauthenticated", s.desc.ServiceName, m.MethodName, code)
			}
		}
	}
}
