package tlsconf_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"gongji/internal/tlsconf"
)

// verifyErr returns the x509 error inside a TLS certificate verification
// failure, or nil.
func verifyErr(err error) error {
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		return cve.Err
	}
	return nil
}

func isExpired(err error) bool {
	var inv x509.CertificateInvalidError
	return errors.As(verifyErr(err), &inv) && inv.Reason == x509.Expired
}

func isUnknownAuthority(err error) bool {
	var ua x509.UnknownAuthorityError
	return errors.As(verifyErr(err), &ua)
}

// clientWith is a client config that presents cert and trusts ca; it stands
// for a peer that does not use this package (an attacker, a misconfigured
// node).
func clientWith(ca *tlsconf.CA, cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
	if cert != nil {
		// GetClientCertificate, not Certificates: crypto/tls would otherwise
		// withhold a certificate the server's CA list does not name.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

func TestHandshakeAcceptsFederationIdentities(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	srv := reloaderFor(t, dir, clearingID, nil)
	s := startTLSServer(t, tlsconf.ServerConfig(srv))
	for _, id := range []tlsconf.Identity{provinceID("110000"), provinceID("540000"), provinceID("660000"), operatorID} {
		cli := reloaderFor(t, dir, id, nil)
		serverSerial, err := dial(t, s.addr, tlsconf.ClientConfigFor(cli, "127.0.0.1", clearingID))
		res := s.next(t)
		if err != nil || res.err != nil {
			t.Fatalf("%s: client %v, server %v", id, err, res.err)
		}
		if res.id != id {
			t.Errorf("server saw %v, want %v", res.id, id)
		}
		if res.serial.Cmp(cli.Leaf().SerialNumber) != 0 || serverSerial.Cmp(srv.Leaf().SerialNumber) != 0 {
			t.Errorf("%s: serials server-saw %v (want %v), client-saw %v (want %v)", id, res.serial, cli.Leaf().SerialNumber, serverSerial, srv.Leaf().SerialNumber)
		}
	}
}

func TestHandshakeRefusals(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	ca := loadCA(t, dir)
	foreign, err := tlsconf.NewCA(tlsconf.CAOptions{CommonName: "not gongji"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tlsCert := func(l *tlsconf.Leaf) *tls.Certificate { c := l.TLSCertificate(); return &c }
	bj := provinceID("110000")

	cases := []struct {
		name   string
		client *tls.Config
		check  func(serverErr error) bool
	}{
		{"no client certificate", clientWith(ca, nil), func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "didn't provide a certificate")
		}},
		{"certificate from another CA", clientWith(ca, tlsCert(issue(t, foreign, tlsconf.LeafRequest{Identity: bj}))), isUnknownAuthority},
		{"expired certificate", clientWith(ca, tlsCert(issue(t, ca, tlsconf.LeafRequest{Identity: bj, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}))), isExpired},
		{"server-only certificate", clientWith(ca, tlsCert(issue(t, ca, tlsconf.LeafRequest{Identity: bj, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}))), func(err error) bool {
			var inv x509.CertificateInvalidError
			return errors.As(verifyErr(err), &inv) && inv.Reason == x509.IncompatibleUsage
		}},
		{"certificate without gongji identity", clientWith(ca, noIdentityCert(t, ca)), func(err error) bool {
			return errors.Is(err, tlsconf.ErrNoIdentity)
		}},
		{"TLS 1.2", func() *tls.Config {
			c := clientWith(ca, tlsCert(issue(t, ca, tlsconf.LeafRequest{Identity: bj})))
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}(), func(err error) bool { return err != nil && strings.Contains(err.Error(), "unsupported versions") }},
	}
	srv := reloaderFor(t, dir, clearingID, nil)
	s := startTLSServer(t, tlsconf.ServerConfig(srv))
	for _, tc := range cases {
		_, cerr := dial(t, s.addr, tc.client)
		res := s.next(t)
		if cerr == nil {
			t.Errorf("%s: client got through", tc.name)
		}
		if !tc.check(res.err) {
			t.Errorf("%s: server error %v", tc.name, res.err)
		}
	}

	// Control: the same server accepts a good client, so the refusals above
	// are about the certificates, not a broken server.
	good := reloaderFor(t, dir, bj, nil)
	if _, err := dial(t, s.addr, tlsconf.ClientConfig(good, "127.0.0.1")); err != nil {
		t.Fatalf("good client: %v", err)
	}
	if res := s.next(t); res.err != nil || res.id != bj {
		t.Fatalf("good client: %v %v", res.id, res.err)
	}
}

// noIdentityCert is a client certificate from the right CA with no URI SAN.
func noIdentityCert(t *testing.T, ca *tlsconf.CA) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "gongji:province:110000"}, // a CN is not an identity
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestHandshakeUsesReloaderClock(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	ca := loadCA(t, dir)
	clock := newFakeClock()
	srv := reloaderFor(t, dir, clearingID, clock)
	s := startTLSServer(t, tlsconf.ServerConfig(srv))
	short := issue(t, ca, tlsconf.LeafRequest{Identity: provinceID("320000"), NotAfter: time.Now().Add(time.Hour)})
	c := short.TLSCertificate()
	if _, err := dial(t, s.addr, clientWith(ca, &c)); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	if res := s.next(t); res.err != nil {
		t.Fatalf("before expiry: %v", res.err)
	}
	clock.Advance(2 * time.Hour)
	if _, err := dial(t, s.addr, clientWith(ca, &c)); err == nil {
		t.Error("client got through after expiry")
	}
	if res := s.next(t); !isExpired(res.err) {
		t.Errorf("after expiry: %v", res.err)
	}
}

func TestClientChecksServer(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	ca := loadCA(t, dir)
	cli := reloaderFor(t, dir, provinceID("110000"), nil)

	province := startTLSServer(t, tlsconf.ServerConfig(reloaderFor(t, dir, provinceID("310000"), nil)))
	clearing := startTLSServer(t, tlsconf.ServerConfig(reloaderFor(t, dir, clearingID, nil)))

	cases := []struct {
		name  string
		addr  string
		cfg   *tls.Config
		check func(error) bool
	}{
		{"province posing as clearing", province.addr, tlsconf.ClientConfigFor(cli, "127.0.0.1", clearingID), func(err error) bool {
			return errors.Is(err, tlsconf.ErrWrongPeer)
		}},
		{"wrong host name", clearing.addr, tlsconf.ClientConfig(cli, "clearing.elsewhere.example"), func(err error) bool {
			var he x509.HostnameError
			return errors.As(verifyErr(err), &he)
		}},
		{"no server name", clearing.addr, tlsconf.ClientConfig(cli, ""), func(err error) bool {
			return errors.Is(err, tlsconf.ErrNoServerName)
		}},
	}
	for _, tc := range cases {
		_, err := dial(t, tc.addr, tc.cfg)
		if !tc.check(err) {
			t.Errorf("%s: client error %v", tc.name, err)
		}
		// The server sees the client abort; drain its result.
		if res := s(tc.addr, province, clearing).next(t); res.err == nil {
			t.Errorf("%s: server completed a handshake the client refused", tc.name)
		}
	}

	// Servers this package would never build: foreign CA, expired.
	foreign, err := tlsconf.NewCA(tlsconf.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for name, tc := range map[string]struct {
		leaf  *tlsconf.Leaf
		check func(error) bool
	}{
		"server from another CA": {issue(t, foreign, tlsconf.LeafRequest{Identity: clearingID, Hosts: []string{"127.0.0.1"}}), isUnknownAuthority},
		"expired server":         {issue(t, ca, tlsconf.LeafRequest{Identity: clearingID, Hosts: []string{"127.0.0.1"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}), isExpired},
	} {
		srv := startTLSServer(t, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{tc.leaf.TLSCertificate()}, ClientAuth: tls.RequireAnyClientCert})
		_, err := dial(t, srv.addr, tlsconf.ClientConfigFor(cli, "127.0.0.1", clearingID))
		if !tc.check(err) {
			t.Errorf("%s: client error %v", name, err)
		}
		srv.next(t)
	}

	// And the positive cases: by IP, ::1 and name.
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if _, err := dial(t, clearing.addr, tlsconf.ClientConfigFor(cli, host, clearingID)); err != nil {
			t.Errorf("clearing as %s: %v", host, err)
		}
		clearing.next(t)
	}
	if _, err := dial(t, province.addr, tlsconf.ClientConfigFor(cli, "localhost", provinceID("310000"))); err != nil {
		t.Errorf("province 310000 by name: %v", err)
	}
	province.next(t)
}

// s picks the server listening on addr.
func s(addr string, servers ...*tlsServer) *tlsServer {
	for _, sv := range servers {
		if sv.addr == addr {
			return sv
		}
	}
	panic("no server at " + addr)
}
