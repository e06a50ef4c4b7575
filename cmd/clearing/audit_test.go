package main

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"gongji/internal/auditlog"
)

// TestOperatorCommandsClassified walks the command tree: every runnable
// `clearing` command is in operatorCommands (changes the database or not),
// and every entry names a command, so a new command is classified for the
// audit trail when it is added.
func TestOperatorCommandsClassified(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && c.Name() != "help" && c.Name() != "completion" {
			seen[c.CommandPath()] = true
			if _, ok := operatorCommands[c.CommandPath()]; !ok {
				t.Errorf("command %q is not classified in operatorCommands", c.CommandPath())
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(rootCmd())
	for path := range operatorCommands {
		if !seen[path] {
			t.Errorf("operatorCommands names %q, which is not a command", path)
		}
	}
}

// TestOperatorCommandsAudited runs the operator commands in-process on a
// settled period: each command that changes the clearing database leaves
// one audit row (actor operator-cli:<os user>, the command path, the
// outcome, the --key or --period), a replay says so, a refused command is
// recorded with its error, and read-only commands leave none.
func TestOperatorCommandsAudited(t *testing.T) {
	t.Parallel()
	url, _ := cliPeriod(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	actor := operatorActor()
	if !strings.HasPrefix(actor, "operator-cli:") || actor == "operator-cli:" {
		t.Fatalf("actor %q", actor)
	}
	after := int64(0)
	for _, tc := range []struct {
		args  []string
		fails bool
		want  string // "method|outcome|ref" (an "error: " outcome is a prefix), "" for no row
	}{
		{args: []string{"prepay", "fund", "--province", "110000", "--amount", "10.00", "--key", "cli-f1"},
			want: "clearing prepay fund|ok|cli-f1"},
		{args: []string{"prepay", "fund", "--province", "110000", "--amount", "10.00", "--key", "cli-f1"},
			want: "clearing prepay fund|replayed|cli-f1"},
		{args: []string{"prepay", "fund", "--province", "440000", "--amount", "10.00", "--key", "cli-f1"}, fails: true,
			want: "clearing prepay fund|error: |cli-f1"},
		{args: []string{"prepay", "replenish", "--province", "410000", "--amount", "1.00", "--key", "cli-r1"},
			want: "clearing prepay replenish|ok|cli-r1"},
		{args: []string{"period", "close", "--period", "209912"}, fails: true, // no such period
			want: "clearing period close|error: |209912"},
		{args: []string{"period", "settle", "--period", "202607"},
			want: "clearing period settle|ok|202607"},
		{args: []string{"period", "status", "--period", "202607"}},
		{args: []string{"prepay", "status"}},
		{args: []string{"journal", "verify"}},
	} {
		_, err := cli(t, append(tc.args, "--database-url", url)...)
		if (err != nil) != tc.fails {
			t.Fatalf("%v: %v", tc.args, err)
		}
		rs, lerr := auditlog.List(context.Background(), pool, auditlog.Filter{AfterID: after})
		if lerr != nil {
			t.Fatal(lerr)
		}
		if tc.want == "" {
			if len(rs) != 0 {
				t.Errorf("%v wrote audit rows %+v", tc.args, rs)
			}
			continue
		}
		if len(rs) != 1 {
			t.Fatalf("%v: %d audit rows %+v, want 1", tc.args, len(rs), rs)
		}
		r := rs[0]
		after = r.ID
		want := strings.Split(tc.want, "|")
		if r.Actor != actor || r.Method != want[0] || !strings.HasPrefix(r.Outcome, want[1]) || r.Ref != want[2] ||
			(want[1] == "ok" && r.Outcome != "ok") || r.RequestID == "" {
			t.Errorf("%v: row %+v, want %s by %s", tc.args, r, tc.want, actor)
		}
	}
}
