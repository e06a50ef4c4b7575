package clearingapi_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"gongji/clearingapi"
	"gongji/internal/tlsconf"
)

func TestNodesFile(t *testing.T) {
	t.Parallel()
	certs := t.TempDir()
	if err := tlsconf.Init(certs, tlsconf.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	tlsR := reloader(t, certs, clearingID)
	path := filepath.Join(t.TempDir(), "nodes.json")
	open := func(text string) (*clearingapi.Nodes, error) {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		n, err := clearingapi.NewNodes(clearingapi.NodesOptions{File: path, TLS: tlsR})
		if err == nil {
			t.Cleanup(func() { _ = n.Close() })
		}
		return n, err
	}
	for name, text := range map[string]string{
		"not JSON":             `410000=127.0.0.1:7501`,
		"an array":             `["127.0.0.1:7501"]`,
		"a region, not a unit": `{"410100": "127.0.0.1:7501"}`,
		"unknown province":     `{"990000": "127.0.0.1:7501"}`,
		"no port":              `{"410000": "127.0.0.1"}`,
		"port 0":               `{"410000": "127.0.0.1:0"}`,
		"no host":              `{"410000": ":7501"}`,
		"a number":             `{"410000": 7501}`,
	} {
		if _, err := open(text); !errors.Is(err, clearingapi.ErrBadNodesFile) {
			t.Errorf("%s: %v, want ErrBadNodesFile", name, err)
		}
	}
	if _, err := clearingapi.NewNodes(clearingapi.NodesOptions{File: filepath.Join(t.TempDir(), "missing.json"), TLS: tlsR}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}

	n, err := open(`{"410000": "127.0.0.1:7501", "660000": "node-bingtuan.example:7532"}`)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := n.Addr("660000"); !ok || a != "node-bingtuan.example:7532" {
		t.Errorf("Addr(660000) = %q, %v", a, ok)
	}
	if _, err := n.Peer("110000"); !errors.Is(err, clearingapi.ErrUnknownNode) {
		t.Errorf("Peer of an unlisted province: %v", err)
	}
	if _, err := n.Peer("410000"); err != nil {
		t.Errorf("Peer(410000): %v", err)
	}
	// A bad file on reload keeps the previous addresses.
	if err := os.WriteFile(path, []byte(`{`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.Reload(); !errors.Is(err, clearingapi.ErrBadNodesFile) {
		t.Errorf("reload of a broken file: %v", err)
	}
	if a, ok := n.Addr("410000"); !ok || a != "127.0.0.1:7501" {
		t.Errorf("after a failed reload Addr(410000) = %q, %v", a, ok)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Peer("410000"); !errors.Is(err, clearingapi.ErrNodesClosed) {
		t.Errorf("Peer after Close: %v", err)
	}
}
