package clearingdb

import "context"

// stepHookKey carries a test's step hook in a context.
type stepHookKey struct{}

// withStepHook returns ctx carrying fn, which ClosePeriod, SettlePeriod and
// ResolveDispute call at each named step inside their transactions (before the
// commit). A hook that returns an error (typically after cancelling the
// context) makes the step fail there, so tests can crash an operation at an
// exact point and check that a rerun gives the same figures. Production
// contexts carry no hook. The hook travels in the context, not in the Store,
// so parallel tests sharing nothing do not see each other's hooks.
func withStepHook(ctx context.Context, fn func(step string) error) context.Context {
	return context.WithValue(ctx, stepHookKey{}, fn)
}

// step runs the context's step hook, if any.
func step(ctx context.Context, name string) error {
	if fn, ok := ctx.Value(stepHookKey{}).(func(string) error); ok && fn != nil {
		return fn(name)
	}
	return nil
}
