package provincedb

import "context"

// SetBeforeCommit installs a hook that runs after a transaction's work and
// before its commit (tests use it to hold a transaction open). Set it before
// the store is used concurrently.
func SetBeforeCommit(s *Store, f func(ctx context.Context, op string)) { s.beforeCommit = f }
