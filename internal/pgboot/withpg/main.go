// Command withpg runs a command with DATABASE_URL pointing at a PostgreSQL
// server: the one already named by DATABASE_URL, or a private throwaway cluster
// that lives exactly as long as the command (see internal/pgboot).
//
//	go run ./internal/pgboot/withpg -- go test ./...
//
// `make test` uses it so that every test package shares one private cluster
// (each test still gets its own database) instead of starting one each.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"gongji/internal/pgboot"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, "usage: withpg [--] COMMAND [ARGS...]\n\nRuns COMMAND with DATABASE_URL set: the existing DATABASE_URL if set, else a private\nPostgreSQL cluster started for the command and removed when it ends.")
		os.Exit(2)
	}
	os.Exit(run(args))
}

func run(args []string) int {
	// The child receives Ctrl-C from the terminal itself; we only wait for it
	// to finish and then clean up.
	signal.Ignore(syscall.SIGINT)
	sigterm := make(chan os.Signal, 1)
	signal.Notify(sigterm, syscall.SIGTERM, syscall.SIGHUP)

	srv, err := pgboot.Start(context.Background(), pgboot.Options{Logf: func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, f+"\n", a...)
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Stop()

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), pgboot.EnvURL+"="+srv.AdminURL())
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case s := <-sigterm:
		_ = cmd.Process.Signal(s)
		err = <-done
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
