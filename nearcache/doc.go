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
// superuser), and the table a publication, created once by Setup (a role
// that owns the table):
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
// ErrNoPublication, or the server's refusal of a replication connection.
//
// # What is served from memory
//
// Get, GetWithTTL, HasKey, GetOrSet, GetOrSetFunc and GetOrRevalidate (a
// fresh copy only) are answered from a copy when one is held (a hit), else
// by the store, and Get and GetWithTTL
// (and GetMany for a single missing key) keep a copy of what they read.
// GetMany serves the keys it holds and reads the rest in one query. Every
// write through the layer is the store's, after which the written keys'
// copies are dropped, so a process reads its own writes at once; TTL and
// Keys are the store's. The near cache is a dbcache.Store with the
// capabilities it serves through its store (TTLReader, KeyLister,
// Versioner, Loader), which New requires of it; it passes storetest's
// suite.
//
// A copy never outlives its entry: it is read with its remaining lifetime
// by the database's clock (Store.GetWithTTL) and expires that long after
// the read began, by the local monotonic clock, so an offset between the
// application's and the database's clocks cannot extend it. Misses are not
// kept.
//
// # Coherence
//
// Each process's feed is a temporary logical replication slot (pgoutput,
// the publication's key column): every committed insert, update, delete
// and truncate of the table reaches every process, in commit order, once
// its WAL is flushed, whoever wrote it (dbcache, the culler, an operator's
// SQL). Writes in a caller's transaction (WithTx on the store) reach it
// when they commit, and rolled-back ones never. Dropping a copy on a
// change races with a read that fetched the old value before it: a read
// registers before it goes to the store, and a change's invalidation turns
// it away, so such a read keeps no copy.
//
// The staleness bound is proven, not assumed: every HeartbeatInterval the
// layer commits a logical message into the WAL (one statement on the pool)
// and waits for it on the feed; when it arrives, every write that returned
// before it was sent has been applied. Copies are served only while the
// newest heartbeat to arrive was sent within MaxStaleness (1 s by
// default); otherwise reads go to the store. So a read through the layer
// sees every write that returned more than MaxStaleness before it began,
// on a loaded machine, with FastCommit writes (which the feed sees only
// once the WAL writer or a heartbeat flushes them), and while the feed
// lags. Lost feeds (the connection closed or silent for FeedTimeout, the
// server restarted, the slot dropped, the publication dropped, the table
// replaced or made unlogged) drop every copy at once; reads go to the store
// until the feed is back, which it retries by itself.
//
// # Memory
//
// Copies are bounded by MaxBytes (64 MiB by default), counting keys,
// values and a fixed per-entry overhead; values over MaxEntryBytes are
// never copied. Eviction is W-TinyLFU (github.com/maypok86/otter), which
// keeps more of a skewed workload's hot keys than an LRU does.
//
// # Metrics
//
// Stats returns the layer's counters (hits, misses, hit ratio, fills,
// invalidations, flushes, the feed's state and restarts, entries, bytes,
// the current staleness); Config.Tracer sees each read's hits and misses,
// each invalidation and the feed's state changes, for a metrics library to
// count. The store's own dbcache.Tracer still sees every operation that
// reaches the database.
package nearcache
