package verify_test

import (
	"testing"

	"gongji/audit/verify"
	"gongji/config"
)

const exampleDir = "../testdata/example-bundle"

func TestExampleBundleVerifies(t *testing.T) {
	t.Parallel()
	if err := verify.Verify(exampleDir); err != nil {
		t.Fatal(err)
	}
}

// TestDefaultThresholdMatchesConfig keeps the verifier's default in step with
// the project's one place for defaults.
func TestDefaultThresholdMatchesConfig(t *testing.T) {
	t.Parallel()
	if verify.DefaultWarningThreshold != config.PrepayWarningThreshold {
		t.Fatalf("verify default %s, config %s", verify.DefaultWarningThreshold, config.PrepayWarningThreshold)
	}
}
