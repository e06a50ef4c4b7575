package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"gongji/clearingapi"
	"gongji/clearingdb"
	"gongji/internal/auditlog"
	"gongji/internal/clock"
	"gongji/internal/serve"
	"gongji/internal/tlsconf"
	"gongji/provinceapi"
	"gongji/provincedb"
	"gongji/sharing"
)

// The federation of rows 1 and 2 runs in this process, wired exactly as
// cmd/clearing and cmd/provincenode wire it (serve.NewServer with the same
// interceptors and server options, mutual TLS with certificates from
// tlsconf.Init, one PostgreSQL database per server), but without separate
// processes: on 2 cores the process boundary would only add scheduling noise.

var (
	clearingID = tlsconf.Identity{Kind: tlsconf.Clearing}
	// benchPersonKey is the national person key of the bench federation.
	benchPersonKey = []byte("gongji-bench-national-person-key-0123456789")
)

func provinceID(code string) tlsconf.Identity {
	return tlsconf.Identity{Kind: tlsconf.Province, Province: code}
}

// certs issues the run's CA and every certificate once.
func (r *run) certs() (string, error) {
	dir := filepath.Join(r.tmp, "certs")
	if _, err := os.Stat(filepath.Join(dir, tlsconf.CACertFile)); err == nil {
		return dir, nil
	}
	if err := tlsconf.Init(dir, tlsconf.InitOptions{}); err != nil {
		return "", err
	}
	return dir, nil
}

func reloader(dir string, id tlsconf.Identity) (*tlsconf.Reloader, error) {
	return tlsconf.NewReloader(tlsconf.ReloaderOptions{Files: tlsconf.FilesFor(dir, id), Identity: id})
}

// server is a gRPC server running on a loopback port until stop.
type server struct {
	addr string
	stop func()
}

// runServer serves srv on 127.0.0.1:0; stop shuts it down gracefully (and
// calls onStop first, e.g. Reporting.Shutdown, so streams end).
func runServer(srv *serve.Server, onStop func()) (*server, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Run(ctx, lis, "", 5*time.Second)
	}()
	var once sync.Once
	return &server{addr: lis.Addr().String(), stop: func() {
		once.Do(func() {
			if onStop != nil {
				onStop()
			}
			cancel()
			<-done
		})
	}}, nil
}

// clearingServer is the clearing service: switch and reporting over mTLS.
type clearingServer struct {
	*server
	store     *clearingdb.Store
	nodes     *clearingapi.Nodes
	nodesFile string
}

// setNodes rewrites the nodes file and reloads it (as SIGHUP does).
func (c *clearingServer) setNodes(nodes map[string]string) error {
	b, _ := json.Marshal(nodes)
	if err := os.WriteFile(c.nodesFile+".tmp", b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(c.nodesFile+".tmp", c.nodesFile); err != nil {
		return err
	}
	return c.nodes.Reload()
}

// startClearing wires the clearing service on pool as `clearing serve`
// does (store with the reporting batch limit, Nodes from a nodes file,
// Switch, Reporting), with its clock fixed at now.
func (r *run) startClearing(pool *pgxpool.Pool, nodes map[string]string, now clock.Clock) (*clearingServer, error) {
	dir, err := r.certs()
	if err != nil {
		return nil, err
	}
	certs, err := reloader(dir, clearingID)
	if err != nil {
		return nil, err
	}
	nodesFile := filepath.Join(r.tmp, fmt.Sprintf("nodes-%d.json", time.Now().UnixNano()))
	b, _ := json.Marshal(nodes)
	if err := os.WriteFile(nodesFile, b, 0o644); err != nil {
		return nil, err
	}
	reg, err := clearingapi.NewNodes(clearingapi.NodesOptions{File: nodesFile, TLS: certs})
	if err != nil {
		return nil, err
	}
	store, err := clearingdb.New(pool, clearingdb.Config{BatchRowsMax: clearingapi.DefaultReportBatchRecordsMax})
	if err != nil {
		return nil, err
	}
	metrics := serve.NewMetrics("clearing")
	am, err := clearingapi.NewMetrics(metrics.Registry)
	if err != nil {
		return nil, err
	}
	log := zap.NewNop()
	sw, err := clearingapi.NewSwitch(clearingapi.SwitchOptions{Nodes: reg, Store: store, Clock: now, Log: log, Metrics: am})
	if err != nil {
		return nil, err
	}
	rep, err := clearingapi.NewReporting(clearingapi.ReportingOptions{Store: store, Clock: now, Log: log, Metrics: am,
		BatchRecordsMax: clearingapi.DefaultReportBatchRecordsMax})
	if err != nil {
		return nil, err
	}
	// As in clearing serve: every state-changing call writes its audit row
	// in the transaction of its change, so the figures include it.
	auditRec, err := auditlog.New(auditlog.Options{DB: pool, Log: log, Clock: now})
	if err != nil {
		return nil, err
	}
	opts := serve.GRPCOptions(log, metrics, clearingapi.CallerName,
		append(append(clearingapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(certs)))),
			clearingapi.AuditOptions(auditRec)...)...)
	srv := serve.NewServer(log, metrics, opts...)
	if err := (clearingapi.Services{Switch: sw, Reporting: rep}).Register(srv.GRPC); err != nil {
		return nil, err
	}
	s, err := runServer(srv, rep.Shutdown)
	if err != nil {
		return nil, err
	}
	stop := s.stop
	s.stop = func() { stop(); _ = reg.Close() }
	return &clearingServer{server: s, store: store, nodes: reg, nodesFile: nodesFile}, nil
}

// provinceNode is one province node: its store, domain service and, when
// started, its gRPC server.
type provinceNode struct {
	code  string
	db    *benchDB
	store *provincedb.Store
	svc   *sharing.Service
	srv   *server
	conn  *grpc.ClientConn // to the clearing service
}

// newNode opens a province node's store and service on db. With
// clearingAddr set it dials the clearing service (provinceapi.DialClearing)
// and uses provinceapi.Remote, as `provincenode serve` does.
func (r *run) newNode(ctx context.Context, db *benchDB, code, clearingAddr string, now clock.Clock) (*provinceNode, error) {
	store, err := provincedb.New(db.Pool, provincedb.Options{})
	if err != nil {
		return nil, err
	}
	if err := store.BindProvince(ctx, code); err != nil {
		return nil, err
	}
	n := &provinceNode{code: code, db: db, store: store}
	var remote sharing.Remote
	if clearingAddr != "" {
		dir, err := r.certs()
		if err != nil {
			return nil, err
		}
		certs, err := reloader(dir, provinceID(code))
		if err != nil {
			return nil, err
		}
		if n.conn, err = provinceapi.DialClearing(clearingAddr, certs); err != nil {
			return nil, err
		}
		rm, err := provinceapi.NewRemote(provinceapi.RemoteOptions{Conn: n.conn, Province: code})
		if err != nil {
			return nil, err
		}
		remote = rm
	}
	if n.svc, err = sharing.NewService(store, sharing.Config{Province: code, PersonKey: benchPersonKey, Now: now, Remote: remote}); err != nil {
		return nil, err
	}
	return n, nil
}

// serve starts the node's ProvinceService and PeerService over mTLS.
func (r *run) serveNode(n *provinceNode, now clock.Clock) error {
	dir, err := r.certs()
	if err != nil {
		return err
	}
	certs, err := reloader(dir, provinceID(n.code))
	if err != nil {
		return err
	}
	apiOpts := provinceapi.Options{Service: n.svc, Clock: now}
	ps, err := provinceapi.NewProvinceServer(apiOpts)
	if err != nil {
		return err
	}
	peer, err := provinceapi.NewPeerServer(apiOpts)
	if err != nil {
		return err
	}
	log := zap.NewNop()
	metrics := serve.NewMetrics("provincenode")
	auditRec, err := auditlog.New(auditlog.Options{DB: n.db.Pool, Log: log, Clock: now})
	if err != nil {
		return err
	}
	opts := serve.GRPCOptions(log, metrics, provinceapi.CallerName,
		append(append(provinceapi.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(certs)))),
			provinceapi.AuditOptions(auditRec, n.svc)...)...)
	srv := serve.NewServer(log, metrics, opts...)
	provinceapi.Register(srv.GRPC, ps, peer)
	n.srv, err = runServer(srv, nil)
	return err
}

func (n *provinceNode) close() {
	if n.srv != nil {
		n.srv.stop()
	}
	if n.conn != nil {
		_ = n.conn.Close()
	}
}

// dialAs opens a client connection to addr presenting id's certificate and
// requiring the server to be want.
func (r *run) dialAs(addr string, id, want tlsconf.Identity) (*grpc.ClientConn, error) {
	dir, err := r.certs()
	if err != nil {
		return nil, err
	}
	certs, err := reloader(dir, id)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconf.ClientConfigFor(certs, "localhost", want))))
}
