package tlsconf_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"gongji/internal/tlsconf"
	"gongji/region"
)

// readAll returns every file of dir by name.
func readAll(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func allIdentities() []tlsconf.Identity {
	ids := []tlsconf.Identity{clearingID, operatorID}
	for _, code := range region.ProvinceCodes() {
		ids = append(ids, provinceID(code))
	}
	return ids
}

func TestInitCreatesEverything(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "certs")
	now := time.Now().Truncate(time.Second)
	const validity = 400 * 24 * time.Hour
	if err := tlsconf.Init(dir, tlsconf.InitOptions{
		Validity:      validity,
		Now:           func() time.Time { return now },
		ClearingHosts: []string{"clearing.gongji.example", "10.1.2.3"},
		ProvinceHosts: []string{"node.gongji.example"},
	}); err != nil {
		t.Fatal(err)
	}

	// Exactly the expected files: CA + clearing + operator + 32 provinces.
	codes := region.ProvinceCodes()
	if len(codes) != 32 {
		t.Fatalf("region has %d provinces", len(codes))
	}
	var want []string
	for _, id := range allIdentities() {
		f := tlsconf.FilesFor(dir, id)
		want = append(want, filepath.Base(f.CertFile), filepath.Base(f.KeyFile))
	}
	want = append(want, tlsconf.CACertFile, tlsconf.CAKeyFile)
	sort.Strings(want)
	var got []string
	for name := range readAll(t, dir) {
		got = append(got, name)
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Fatalf("files:\n got %v\nwant %v", got, want)
	}
	if len(got) != 2*35 {
		t.Fatalf("%d files, want 70", len(got))
	}

	ca := loadCA(t, dir)
	if !ca.Cert.IsCA || ca.Cert.NotBefore.After(now) || !ca.Cert.NotAfter.Equal(now.Add(tlsconf.DefaultCAValidity)) {
		t.Errorf("CA: IsCA %t, %s – %s", ca.Cert.IsCA, ca.Cert.NotBefore, ca.Cert.NotAfter)
	}
	checkMode(t, filepath.Join(dir, tlsconf.CAKeyFile), 0o600)
	checkMode(t, filepath.Join(dir, tlsconf.CACertFile), 0o644)
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, %v", st.Mode(), err)
	}

	serials := map[string]bool{}
	for _, id := range allIdentities() {
		f := tlsconf.FilesFor(dir, id)
		checkMode(t, f.KeyFile, 0o600)
		checkMode(t, f.CertFile, 0o644)
		pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if serials[leaf.SerialNumber.String()] {
			t.Errorf("%s: duplicate serial", id)
		}
		serials[leaf.SerialNumber.String()] = true
		gotID, err := tlsconf.IdentityFromCert(leaf)
		if err != nil || gotID != id {
			t.Errorf("%s: identity %v, %v", f.CertFile, gotID, err)
		}
		if len(leaf.URIs) != 1 {
			t.Errorf("%s: %d URI SANs", id, len(leaf.URIs))
		}
		if !leaf.NotBefore.Before(now) || !leaf.NotAfter.Equal(now.Add(validity)) {
			t.Errorf("%s: validity %s – %s", id, leaf.NotBefore, leaf.NotAfter)
		}
		if leaf.IsCA {
			t.Errorf("%s: leaf is a CA", id)
		}
		verify := func(usage x509.ExtKeyUsage, host string) error {
			_, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: host})
			return err
		}
		if err := verify(x509.ExtKeyUsageClientAuth, ""); err != nil {
			t.Errorf("%s as client: %v", id, err)
		}
		switch id.Kind {
		case tlsconf.Operator:
			if verify(x509.ExtKeyUsageServerAuth, "") == nil {
				t.Errorf("operator certificate is usable as a server certificate")
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses) != 0 {
				t.Errorf("operator has host SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
			}
		case tlsconf.Province:
			for _, h := range []string{"localhost", "127.0.0.1", "node.gongji.example"} {
				if err := verify(x509.ExtKeyUsageServerAuth, h); err != nil {
					t.Errorf("%s as server for %s: %v", id, h, err)
				}
			}
			if !slices.Equal(leaf.DNSNames, []string{"localhost", "node.gongji.example"}) || len(leaf.IPAddresses) != 1 {
				t.Errorf("%s SANs %v %v", id, leaf.DNSNames, leaf.IPAddresses)
			}
		case tlsconf.Clearing:
			for _, h := range []string{"localhost", "127.0.0.1", "::1", "clearing.gongji.example", "10.1.2.3"} {
				if err := verify(x509.ExtKeyUsageServerAuth, h); err != nil {
					t.Errorf("clearing as server for %s: %v", h, err)
				}
			}
			if verify(x509.ExtKeyUsageServerAuth, "node.gongji.example") == nil {
				t.Errorf("clearing certificate got the province hosts")
			}
		}
	}
	if len(serials) != 34 {
		t.Errorf("%d distinct leaf serials, want 34", len(serials))
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s mode %v, want %v", filepath.Base(path), st.Mode().Perm(), want)
	}
}

func TestInitIdempotentAndForce(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	before := readAll(t, dir)

	// Re-run: nothing changes.
	if err := tlsconf.Init(dir, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	assertSame(t, before, readAll(t, dir), nil)

	// A missing pair is issued again with the existing CA; nothing else moves.
	bj := tlsconf.FilesFor(dir, provinceID("110000"))
	os.Remove(bj.CertFile)
	os.Remove(bj.KeyFile)
	if err := tlsconf.Init(dir, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	after := readAll(t, dir)
	assertSame(t, before, after, []string{"province-110000.pem", "province-110000-key.pem"})
	if bytes.Equal(before["province-110000.pem"], after["province-110000.pem"]) {
		t.Error("missing pair was not reissued")
	}
	r := reloaderFor(t, dir, provinceID("110000"), nil) // verifies against ca.pem
	if r.Identity() != provinceID("110000") {
		t.Errorf("reissued identity %v", r.Identity())
	}

	// Half a pair is refused and nothing is written.
	op := tlsconf.FilesFor(dir, operatorID)
	os.Remove(op.KeyFile)
	snapshot := readAll(t, dir)
	if err := tlsconf.Init(dir, tlsconf.InitOptions{}); !errors.Is(err, tlsconf.ErrIncomplete) {
		t.Fatalf("half pair: %v", err)
	}
	assertSame(t, snapshot, readAll(t, dir), nil)

	// Force replaces everything, the CA included.
	if err := tlsconf.Init(dir, tlsconf.InitOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	forced := readAll(t, dir)
	for name, b := range before {
		if bytes.Equal(b, forced[name]) {
			t.Errorf("Force kept %s", name)
		}
	}
}

func assertSame(t *testing.T, a, b map[string][]byte, except []string) {
	t.Helper()
	if len(a) != len(b) {
		t.Errorf("%d files became %d", len(a), len(b))
	}
	for name, x := range a {
		if slices.Contains(except, name) {
			continue
		}
		if !bytes.Equal(x, b[name]) {
			t.Errorf("%s changed", name)
		}
	}
}

func TestInitRefusesMisfits(t *testing.T) {
	t.Parallel()
	cases := map[string]func(t *testing.T, dir string){
		"other identity in place": func(t *testing.T, dir string) {
			from, to := tlsconf.FilesFor(dir, provinceID("120000")), tlsconf.FilesFor(dir, provinceID("110000"))
			copyFile(t, from.CertFile, to.CertFile)
			copyFile(t, from.KeyFile, to.KeyFile)
		},
		"key of another certificate": func(t *testing.T, dir string) {
			copyFile(t, tlsconf.FilesFor(dir, clearingID).KeyFile, tlsconf.FilesFor(dir, operatorID).KeyFile)
		},
		"CA replaced under existing leaves": func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, tlsconf.CACertFile))
			os.Remove(filepath.Join(dir, tlsconf.CAKeyFile))
		},
		"corrupt certificate": func(t *testing.T, dir string) {
			if err := os.WriteFile(tlsconf.FilesFor(dir, provinceID("650000")).CertFile, []byte("garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, spoil := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := initDir(t)
			spoil(t, dir)
			snapshot := readAll(t, dir)
			if err := tlsconf.Init(dir, tlsconf.InitOptions{}); !errors.Is(err, tlsconf.ErrExisting) {
				t.Fatalf("Init = %v, want ErrExisting", err)
			}
			assertSame(t, snapshot, readAll(t, dir), nil)
			if err := tlsconf.Init(dir, tlsconf.InitOptions{Force: true}); err != nil {
				t.Fatalf("Force: %v", err)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestInitOptionErrors(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		opts tlsconf.InitOptions
		err  error
	}{
		"leaf outlives CA": {tlsconf.InitOptions{Validity: 48 * time.Hour, CAValidity: 24 * time.Hour}, tlsconf.ErrBadValidity},
		"negative":         {tlsconf.InitOptions{Validity: -time.Hour}, tlsconf.ErrBadValidity},
		"host with port":   {tlsconf.InitOptions{ClearingHosts: []string{"clearing.example:443"}}, tlsconf.ErrBadHost},
		"host with scheme": {tlsconf.InitOptions{ProvinceHosts: []string{"https://node"}}, tlsconf.ErrBadHost},
	}
	for name, tc := range cases {
		dir := filepath.Join(t.TempDir(), "certs")
		if err := tlsconf.Init(dir, tc.opts); !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", name, err, tc.err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: wrote %d files", name, len(ents))
		}
	}
}

func TestIssueAndLoadCA(t *testing.T) {
	t.Parallel()
	ca, err := tlsconf.NewCA(tlsconf.CAOptions{NotAfter: time.Now().Add(48 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Issue(tlsconf.LeafRequest{Identity: clearingID}); !errors.Is(err, tlsconf.ErrBadValidity) {
		t.Errorf("1-year leaf under a 2-day CA: %v", err)
	}
	if _, err := ca.Issue(tlsconf.LeafRequest{Identity: provinceID("990000")}); !errors.Is(err, tlsconf.ErrBadIdentity) {
		t.Errorf("unknown province: %v", err)
	}
	if _, err := ca.Issue(tlsconf.LeafRequest{Identity: tlsconf.Identity{}}); !errors.Is(err, tlsconf.ErrBadIdentity) {
		t.Errorf("zero identity: %v", err)
	}
	l := issue(t, ca, tlsconf.LeafRequest{Identity: provinceID("330000"), Hosts: []string{"::1", "Node.Example"}, NotAfter: time.Now().Add(time.Hour)})
	if !slices.Equal(l.Cert.DNSNames, []string{"node.example"}) || len(l.Cert.IPAddresses) != 1 || !l.Cert.IPAddresses[0].Equal(net.IPv6loopback) {
		t.Errorf("SANs %v %v", l.Cert.DNSNames, l.Cert.IPAddresses)
	}

	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := ca.WriteFiles(cert, key); err != nil {
		t.Fatal(err)
	}
	back, err := tlsconf.LoadCA(cert, key)
	if err != nil || !back.Cert.Equal(ca.Cert) {
		t.Fatalf("LoadCA: %v", err)
	}
	other, err := tlsconf.NewCA(tlsconf.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.WriteFiles(filepath.Join(dir, "o.pem"), key); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsconf.LoadCA(cert, key); !errors.Is(err, tlsconf.ErrKeyMismatch) {
		t.Errorf("foreign key: %v", err)
	}
	if err := l.WriteFiles(filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "leaf-key.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := tlsconf.LoadCA(filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "leaf-key.pem")); !errors.Is(err, tlsconf.ErrNotCA) {
		t.Errorf("leaf as CA: %v", err)
	}
}
