package clearingdb

// WithStepHook exposes withStepHook to the external tests (crash and cancel
// at a named step of ClosePeriod, SettlePeriod and ResolveDispute).
var WithStepHook = withStepHook
