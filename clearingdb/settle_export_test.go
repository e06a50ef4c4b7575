package clearingdb

// WithStepHook exposes withStepHook to the external tests (crash and cancel
// at a named step of ClosePeriod, SettlePeriod and ResolveDispute).
var WithStepHook = withStepHook

// WithCloseSplits exposes withCloseSplits: the close aggregates in n block
// ranges whatever the period's size.
var WithCloseSplits = withCloseSplits
