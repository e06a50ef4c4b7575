package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultCheckInterval is how often, at most, a Reloader stats its files
// during handshakes: often enough that a rotated certificate is served within
// seconds, rare enough that a handshake storm costs no file system traffic.
const DefaultCheckInterval = 10 * time.Second

// ErrIdentityMismatch: the certificate names a different identity than the
// one the Reloader was given or started with. A node's identity is fixed by
// its configuration; a misplaced file must not silently change who it is.
var ErrIdentityMismatch = errors.New("tlsconf: certificate names another identity")

// ReloaderOptions configures NewReloader.
type ReloaderOptions struct {
	// Files to load: the node's certificate, its key, and the CA bundle (one
	// or more CA certificates; during a CA rotation the old and the new).
	// Required.
	Files
	// Identity, when set (Kind != 0), is the identity the certificate must
	// name, at start and on every reload. When unset, the identity read at
	// start is fixed and a reload must keep it.
	Identity Identity
	// CheckInterval is the minimum time between two checks of the files'
	// mtime, size and inode, made on the handshake path. Default
	// DefaultCheckInterval; negative disables the automatic check (then only
	// Reload and ReloadOnSignal reload).
	CheckInterval time.Duration
	// Now is the clock for the check interval and for certificate
	// verification (own certificate on load, peers' in handshakes). Default
	// time.Now.
	Now func() time.Time
	// OnError is called (outside the Reloader's lock) with every failed
	// reload; the Reloader keeps serving the previous material. Optional.
	OnError func(error)
	// OnReload is called (outside the lock) with the new leaf after every
	// successful reload. Optional.
	OnReload func(leaf *x509.Certificate)
}

// Reloader serves a node's certificate and CA pool, re-reading them from disk
// when the files change, without a restart. Handshakes read the current
// material lock-free; a reload that fails (unparsable file, key not matching
// the certificate, certificate not valid now or not signed by the CA bundle,
// other identity) keeps the previous material and reports the error.
//
// Rotation affects new handshakes only: an established connection keeps the
// certificate it was opened with (gRPC connections are long-lived; they pick
// up a new certificate when they reconnect).
//
// Write replacement files atomically (rename); WriteFiles does. A reload that
// catches a half-done rotation (new certificate, old key) fails with a key
// mismatch, keeps the old material, and succeeds at the next check after the
// key is in place.
type Reloader struct {
	files    Files
	interval time.Duration
	now      func() time.Time
	onError  func(error)
	onReload func(*x509.Certificate)

	cur           atomic.Pointer[material]
	nextCheckNano atomic.Int64

	mu      sync.Mutex // serialises loads; guards the fields below
	want    Identity
	stamps  [3]os.FileInfo
	lastErr error
}

// material is one loaded generation; never modified after load.
type material struct {
	cert   *tls.Certificate
	leaf   *x509.Certificate
	pool   *x509.CertPool
	id     Identity
	server *tls.Config // per-handshake server config, see GetConfigForClient
}

// NewReloader loads the files once; the first load must succeed. Returns
// ErrBadIdentity (bad opts.Identity), ErrIdentityMismatch, and the load
// errors described on Reload.
func NewReloader(opts ReloaderOptions) (*Reloader, error) {
	if opts.CertFile == "" || opts.KeyFile == "" || opts.CAFile == "" {
		return nil, errors.New("tlsconf: reloader needs CertFile, KeyFile and CAFile")
	}
	if opts.Identity.Kind != 0 {
		if err := opts.Identity.Validate(); err != nil {
			return nil, err
		}
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Reloader{
		files:    opts.Files,
		interval: opts.CheckInterval,
		now:      opts.Now,
		onError:  opts.OnError,
		onReload: opts.OnReload,
		want:     opts.Identity,
	}
	now := r.now()
	stamps := r.stat()
	m, err := r.load(now)
	if err != nil {
		return nil, err
	}
	r.want = m.id
	r.stamps = stamps
	r.cur.Store(m)
	r.scheduleNext(now)
	return r, nil
}

// Reload re-reads the files now, whether or not they look changed. On error
// the previous material stays in use; the error is returned, recorded for
// LastError, and passed to OnError. Errors: *fs.PathError, ErrBadPEM, errors
// of tls.X509KeyPair (key mismatch), a wrapped x509 verification error
// (expired, not yet valid, unknown authority), ErrNoIdentity,
// ErrManyIdentities, ErrBadIdentity, ErrIdentityMismatch.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	now := r.now()
	m, err := r.reloadLocked(now, r.stat())
	r.mu.Unlock()
	r.report(m, err)
	return err
}

// maybeReload is the handshake-path check: at most once per interval, stat
// the files and reload if any changed. Concurrent handshakes do not wait for
// a check in progress; they use the current material.
func (r *Reloader) maybeReload() {
	if r.interval < 0 {
		return
	}
	now := r.now()
	next := r.nextCheckNano.Load()
	// A clock stepped back by more than an interval must not stall checks
	// until it catches up.
	if n := now.UnixNano(); n < next && next-n <= int64(r.interval) {
		return
	}
	if !r.mu.TryLock() {
		return
	}
	r.scheduleNext(now)
	stamps := r.stat()
	if sameStamps(stamps, r.stamps) {
		r.mu.Unlock()
		return
	}
	m, err := r.reloadLocked(now, stamps)
	r.mu.Unlock()
	r.report(m, err)
}

// reloadLocked loads and, on success, publishes. The stamps are recorded
// even on failure, so that a bad file is reported once, not at every check;
// the next change to any of the files triggers a new attempt.
func (r *Reloader) reloadLocked(now time.Time, stamps [3]os.FileInfo) (*material, error) {
	r.stamps = stamps
	r.scheduleNext(now)
	m, err := r.load(now)
	if err != nil {
		r.lastErr = err
		return nil, err
	}
	r.lastErr = nil
	r.cur.Store(m)
	return m, nil
}

func (r *Reloader) report(m *material, err error) {
	if err != nil {
		if r.onError != nil {
			r.onError(err)
		}
		return
	}
	if r.onReload != nil {
		r.onReload(m.leaf)
	}
}

func (r *Reloader) scheduleNext(now time.Time) {
	if r.interval > 0 {
		r.nextCheckNano.Store(now.Add(r.interval).UnixNano())
	}
}

// load reads and checks the three files. It does not touch r.cur.
func (r *Reloader) load(now time.Time) (*material, error) {
	f := r.files
	certPEM, err := os.ReadFile(f.CertFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load: %w", err)
	}
	keyPEMBytes, err := os.ReadFile(f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load: %w", err)
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load: %w", err)
	}
	chain, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load %s: %w", f.CertFile, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEMBytes)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load %s with %s: %w", f.CertFile, f.KeyFile, err)
	}
	leaf := chain[0]
	pair.Leaf = leaf
	cas, err := parseCertsPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load %s: %w", f.CAFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("tlsconf: load %s: %w: %s", f.CAFile, ErrNotCA, c.Subject)
		}
		pool.AddCert(c)
	}
	// The certificate we are about to present must be one our peers accept:
	// chained to the CA bundle and valid now. Rejecting it here keeps the old
	// certificate in service instead of failing every handshake.
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("tlsconf: load %s: %w", f.CertFile, err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load %s: %w", f.CertFile, err)
	}
	if r.want.Kind != 0 && id != r.want {
		return nil, fmt.Errorf("tlsconf: load %s: %w: %s, want %s", f.CertFile, ErrIdentityMismatch, id, r.want)
	}
	m := &material{cert: &pair, leaf: leaf, pool: pool, id: id}
	m.server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		Time:         r.now,
		// Resumption would skip chain verification against the pool of the
		// moment (a ticket issued before a CA was dropped would still be
		// honoured); gRPC connections are long-lived, so full handshakes
		// cost nothing that matters.
		SessionTicketsDisabled: true,
		// A verified client certificate without a gongji identity is useless
		// to every server: refuse it at the handshake.
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := IdentityFromState(cs)
			return err
		},
	}
	return m, nil
}

func (r *Reloader) stat() [3]os.FileInfo {
	var out [3]os.FileInfo
	for i, p := range []string{r.files.CertFile, r.files.KeyFile, r.files.CAFile} {
		if fi, err := os.Stat(p); err == nil {
			out[i] = fi
		}
	}
	return out
}

// sameStamps: same inode (an atomic rename changes it), mtime and size.
// A missing file (nil) equals a missing file.
func sameStamps(a, b [3]os.FileInfo) bool {
	for i := range a {
		switch {
		case a[i] == nil && b[i] == nil:
		case a[i] == nil || b[i] == nil:
			return false
		case !os.SameFile(a[i], b[i]) || !a[i].ModTime().Equal(b[i].ModTime()) || a[i].Size() != b[i].Size():
			return false
		}
	}
	return true
}

// ReloadOnSignal calls Reload whenever one of sigs arrives (default SIGHUP)
// until ctx is done. Errors go to OnError. It registers the signal handler
// before returning, so a signal sent after the call is never missed.
func (r *Reloader) ReloadOnSignal(ctx context.Context, sigs ...os.Signal) {
	if len(sigs) == 0 {
		sigs = []os.Signal{syscall.SIGHUP}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				_ = r.Reload()
			}
		}
	}()
}

// Identity returns the identity of the served certificate (fixed for the
// Reloader's life).
func (r *Reloader) Identity() Identity { return r.cur.Load().id }

// Leaf returns the certificate currently served. Do not modify it.
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().leaf }

// Pool returns the CA pool currently trusted. Do not modify it.
func (r *Reloader) Pool() *x509.CertPool { return r.cur.Load().pool }

// LastError returns the error of the last load attempt, nil if it succeeded.
func (r *Reloader) LastError() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// GetCertificate is a tls.Config.GetCertificate that serves the current
// certificate, checking the files first (at most once per interval).
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.maybeReload()
	return r.cur.Load().cert, nil
}

// GetClientCertificate is a tls.Config.GetClientCertificate that presents
// the current certificate, checking the files first.
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	r.maybeReload()
	return r.cur.Load().cert, nil
}

// GetConfigForClient is a tls.Config.GetConfigForClient that returns, per
// handshake, a server config built on the current material: TLS 1.3, the
// current certificate, client certificates required and verified against the
// current CA pool at the Reloader's clock, a gongji identity required, no
// session resumption. It checks the files first.
func (r *Reloader) GetConfigForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.maybeReload()
	return r.cur.Load().server, nil
}
