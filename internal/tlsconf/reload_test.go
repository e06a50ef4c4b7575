package tlsconf_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gongji/internal/tlsconf"
)

// recorder collects a Reloader's callbacks.
type recorder struct {
	mu       sync.Mutex
	errs     []error
	reloads  []*big.Int
	reloaded chan *big.Int
}

func newRecorder() *recorder { return &recorder{reloaded: make(chan *big.Int, 16)} }

func (r *recorder) onError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

func (r *recorder) onReload(leaf *x509.Certificate) {
	r.mu.Lock()
	r.reloads = append(r.reloads, leaf.SerialNumber)
	r.mu.Unlock()
	r.reloaded <- leaf.SerialNumber
}

func (r *recorder) counts() (errs, reloads int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs), len(r.reloads)
}

// serverFixture is a clearing server over raw TLS whose Reloader the test
// drives, and a province client to handshake with it.
type serverFixture struct {
	dir    string
	ca     *tlsconf.CA
	clock  *fakeClock
	rec    *recorder
	srv    *tlsconf.Reloader
	ts     *tlsServer
	client *tlsconf.Reloader
}

func newServerFixture(t *testing.T, interval time.Duration) *serverFixture {
	t.Helper()
	f := &serverFixture{dir: initDir(t), clock: newFakeClock(), rec: newRecorder()}
	f.ca = loadCA(t, f.dir)
	f.srv = newReloader(t, tlsconf.ReloaderOptions{
		Files: tlsconf.FilesFor(f.dir, clearingID), Identity: clearingID,
		CheckInterval: interval, Now: f.clock.Now,
		OnError: f.rec.onError, OnReload: f.rec.onReload,
	})
	f.ts = startTLSServer(t, tlsconf.ServerConfig(f.srv))
	f.client = reloaderFor(t, f.dir, provinceID("110000"), nil)
	return f
}

// served handshakes once and returns the server certificate serial the
// client saw.
func (f *serverFixture) served(t *testing.T) *big.Int {
	t.Helper()
	serial, err := dial(t, f.ts.addr, tlsconf.ClientConfigFor(f.client, "127.0.0.1", clearingID))
	res := f.ts.next(t)
	if err != nil || res.err != nil {
		t.Fatalf("handshake: client %v, server %v", err, res.err)
	}
	return serial
}

func same(a, b *big.Int) bool { return a.Cmp(b) == 0 }

func TestReloadExplicit(t *testing.T) {
	t.Parallel()
	f := newServerFixture(t, -1) // automatic checks off: only Reload reloads
	old := f.srv.Leaf().SerialNumber
	if !same(f.served(t), old) {
		t.Fatal("initial serial")
	}
	next := rotate(t, f.ca, f.dir, clearingID)
	f.clock.Advance(24 * time.Hour)
	if !same(f.served(t), old) {
		t.Fatal("reloaded with automatic checks disabled")
	}
	if err := f.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := f.served(t); !same(got, next.Cert.SerialNumber) {
		t.Fatalf("after Reload: %s, want %s", got, next.Cert.SerialNumber)
	}
	if errs, reloads := f.rec.counts(); errs != 0 || reloads != 1 {
		t.Errorf("callbacks: %d errors, %d reloads", errs, reloads)
	}
}

func TestReloadKeepsOldMaterialOnBadFiles(t *testing.T) {
	t.Parallel()
	now := time.Now()
	cases := []struct {
		name  string
		spoil func(t *testing.T, f *serverFixture, files tlsconf.Files)
		check func(error) bool
	}{
		{"corrupt certificate", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			writeRaw(t, files.CertFile, []byte("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"))
		}, is(tlsconf.ErrBadPEM)},
		{"truncated certificate", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			b, _ := os.ReadFile(files.CertFile)
			writeRaw(t, files.CertFile, b[:len(b)/2])
		}, is(tlsconf.ErrBadPEM)},
		{"empty certificate", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			writeRaw(t, files.CertFile, nil)
		}, is(tlsconf.ErrBadPEM)},
		{"corrupt key", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			writeRaw(t, files.KeyFile, []byte("garbage"))
		}, contains("PEM data in key input")},
		{"new certificate, old key", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			l := issue(t, f.ca, tlsconf.LeafRequest{Identity: clearingID, Hosts: []string{"127.0.0.1"}})
			writeRaw(t, files.CertFile, l.CertPEM())
		}, contains("does not match")},
		{"expired certificate", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			l := issue(t, f.ca, tlsconf.LeafRequest{Identity: clearingID, Hosts: []string{"127.0.0.1"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
			if err := l.WriteFiles(files.CertFile, files.KeyFile); err != nil {
				t.Fatal(err)
			}
		}, func(err error) bool {
			var inv x509.CertificateInvalidError
			return errors.As(err, &inv) && inv.Reason == x509.Expired
		}},
		{"certificate from another CA", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			other, err := tlsconf.NewCA(tlsconf.CAOptions{})
			if err != nil {
				t.Fatal(err)
			}
			l := issue(t, other, tlsconf.LeafRequest{Identity: clearingID, Hosts: []string{"127.0.0.1"}})
			if err := l.WriteFiles(files.CertFile, files.KeyFile); err != nil {
				t.Fatal(err)
			}
		}, func(err error) bool {
			var ua x509.UnknownAuthorityError
			return errors.As(err, &ua)
		}},
		{"another identity's files", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			other := tlsconf.FilesFor(f.dir, provinceID("120000"))
			copyFile(t, other.CertFile, files.CertFile)
			copyFile(t, other.KeyFile, files.KeyFile)
		}, is(tlsconf.ErrIdentityMismatch)},
		{"corrupt CA bundle", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			writeRaw(t, files.CAFile, []byte("garbage"))
		}, is(tlsconf.ErrBadPEM)},
		{"leaf in CA bundle", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			b, _ := os.ReadFile(files.CertFile)
			writeRaw(t, files.CAFile, append(f.ca.CertPEM(), b...))
		}, is(tlsconf.ErrNotCA)},
		{"missing key", func(t *testing.T, f *serverFixture, files tlsconf.Files) {
			if err := os.Remove(files.KeyFile); err != nil {
				t.Fatal(err)
			}
		}, is(fs.ErrNotExist)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newServerFixture(t, -1)
			files := tlsconf.FilesFor(f.dir, clearingID)
			old := f.srv.Leaf().SerialNumber
			tc.spoil(t, f, files)

			err := f.srv.Reload()
			if !tc.check(err) {
				t.Fatalf("Reload = %v", err)
			}
			if !errors.Is(f.srv.LastError(), err) {
				t.Errorf("LastError = %v", f.srv.LastError())
			}
			if errs, reloads := f.rec.counts(); errs != 1 || reloads != 0 {
				t.Errorf("callbacks: %d errors, %d reloads", errs, reloads)
			}
			if !same(f.srv.Leaf().SerialNumber, old) || !same(f.served(t), old) {
				t.Fatal("old certificate no longer served")
			}

			// Repair: a good rotation is picked up and clears the error.
			if err := os.WriteFile(files.CAFile, f.ca.CertPEM(), 0o644); err != nil {
				t.Fatal(err)
			}
			next := rotate(t, f.ca, f.dir, clearingID)
			if err := f.srv.Reload(); err != nil {
				t.Fatalf("repair: %v", err)
			}
			if f.srv.LastError() != nil || !same(f.served(t), next.Cert.SerialNumber) {
				t.Fatalf("repair not served (LastError %v)", f.srv.LastError())
			}
		})
	}
}

func is(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

func notNil(err error) bool { return err != nil }

func contains(s string) func(error) bool {
	return func(err error) bool { return err != nil && strings.Contains(err.Error(), s) }
}

func writeRaw(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReloadAutomatic drives the handshake-path check with the injected
// clock: a bad file is reported once and the old certificate stays; a
// half-done rotation (certificate first, key later) completes at the next
// check after the key arrives.
func TestReloadAutomatic(t *testing.T) {
	t.Parallel()
	f := newServerFixture(t, time.Minute)
	files := tlsconf.FilesFor(f.dir, clearingID)
	old := f.srv.Leaf().SerialNumber
	step := func() { f.clock.Advance(time.Minute + time.Second) }

	writeRaw(t, files.CertFile, []byte("garbage"))
	step()
	if !same(f.served(t), old) {
		t.Fatal("corrupt file replaced the certificate")
	}
	if errs, _ := f.rec.counts(); errs != 1 {
		t.Fatalf("%d errors reported, want 1", errs)
	}
	step()
	if !same(f.served(t), old) {
		t.Fatal("old certificate lost")
	}
	if errs, _ := f.rec.counts(); errs != 1 {
		t.Errorf("an unchanged bad file was reported again (%d)", errs)
	}

	// Half a rotation: new certificate, key not yet written.
	next := issue(t, f.ca, tlsconf.LeafRequest{Identity: clearingID, Hosts: []string{"127.0.0.1"}})
	writeRaw(t, files.CertFile, next.CertPEM())
	step()
	if !same(f.served(t), old) {
		t.Fatal("certificate without its key was served")
	}
	if errs, _ := f.rec.counts(); errs != 2 {
		t.Errorf("%d errors, want 2", errs)
	}
	kp, err := next.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	writeRaw(t, files.KeyFile, kp)
	// Not before the interval…
	if !same(f.served(t), old) {
		t.Fatal("checked before the interval elapsed")
	}
	// …then yes.
	step()
	if got := f.served(t); !same(got, next.Cert.SerialNumber) {
		t.Fatalf("served %s, want %s", got, next.Cert.SerialNumber)
	}
	if f.srv.LastError() != nil {
		t.Errorf("LastError %v", f.srv.LastError())
	}
	if _, reloads := f.rec.counts(); reloads != 1 {
		t.Errorf("%d reloads, want 1", reloads)
	}
	// Unchanged files: further checks do not reload.
	step()
	f.served(t)
	if _, reloads := f.rec.counts(); reloads != 1 {
		t.Errorf("%d reloads after an unchanged check, want 1", reloads)
	}
}

// TestReloadCARotation replaces the CA bundles on disk: a server learns to
// accept clients of a new CA, a client learns to accept a server of the new
// CA, both without a restart.
func TestReloadCARotation(t *testing.T) {
	t.Parallel()
	f := newServerFixture(t, -1)
	ca2, err := tlsconf.NewCA(tlsconf.CAOptions{CommonName: "gongji clearing CA 2"})
	if err != nil {
		t.Fatal(err)
	}
	bundle := append(f.ca.CertPEM(), ca2.CertPEM()...)

	// A province already moved to the new CA (its own bundle has both).
	dir2 := t.TempDir()
	sh := provinceID("310000")
	l2 := issue(t, ca2, tlsconf.LeafRequest{Identity: sh, Hosts: []string{"127.0.0.1"}})
	files2 := tlsconf.Files{CertFile: filepath.Join(dir2, "sh.pem"), KeyFile: filepath.Join(dir2, "sh-key.pem"), CAFile: filepath.Join(dir2, "ca.pem")}
	if err := l2.WriteFiles(files2.CertFile, files2.KeyFile); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, files2.CAFile, bundle)
	cli2 := newReloader(t, tlsconf.ReloaderOptions{Files: files2, Identity: sh, CheckInterval: -1})

	_, _ = dial(t, f.ts.addr, tlsconf.ClientConfigFor(cli2, "127.0.0.1", clearingID))
	if res := f.ts.next(t); !isUnknownAuthority(res.err) {
		t.Fatalf("new-CA client before server bundle update: %v", res.err)
	}

	writeRaw(t, tlsconf.FilesFor(f.dir, clearingID).CAFile, bundle)
	if err := f.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, f.ts.addr, tlsconf.ClientConfigFor(cli2, "127.0.0.1", clearingID)); err != nil {
		t.Fatalf("new-CA client after bundle update: %v", err)
	}
	if res := f.ts.next(t); res.err != nil || res.id != sh {
		t.Fatalf("server: %v %v", res.id, res.err)
	}
	f.served(t) // old-CA clients still accepted

	// Now the server moves to a new-CA certificate; the old-CA-only client
	// refuses it until its own bundle is updated and reloaded.
	sl := issue(t, ca2, tlsconf.LeafRequest{Identity: clearingID, Hosts: []string{"127.0.0.1"}})
	sf := tlsconf.FilesFor(f.dir, clearingID)
	if err := sl.WriteFiles(sf.CertFile, sf.KeyFile); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err = dial(t, f.ts.addr, tlsconf.ClientConfigFor(f.client, "127.0.0.1", clearingID))
	if !isUnknownAuthority(err) {
		t.Fatalf("old-CA client against new-CA server: %v", err)
	}
	f.ts.next(t)
	writeRaw(t, tlsconf.FilesFor(f.dir, provinceID("110000")).CAFile, bundle) // same ca.pem as the server's here
	if err := f.client.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := f.served(t); !same(got, sl.Cert.SerialNumber) {
		t.Fatalf("served %s, want %s", got, sl.Cert.SerialNumber)
	}
}

func TestReloadOnSignal(t *testing.T) {
	t.Parallel()
	f := newServerFixture(t, -1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.srv.ReloadOnSignal(ctx) // SIGHUP
	next := rotate(t, f.ca, f.dir, clearingID)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case serial := <-f.rec.reloaded:
		if !same(serial, next.Cert.SerialNumber) {
			t.Fatalf("reloaded %s, want %s", serial, next.Cert.SerialNumber)
		}
	case <-time.After(hangGuard):
		t.Fatal("SIGHUP did not reload")
	}
	if !same(f.served(t), next.Cert.SerialNumber) {
		t.Fatal("rotated certificate not served")
	}
}

func TestNewReloaderErrors(t *testing.T) {
	t.Parallel()
	dir := initDir(t)
	ca := loadCA(t, dir)
	bj := tlsconf.FilesFor(dir, provinceID("110000"))

	expired := tlsconf.Files{CertFile: filepath.Join(dir, "x.pem"), KeyFile: filepath.Join(dir, "x-key.pem"), CAFile: bj.CAFile}
	l := issue(t, ca, tlsconf.LeafRequest{Identity: provinceID("110000"), NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err := l.WriteFiles(expired.CertFile, expired.KeyFile); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		opts  tlsconf.ReloaderOptions
		check func(error) bool
	}{
		{"no files", tlsconf.ReloaderOptions{}, notNil},
		{"missing files", tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(dir, tlsconf.Identity{})}, is(fs.ErrNotExist)},
		{"other identity than configured", tlsconf.ReloaderOptions{Files: bj, Identity: provinceID("120000")}, is(tlsconf.ErrIdentityMismatch)},
		{"invalid configured identity", tlsconf.ReloaderOptions{Files: bj, Identity: provinceID("999999")}, is(tlsconf.ErrBadIdentity)},
		{"expired at start", tlsconf.ReloaderOptions{Files: expired}, func(err error) bool {
			var inv x509.CertificateInvalidError
			return errors.As(err, &inv) && inv.Reason == x509.Expired
		}},
	}
	for _, tc := range cases {
		if r, err := tlsconf.NewReloader(tc.opts); !tc.check(err) {
			t.Errorf("%s: %v, %v", tc.name, r, err)
		}
	}

	// Without a configured identity, the first one read is kept.
	r := newReloader(t, tlsconf.ReloaderOptions{Files: bj, CheckInterval: -1})
	if r.Identity() != provinceID("110000") {
		t.Fatalf("identity %v", r.Identity())
	}
	other := tlsconf.FilesFor(dir, provinceID("120000"))
	copyFile(t, other.CertFile, bj.CertFile)
	copyFile(t, other.KeyFile, bj.KeyFile)
	if err := r.Reload(); !errors.Is(err, tlsconf.ErrIdentityMismatch) {
		t.Errorf("identity change on reload: %v", err)
	}
}

// TestReloadConcurrentHandshakes rotates the server certificate while
// handshakes run in parallel: every handshake succeeds and presents one of
// the certificates that were on disk. Run with -race.
func TestReloadConcurrentHandshakes(t *testing.T) {
	t.Parallel()
	f := newServerFixture(t, -1)
	valid := map[string]bool{f.srv.Leaf().SerialNumber.String(): true}
	const workers, dials, rotations = 4, 6, 3
	var wg sync.WaitGroup
	errs := make(chan error, workers*dials)
	seen := make(chan *big.Int, workers*dials)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range dials {
				serial, err := dial(t, f.ts.addr, tlsconf.ClientConfigFor(f.client, "127.0.0.1", clearingID))
				if err != nil {
					errs <- err
					continue
				}
				seen <- serial
			}
		}()
	}
	for range rotations {
		l := rotate(t, f.ca, f.dir, clearingID)
		valid[l.Cert.SerialNumber.String()] = true // read only after wg.Wait
		if err := f.srv.Reload(); err != nil {
			t.Error(err)
		}
	}
	wg.Wait()
	close(errs)
	close(seen)
	for err := range errs {
		t.Errorf("handshake: %v", err)
	}
	for s := range seen {
		if !valid[s.String()] {
			t.Errorf("served unknown serial %s", s)
		}
	}
	for range workers * dials {
		if res := f.ts.next(t); res.err != nil {
			t.Errorf("server: %v", res.err)
		}
	}
}
