package tlsconf_test

import (
	"fmt"
	"log"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"gongji/internal/tlsconf"
)

// Example shows the wiring of a province node: one Reloader for its own
// certificate, a server config for its gRPC server and a client config for
// calling the clearing service.
func Example() {
	dir, err := os.MkdirTemp("", "gongji-certs")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := tlsconf.Init(dir, tlsconf.InitOptions{}); err != nil {
		log.Fatal(err)
	}

	me := tlsconf.Identity{Kind: tlsconf.Province, Province: "110000"}
	r, err := tlsconf.NewReloader(tlsconf.ReloaderOptions{
		Files:    tlsconf.FilesFor(dir, me),
		Identity: me,
		OnError:  func(err error) { log.Printf("certificate reload failed, keeping the old one: %v", err) },
	})
	if err != nil {
		log.Fatal(err)
	}

	// Server: every RPC handler or interceptor calls IdentityFromContext.
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconf.ServerConfig(r))))
	defer srv.Stop()

	// Client of the clearing service: insist that the peer is the clearing service.
	conn, err := grpc.NewClient("localhost:7443", grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconf.ClientConfigFor(r, "localhost", tlsconf.Identity{Kind: tlsconf.Clearing}))))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	fmt.Println(r.Identity())
	// Output: gongji:province:110000
}
