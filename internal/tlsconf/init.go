package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"gongji/region"
)

// File names Init writes in its directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// Errors of Init.
var (
	// ErrIncomplete: of a certificate and its key, only one file exists. Init
	// does not guess which half is right; remove the other or use Force.
	ErrIncomplete = errors.New("tlsconf: only one of certificate and key exists")
	// ErrExisting: an existing certificate does not fit (not signed by the
	// CA, wrong identity, key mismatch, unparsable). Remove it or use Force.
	ErrExisting = errors.New("tlsconf: existing certificate does not fit")
)

// Files names the three files a node loads: its certificate, its key and the
// CA bundle it trusts.
type Files struct {
	CertFile string
	KeyFile  string
	CAFile   string
}

// FilesFor returns where Init puts id's files in dir: province-XX0000.pem and
// province-XX0000-key.pem, clearing.pem/clearing-key.pem,
// operator.pem/operator-key.pem, and ca.pem. For an invalid id the names
// point at "invalid-identity.pem", which Init never writes, so loading fails.
func FilesFor(dir string, id Identity) Files {
	base := "invalid-identity"
	if id.Validate() == nil {
		switch id.Kind {
		case Province:
			base = "province-" + id.Province
		case Clearing:
			base = "clearing"
		case Operator:
			base = "operator"
		}
	}
	return Files{
		CertFile: filepath.Join(dir, base+".pem"),
		KeyFile:  filepath.Join(dir, base+"-key.pem"),
		CAFile:   filepath.Join(dir, CACertFile),
	}
}

// InitOptions configures Init. Zero fields take the documented defaults.
type InitOptions struct {
	// Validity of each leaf certificate. Default DefaultValidity (1 year).
	Validity time.Duration
	// CAValidity of a newly created CA. Default DefaultCAValidity (10 years).
	// Must be at least Validity: a leaf may not outlive its CA.
	CAValidity time.Duration
	// ClearingHosts are extra DNS names or IP addresses for the clearing
	// certificate, beyond localhost, 127.0.0.1 and ::1.
	ClearingHosts []string
	// ProvinceHosts are extra DNS names or IP addresses put on every province
	// certificate, beyond localhost and 127.0.0.1.
	ProvinceHosts []string
	// Force replaces every file, the CA included. Without it, existing pairs
	// are kept (and checked) and only missing ones are issued.
	Force bool
	// Now is the clock for validity periods. Default time.Now.
	Now func() time.Time
}

// Init makes dir (created 0700 if missing; an existing directory keeps its
// mode) hold a CA and the certificates of the federation:
//
//	ca.pem, ca-key.pem                      the CA (10 years by default)
//	clearing.pem, clearing-key.pem          gongji:clearing, server+client,
//	                                        SANs localhost, 127.0.0.1, ::1 + ClearingHosts
//	province-XX0000.pem, …-key.pem          gongji:province:XX0000 for each of the 32
//	                                        units, server+client, SANs localhost,
//	                                        127.0.0.1 + ProvinceHosts
//	operator.pem, operator-key.pem          gongji:operator, client only
//
// The clearing certificate allows client auth too because the clearing switch
// calls province nodes (Debit). Keys are 0600, certificates 0644, each file
// written atomically.
//
// Init is idempotent: without Force it keeps every existing pair, after
// checking that the key matches, the identity is the expected one and the
// CA signed it, and issues only what is missing with the existing CA. It
// never renews an existing certificate: delete the pair (or use Force) to
// renew it. Everything is checked before the first file is written, so an
// error leaves the directory as it was.
//
// Returns ErrIncomplete, ErrExisting, ErrBadValidity, ErrBadHost, errors of
// LoadCA, or file system errors.
func Init(dir string, opts InitOptions) error {
	if opts.Validity == 0 {
		opts.Validity = DefaultValidity
	}
	if opts.CAValidity == 0 {
		opts.CAValidity = DefaultCAValidity
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Validity < 0 || opts.CAValidity < opts.Validity {
		return fmt.Errorf("%w: validity %s, CA validity %s", ErrBadValidity, opts.Validity, opts.CAValidity)
	}
	now := opts.Now()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tlsconf: init %s: %w", dir, err)
	}

	caCert, caKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	haveCA, err := pairExists(caCert, caKey)
	if err != nil {
		return err
	}
	var ca *CA
	newCA := opts.Force || !haveCA
	if newCA {
		ca, err = NewCA(CAOptions{NotBefore: now.Add(-NotBeforeSkew), NotAfter: now.Add(opts.CAValidity)})
	} else {
		ca, err = LoadCA(caCert, caKey)
	}
	if err != nil {
		return err
	}

	type spec struct {
		id    Identity
		hosts []string
	}
	ids := []Identity{{Kind: Clearing}}
	for _, code := range region.ProvinceCodes() {
		ids = append(ids, Identity{Kind: Province, Province: code})
	}
	ids = append(ids, Identity{Kind: Operator})
	specs := make([]spec, len(ids))
	for i, id := range ids {
		specs[i] = spec{id, initHosts(id, opts)}
	}

	type job struct {
		leaf  *Leaf
		files Files
	}
	var jobs []job
	for _, s := range specs {
		f := FilesFor(dir, s.id)
		if !opts.Force {
			have, err := pairExists(f.CertFile, f.KeyFile)
			if err != nil {
				return err
			}
			if have {
				if err := checkExisting(f, s.id, ca); err != nil {
					return err
				}
				continue
			}
		}
		leaf, err := ca.Issue(LeafRequest{
			Identity:  s.id,
			Hosts:     s.hosts,
			NotBefore: now.Add(-NotBeforeSkew),
			NotAfter:  now.Add(opts.Validity),
		})
		if err != nil {
			return err
		}
		jobs = append(jobs, job{leaf, f})
	}

	if newCA {
		if err := ca.WriteFiles(caCert, caKey); err != nil {
			return err
		}
	}
	for _, j := range jobs {
		if err := j.leaf.WriteFiles(j.files.CertFile, j.files.KeyFile); err != nil {
			return err
		}
	}
	return nil
}

// initHosts are the SANs Init (and Reissue) give id's certificate: the
// clearing service localhost, 127.0.0.1, ::1 and opts.ClearingHosts; a
// province node localhost, 127.0.0.1 and opts.ProvinceHosts; an operator
// none (it is a client only).
func initHosts(id Identity, opts InitOptions) []string {
	switch id.Kind {
	case Clearing:
		return append([]string{"localhost", "127.0.0.1", "::1"}, opts.ClearingHosts...)
	case Province:
		return append([]string{"localhost", "127.0.0.1"}, opts.ProvinceHosts...)
	}
	return nil
}

// pairExists reports whether both files exist; exactly one is ErrIncomplete.
func pairExists(certFile, keyFile string) (bool, error) {
	c, err := exists(certFile)
	if err != nil {
		return false, err
	}
	k, err := exists(keyFile)
	if err != nil {
		return false, err
	}
	if c != k {
		return false, fmt.Errorf("%w: %s (%t), %s (%t)", ErrIncomplete, certFile, c, keyFile, k)
	}
	return c, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// checkExisting confirms that a pair Init is about to keep is the one it
// would have issued: key matches, identity is id, ca signed it.
func checkExisting(f Files, id Identity, ca *CA) error {
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrExisting, f.CertFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrExisting, f.CertFile, err)
	}
	got, err := IdentityFromCert(leaf)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrExisting, f.CertFile, err)
	}
	if got != id {
		return fmt.Errorf("%w: %s names %s, want %s", ErrExisting, f.CertFile, got, id)
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		return fmt.Errorf("%w: %s is not signed by %s: %w", ErrExisting, f.CertFile, CACertFile, err)
	}
	return nil
}
