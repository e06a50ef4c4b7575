// Package fleet starts and supervises gongji server processes for the demo,
// the e2e tests and the benchmarks: each server is a separate OS process with
// its own log file, started with --ready-file so the parent learns the address
// it actually listens on, and stoppable gracefully (SIGTERM) or abruptly
// (SIGKILL) and restartable with the same arguments.
//
// Children get PR_SET_PDEATHSIG=SIGKILL, so a parent that dies (even by
// SIGKILL) leaves no server of ours behind.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec describes one server process.
type Spec struct {
	Name    string   // e.g. "clearing", "node-410000"
	Binary  string   // path to the executable
	Args    []string // arguments; --ready-file is appended by Start
	Env     []string // extra environment (KEY=VALUE)
	LogPath string   // stdout+stderr are appended here
	// ReadyTimeout bounds the wait for the ready file; default 60s.
	ReadyTimeout time.Duration
}

// Proc is a running (or stopped) server process.
type Proc struct {
	Spec      Spec
	readyPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	addr   string
	starts int
}

// spawner runs every fork on one locked OS thread: PR_SET_PDEATHSIG fires when
// the *thread* that forked a child exits, and this thread never does.
var spawner = func() chan func() {
	ch := make(chan func())
	go func() {
		runtime.LockOSThread()
		for f := range ch {
			f()
		}
	}()
	return ch
}()

// Start launches the process and waits until it has written its ready file.
func Start(ctx context.Context, spec Spec) (*Proc, error) {
	if spec.ReadyTimeout == 0 {
		spec.ReadyTimeout = 60 * time.Second
	}
	dir := filepath.Dir(spec.LogPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &Proc{Spec: spec, readyPath: filepath.Join(dir, spec.Name+".ready")}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Proc) start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = os.Remove(p.readyPath)
	logf, err := os.OpenFile(p.Spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("fleet %s: log: %w", p.Spec.Name, err)
	}
	fmt.Fprintf(logf, "---- fleet: start #%d of %s at %s\n", p.starts+1, p.Spec.Name, time.Now().Format(time.RFC3339Nano))
	args := append(append([]string{}, p.Spec.Args...), "--ready-file", p.readyPath)
	cmd := exec.Command(p.Spec.Binary, args...)
	cmd.Env = append(os.Environ(), p.Spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	spawner <- func() { errc <- cmd.Start() }
	if err := <-errc; err != nil {
		logf.Close()
		return fmt.Errorf("fleet %s: start: %w", p.Spec.Name, err)
	}
	p.cmd = cmd
	p.starts++
	exited := make(chan struct{})
	p.exited = exited
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	addr, err := waitReady(ctx, p.readyPath, exited, p.Spec.ReadyTimeout)
	if err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		return fmt.Errorf("fleet %s: %w (log: %s)", p.Spec.Name, err, p.Spec.LogPath)
	}
	p.addr = addr
	return nil
}

// waitReady polls for the ready file. Polling a file is the one portable way to
// learn that another process is ready; it is bounded and stops early if the
// process exits.
func waitReady(ctx context.Context, path string, exited <-chan struct{}, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(b), "\n") {
			return strings.TrimSpace(string(b)), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-exited:
			return "", errors.New("process exited before it was ready")
		case <-deadline.C:
			return "", fmt.Errorf("not ready after %s", timeout)
		case <-tick.C:
		}
	}
}

// Addr is the address the process reported in its ready file.
func (p *Proc) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// Starts counts how many times the process was started.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Pid is the current process id (0 when never started).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	ch := p.exited
	p.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL to the process group and waits for the exit.
func (p *Proc) Kill() {
	p.signal(syscall.SIGKILL, 0)
}

// Stop sends SIGTERM and waits up to grace, then SIGKILL.
func (p *Proc) Stop(grace time.Duration) {
	p.signal(syscall.SIGTERM, grace)
}

func (p *Proc) signal(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	if sig == syscall.SIGKILL {
		<-exited
		return
	}
	select {
	case <-exited:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// Restart starts the process again with the same arguments (after Kill/Stop).
func (p *Proc) Restart(ctx context.Context) error {
	if p.Running() {
		return fmt.Errorf("fleet %s: restart while running", p.Spec.Name)
	}
	return p.start(ctx)
}

// WriteReadyFile is what a server calls once it listens: it writes addr and a
// newline atomically (write to temp, rename) so a reader never sees half.
func WriteReadyFile(path, addr string) error {
	if path == "" {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(addr+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
