// Package tlsconf holds gongji's mutual-TLS plumbing: a private CA and the
// certificates it issues (Init, NewCA, CA.Issue), the peer identity carried in
// a certificate's URI SAN (Identity, IdentityFromCert, IdentityFromContext),
// and a Reloader that re-reads certificate, key and CA bundle from disk without
// a restart, together with the server and client tls.Config built on it
// (ServerConfig, ClientConfig, ClientConfigFor).
//
// Identities (docs/architecture.md, "Identity and personal data") are exactly
// one URI SAN per certificate:
//
//	gongji:province:XX0000   a provincial unit's node (and its local systems)
//	gongji:clearing          the national clearing service
//	gongji:operator          a settlement operator's client
//
// The identity is read only from a certificate the TLS stack has verified
// against the CA bundle; names in the Subject are informational.
//
// Only standard-library crypto is used: ECDSA P-256 keys, x509 certificates,
// TLS 1.3.
package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"gongji/region"
)

// Scheme is the URI scheme of every gongji identity SAN.
const Scheme = "gongji"

// Errors returned when no trustworthy identity can be read. A gRPC server maps
// every one of them to codes.Unauthenticated.
var (
	// ErrNoIdentity: the certificate carries no gongji URI SAN.
	ErrNoIdentity = errors.New("tlsconf: certificate has no gongji identity")
	// ErrManyIdentities: the certificate carries more than one gongji URI SAN;
	// accepting either would let the holder pick who it is.
	ErrManyIdentities = errors.New("tlsconf: certificate has more than one gongji identity")
	// ErrBadIdentity: a gongji URI that is not one of the three forms, or an
	// Identity value that is not valid.
	ErrBadIdentity = errors.New("tlsconf: malformed gongji identity")
	// ErrNoPeer: the context carries no gRPC peer.
	ErrNoPeer = errors.New("tlsconf: no peer in context")
	// ErrNotTLS: the gRPC peer did not connect over TLS.
	ErrNotTLS = errors.New("tlsconf: peer did not connect over TLS")
	// ErrUnverified: the connection has no verified certificate chain (no
	// client certificate, or verification was skipped).
	ErrUnverified = errors.New("tlsconf: peer certificate was not verified")
)

// Kind is the role an identity names. The zero Kind is invalid.
type Kind uint8

const (
	// Province is a provincial unit's node; Identity.Province names it.
	Province Kind = iota + 1
	// Clearing is the national clearing service.
	Clearing
	// Operator is a settlement operator's client.
	Operator
)

// String returns "province", "clearing", "operator" or "invalid".
func (k Kind) String() string {
	switch k {
	case Province:
		return "province"
	case Clearing:
		return "clearing"
	case Operator:
		return "operator"
	}
	return "invalid"
}

// Identity is who a certificate speaks for. Province is the XX0000 code when
// Kind is Province and empty otherwise. Identity is comparable with ==.
type Identity struct {
	Kind     Kind
	Province string
}

// String returns the URI form, e.g. "gongji:province:110000" or
// "gongji:clearing". An invalid identity renders as "gongji:invalid" so that
// it can never be mistaken for a real one in a log line.
func (id Identity) String() string {
	switch id.Kind {
	case Province:
		return Scheme + ":province:" + id.Province
	case Clearing:
		return Scheme + ":clearing"
	case Operator:
		return Scheme + ":operator"
	}
	return Scheme + ":invalid"
}

// Validate reports whether id is one of the three forms, the province code
// being one of region.ProvinceCodes(). Returns ErrBadIdentity, wrapping the
// region error for a bad province code.
func (id Identity) Validate() error {
	switch id.Kind {
	case Province:
		if _, err := region.ParseProvince(id.Province); err != nil {
			return fmt.Errorf("%w: %w", ErrBadIdentity, err)
		}
		return nil
	case Clearing, Operator:
		if id.Province != "" {
			return fmt.Errorf("%w: %s identity with province %q", ErrBadIdentity, id.Kind, id.Province)
		}
		return nil
	}
	return fmt.Errorf("%w: kind %d", ErrBadIdentity, id.Kind)
}

// URI returns the SAN URI of a valid identity. Returns ErrBadIdentity.
func (id Identity) URI() (*url.URL, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return url.Parse(id.String())
}

// ParseIdentity parses the URI form produced by Identity.String. The scheme is
// case-insensitive (URI schemes are); the rest must be exactly canonical, with
// no query, fragment or authority. Returns ErrBadIdentity.
func ParseIdentity(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %q: %v", ErrBadIdentity, s, err)
	}
	return identityFromURL(u)
}

func identityFromURL(u *url.URL) (Identity, error) {
	if u.Scheme != Scheme {
		return Identity{}, fmt.Errorf("%w: scheme %q", ErrBadIdentity, u.Scheme)
	}
	var id Identity
	switch {
	case u.Opaque == "clearing":
		id = Identity{Kind: Clearing}
	case u.Opaque == "operator":
		id = Identity{Kind: Operator}
	case strings.HasPrefix(u.Opaque, "province:"):
		id = Identity{Kind: Province, Province: strings.TrimPrefix(u.Opaque, "province:")}
	default:
		return Identity{}, fmt.Errorf("%w: %q", ErrBadIdentity, u.String())
	}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	// Anything beyond the canonical form (query, fragment, "//host", escapes)
	// changes the rendering; refuse it rather than guess what was meant.
	if u.String() != id.String() {
		return Identity{}, fmt.Errorf("%w: %q is not canonical", ErrBadIdentity, u.String())
	}
	return id, nil
}

// IdentityFromCert reads the identity from cert's URI SANs: exactly one URI
// with the gongji scheme must be present (URIs of other schemes are ignored)
// and it must parse as a valid identity. It does not verify the certificate;
// call it on a verified leaf. Returns ErrNoIdentity, ErrManyIdentities or
// ErrBadIdentity.
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, ErrNoIdentity
	}
	var found *url.URL
	for _, u := range cert.URIs {
		if u == nil || !strings.EqualFold(u.Scheme, Scheme) {
			continue
		}
		if found != nil {
			return Identity{}, fmt.Errorf("%w: %s and %s", ErrManyIdentities, found, u)
		}
		found = u
	}
	if found == nil {
		return Identity{}, ErrNoIdentity
	}
	return identityFromURL(found)
}

// IdentityFromState reads the identity of the peer's verified leaf in cs.
// Use it on the server side (or on any side where crypto/tls itself verified
// the chain; ClientConfig verifies in VerifyConnection, so a client's
// ConnectionState has no verified chains). Returns ErrUnverified or an error
// from IdentityFromCert.
func IdentityFromState(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, ErrUnverified
	}
	// Every verified chain starts with the same leaf.
	return IdentityFromCert(cs.VerifiedChains[0][0])
}

// IdentityFromContext returns the identity of the caller of a gRPC server
// method, from the verified client certificate of the connection. Returns
// ErrNoPeer, ErrNotTLS, ErrUnverified or an error from IdentityFromCert; the
// caller maps any error to codes.Unauthenticated.
func IdentityFromContext(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p == nil {
		return Identity{}, ErrNoPeer
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, ErrNotTLS
	}
	return IdentityFromState(info.State)
}
