package pgboot

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestKillRestart crashes a private cluster and brings it back: a committed
// row survives (crash recovery), the URL handed out before the crash works
// again, a connection open across the crash is broken, and Kill, Restart and
// Stop behave at their edges. It runs with DATABASE_URL set or not: Private
// always starts a cluster of its own.
func TestKillRestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Private: true, MaxConnections: 20, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	if !s.Owned() || !s.Running() {
		t.Fatalf("owned %v running %v, want a private running cluster", s.Owned(), s.Running())
	}
	url := s.AdminURL()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `CREATE TABLE survives (n int); INSERT INTO survives VALUES (42)`); err != nil {
		t.Fatal(err)
	}
	// A transaction in flight at the crash must not survive it.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO survives VALUES (7)`); err != nil {
		t.Fatal(err)
	}
	firstPid := s.proc.Process.Pid
	kids := childrenOf(firstPid)
	if len(kids) == 0 {
		t.Fatal("no backends found under the postmaster")
	}

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if s.Running() {
		t.Fatal("Running after Kill")
	}
	if alive(firstPid) || anyAlive(kids) {
		t.Fatalf("a process of the killed cluster (postmaster %d, children %v) is still alive after Kill returned", firstPid, kids)
	}
	if err := s.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	if err := s.ping(ctx); err == nil {
		t.Fatal("ping succeeded with the cluster killed")
	}
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("a commit across the crash succeeded")
	}

	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.Running() || s.AdminURL() != url {
		t.Fatalf("after Restart: running %v, URL %s (was %s)", s.Running(), s.AdminURL(), url)
	}
	if s.proc.Process.Pid == firstPid {
		t.Fatal("Restart kept the old postmaster pid")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart of a running server: %v", err)
	}
	again, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("the URL from before the crash: %v", err)
	}
	defer again.Close(context.WithoutCancel(ctx))
	var sum, rows int
	if err := again.QueryRow(ctx, `SELECT coalesce(sum(n), 0), count(*) FROM survives`).Scan(&sum, &rows); err != nil {
		t.Fatal(err)
	}
	if sum != 42 || rows != 1 {
		t.Fatalf("after the crash: %d rows summing to %d, want the one committed row (42)", rows, sum)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("a connection from before the crash still answers")
	}

	// A second crash and restart on the same port.
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := again.Ping(ctx); err == nil {
		t.Fatal("a connection from before the second crash still answers")
	}
	if err := s.ping(ctx); err != nil || s.AdminURL() != url {
		t.Fatalf("after the second restart: ping %v, URL %s (was %s)", err, s.AdminURL(), url)
	}

	dir := s.Dir()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s still there after Stop (%v)", dir, err)
	}
	if err := s.Restart(ctx); err == nil {
		t.Error("Restart after Stop succeeded")
	}
	if err := s.Kill(); err == nil {
		t.Error("Kill after Stop succeeded")
	}
}

// TestKillRestartRefusedForSharedServer: a server given by DATABASE_URL is
// never killed or restarted by us.
func TestKillRestartRefusedForSharedServer(t *testing.T) {
	t.Parallel()
	s := &Server{}
	if err := s.Kill(); err == nil {
		t.Error("Kill of a DATABASE_URL server succeeded")
	}
	if err := s.Restart(context.Background()); err == nil {
		t.Error("Restart of a DATABASE_URL server succeeded")
	}
	if !s.Running() {
		t.Error("a DATABASE_URL server reports not running")
	}
}

const childEnv = "PGBOOT_TEST_WATCHDOG_CHILD"

// TestWatchdogAfterRestart: a process starts a private cluster, crashes and
// restarts it, and then dies by SIGKILL without stopping it. The watchdog must
// stop the *restarted* postmaster (the newest pid it was told) and remove the
// cluster's files.
func TestWatchdogAfterRestart(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		watchdogChild()
		return
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWatchdogAfterRestart$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var dir string
	var firstPid, pid int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "CLUSTER %s %d %d", &dir, &firstPid, &pid); err == nil {
			break
		}
	}
	_ = cmd.Wait() // the child SIGKILLs itself
	if dir == "" || pid == 0 {
		t.Fatal("the child did not report its cluster")
	}
	if pid == firstPid {
		t.Fatalf("the child's restart kept pid %d", pid)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, statErr := os.Stat(dir)
		if !alive(pid) && os.IsNotExist(statErr) {
			return
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = os.RemoveAll(dir)
			t.Fatalf("60 s after its owner died: restarted postmaster %d alive %v, directory %s present %v",
				pid, alive(pid), dir, statErr == nil)
		}
		time.Sleep(50 * time.Millisecond) // polls another process's cleanup, bounded by deadline
	}
}

// watchdogChild is the child of TestWatchdogAfterRestart: it starts a
// cluster, kills and restarts it, reports it, and dies without cleaning up.
func watchdogChild() {
	ctx := context.Background()
	s, err := Start(ctx, Options{Private: true, MaxConnections: 10})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	first := s.proc.Process.Pid
	if err := s.Kill(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := s.Restart(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("CLUSTER %s %s %d\n", s.Dir(), strconv.Itoa(first), s.proc.Process.Pid)
	_ = os.Stdout.Sync()
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL arrives
}
