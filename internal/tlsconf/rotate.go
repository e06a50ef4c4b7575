package tlsconf

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// Rotation helpers: what an operator (or a test) needs to rotate the files of
// a directory made by Init while the processes that load it keep running.
// Each writes atomically, so a Reloader never reads half a file; the
// processes pick the new files up on SIGHUP (Reloader.ReloadOnSignal) or at
// their next automatic check.
//
// A CA rotation without a refused handshake is three steps, each followed by
// a reload everywhere: (1) WriteCABundle(old, new) so that every process
// trusts both; (2) Reissue every certificate from the new CA; (3)
// WriteCABundle(new) so that the old CA is no longer trusted.

// ErrUntrustedCA: Reissue was asked to sign with a CA that the directory's
// trust bundle does not hold. Every process loading the directory would
// refuse the new certificate (a Reloader keeps its old one): add the CA to
// the bundle first (WriteCABundle).
var ErrUntrustedCA = errors.New("tlsconf: the CA is not in the directory's trust bundle")

// WriteCABundle writes cas as the PEM trust bundle path (normally
// FilesFor(dir, id).CAFile, i.e. dir/ca.pem), replacing it atomically with
// mode 0644. During a CA rotation the bundle holds the old and the new CA.
// Errors: ErrNotCA (no certificate given, or one that is not a CA: nothing is
// written), file system errors.
func WriteCABundle(path string, cas ...*x509.Certificate) error {
	if len(cas) == 0 {
		return fmt.Errorf("%w: an empty bundle trusts nobody", ErrNotCA)
	}
	var pemBytes []byte
	for _, c := range cas {
		if c == nil || !c.IsCA || !c.BasicConstraintsValid {
			return fmt.Errorf("%w: bundle %s", ErrNotCA, path)
		}
		pemBytes = append(pemBytes, certPEM(c)...)
	}
	return writeFileAtomic(path, pemBytes, 0o644)
}

// Reissue renews id's certificate in dir, signed by ca: a fresh key, the same
// host names Init gives that identity (opts.ClearingHosts and
// opts.ProvinceHosts add to them as in Init) and a validity of opts.Validity
// (default DefaultValidity) from opts.Now. The pair is written atomically to
// FilesFor(dir, id), key first; processes serving id pick it up on their
// next reload. The certificate must chain to the directory's trust bundle
// (ca.pem), or nothing is written: a process would refuse to load it.
//
// Returns the new leaf. Errors: ErrBadIdentity, ErrUntrustedCA, errors of
// CA.Issue (ErrBadValidity when the leaf would outlive ca, ErrBadHost),
// ErrBadPEM or file system errors reading the bundle or writing the pair.
func Reissue(dir string, ca *CA, id Identity, opts InitOptions) (*Leaf, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultValidity
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	now := opts.Now()
	files := FilesFor(dir, id)
	bundlePEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: reissue %s: %w", id, err)
	}
	bundle, err := parseCertsPEM(bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: reissue %s: %s: %w", id, files.CAFile, err)
	}
	trusted := false
	for _, c := range bundle {
		if c.Equal(ca.Cert) {
			trusted = true
		}
	}
	if !trusted {
		return nil, fmt.Errorf("%w: %s does not hold %q (serial %s)", ErrUntrustedCA, files.CAFile, ca.Cert.Subject.CommonName, ca.Cert.SerialNumber)
	}
	leaf, err := ca.Issue(LeafRequest{
		Identity:  id,
		Hosts:     initHosts(id, opts),
		NotBefore: now.Add(-NotBeforeSkew),
		NotAfter:  now.Add(opts.Validity),
	})
	if err != nil {
		return nil, err
	}
	if err := leaf.WriteFiles(files.CertFile, files.KeyFile); err != nil {
		return nil, err
	}
	return leaf, nil
}
