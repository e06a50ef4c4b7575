package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"gongji/internal/federation"
	"gongji/internal/tlsconf"
	clearingv1 "gongji/proto/gen/gongji/clearing/v1"
	provincev1 "gongji/proto/gen/gongji/province/v1"
	"gongji/region"
)

// TestCertificateRotation rotates the mTLS certificates of a running
// two-province federation of processes without restarting any of them,
// while cross-province spends flow (Henan's clients at node B, debited at
// Guangdong's node A):
//
//	(a) the leaves of the clearing service and both nodes are re-issued from
//	    the same CA and the processes get SIGHUP: every server presents its
//	    new certificate to the next handshake;
//	(b) the CA is rotated in three steps, each followed by SIGHUP everywhere:
//	    the new CA added to the trust bundle; every certificate re-issued from
//	    the new CA; the old CA removed. A client with a certificate of the old
//	    CA is then refused, and the federation keeps working;
//	(c) a client presenting an expired certificate is refused, and a process
//	    asked to load an expired certificate keeps serving its valid one.
//
// An established TLS connection keeps the certificates it was opened with,
// so every link between the processes runs through a toxiproxy proxy
// (B → clearing, A → clearing, clearing → A, clearing → B), and after each
// rotation step the test cuts every proxied connection: the processes
// reconnect with fresh handshakes, which after step (b) can only succeed with
// new-CA certificates on both sides. Spends fail only inside those cuts
// (checked against the clients' attempt log); at the end every approval was
// committed exactly once, payer, payee and clearing records agree row by row
// and money is conserved.
func TestCertificateRotation(t *testing.T) {
	period, _ := region.ParsePeriod("202610")
	const a, b = "440000", "410000"
	f, dir := faultFederation(t, period, 29, []string{a, b}, nil)
	rels := faultPair(t, f, a, b, 6, "2000.00", "rot", transientCodes)
	certs := f.CertsDir()
	started := time.Now()

	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	proxies := []*toxiproxy.Proxy{
		startProxy(t, api, "b-clearing", f.Addr("clearing")),
		startProxy(t, api, "a-clearing", f.Addr("clearing")),
		startProxy(t, api, "clearing-a", f.Addr(a)),
		startProxy(t, api, "clearing-b", f.Addr(b)),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	repointNode(ctx, t, f, b, proxies[0].Listen)
	repointNode(ctx, t, f, a, proxies[1].Listen)
	routeClearing(t, f, dir, map[string]string{a: proxies[2].Listen, b: proxies[3].Listen})

	s := newSpender(f, b, period, transientCodes)
	finish := s.background(t, "ROT", rels, 3, 300, 29)
	r := &rotation{t: t, f: f, certs: certs, s: s, proxies: proxies, a: a, b: b, rel: rels[0]}
	servers := []string{"clearing", a, b}
	r.progress("spends before the rotation", 20)

	ca1, err := tlsconf.LoadCA(filepath.Join(certs, tlsconf.CACertFile), filepath.Join(certs, tlsconf.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := tlsconf.NewCA(tlsconf.CAOptions{CommonName: "gongji clearing CA 2"})
	if err != nil {
		t.Fatal(err)
	}
	both := x509.NewCertPool()
	both.AddCert(ca1.Cert)
	both.AddCert(ca2.Cert)
	r.roots = both
	op := tlsconf.Identity{Kind: tlsconf.Operator}
	opOld, opNew := r.leaf(ca1, op, time.Time{}), r.leaf(ca2, op, time.Time{})

	ok := t.Run("leaf re-issued, same CA", func(t *testing.T) {
		r.t = t
		old := map[string]*big.Int{}
		for _, srv := range servers {
			old[srv] = r.served(srv, opOld, both).SerialNumber
		}
		issued := map[string]*big.Int{}
		for _, srv := range servers {
			l, err := tlsconf.Reissue(certs, ca1, serverID(srv), tlsconf.InitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			issued[srv] = l.Cert.SerialNumber
		}
		r.sighup(servers, "certificate reloaded")
		for _, srv := range servers {
			got := r.served(srv, opOld, both).SerialNumber
			if got.Cmp(issued[srv]) != 0 || got.Cmp(old[srv]) == 0 {
				t.Errorf("%s serves serial %x after SIGHUP; re-issued %x, before %x", srv, got, issued[srv], old[srv])
			}
		}
		r.cut("new leaves")
	}) && t.Run("CA rotated", func(t *testing.T) {
		r.t = t
		// 1. Trust both CAs everywhere.
		if err := tlsconf.WriteCABundle(filepath.Join(certs, tlsconf.CACertFile), ca1.Cert, ca2.Cert); err != nil {
			t.Fatal(err)
		}
		r.sighup(servers, "certificate reloaded")
		for _, srv := range servers {
			r.served(srv, opNew, both) // a new-CA client is accepted already
			r.served(srv, opOld, both) // and an old-CA one still
		}
		r.cut("old+new bundle")

		// 2. Every certificate of the directory from the new CA: the three
		// servers, the clients of this test (both provinces, the operator)
		// and the 30 provinces that have no node here.
		ids := []tlsconf.Identity{{Kind: tlsconf.Clearing}, op}
		for _, c := range region.ProvinceCodes() {
			ids = append(ids, tlsconf.Identity{Kind: tlsconf.Province, Province: c})
		}
		issued := map[tlsconf.Identity]*x509.Certificate{}
		for _, id := range ids {
			l, err := tlsconf.Reissue(certs, ca2, id, tlsconf.InitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			issued[id] = l.Cert
		}
		r.sighup(servers, "certificate reloaded")
		for _, srv := range servers {
			got := r.served(srv, opOld, both)
			if want := issued[serverID(srv)]; !got.Equal(want) || got.CheckSignatureFrom(ca2.Cert) != nil {
				t.Errorf("%s serves serial %x after step 2, want %x signed by the new CA", srv, got.SerialNumber, want.SerialNumber)
			}
		}
		r.cut("new-CA leaves")

		// 3. Drop the old CA. The directory is the new CA's alone again, as
		// `clearing certs init` expects it (its key included).
		if err := ca2.WriteFiles(filepath.Join(certs, tlsconf.CACertFile), filepath.Join(certs, tlsconf.CAKeyFile)); err != nil {
			t.Fatal(err)
		}
		r.sighup(servers, "certificate reloaded")
		for _, srv := range servers {
			r.refused(srv, opOld, "unknown certificate authority")
			r.served(srv, opNew, ca2.Pool())
		}
		r.refusedRPC(opOld, "old CA")
		r.cut("old CA removed") // every process reconnects with new-CA certificates only
		if out, err := f.ClearingCmd(ctx, "certs", "init", "--out", certs); err != nil {
			t.Errorf("clearing certs init on the rotated directory: %v\n%s", err, out)
		}
	}) && t.Run("expired certificates refused", func(t *testing.T) {
		r.t = t
		expired := r.leaf(ca2, op, time.Now().Add(-time.Hour))
		for _, srv := range servers {
			r.refused(srv, expired, "expired certificate")
		}
		r.refusedRPC(expired, "expired")

		// A node told to load an expired certificate keeps its valid one.
		valid := r.served(a, r.leaf(ca2, op, time.Time{}), ca2.Pool())
		id := serverID(a)
		fl := tlsconf.FilesFor(certs, id)
		if err := r.leaf(ca2, id, time.Now().Add(-time.Hour)).WriteFiles(fl.CertFile, fl.KeyFile); err != nil {
			t.Fatal(err)
		}
		r.sighup([]string{a}, "certificate reload failed")
		if got := r.served(a, r.leaf(ca2, op, time.Time{}), ca2.Pool()); !got.Equal(valid) {
			t.Errorf("node %s serves serial %x after loading an expired certificate was refused, want its valid %x", a, got.SerialNumber, valid.SerialNumber)
		}
		if _, err := tlsconf.Reissue(certs, ca2, id, tlsconf.InitOptions{}); err != nil {
			t.Fatal(err)
		}
		r.sighup([]string{a}, "certificate reloaded")
		r.cut("node A back on a valid certificate")
	})
	r.t = t
	if !ok {
		return
	}
	finish()
	nodesRunning(t, f, "after the rotations")
	outside, inside := r.failuresOutsideCuts()
	if outside > 0 {
		t.Errorf("%d spend attempts failed outside the connection cuts (%s)", outside, s.failureSummary())
	}
	waitDrained(t, f, period)
	n := compareRecords(t, f)
	checkConservation(t, f)
	m := checkExactlyOnce(t, f, a, s, rels)
	approved, _ := s.counts()
	t.Logf("figures: %d SIGHUP reloads (%d refused as asked), %d connection cuts (longest window %s), %d handshakes checked "+
		"(%d refused); %d spends approved, %d failed attempts, all inside the cuts (%s), %d outside; "+
		"%d records equal at payer, payee and clearing; %d approvals committed exactly once; rotation phase %s",
		r.reloads, r.reloadsRefused, len(r.windows), r.longest().Round(time.Millisecond), r.probes, r.refusals,
		approved, inside, s.failureSummary(), outside, n, m, time.Since(started).Round(time.Second))
}

// serverID is the certificate identity of a server of the federation.
func serverID(srv string) tlsconf.Identity {
	if srv == "clearing" {
		return tlsconf.Identity{Kind: tlsconf.Clearing}
	}
	return tlsconf.Identity{Kind: tlsconf.Province, Province: srv}
}

// rotation drives the steps of TestCertificateRotation and keeps its figures.
type rotation struct {
	t       *testing.T
	f       *federation.Federation
	certs   string
	s       *spender
	proxies []*toxiproxy.Proxy
	a, b    string // the payer's and the payee's node
	rel     string // a relationship whose quota cut changes

	roots *x509.CertPool // both CAs: refused probes still check whom they reach

	windows          [][2]time.Time // connection cuts: start, recovered
	reloads          int
	reloadsRefused   int
	probes, refusals int
}

// progress waits (bounded) until n more spends were approved.
func (r *rotation) progress(what string, n int) {
	r.t.Helper()
	base, _ := r.s.counts()
	waitFor(r.t, 2*time.Minute, what, func() bool { got, _ := r.s.counts(); return got >= base+n })
}

// leaf issues id a certificate from ca, valid now, or expired at notAfter
// when notAfter is set.
func (r *rotation) leaf(ca *tlsconf.CA, id tlsconf.Identity, notAfter time.Time) *tlsconf.Leaf {
	r.t.Helper()
	req := tlsconf.LeafRequest{Identity: id, Hosts: []string{"localhost", "127.0.0.1"}}
	if !notAfter.IsZero() {
		req.NotBefore, req.NotAfter = notAfter.Add(-time.Hour), notAfter
	}
	l, err := ca.Issue(req)
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

// pid and logPath locate a process of the federation ("clearing" or a
// province code).
func (r *rotation) pid(who string) int {
	if who == "clearing" {
		return r.f.Clearing().Pid()
	}
	return r.f.Node(who).Pid()
}

func (r *rotation) logPath(who string) string {
	if who == "clearing" {
		return filepath.Join(r.f.LogsDir(), "clearing.log")
	}
	return filepath.Join(r.f.LogsDir(), "node-"+who+".log")
}

// sighup signals each process and waits (bounded) until each has logged
// event ("certificate reloaded", or "certificate reload failed" when the
// files are meant to be refused) once more than before the signal.
func (r *rotation) sighup(who []string, event string) {
	r.t.Helper()
	before := map[string]int{}
	for _, w := range who {
		before[w] = strings.Count(readFile(r.t, r.logPath(w)), event)
		if err := syscall.Kill(r.pid(w), syscall.SIGHUP); err != nil {
			r.t.Fatal(err)
		}
	}
	for _, w := range who {
		waitFor(r.t, 30*time.Second, fmt.Sprintf("%s to log %q after SIGHUP", w, event), func() bool {
			return strings.Count(readFile(r.t, r.logPath(w)), event) > before[w]
		})
		r.reloads++
		if event != "certificate reloaded" {
			r.reloadsRefused++
		}
	}
}

// cut closes every connection between the processes (all run through the
// proxies) and opens the proxies again, so that the processes reconnect with
// fresh handshakes, and waits (bounded) until each of the four links has
// carried something new: 10 more approvals (B → clearing and clearing → A),
// an acknowledgement of a report A wrote after the cut (A → clearing), and
// B's replica of a relationship updated by a quota set at A after the cut
// (clearing → B). It records the window from the cut to then, the only
// time a spend may fail.
func (r *rotation) cut(why string) {
	r.t.Helper()
	ctx := context.Background()
	start := time.Now()
	for _, p := range r.proxies {
		p.Stop()
	}
	// Rows A writes from now on can only be acknowledged over a new connection.
	pa, pb := pool(r.t, r.f.DatabaseURL(r.a)), pool(r.t, r.f.DatabaseURL(r.b))
	var seqAtCut int64
	if err := pa.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM outbox`).Scan(&seqAtCut); err != nil {
		r.t.Fatal(err)
	}
	for _, p := range r.proxies {
		if err := p.Start(); err != nil {
			r.t.Fatalf("restart proxy %s on %s: %v", p.Name, p.Listen, err)
		}
	}
	r.progress("10 spends over fresh connections after "+why, 10)
	waitFor(r.t, 2*time.Minute, "a report of A written after the cut acknowledged", func() bool {
		var n int
		err := pa.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE seq > $1 AND acked_at IS NOT NULL`, seqAtCut).Scan(&n)
		return err == nil && n > 0
	})
	quota := fmt.Sprintf("%d.00", 2000+100*(len(r.windows)+1))
	if _, _, err := callRetry(ctx, transientCodes, func(ctx context.Context) (*provincev1.Relationship, error) {
		return r.f.Province(r.a).SetQuota(ctx, &provincev1.SetQuotaRequest{RelationshipId: r.rel, Quota: quota,
			CommandKey: fmt.Sprintf("cut-quota-%d", len(r.windows))})
	}); err != nil {
		r.t.Fatal(err)
	}
	waitFor(r.t, 2*time.Minute, "B's replica to get the quota set at A after the cut", func() bool {
		var q string
		err := pb.QueryRow(ctx, `SELECT quota::text FROM relationships WHERE id = $1 AND NOT authority`, r.rel).Scan(&q)
		return err == nil && q == quota
	})
	r.windows = append(r.windows, [2]time.Time{start, time.Now()})
}

// longest is the longest cut window.
func (r *rotation) longest() time.Duration {
	var d time.Duration
	for _, w := range r.windows {
		d = max(d, w[1].Sub(w[0]))
	}
	return d
}

// failuresOutsideCuts counts failed spend attempts that ended outside every
// cut window, and inside.
func (r *rotation) failuresOutsideCuts() (outside, inside int) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	for _, a := range r.s.attempts {
		if a.code == codes.OK {
			continue
		}
		in := false
		for _, w := range r.windows {
			if !a.end.Before(w[0]) && !a.end.After(w[1]) {
				in = true
			}
		}
		if in {
			inside++
		} else {
			outside++
		}
	}
	return outside, inside
}

// probe makes a fresh TLS connection to srv presenting client (and trusting
// roots for the server's certificate), sends the HTTP/2 client preface and
// reads the server's first frame. It returns the certificate the server
// presented and nil when the server accepted the client certificate (its
// SETTINGS frame arrived), or the alert it answered with. In TLS 1.3 the
// client finishes its handshake before the server has checked the client
// certificate, so a refusal shows on the first read.
func (r *rotation) probe(srv string, client *tlsconf.Leaf, roots *x509.CertPool) (*x509.Certificate, error) {
	r.t.Helper()
	r.probes++
	cert := client.TLSCertificate()
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", r.f.Addr(srv), &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots,
		ServerName: "localhost", NextProtos: []string{"h2"}, GetClientCertificate: present(cert)})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a hang guard, never what is asserted
	leaf := c.ConnectionState().PeerCertificates[0]
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00" // + an empty SETTINGS frame
	if _, err := io.WriteString(c, preface); err != nil {
		return leaf, err
	}
	hdr := make([]byte, 9)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return leaf, err
	}
	if hdr[3] != 0x4 {
		return leaf, fmt.Errorf("first frame from %s has type %d, want SETTINGS", srv, hdr[3])
	}
	return leaf, nil
}

// present always offers cert, even when the server's list of acceptable
// CAs does not name its issuer (crypto/tls would then send none, and the
// server would refuse "certificate required" without looking at it).
func present(cert tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
}

// served is probe that must be accepted; it returns the server's certificate.
func (r *rotation) served(srv string, client *tlsconf.Leaf, roots *x509.CertPool) *x509.Certificate {
	r.t.Helper()
	leaf, err := r.probe(srv, client, roots)
	if err != nil {
		r.t.Fatalf("handshake with %s as a %s certificate (serial %x): %v", srv, client.Cert.Issuer.CommonName, client.Cert.SerialNumber, err)
	}
	return leaf
}

// refused is probe that the server must refuse with an alert naming alert.
func (r *rotation) refused(srv string, client *tlsconf.Leaf, alert string) {
	r.t.Helper()
	_, err := r.probe(srv, client, r.roots)
	r.refusals++
	if err == nil || !strings.Contains(err.Error(), alert) {
		r.t.Errorf("handshake with %s as a %s certificate valid until %s: %v, want the alert %q",
			srv, client.Cert.Issuer.CommonName, client.Cert.NotAfter.Format(time.RFC3339), err, alert)
	}
}

// refusedRPC calls the clearing service's AdminService as a gRPC client
// presenting client (an operator certificate the service must refuse): the
// call must fail with Unavailable, gRPC's code for a connection that could
// not be set up. The client sees the server's alert or, when it is already
// writing, a broken pipe; probe (refused) checks the alert itself.
func (r *rotation) refusedRPC(client *tlsconf.Leaf, what string) {
	r.t.Helper()
	cert := client.TLSCertificate()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "localhost", InsecureSkipVerify: true, //nolint:gosec // the server's certificate is not what this checks
		GetClientCertificate: present(cert)}
	cc, err := grpc.NewClient(r.f.Addr("clearing"), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		r.t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a hang guard
	defer cancel()
	_, err = clearingv1.NewAdminServiceClient(cc).ListPeriods(ctx, &clearingv1.ListPeriodsRequest{})
	r.refusals++
	if st := status.Convert(err); st.Code() != codes.Unavailable {
		r.t.Errorf("operator call with an %s certificate: %v, want Unavailable (the handshake refused)", what, err)
	}
}
