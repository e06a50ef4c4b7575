package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// Errors of the client-side server check in ClientConfig and ClientConfigFor.
var (
	// ErrNoServerName: ClientConfig was given an empty server name, so the
	// server's certificate cannot be matched to anything.
	ErrNoServerName = errors.New("tlsconf: client config needs a server name")
	// ErrWrongPeer: the server's verified certificate names another identity
	// than the one ClientConfigFor expects.
	ErrWrongPeer = errors.New("tlsconf: server is not the expected identity")
)

// ServerConfig returns the tls.Config of a gongji gRPC (or plain TLS)
// server: TLS 1.3 minimum, the Reloader's current certificate, client
// certificates required and verified against the Reloader's current CA pool
// at its clock (expired or foreign-CA certificates are refused), and a gongji
// identity required in the client certificate. Everything per handshake
// comes from r.GetConfigForClient, so certificate and CA changes on disk
// apply to the next handshake without restarting the listener.
//
// Use it with credentials.NewTLS (which adds "h2" ALPN to the per-handshake
// config too) or tls.NewListener. Authorisation (which identity may call
// what) is the gRPC layer's job, from IdentityFromContext.
func ServerConfig(r *Reloader) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.RequireAndVerifyClientCert,
		GetCertificate:         r.GetCertificate,
		GetConfigForClient:     r.GetConfigForClient,
		SessionTicketsDisabled: true,
	}
}

// ClientConfig returns the tls.Config of a gongji client: TLS 1.3 minimum,
// the Reloader's current certificate as client certificate, and the server's
// certificate verified against the Reloader's current CA pool at its clock:
// chain, validity, server-auth usage, serverName (DNS name or IP address)
// and a gongji identity. Any gongji identity is accepted; prefer
// ClientConfigFor when the caller knows whom it dials.
//
// crypto/tls fixes RootCAs when a config is built, so a reloadable pool
// cannot go through the standard check: the config sets InsecureSkipVerify
// and does the complete verification in VerifyConnection, which crypto/tls
// runs on every handshake (TLS 1.3 still checks that the server holds the
// certificate's key). The returned config keeps no session cache, so there is
// no resumption that could skip that check.
//
// serverName is what the server certificate must name. gRPC overwrites
// tls.Config.ServerName with the dial target's host (that only changes SNI);
// verification always uses the serverName given here. An empty serverName
// makes every handshake fail with ErrNoServerName.
func ClientConfig(r *Reloader, serverName string) *tls.Config {
	return clientConfig(r, serverName, nil)
}

// ClientConfigFor is ClientConfig that also requires the server's identity to
// be want, e.g. a province node dialling the clearing service wants
// Identity{Kind: Clearing}. Every province certificate is also a server
// certificate for localhost, so without this check one province node could
// stand in for the clearing service in a single-host deployment. A mismatch
// fails the handshake with ErrWrongPeer.
func ClientConfigFor(r *Reloader, serverName string, want Identity) *tls.Config {
	return clientConfig(r, serverName, &want)
}

func clientConfig(r *Reloader, serverName string, want *Identity) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		ServerName:           serverName,
		GetClientCertificate: r.GetClientCertificate,
		// Verification is done, completely, in VerifyConnection below
		// against the reloadable pool; see ClientConfig.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return r.verifyServer(cs, serverName, want)
		},
	}
}

// verifyServer is the client-side check of the server's certificate chain.
func (r *Reloader) verifyServer(cs tls.ConnectionState, serverName string, want *Identity) error {
	if serverName == "" {
		return ErrNoServerName
	}
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: server sent no certificate", ErrUnverified)
	}
	r.maybeReload()
	m := r.cur.Load()
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         m.pool,
		Intermediates: inter,
		DNSName:       serverName,
		CurrentTime:   r.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return err
	}
	if want != nil && id != *want {
		return fmt.Errorf("%w: got %s, want %s", ErrWrongPeer, id, *want)
	}
	return nil
}
