package config_test

import (
	"testing"

	"github.com/shopspring/decimal"
	"github.com/spf13/cobra"

	"gongji/config"
	"gongji/prepay"
	"gongji/settlement"
	"gongji/sharing"
)

// TestDefaultsAgree keeps the one documented table of defaults (this package)
// and the domain packages' own defaults the same: the binaries' --help shows
// these, the domain falls back to its own.
func TestDefaultsAgree(t *testing.T) {
	if sharing.DefaultProposalTTL != config.ProposalExpiry {
		t.Errorf("proposal expiry: sharing %s, config %s", sharing.DefaultProposalTTL, config.ProposalExpiry)
	}
	if settlement.DefaultCutOffGrace != config.CutOffGrace || settlement.DefaultConfirmationWindow != config.ConfirmationWindow {
		t.Errorf("settlement defaults differ from config")
	}
	if !prepay.DefaultWarningThreshold.Equal(decimal.RequireFromString(config.PrepayWarningThreshold)) ||
		!prepay.DefaultMultiple.Equal(decimal.NewFromInt(config.PrepayMultiple)) ||
		prepay.DefaultTrailingMonths != config.PrepayTrailingMonths {
		t.Errorf("prepay defaults differ from config")
	}
}

func TestEnvName(t *testing.T) {
	if got := config.EnvName("database-url"); got != "GONGJI_DATABASE_URL" {
		t.Fatalf("EnvName = %s", got)
	}
}

// TestBindEnvSkipsOperands: configuration comes from GONGJI_* variables, but
// an operand (what a command acts on) never does, and the command line wins.
func TestBindEnvSkipsOperands(t *testing.T) {
	var dbURL, province, period string
	cmd := &cobra.Command{Use: "export"}
	cmd.Flags().StringVar(&dbURL, "database-url", "", "")
	cmd.Flags().StringVar(&province, "province", "", "")
	cmd.Flags().StringVar(&period, "period", "", "")
	config.Operands(cmd, "province", "period")
	t.Setenv("GONGJI_DATABASE_URL", "postgres://from-env")
	t.Setenv("GONGJI_PROVINCE", "410000")
	t.Setenv("GONGJI_PERIOD", "202610")
	if err := cmd.ParseFlags([]string{"--period", "202611"}); err != nil {
		t.Fatal(err)
	}
	if err := config.BindEnv(cmd); err != nil {
		t.Fatal(err)
	}
	if dbURL != "postgres://from-env" {
		t.Errorf("configuration flag not taken from the environment: %q", dbURL)
	}
	if province != "" {
		t.Errorf("operand --province taken from GONGJI_PROVINCE: %q", province)
	}
	if period != "202611" {
		t.Errorf("--period = %q, want the command line's 202611", period)
	}
	defer func() {
		if recover() == nil {
			t.Error("Operands on an unknown flag did not panic")
		}
	}()
	config.Operands(cmd, "no-such-flag")
}
