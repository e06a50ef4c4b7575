package tlsconf_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"gongji/internal/tlsconf"
)

// chainsTo reports whether leaf verifies against pool (any usage, now).
func chainsTo(leaf *x509.Certificate, pool *x509.CertPool) bool {
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func readBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// noTempFiles fails if an atomic write left its temporary file behind.
func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

// TestWriteCABundle writes an old+new trust bundle: a process reloading it
// keeps its certificate and trusts leaves of both CAs. A bundle without a CA
// certificate is refused and leaves the file as it was.
func TestWriteCABundle(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	ca1 := loadCA(t, dir)
	ca2, err := tlsconf.NewCA(tlsconf.CAOptions{CommonName: "gongji clearing CA 2"})
	if err != nil {
		t.Fatal(err)
	}
	caFile := tlsconf.FilesFor(dir, clearingID).CAFile
	r := reloaderFor(t, dir, clearingID, nil)
	l1 := issue(t, ca1, tlsconf.LeafRequest{Identity: provinceID("110000")})
	l2 := issue(t, ca2, tlsconf.LeafRequest{Identity: provinceID("110000")})
	if !chainsTo(l1.Cert, r.Pool()) || chainsTo(l2.Cert, r.Pool()) {
		t.Fatal("before the bundle: want the old CA trusted and the new one not")
	}

	if err := tlsconf.WriteCABundle(caFile, ca1.Cert, ca2.Cert); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err != nil {
		t.Fatalf("reload with the old+new bundle: %v", err)
	}
	if !chainsTo(l1.Cert, r.Pool()) || !chainsTo(l2.Cert, r.Pool()) {
		t.Fatal("with the old+new bundle both CAs must be trusted")
	}
	if want := append(ca1.CertPEM(), ca2.CertPEM()...); !bytes.Equal(readBytes(t, caFile), want) {
		t.Fatal("bundle file is not the two CA certificates in order")
	}

	before := readBytes(t, caFile)
	for name, certs := range map[string][]*x509.Certificate{
		"empty":  nil,
		"a leaf": {ca2.Cert, l1.Cert},
		"nil":    {nil},
	} {
		if err := tlsconf.WriteCABundle(caFile, certs...); !errors.Is(err, tlsconf.ErrNotCA) {
			t.Errorf("%s bundle: %v, want ErrNotCA", name, err)
		}
		if !bytes.Equal(readBytes(t, caFile), before) {
			t.Fatalf("%s bundle: the file changed although the write was refused", name)
		}
	}
	noTempFiles(t, dir)
}

// TestReissue renews certificates in an Init directory during a CA rotation
// in its three steps: same CA (new serial, same SANs as Init, the process
// reloads it); a new CA refused while the bundle does not hold it; the
// bundle widened, the certificate reissued from the new CA; the old CA
// dropped, after which a certificate still from the old CA no longer loads
// (the process keeps what it had).
func TestReissue(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	ca1 := loadCA(t, dir)
	hn := provinceID("410000")
	r := reloaderFor(t, dir, hn, nil)
	old := r.Leaf()

	l, err := tlsconf.Reissue(dir, ca1, hn, tlsconf.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if same(l.Cert.SerialNumber, old.SerialNumber) {
		t.Fatal("reissued certificate has the old serial")
	}
	if !slices.Equal(l.Cert.DNSNames, old.DNSNames) || len(l.Cert.IPAddresses) != len(old.IPAddresses) ||
		!slices.Equal(l.Cert.ExtKeyUsage, old.ExtKeyUsage) {
		t.Fatalf("reissued SANs/usage %v %v %v, Init gave %v %v %v", l.Cert.DNSNames, l.Cert.IPAddresses, l.Cert.ExtKeyUsage,
			old.DNSNames, old.IPAddresses, old.ExtKeyUsage)
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if !same(r.Leaf().SerialNumber, l.Cert.SerialNumber) || r.Identity() != hn {
		t.Fatalf("reloaded %s (%s), want the reissued %s", r.Leaf().SerialNumber, r.Identity(), l.Cert.SerialNumber)
	}

	// The clearing certificate keeps ::1 and gets the extra host; validity
	// comes from the options' clock.
	now := time.Now().Add(-time.Hour).Truncate(time.Second)
	cl, err := tlsconf.Reissue(dir, ca1, clearingID, tlsconf.InitOptions{
		Validity: 48 * time.Hour, ClearingHosts: []string{"clearing.example"}, Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cl.Cert.DNSNames, "clearing.example") || !slices.ContainsFunc(cl.Cert.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.IPv6loopback) }) {
		t.Fatalf("clearing SANs %v %v", cl.Cert.DNSNames, cl.Cert.IPAddresses)
	}
	if !cl.Cert.NotAfter.Equal(now.Add(48 * time.Hour)) {
		t.Fatalf("NotAfter %s, want %s", cl.Cert.NotAfter, now.Add(48*time.Hour))
	}

	// Step 2 before step 1: the new CA is not trusted yet; nothing is written.
	ca2, err := tlsconf.NewCA(tlsconf.CAOptions{CommonName: "gongji clearing CA 2"})
	if err != nil {
		t.Fatal(err)
	}
	files := tlsconf.FilesFor(dir, hn)
	certBefore, keyBefore := readBytes(t, files.CertFile), readBytes(t, files.KeyFile)
	if _, err := tlsconf.Reissue(dir, ca2, hn, tlsconf.InitOptions{}); !errors.Is(err, tlsconf.ErrUntrustedCA) {
		t.Fatalf("reissue from a CA outside the bundle: %v, want ErrUntrustedCA", err)
	}
	if !bytes.Equal(readBytes(t, files.CertFile), certBefore) || !bytes.Equal(readBytes(t, files.KeyFile), keyBefore) {
		t.Fatal("a refused reissue changed the files")
	}

	// Step 1, then 2: trust both, reissue from the new CA.
	op := reloaderFor(t, dir, operatorID, nil) // stays on the old CA
	if err := tlsconf.WriteCABundle(files.CAFile, ca1.Cert, ca2.Cert); err != nil {
		t.Fatal(err)
	}
	l2, err := tlsconf.Reissue(dir, ca2, hn, tlsconf.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if !same(r.Leaf().SerialNumber, l2.Cert.SerialNumber) || !chainsTo(r.Leaf(), ca2.Pool()) {
		t.Fatal("after step 2 the node must serve its certificate from the new CA")
	}

	// Step 3: drop the old CA. The node (new CA) reloads; the operator, whose
	// certificate is still from the old CA, is refused and keeps serving.
	if err := tlsconf.WriteCABundle(files.CAFile, ca2.Cert); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err != nil {
		t.Fatalf("node on the new CA, bundle without the old: %v", err)
	}
	if chainsTo(l.Cert, r.Pool()) {
		t.Fatal("the old CA is still trusted after step 3")
	}
	opLeaf := op.Leaf()
	if err := op.Reload(); err == nil {
		t.Fatal("a certificate of the dropped CA loaded")
	}
	if op.Leaf() != opLeaf {
		t.Fatal("a failed reload replaced the operator's certificate")
	}

	if _, err := tlsconf.Reissue(dir, ca2, tlsconf.Identity{Kind: tlsconf.Province, Province: "999999"}, tlsconf.InitOptions{}); !errors.Is(err, tlsconf.ErrBadIdentity) {
		t.Fatalf("bad identity: %v", err)
	}
	short, err := tlsconf.NewCA(tlsconf.CAOptions{NotAfter: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.WriteCABundle(files.CAFile, ca2.Cert, short.Cert); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsconf.Reissue(dir, short, hn, tlsconf.InitOptions{}); !errors.Is(err, tlsconf.ErrBadValidity) {
		t.Fatalf("a leaf outliving its CA: %v, want ErrBadValidity", err)
	}
	noTempFiles(t, dir)
}
