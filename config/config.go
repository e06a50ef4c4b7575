// Package config holds the defaults of every setting DESIGN §8 leaves to the
// project (one place, each with its reason) and the flag/environment binding
// both binaries use: every flag --some-name can also be set with the
// environment variable GONGJI_SOME_NAME; a flag given on the command line wins.
package config

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Defaults decided by the project (DESIGN §8). docs/architecture.md mirrors this list.
const (
	// ProposalExpiry: a relative has a week to consent to a proposal, as in the
	// provincial apps that pioneered family sharing; then it expires (R4).
	ProposalExpiry = 7 * 24 * time.Hour
	// CutOffGrace: records of month M arriving up to 5 days after its end still
	// count in M; the cross-province medical settlement timetable issues a month's
	// data early in the next month (R14).
	CutOffGrace = 5 * 24 * time.Hour
	// ConfirmationWindow: a province has 10 days after a statement is issued to
	// confirm or dispute it; silence is deemed confirmation (R17).
	ConfirmationWindow = 10 * 24 * time.Hour
	// PrepayMultiple: the deposit is re-sized to about two months of the
	// province's cross-province payable (DESIGN §10) ...
	PrepayMultiple = 2
	// PrepayTrailingMonths: ... averaged over the trailing three closed periods,
	// which smooths one unusual month without lagging a real trend for long.
	PrepayTrailingMonths = 3
	// PrepayWarningThreshold: a draw of 70 % or more of a deposit raises a warning
	// and an emergency top-up request, the commonly quoted figure (DESIGN §10).
	PrepayWarningThreshold = "0.70"
	// ProposalSweepInterval: how often a node expires unanswered proposals.
	ProposalSweepInterval = time.Minute
	// RPCTimeout: the deadline a node or the switch puts on each outgoing hop.
	RPCTimeout = 5 * time.Second
	// ShutdownGrace: in-flight calls get this long to finish on SIGTERM.
	ShutdownGrace = 10 * time.Second
)

// EnvName is the environment variable that can set a flag: GONGJI_ + the flag
// name upper-cased with '-' as '_'.
func EnvName(flag string) string {
	return "GONGJI_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// operandAnnotation marks a flag that Operands made an operand.
const operandAnnotation = "gongji_operand"

// Operands marks flags of cmd as operands: they name what an operator command
// acts on (a period, a province, an amount, an idempotency key, an output
// folder), so BindEnv never takes them from the environment. Configuration —
// where to connect, which certificates and keys, tuning — may come from the
// environment; a GONGJI_PROVINCE meant for a province node's serve must not
// silently scope `clearing export` to one province, nor a stray GONGJI_AMOUNT
// move money. Panics on a name cmd does not have (a programming error).
func Operands(cmd *cobra.Command, names ...string) {
	for _, n := range names {
		if err := cmd.Flags().SetAnnotation(n, operandAnnotation, []string{"true"}); err != nil {
			panic(fmt.Sprintf("config.Operands: %s: %v", cmd.CommandPath(), err))
		}
	}
}

// BindEnv applies GONGJI_* environment variables to every flag of cmd that was
// not given on the command line, except operands (see Operands). Call it from
// PersistentPreRunE.
func BindEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		if _, operand := f.Annotations[operandAnnotation]; operand {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := cmd.Flags().Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, e)
			}
		}
	})
	return err
}

// EnvHelp is appended to each command's long help.
const EnvHelp = "\nEvery configuration flag can also be set from the environment: --some-flag as GONGJI_SOME_FLAG\n" +
	"(the command line wins). Operands — what a command acts on: --period, --province, --amount, --key, --out,\n" +
	"--journal-head, --national — are taken from the command line only."
