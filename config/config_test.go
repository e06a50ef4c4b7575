package config_test

import (
	"testing"

	"github.com/shopspring/decimal"

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
