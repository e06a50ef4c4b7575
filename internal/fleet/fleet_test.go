package fleet

import (
	"context"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// When run as a child (FLEET_CHILD=1) the test binary acts as a tiny server:
// it listens, writes the ready file and waits for SIGTERM.
func TestMain(m *testing.M) {
	if os.Getenv("FLEET_CHILD") == "1" {
		child()
		return
	}
	os.Exit(m.Run())
}

func child() {
	ready := ""
	for i, a := range os.Args {
		if a == "--ready-file" && i+1 < len(os.Args) {
			ready = os.Args[i+1]
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.Exit(3)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	if err := WriteReadyFile(ready, l.Addr().String()); err != nil {
		os.Exit(4)
	}
	<-sig
	l.Close()
	os.Exit(0)
}

func TestStartKillRestart(t *testing.T) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := Start(ctx, Spec{Name: "child", Binary: self, Args: []string{"-test.run=^$"}, Env: []string{"FLEET_CHILD=1"}, LogPath: filepath.Join(dir, "child.log")})
	if err != nil {
		t.Fatal(err)
	}
	first := p.Addr()
	if c, err := net.Dial("tcp", first); err != nil {
		t.Fatalf("dial %s: %v", first, err)
	} else {
		c.Close()
	}
	p.Kill()
	if p.Running() {
		t.Fatal("still running after Kill")
	}
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if p.Starts() != 2 || !p.Running() {
		t.Fatalf("starts=%d running=%v", p.Starts(), p.Running())
	}
	p.Stop(5 * time.Second)
	if p.Running() {
		t.Fatal("still running after Stop")
	}
}

func TestExitBeforeReady(t *testing.T) {
	dir := t.TempDir()
	_, err := Start(context.Background(), Spec{Name: "false", Binary: "/bin/false", LogPath: filepath.Join(dir, "f.log"), ReadyTimeout: 10 * time.Second})
	if err == nil {
		t.Fatal("want an error for a process that exits before it is ready")
	}
}
