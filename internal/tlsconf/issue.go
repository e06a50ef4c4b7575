package tlsconf

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	// DefaultValidity is how long a leaf certificate is valid unless told
	// otherwise: one year, so that rotation is a yearly routine that the
	// Reloader makes a file copy.
	DefaultValidity = 365 * 24 * time.Hour
	// DefaultCAValidity is how long a new CA is valid: ten years, so that it
	// outlives many leaf rotations (a leaf may not outlive its CA).
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// NotBeforeSkew backdates NotBefore so that a peer whose clock runs a few
	// minutes behind does not reject a certificate issued just now.
	NotBeforeSkew = 5 * time.Minute
)

// Errors of issuing and loading certificates.
var (
	// ErrBadPEM: a file is not the PEM the function expects.
	ErrBadPEM = errors.New("tlsconf: bad PEM")
	// ErrNotCA: a certificate used as a CA is not a CA certificate.
	ErrNotCA = errors.New("tlsconf: certificate is not a CA")
	// ErrKeyMismatch: a private key does not belong to its certificate.
	ErrKeyMismatch = errors.New("tlsconf: private key does not match certificate")
	// ErrBadKey: a key is not ECDSA P-256.
	ErrBadKey = errors.New("tlsconf: key is not ECDSA P-256")
	// ErrBadValidity: NotAfter is not after NotBefore, or a leaf would outlive
	// its CA.
	ErrBadValidity = errors.New("tlsconf: bad validity period")
	// ErrBadHost: a host for a SAN is neither an IP address nor a DNS name.
	ErrBadHost = errors.New("tlsconf: bad host name")
)

// CA is a certificate authority: its self-signed certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// CAOptions configures NewCA. Zero fields take the documented defaults.
type CAOptions struct {
	// CommonName of the CA subject. Default "gongji clearing CA".
	CommonName string
	// NotBefore defaults to now − NotBeforeSkew.
	NotBefore time.Time
	// NotAfter defaults to now + DefaultCAValidity.
	NotAfter time.Time
}

// NewCA creates a CA with a fresh P-256 key. The CA may sign leaves only
// (MaxPathLen 0). Returns ErrBadValidity.
func NewCA(opts CAOptions) (*CA, error) {
	now := time.Now()
	if opts.CommonName == "" {
		opts.CommonName = "gongji clearing CA"
	}
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-NotBeforeSkew)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(DefaultCAValidity)
	}
	if !opts.NotAfter.After(opts.NotBefore) {
		return nil, fmt.Errorf("%w: CA NotAfter %s not after NotBefore %s", ErrBadValidity, opts.NotAfter, opts.NotBefore)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"gongji"}, CommonName: opts.CommonName},
		NotBefore:             opts.NotBefore,
		NotAfter:              opts.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: parse new CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA certificate (the first PEM block of certFile) and its
// PKCS#8 or SEC 1 key. Returns ErrBadPEM, ErrNotCA, ErrBadKey, ErrKeyMismatch
// or an *fs.PathError.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	cert := certs[0]
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("%s: %w", certFile, ErrNotCA)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s: %w", keyFile, ErrKeyMismatch)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM returns the CA certificate as PEM.
func (ca *CA) CertPEM() []byte { return certPEM(ca.Cert) }

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WriteFiles writes the CA certificate (0644) and key (0600) atomically (a
// temporary file renamed into place, so that a Reloader never reads half a
// file). The directory must exist.
func (ca *CA) WriteFiles(certFile, keyFile string) error {
	return writePair(certFile, keyFile, ca.CertPEM(), ca.Key)
}

// LeafRequest describes a leaf certificate for CA.Issue.
type LeafRequest struct {
	// Identity is written as the only URI SAN and as the subject CN. Required.
	Identity Identity
	// Hosts become DNS or IP SANs (a server certificate needs the names its
	// clients dial). Optional.
	Hosts []string
	// ExtKeyUsage defaults by kind: Province and Clearing get server and
	// client auth (each both serves gRPC and calls the other), Operator
	// client auth only.
	ExtKeyUsage []x509.ExtKeyUsage
	// NotBefore defaults to now − NotBeforeSkew. A past NotAfter is allowed
	// (tests issue expired certificates on purpose).
	NotBefore time.Time
	// NotAfter defaults to now + DefaultValidity; it may not be after the
	// CA's NotAfter.
	NotAfter time.Time
}

// Leaf is an issued certificate and its key.
type Leaf struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Issue signs a new leaf certificate with a fresh P-256 key. Returns
// ErrBadIdentity, ErrBadHost or ErrBadValidity.
func (ca *CA) Issue(req LeafRequest) (*Leaf, error) {
	if err := req.Identity.Validate(); err != nil {
		return nil, err
	}
	uri, err := req.Identity.URI()
	if err != nil {
		return nil, err
	}
	dnsNames, ips, err := splitHosts(req.Hosts)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if req.NotBefore.IsZero() {
		req.NotBefore = now.Add(-NotBeforeSkew)
	}
	if req.NotAfter.IsZero() {
		req.NotAfter = now.Add(DefaultValidity)
	}
	if !req.NotAfter.After(req.NotBefore) {
		return nil, fmt.Errorf("%w: NotAfter %s not after NotBefore %s", ErrBadValidity, req.NotAfter, req.NotBefore)
	}
	if req.NotAfter.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("%w: leaf NotAfter %s is after CA NotAfter %s; rotate the CA", ErrBadValidity, req.NotAfter, ca.Cert.NotAfter)
	}
	usage := req.ExtKeyUsage
	if usage == nil {
		usage = defaultUsage(req.Identity.Kind)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"gongji"}, CommonName: req.Identity.String()},
		NotBefore:             req.NotBefore,
		NotAfter:              req.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usage,
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{uri},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: sign %s: %w", req.Identity, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: parse new certificate: %w", err)
	}
	return &Leaf{Cert: cert, Key: key}, nil
}

func defaultUsage(k Kind) []x509.ExtKeyUsage {
	if k == Operator {
		return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
}

// CertPEM returns the leaf certificate as PEM (the leaf only: the CA is
// distributed separately as ca.pem).
func (l *Leaf) CertPEM() []byte { return certPEM(l.Cert) }

// KeyPEM returns the key as PKCS#8 PEM.
func (l *Leaf) KeyPEM() ([]byte, error) { return keyPEM(l.Key) }

// TLSCertificate returns the leaf as a tls.Certificate (Leaf field set).
func (l *Leaf) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{l.Cert.Raw}, PrivateKey: l.Key, Leaf: l.Cert}
}

// WriteFiles writes the certificate (0644) and key (0600) atomically, key
// first. The directory must exist.
func (l *Leaf) WriteFiles(certFile, keyFile string) error {
	return writePair(certFile, keyFile, l.CertPEM(), l.Key)
}

func writePair(certFile, keyFile string, cert []byte, key *ecdsa.PrivateKey) error {
	kp, err := keyPEM(key)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(keyFile, kp, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certFile, cert, 0o644)
}

// writeFileAtomic writes data to a temporary file in path's directory and
// renames it over path, so that a reader sees either the old or the new file.
// The temporary file is created 0600, so a key is never readable by others,
// not even for a moment.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("tlsconf: write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("tlsconf: write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("tlsconf: chmod %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("tlsconf: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("tlsconf: close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("tlsconf: rename %s: %w", path, err)
	}
	ok = true
	return nil
}

func newSerial() (*big.Int, error) {
	// 128 random bits, positive and non-zero (RFC 5280 §4.1.2.2 allows up to
	// 20 octets).
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for range 8 {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
	return nil, errors.New("tlsconf: serial: random source returned zero 8 times")
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseCertsPEM parses every block of a PEM bundle; each must be a
// CERTIFICATE, at least one must be present, and nothing but whitespace may
// follow the last block (a truncated or corrupt file is an error, not a
// shorter bundle).
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: unexpected block %q", ErrBadPEM, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadPEM, err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: trailing data after the last certificate", ErrBadPEM)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrBadPEM)
	}
	return out, nil
}

func parseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	b, rest := pem.Decode(data)
	if b == nil || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: want exactly one key block", ErrBadPEM)
	}
	var key any
	var err error
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("%w: unexpected block %q", ErrBadPEM, b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPEM, err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, ErrBadKey
	}
	return ek, nil
}

// splitHosts sorts hosts into IP and DNS SANs, dropping duplicates.
func splitHosts(hosts []string) ([]string, []net.IP, error) {
	var dns []string
	var ips []net.IP
	seen := map[string]bool{}
	for _, h := range hosts {
		if seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		if !validDNSName(h) {
			return nil, nil, fmt.Errorf("%w: %q", ErrBadHost, h)
		}
		dns = append(dns, strings.ToLower(h))
	}
	return dns, ips, nil
}

// validDNSName accepts letters, digits, '-' and '.' labels of 1–63 octets, and
// a leading "*." wildcard; it rejects ports, schemes and paths, which are the
// usual mistakes in a --host flag.
func validDNSName(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	h = strings.TrimPrefix(h, "*.")
	for _, label := range strings.Split(h, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
