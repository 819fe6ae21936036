// Package nearcache is an opt-in in-process layer in front of a dbcache
// Store: it keeps copies of the entries it reads in the application's
// memory and serves later reads from them, with PostgreSQL as the source
// of truth, which tells every process when its copies change. It is what
// Redis's server-assisted client-side caching (RESP3 tracking, as rueidis
// uses it) is to Redis, with the database as the server.
//
// # Setup
//
// The feed reads the cache table by logical decoding, so the server needs
// wal_level = logical, the feed's role the REPLICATION attribute (or
// superuser; on a managed server, the provider's replication role), and
// the table a publication, created once by Setup (a role that owns the
// table):
//
//	err := nearcache.Setup(ctx, pool, nil)                 // once: CREATE PUBLICATION … FOR TABLE dbcache_entries (key)
//	cache, err := dbcache.New(ctx, pool, nil)
//	near, err := nearcache.New(ctx, cache, pool, nil)      // a dbcache.Store
//	defer near.Close()
//	users, err := typed.New[User](near, nil)               // typed values over it, as over any Store
//
// New refuses what cannot feed a near cache, with one clear error:
// ErrUnsupported (wal_level is not logical, an UNLOGGED table, whose writes
// logical decoding never sees, a server before PostgreSQL 14),
// ErrNoPublication, ErrNoReplication (the feed's role may not replicate),
// a store that does not return its reads' snapshots
// (dbcache.SnapshotReader), or the server's refusal of a replication
// connection, naming the setting that ran out (53300: max_wal_senders;
// 53400: max_replication_slots).
//
// # What is served from memory
//
// Get, GetWithTTL, HasKey, GetMany, GetOrSet, GetOrSetFunc and
// GetOrRevalidate (while the copy is fresh) are answered from a copy when
// one is held (a hit), else by the store, and Get, GetWithTTL and GetMany
// keep a copy of what they read when the checks below allow. Every write
// through the layer is the store's, after which the written keys' copies
// are dropped (a Set keeps the value it wrote, unless another write of the
// key through the layer was in flight), so a process reads its own writes
// at once: with no other writer, its next read of a key after its writes
// of it have returned is what the database holds, whatever their
// interleaving. TTL and Keys are the store's. The near cache is a
// dbcache.Store with the capabilities it serves through its store
// (TTLReader, KeyLister, Versioner, Loader, Leaser, CompareAndSwapper),
// which New requires of it; it passes storetest's suite.
//
// GetWithToken is served from a copy that carries the entry's token (a
// copy GetWithToken filled; it keeps one as Get does), else by the store.
// CompareAndSwap and CompareAndDelete are the store's, writes of the key
// through the layer: the database decides each, so a copy's token that is
// older than the entry's makes a swap return false, never succeed, and the
// write drops the copy, so the next GetWithToken reads the store.
//
// A copy never outlives its entry: it is read with its remaining lifetime
// by the database's clock and expires that long after the read began, by
// the local monotonic clock, so an offset between the application's and
// the database's clocks cannot extend it. Misses are not kept.
//
// # Coherence
//
// Each process's feed is a temporary logical replication slot (pgoutput,
// the publication's key column): every committed insert, update, delete
// and truncate of the table reaches every process, in commit order, once
// its WAL is flushed, whoever wrote it (dbcache, the culler, an operator's
// SQL), with its transaction's id. Writes in a caller's transaction (WithTx
// on the store) reach it when they commit, and rolled-back ones never.
//
// A commit is flushed, and so delivered, before it is visible to other
// sessions (for the whole wait of a synchronous standby), so a read can
// fetch the old value after the feed announced the new one. A copy is
// therefore kept only if the statement that read it provably saw every
// change the feed has announced for its key: the read returns its
// statement's snapshot (dbcache.SnapshotReader), and the copy is kept only
// if the transaction of the key's newest announced change had ended in it;
// otherwise the caller gets the value and nothing is kept
// (Stats.FillsUnseen). A TRUNCATE, a change whose key the feed cannot read
// and the transactions running when a feed session starts must have ended
// in the snapshot of any fill that keeps a copy. docs/nearcache.md says
// why this is correct, step by step.
//
// The staleness bound: every HeartbeatInterval the layer commits a logical
// message into the WAL (one statement on the pool) and waits for it on the
// feed; when it arrives, every write that returned before it was sent has
// been delivered. Copies are served only while the newest heartbeat to
// arrive was sent within MaxStaleness (1 s by default); otherwise reads go
// to the store. So a read through the layer sees every write that returned
// more than MaxStaleness before it began, with durable or FastCommit
// writes, with a synchronous standby slow to confirm, and while the feed
// lags (a Set queued by write-behind, below, returns before it commits:
// add WriteBehind.MaxDelay). A read joins another's store read only if that read began within
// MaxStaleness before it and no read or write of the key through the
// process has ended since. Lost feeds (the connection closed or silent for
// FeedTimeout, the server restarted, the slot dropped, the publication
// dropped, the table replaced or made unlogged) drop every copy at once;
// reads go to the store until the feed is back, which it retries by itself.
//
// # Write-behind
//
// By default a Set through the layer returns once committed.
// Config.WriteBehind queues Sets in the process instead, and one flusher
// commits the queue in batches with the store's SetMany: a Set returns
// once queued, and this process reads it from the queue at once; another
// process sees it within MaxStaleness + WriteBehind.MaxDelay; every other
// write (Add, Incr, CompareAndSwap, Delete, Touch, ...) waits for the
// queued writes of its keys to be committed, then is sent; a full queue
// makes writers wait; a batch not committed within MaxDelay is given up
// (Stats.WritesLost, the Tracer, the Logger, no key), its values no longer
// served; Close commits the queue. A crash may lose the writes that
// returned in the last MaxDelay. docs/nearcache.md, "Write-behind", says
// why, step by step.
//
// # Memory
//
// Copies are bounded by MaxBytes (64 MiB by default), counting keys,
// values and a fixed per-entry overhead; values over MaxEntryBytes are
// not copied. Eviction is W-TinyLFU (github.com/maypok86/otter), which
// keeps more of a skewed workload's hot keys than an LRU does. The
// transaction ids the feed remembers are forgotten once a heartbeat's
// snapshot shows them ended, so they follow the keys changed in the last
// heartbeat interval, not the key space.
//
// # Metrics
//
// Stats returns the layer's counters (hits, misses, hit ratio, fills,
// fills refused and those refused by the visibility check, invalidations,
// flushes, the feed's state and restarts, recovered panics, entries,
// bytes, the current staleness); Config.Tracer sees each read's hits and
// misses, each invalidation and the feed's state changes, for a metrics
// library to count. No key reaches the Tracer or the Logger unless
// Config.TraceKeys is set. The store's own dbcache.Tracer still sees every
// operation that reaches the database.
package nearcache
