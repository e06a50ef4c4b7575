// Package pgboot gives the demo, the tests, e2e and the benchmarks a PostgreSQL
// server with no set-up by hand.
//
// When DATABASE_URL is set, that server is used and nothing is started. Otherwise
// a private throwaway cluster is created from the machine's PostgreSQL binaries
// (pg_config --bindir, then /usr/lib/postgresql/*/bin; when none are found and
// the process runs as root they are installed with apt-get, non-interactively):
//
//   - PostgreSQL refuses to run as root, so as root the cluster runs as the
//     unprivileged user "postgres" when it exists, else "nobody";
//   - it listens on 127.0.0.1 on a free port and on a socket in its own
//     temporary directory, so concurrent runs never collide;
//   - a watchdog process holds the read end of a pipe whose write end only this
//     process holds: when this process ends in any way (return, panic, Ctrl-C,
//     SIGKILL) the pipe closes and the watchdog stops the server and removes its
//     files. No postgres process or temporary directory of ours outlives us.
//
// Fault tests need a server they may kill: Options.Private starts a private
// cluster even when DATABASE_URL is set (the shared server of a `make test` run
// must not be killed under other packages' tests), and Kill and Restart crash
// it and bring it back on the same port and data directory.
package pgboot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL is the environment variable naming an existing server to use.
const EnvURL = "DATABASE_URL"

// Options tune a private cluster. The zero value suits tests.
type Options struct {
	// Durable keeps fsync on. Tests leave it off: they kill our processes, not the
	// machine, and a write() that returned is in the page cache either way.
	Durable bool
	// MaxConnections defaults to 600: the demo runs 33 servers with pools.
	MaxConnections int
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
	// Private starts a private cluster even when DATABASE_URL is set. Fault
	// tests use it: they Kill and Restart their server, which must never be
	// the one other tests share.
	Private bool
}

// Server is a running PostgreSQL server, private or given by DATABASE_URL.
type Server struct {
	adminURL *url.URL // connects to the "postgres" database as a superuser
	owned    bool

	dir      string
	bin      string              // PostgreSQL binaries
	cred     *syscall.Credential // the account the cluster runs as (nil: ourselves)
	args     []string            // postgres arguments without -p; Restart reuses them
	port     int                 // fixed for the cluster's life: URLs handed out name it
	watchdog *os.File            // write end of the watchdog pipe
	stopOnce sync.Once
	logf     func(string, ...any)

	mu      sync.Mutex    // guards proc, exited and stopped against Kill/Restart/Stop
	proc    *exec.Cmd     // the current postmaster
	exited  chan struct{} // closed when proc has been waited for
	stopped bool          // Stop ran: Restart refuses
}

// Start returns a server: DATABASE_URL when set, else a new private cluster.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.MaxConnections == 0 {
		opts.MaxConnections = 600
	}
	if raw := os.Getenv(EnvURL); raw != "" && !opts.Private {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("pgboot: %s is not a URL: %w", EnvURL, err)
		}
		s := &Server{adminURL: u}
		if err := s.ping(ctx); err != nil {
			return nil, fmt.Errorf("pgboot: %s: %w", EnvURL, err)
		}
		return s, nil
	}
	return startPrivate(ctx, opts)
}

// Owned reports whether this process started the server (and will stop it).
func (s *Server) Owned() bool { return s.owned }

// AdminURL is a connection URL for the server's maintenance database.
func (s *Server) AdminURL() string { return s.adminURL.String() }

// URL returns a connection URL for database name on this server.
func (s *Server) URL(name string) string {
	u := *s.adminURL
	u.Path = "/" + name
	return u.String()
}

// Dir is the private cluster's directory ("" for DATABASE_URL).
func (s *Server) Dir() string { return s.dir }

// CreateDatabase creates database name (optionally from a template).
func (s *Server) CreateDatabase(ctx context.Context, name, template string) error {
	q := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		q += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	return s.exec(ctx, q)
}

// DropDatabase drops database name, disconnecting its sessions.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	return s.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

func (s *Server) exec(ctx context.Context, q string) error {
	conn, err := pgx.Connect(ctx, s.AdminURL())
	if err != nil {
		return fmt.Errorf("pgboot: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, q); err != nil {
		return fmt.Errorf("pgboot: %s: %w", q, err)
	}
	return nil
}

func (s *Server) ping(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.AdminURL())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(ctx)
}

// Stop shuts a private cluster down and removes its files; for DATABASE_URL it
// does nothing. Safe to call more than once.
func (s *Server) Stop() error {
	if !s.owned {
		return nil
	}
	var err error
	s.stopOnce.Do(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stopped = true
		_ = s.proc.Process.Signal(syscall.SIGINT) // fast shutdown (a no-op after Kill)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			crash(s.proc.Process.Pid, s.exited)
		}
		err = os.RemoveAll(s.dir)
		_ = s.watchdog.Close() // the watchdog finds nothing left to do
	})
	return err
}

// Kill stops a private cluster abruptly, as a crash would: SIGKILL to the
// postmaster and every backend at once (crash), so transactions in flight are
// lost and clients see their connections reset. It leaves the files, so that
// Restart can bring the cluster back (with crash recovery). Kill returns once
// the postmaster and its children have exited (at most 15 s), so that a
// Restart does not find the old shared memory still in use.
// Killing a killed server does nothing. Errors: a server given by
// DATABASE_URL, or one already stopped.
func (s *Server) Kill() error {
	if !s.owned {
		return errors.New("pgboot: cannot kill a server given by DATABASE_URL")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pgboot: kill: the server was stopped")
	}
	crash(s.proc.Process.Pid, s.exited)
	return nil
}

// Running reports whether the postmaster is up (false after Kill until
// Restart, and after Stop). A server given by DATABASE_URL counts as running.
func (s *Server) Running() bool {
	if !s.owned {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.exited:
		return false
	default:
		return !s.stopped
	}
}

// restartAttemptsMax bounds Restart's attempts while the port is taken by
// another process or the old cluster's shared memory is still attached.
const restartAttemptsMax = 20

// Restart starts a killed private cluster again, on the same port, data
// directory and settings, so every URL handed out stays valid; PostgreSQL
// replays its WAL first (crash recovery), and Restart returns once the server
// accepts connections. The watchdog is told the new postmaster's pid, so it
// still stops the cluster when this process ends. Restarting a running
// server does nothing.
//
// Errors: a server given by DATABASE_URL or already stopped; the port held
// by another process or the start failing for restartAttemptsMax attempts
// (PostgreSQL's log is quoted); ctx ending.
func (s *Server) Restart(ctx context.Context) error {
	if !s.owned {
		return errors.New("pgboot: cannot restart a server given by DATABASE_URL")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pgboot: restart: the server was stopped")
	}
	select {
	case <-s.exited:
	default:
		return nil // still running
	}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		log, err := s.launch(ctx, true)
		if err == nil {
			s.logf("pgboot: PostgreSQL restarted on %s (attempt %d)", s.adminURL.Host, attempt)
			return nil
		}
		// Another process may have bound the port while we were down, or a
		// dying backend may still hold the old shared memory: both pass.
		transient := strings.Contains(log, "could not bind") || strings.Contains(log, "already in use") ||
			strings.Contains(log, "still in use")
		if !transient || attempt >= restartAttemptsMax {
			return fmt.Errorf("pgboot: restart on port %d: %w\n%s", s.port, err, lastLines(log, 20))
		}
		s.logf("pgboot: restart attempt %d on port %d failed, retrying: %s", attempt, s.port, lastLines(log, 2))
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgboot: restart: %w", ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// crash SIGKILLs postmaster pm and all its children and waits (at most 15 s)
// until they are gone; exited closes when pm has been waited for. Every
// PostgreSQL child calls setsid(), so a signal to the postmaster's process
// group reaches the postmaster alone: the children are found by parent pid
// while the postmaster is stopped (SIGSTOP, so that it forks no more), and
// each is killed with its own group. A child left alive would keep the old
// shared memory attached and make the next start fail.
func crash(pm int, exited <-chan struct{}) {
	select {
	case <-exited:
		return // already gone: its pid may belong to another process by now
	default:
	}
	_ = syscall.Kill(pm, syscall.SIGSTOP)
	kids := childrenOf(pm)
	for _, k := range kids {
		_ = syscall.Kill(-k, syscall.SIGKILL)
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	_ = syscall.Kill(-pm, syscall.SIGKILL)
	_ = syscall.Kill(pm, syscall.SIGKILL)
	<-exited
	deadline := time.Now().Add(15 * time.Second)
	for anyAlive(kids) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polls the kernel's process table, bounded by deadline
	}
}

// procStat returns the state and the parent pid of process pid from
// /proc/<pid>/stat; ok is false when it does not exist (or /proc cannot be
// read).
func procStat(pid int) (state string, ppid int, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", 0, false
	}
	// pid (comm) state ppid ...; comm may contain spaces and ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return f[0], ppid, true
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	st, _, ok := procStat(pid)
	return ok && st != "Z" && st != "X"
}

func anyAlive(pids []int) bool {
	for _, p := range pids {
		if alive(p) {
			return true
		}
	}
	return false
}

// childrenOf lists the live processes whose parent is ppid (none where /proc
// cannot be read: then Restart's retries cover the children's slower exit).
func childrenOf(ppid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, pp, ok := procStat(pid); ok && pp == ppid && st != "Z" && st != "X" {
			out = append(out, pid)
		}
	}
	return out
}

// FindBinDir locates the PostgreSQL server binaries.
func FindBinDir() (string, error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if isFile(filepath.Join(d, "postgres")) && isFile(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		d := filepath.Dir(m)
		if isFile(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	for _, d := range []string{"/usr/local/pgsql/bin", "/usr/local/bin", "/usr/bin"} {
		if isFile(filepath.Join(d, "postgres")) && isFile(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	return "", errors.New("pgboot: no PostgreSQL server binaries (initdb, postgres) found")
}

func versionOf(p string) int {
	// /usr/lib/postgresql/15/bin/postgres
	parts := strings.Split(p, string(filepath.Separator))
	for i, s := range parts {
		if s == "postgresql" && i+1 < len(parts) {
			n, _ := strconv.Atoi(parts[i+1])
			return n
		}
	}
	return 0
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// installLock serialises apt-get between concurrent runs on one machine.
const installLock = "/tmp/gongji-pg-install.lock"

func install(ctx context.Context, logf func(string, ...any)) error {
	if os.Geteuid() != 0 {
		return errors.New("pgboot: PostgreSQL is not installed and this process is not root: install the 'postgresql' package or set DATABASE_URL")
	}
	f, err := os.OpenFile(installLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("pgboot: install lock: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("pgboot: install lock: %w", err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if _, err := FindBinDir(); err == nil {
		return nil // another run installed it while we waited
	}
	logf("pgboot: PostgreSQL not found; installing it with apt-get (once per machine)")
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{
		{"apt-get", "update", "-q"},
		{"apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql", "postgresql-contrib"},
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("pgboot: %s: %w\n%s", strings.Join(args, " "), err, lastLines(string(out), 20))
		}
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runAs picks the account the cluster runs as: ourselves unless we are root.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("pgboot: running as root and neither user 'postgres' nor 'nobody' exists")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startPrivate(ctx context.Context, opts Options) (*Server, error) {
	bin, err := FindBinDir()
	if err != nil {
		if ierr := install(ctx, opts.Logf); ierr != nil {
			return nil, ierr
		}
		if bin, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	cred, err := runAs()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "gongji-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgboot: temp dir: %w", err)
	}
	s := &Server{owned: true, dir: dir, exited: make(chan struct{})}
	// The watchdog starts first, so that even a failure half way through start-up
	// leaves nothing behind when this process ends.
	if err := s.startWatchdog(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	fail := func(err error) (*Server, error) {
		if s.proc != nil && s.proc.Process != nil {
			crash(s.proc.Process.Pid, s.exited)
		}
		_ = os.RemoveAll(dir)
		_ = s.watchdog.Close()
		return nil, err
	}
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fail(fmt.Errorf("pgboot: %w", err))
		}
	}
	if cred != nil {
		for _, d := range []string{dir, data, sock} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return fail(fmt.Errorf("pgboot: chown %s: %w", d, err))
			}
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("pgboot: initdb: %w\n%s", err, lastLines(string(out), 20)))
	}
	fsync := "off"
	if opts.Durable {
		fsync = "on"
	}
	settings := []string{
		"listen_addresses=127.0.0.1",
		"unix_socket_directories=" + sock,
		"max_connections=" + strconv.Itoa(opts.MaxConnections),
		"shared_buffers=256MB",
		"work_mem=32MB",
		"maintenance_work_mem=256MB",
		"fsync=" + fsync,
		"full_page_writes=" + fsync,
		"synchronous_commit=on", // a commit we acknowledged survives a kill of the server
		"wal_level=minimal",
		"max_wal_senders=0",
		"max_wal_size=4GB",
		"checkpoint_timeout=30min",
		"max_locks_per_transaction=256",
		"timezone=UTC",
		"log_min_messages=warning",
		"logging_collector=off",
		"max_parallel_workers_per_gather=2",
		"jit=off",
	}
	s.bin, s.cred, s.logf = bin, cred, opts.Logf
	s.args = []string{"-D", data}
	for _, kv := range settings {
		s.args = append(s.args, "-c", kv)
	}
	for attempt := 0; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			return fail(fmt.Errorf("pgboot: free port: %w", err))
		}
		s.adminURL = &url.URL{Scheme: "postgres", User: url.User("postgres"), Host: "127.0.0.1:" + strconv.Itoa(s.port), Path: "/postgres", RawQuery: "sslmode=disable"}
		log, err := s.launch(ctx, false)
		if err == nil {
			opts.Logf("pgboot: private PostgreSQL (%s) on %s, files in %s", bin, s.adminURL.Host, dir)
			return s, nil
		}
		if attempt < 4 && strings.Contains(log, "could not bind") {
			continue // port taken between our probe and postgres' bind: try another
		}
		return fail(fmt.Errorf("%w\n%s", err, lastLines(log, 20)))
	}
}

// launch starts the postmaster on s.port with s.args, tells the watchdog its
// pid and waits until it accepts connections. appendLog keeps the earlier
// log (a restart); otherwise it starts a new one. On failure the postmaster
// has exited and the log's text is returned for the caller to judge.
func (s *Server) launch(ctx context.Context, appendLog bool) (log string, err error) {
	logPath := filepath.Join(s.dir, "postgres.log")
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if appendLog {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	logFile, err := os.OpenFile(logPath, flags, 0o644)
	if err != nil {
		return "", fmt.Errorf("pgboot: %w", err)
	}
	var offset int64
	if st, err := logFile.Stat(); err == nil {
		offset = st.Size()
	}
	args := append(append([]string{}, s.args...), "-p", strconv.Itoa(s.port))
	proc := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	proc.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true}
	proc.Stdout, proc.Stderr = logFile, logFile
	proc.Dir = s.dir
	if err := proc.Start(); err != nil {
		logFile.Close()
		return "", fmt.Errorf("pgboot: start postgres: %w", err)
	}
	s.proc = proc
	exited := make(chan struct{})
	s.exited = exited
	go func() { _ = proc.Wait(); logFile.Close(); close(exited) }()
	if err := s.notifyWatchdog(); err != nil {
		crash(proc.Process.Pid, exited)
		return "", err
	}
	if err := s.waitReady(ctx); err != nil {
		crash(proc.Process.Pid, exited)
		b, _ := os.ReadFile(logPath)
		if int64(len(b)) >= offset {
			b = b[offset:]
		}
		return string(b), fmt.Errorf("pgboot: postgres did not start: %w", err)
	}
	return "", nil
}

func (s *Server) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	backoff := 10 * time.Millisecond
	for {
		select {
		case <-s.exited:
			return errors.New("postgres exited during start-up")
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		if backoff < 200*time.Millisecond {
			backoff *= 2
		}
	}
}

// watchdogScript waits for EOF on stdin (our death or Stop), then kills the
// postgres process group it was told about and removes the cluster directory.
// Each line written to it is the pid of the current postmaster; the last counts.
const watchdogScript = `
pid=
while read -r line; do pid=$line; done
if [ -n "$pid" ]; then
  kill -INT -"$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL -"$pid" 2>/dev/null
fi
rm -rf "$1"
`

func (s *Server) startWatchdog() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pgboot: watchdog pipe: %w", err)
	}
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "gongji-pg-watchdog", s.dir)
	cmd.Stdin = r
	// Its own process group: a Ctrl-C to our group must not kill the watchdog
	// before it has cleaned up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("pgboot: start watchdog: %w", err)
	}
	r.Close()
	go func() { _ = cmd.Wait() }()
	s.watchdog = w
	return nil
}

func (s *Server) notifyWatchdog() error {
	if _, err := fmt.Fprintf(s.watchdog, "%d\n", s.proc.Process.Pid); err != nil {
		return fmt.Errorf("pgboot: watchdog: %w", err)
	}
	return nil
}
