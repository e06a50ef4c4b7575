package tlsconf_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"gongji/internal/tlsconf"
	"gongji/region"
)

func TestIdentityStringAndParse(t *testing.T) {
	t.Parallel()
	good := map[string]tlsconf.Identity{
		"gongji:province:110000": provinceID("110000"),
		"gongji:province:660000": provinceID("660000"), // 新疆生产建设兵团
		"gongji:clearing":        clearingID,
		"gongji:operator":        operatorID,
		"GONGJI:clearing":        clearingID, // URI schemes are case-insensitive
	}
	for s, want := range good {
		got, err := tlsconf.ParseIdentity(s)
		if err != nil || got != want {
			t.Errorf("ParseIdentity(%q) = %v, %v; want %v", s, got, err, want)
		}
		if err := want.Validate(); err != nil {
			t.Errorf("%v.Validate() = %v", want, err)
		}
		if back, err := tlsconf.ParseIdentity(want.String()); err != nil || back != want {
			t.Errorf("round trip of %v: %v, %v", want, back, err)
		}
	}
	bad := map[string]error{
		"gongji:province:990000":     region.ErrUnknownProvince,
		"gongji:province:110100":     region.ErrUnknownProvince, // a pooling region, not a province
		"gongji:province:11000":      region.ErrBadCode,
		"gongji:province:":           region.ErrBadCode,
		"gongji:province:110000:x":   region.ErrBadCode,
		"gongji:clearing:110000":     tlsconf.ErrBadIdentity,
		"gongji:Clearing":            tlsconf.ErrBadIdentity,
		"gongji://clearing":          tlsconf.ErrBadIdentity,
		"gongji:clearing?x=1":        tlsconf.ErrBadIdentity,
		"gongji:clearing#f":          tlsconf.ErrBadIdentity,
		"gongji:province:11%300000":  tlsconf.ErrBadIdentity,
		"spiffe://gongji/clearing":   tlsconf.ErrBadIdentity,
		"gongji:auditor":             tlsconf.ErrBadIdentity,
		"":                           tlsconf.ErrBadIdentity,
		"gongji:province:110000 ":    region.ErrBadCode,
		"gongji:province:%31%310000": tlsconf.ErrBadIdentity,
	}
	for s, want := range bad {
		got, err := tlsconf.ParseIdentity(s)
		if !errors.Is(err, want) || !errors.Is(err, tlsconf.ErrBadIdentity) {
			t.Errorf("ParseIdentity(%q) = %v, %v; want %v wrapped in ErrBadIdentity", s, got, err, want)
		}
	}
	invalid := []tlsconf.Identity{
		{},
		{Kind: 9},
		{Kind: tlsconf.Clearing, Province: "110000"},
		{Kind: tlsconf.Operator, Province: "110000"},
		{Kind: tlsconf.Province},
		{Kind: tlsconf.Province, Province: "000000"},
	}
	for _, id := range invalid {
		if err := id.Validate(); !errors.Is(err, tlsconf.ErrBadIdentity) {
			t.Errorf("%#v.Validate() = %v, want ErrBadIdentity", id, err)
		}
	}
	if s := (tlsconf.Identity{}).String(); s != "gongji:invalid" {
		t.Errorf("zero identity renders %q", s)
	}
	if s := tlsconf.Province.String() + tlsconf.Clearing.String() + tlsconf.Operator.String(); s != "provinceclearingoperator" {
		t.Errorf("kind names %q", s)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestIdentityFromCert(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		uris []string
		want tlsconf.Identity
		err  error
	}{
		{"province", []string{"gongji:province:440000"}, provinceID("440000"), nil},
		{"clearing", []string{"gongji:clearing"}, clearingID, nil},
		{"operator", []string{"gongji:operator"}, operatorID, nil},
		{"other schemes ignored", []string{"spiffe://gongji.cn/node", "gongji:province:310000", "https://example.cn"}, provinceID("310000"), nil},
		{"none", nil, tlsconf.Identity{}, tlsconf.ErrNoIdentity},
		{"only other schemes", []string{"spiffe://gongji.cn/clearing"}, tlsconf.Identity{}, tlsconf.ErrNoIdentity},
		{"two", []string{"gongji:province:110000", "gongji:clearing"}, tlsconf.Identity{}, tlsconf.ErrManyIdentities},
		{"same twice", []string{"gongji:clearing", "gongji:clearing"}, tlsconf.Identity{}, tlsconf.ErrManyIdentities},
		{"unknown province", []string{"gongji:province:990000"}, tlsconf.Identity{}, region.ErrUnknownProvince},
		{"malformed", []string{"gongji:province:11"}, tlsconf.Identity{}, tlsconf.ErrBadIdentity},
	}
	for _, tc := range cases {
		cert := &x509.Certificate{}
		for _, s := range tc.uris {
			cert.URIs = append(cert.URIs, mustURL(t, s))
		}
		got, err := tlsconf.IdentityFromCert(cert)
		if tc.err == nil {
			if err != nil || got != tc.want {
				t.Errorf("%s: got %v, %v; want %v", tc.name, got, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: got %v, %v; want error %v", tc.name, got, err, tc.err)
		}
	}
	if _, err := tlsconf.IdentityFromCert(nil); !errors.Is(err, tlsconf.ErrNoIdentity) {
		t.Errorf("nil cert: %v", err)
	}
}

func TestIdentityFromContextErrors(t *testing.T) {
	t.Parallel()
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	cases := []struct {
		name string
		ctx  context.Context
		err  error
	}{
		{"no peer", context.Background(), tlsconf.ErrNoPeer},
		{"not TLS", peer.NewContext(context.Background(), &peer.Peer{Addr: addr}), tlsconf.ErrNotTLS},
		{"TLS without verified chain", peer.NewContext(context.Background(), &peer.Peer{
			Addr:     addr,
			AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{mustURL(t, "gongji:clearing")}}}}},
		}), tlsconf.ErrUnverified},
	}
	for _, tc := range cases {
		if id, err := tlsconf.IdentityFromContext(tc.ctx); !errors.Is(err, tc.err) {
			t.Errorf("%s: got %v, %v; want %v", tc.name, id, err, tc.err)
		}
	}
	// A verified chain is the only source.
	ctx := peer.NewContext(context.Background(), &peer.Peer{
		Addr: addr,
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{
			{URIs: []*url.URL{mustURL(t, "gongji:province:650000")}},
		}}}},
	})
	if id, err := tlsconf.IdentityFromContext(ctx); err != nil || id != provinceID("650000") {
		t.Errorf("verified chain: %v, %v", id, err)
	}
}

func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{"gongji:province:110000", "gongji:clearing", "gongji:operator", "gongji://x", "gongji:province:%31"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := tlsconf.ParseIdentity(s)
		if err != nil {
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("ParseIdentity(%q) = %v which does not validate: %v", s, id, err)
		}
		back, err := tlsconf.ParseIdentity(id.String())
		if err != nil || back != id {
			t.Fatalf("round trip %q -> %v -> %v, %v", s, id, back, err)
		}
	})
}
