// Package culling keeps a dbcache table bounded: it removes expired entries
// and, when the table holds more than Config.MaxEntries, culls it back under
// the limit, off the write path. Writes to the cache pay nothing for it.
//
// The full model (eviction order, cost, the overshoot bound, the state table)
// is in docs/culling.md.
//
// # In the application
//
// Build a Culler over the cache's pool, wire the cache's write hook to it,
// start it, and stop it on shutdown:
//
//	culler, err := culling.New(pool, &culling.Config{MaxEntries: 100_000})
//	if err != nil { … }
//	cache, err := dbcache.New(ctx, pool, &dbcache.Config{OnWrite: culler.NoteWrites})
//	if err := culler.Start(ctx); err != nil { … }
//	defer culler.Stop(context.Background())
//
// A started Culler runs a pass at once, then every Config.Interval, and as
// soon as Config.NudgeEvery rows have been written since the last pass
// began counting, so a burst of writes cannot grow the table far past the
// limit between ticks.
//
// # As a job
//
// RunOnce runs one pass and returns a [PassResult]; Config.OnProgress
// reports each batch, for a progress bar:
//
//	res, err := culler.RunOnce(ctx)
//	fmt.Printf("removed %d expired, culled %d, %d left\n", res.ExpiredRemoved, res.Culled, res.Remaining)
//
// [LastPass] reads what the last pass did, from any process.
//
// # One culler at a time
//
// Any number of Cullers in any number of processes may run over one table.
// Each pass takes a PostgreSQL advisory lock first; a pass that finds it
// held returns at once with PassResult.Skipped. The lock belongs to an open
// transaction on its own connection, so it ends with that transaction: a
// culler that fails or dies mid-pass loses the lock and nothing else, as the
// batches it committed stay committed.
//
// # Order and semantics
//
// Expired rows go first. Then, if the table holds more than MaxEntries rows,
// a pass removes max(count/CullFrequency, count-MaxEntries) of them (all of
// them with CullAll), soonest to expire first and never-expiring entries
// last. With one timeout for every entry that order is FIFO; Django removes
// the lexicographically smallest keys instead.
package culling
