// Package lock is locks with owners and fencing tokens in the PostgreSQL a
// dbcache cache runs on: what an application keeps a Redis for besides
// caching, without Redlock's flaw (a holder that paused past its lease
// cannot know it lost the lock, and storage cannot tell its writes from
// the next holder's).
//
//	locks, err := lock.New(ctx, pool, nil) // the schema migrated through migration 10
//	l, err := locks.Acquire(ctx, "nightly-report", 30*time.Second)
//	if err != nil { … }                  // lock.ErrLocked joined with ctx.Err() when ctx ends first
//	defer l.Release(ctx)
//	err = store.Write(ctx, l.Fence(), …) // storage refuses a fence below the greatest it has seen
//
// # Leases
//
// A lock is a lease of dbcache's (dbcache.Leaser, the table
// dbcache_leases of migration 8, the same mechanism GetOrSetFunc's loaders
// use), under keys of its own (Config.KeyPrefix). A lease ends when its
// owner releases it or when it has lasted its length by the database's
// clock, whatever happened to the owner: a process killed or paused while
// it holds a lock holds it for at most the rest of its lease. TryAcquire
// tries once; Acquire waits, bounded by its context, and sends at most
// 1/Config.PollMin statements per second while it waits. Refresh extends a
// lease only while its owner still holds it; Release frees it only for its
// owner; both return ErrNotHeld otherwise, and change nothing. Owner is
// the owner token, from which Restore rebuilds the Lock in another
// process. ForceRelease frees a lock whoever holds it, for operators.
//
// # Fencing tokens
//
// Each grant of a name gets a fencing token (Lock.Fence) one greater than
// the name's previous grant, kept in a table of its own (migration 10)
// that releases, the culler and Clear never touch. A grant is the lease,
// then, in a statement that locks the lease row this owner holds, the
// fence: a later acquire cannot take the lease over until the fence has
// committed, and a lease that ended before the fence statement gets no
// fence, so fences strictly increase in the order of grants. The fence
// statement commits with synchronous_commit on whatever the cache's
// FastCommit, so a fence a caller was told is on disk and a crash never
// issues it twice. The leases table is UNLOGGED: a server crash frees
// every lock early (PostgreSQL empties an unlogged table), which the
// fences make safe: the next grant's fence is still greater than every
// fence issued before the crash.
// On Citus (Config.Citus) the fence step, and Restore, are each one READ
// COMMITTED transaction of routed single-key statements that holds the
// same row lock from the lease's read to the commit (docs/locks.md).
//
// # In the same database
//
// Where the data the lock protects lives in the same PostgreSQL,
// Lock.Check(ctx, tx) verifies inside the caller's transaction that the
// owner holds the lock, and locks the lease's row until the transaction
// ends, so no other owner is granted the lock before the transaction's
// writes commit or roll back: stronger than fencing, with nothing for the
// storage to compare.
//
// # Observability
//
// Client.Stats counts grants, waits, refusals (attempts that found the
// lock held), expiries (a Refresh, Release or Check that found the lock
// lost) and forced releases; prommetrics.Collector.WatchLocks exports
// them. Nothing is logged with a lock name.
//
// docs/locks.md has the guarantees step by step, and the figures.
package lock
