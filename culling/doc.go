// Package culling keeps a dbcache table bounded: it removes expired entries
// and, when the table holds more than Config.MaxEntries, culls it back under
// the limit, off the write path. Writes to the cache do no culling work.
//
// The full model (eviction order, cost, the overshoot bound, stopping, the
// state table) is in docs/culling.md.
//
// # In the application
//
// Build a Culler over the cache's pool, wire the cache's write hook to it,
// start it, and stop it on shutdown:
//
//	culler, err := culling.New(pool, &culling.Config{MaxEntries: 100_000})
//	if err != nil { … }
//	cache, err := dbcache.New(ctx, pool, &dbcache.Config{OnWrite: culler.NoteWrites})
//	if err := culler.Start(ctx); err != nil { … } // ErrTableNotFound, ErrNoPrivilege
//	defer culler.Stop(context.Background())
//
// Start checks at once that the cache table is there and that the role may
// cull it. A started Culler runs a pass at once, then every
// Config.Interval, and as soon as Config.NudgeEvery rows have been written
// since the last pass began counting, so a burst of writes cannot grow the
// table far past the limit between ticks. [Culler.Health] reports its state
// for a health check without touching the database. [Culler.Stop] returns
// once the pass in progress has ended and released its lock.
//
// # As a job
//
// RunOnce runs one pass and returns a [PassResult]; Config.OnProgress
// reports each batch, for a progress bar. DryRun reports what a pass would
// remove, and removes nothing:
//
//	res, err := culler.RunOnce(ctx)
//	fmt.Printf("removed %d expired, culled %d, %d left\n", res.ExpiredRemoved, res.Culled, res.Remaining)
//
// [LastPass] reads what the last pass did, from any process. With
// Config.MaxEntries set to [NoLimit] a pass only removes expired entries.
//
// # Size and age
//
// Config.MaxBytes bounds the entries' size (keys and values as stored, plus
// [RowOverhead] each), estimated without a scan ([EstimateSize]); over it, a
// pass culls in eviction order until the estimate is back under it.
// Config.MaxAge removes every entry written longer ago, whatever its
// timeout (migrations 004 and 005).
//
// # One culler at a time
//
// Any number of Cullers in any number of processes may run over one table.
// Each pass takes a PostgreSQL advisory lock first; a pass that finds it
// held returns at once with PassResult.Skipped. The lock belongs to an open
// transaction on its own connection, so it ends with that transaction: a
// culler that fails or dies mid-pass loses the lock and nothing else, as the
// batches it committed stay committed. Every statement runs at READ
// COMMITTED, whatever the session's default isolation level. Each batch
// checks, in its own statement, that the lock transaction still holds the
// lock, by the transaction's ID as the server reports it, so a Culler runs
// behind PgBouncer in transaction pooling; a pass whose lock is gone stops
// with ErrLockLost.
//
// # Writers
//
// Batches read their rows without locking them and delete each by its
// key, re-checking in the DELETE that it is still due, so a row a writer
// rewrites during a pass is judged by what the writer committed: rewritten
// with a later expiry, it has moved to the end of eviction order and
// stays. A row a writer holds for longer than 50 ms is stepped over and
// left for the next pass. See docs/culling.md.
//
// # Citus
//
// On a cache table distributed by Citus the culler runs statement forms
// Citus accepts: pages read without a lock, then each key deleted by a
// statement routed to its worker, in key order, re-checking that it is
// still due; and estimates read from the shards. Config.Citus chooses, as
// dbcache.Config.Citus does for the cache; [Culler.UsesCitus] says which
// forms are in use. See docs/culling.md#citus.
//
// # Hooks and logs
//
// A Config.OnProgress that panics fails its pass with ErrHookPanicked, and
// a Config.Logger whose handler panics loses its line: neither reaches the
// goroutine of a started Culler. The culler logs counts, durations and
// errors, and no key or value.
//
// # Order and semantics
//
// Expired rows go first. Then, if the table holds more than MaxEntries rows,
// a pass removes max(count/CullFrequency, count-MaxEntries) of them (all of
// them with CullAll), soonest to expire first, entries with one expiry in
// key order, and never-expiring entries last. With one timeout for every
// entry that order is FIFO; Django removes the lexicographically smallest
// keys instead. Before it removes a live entry a pass confirms, with a walk
// of the index back from the end of eviction order, that the table is over
// the limit, and it never goes below the limit, whatever PostgreSQL's row
// estimate says. Each batch resumes where the previous one stopped, so a
// pass costs what it removes even while another transaction holds an old
// snapshot.
package culling
