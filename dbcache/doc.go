// Package dbcache is a shared cache in the PostgreSQL an application already
// runs: Django's cache API (BaseCache) and semantics, minus the known bugs of
// Django's database backend, with every operation one atomic SQL statement.
//
// # Setup
//
// Apply the embedded migrations once (they create one table,
// dbcache_entries, in the connection's schema), then build a Cache over a
// pgx pool:
//
//	m, _ := migrations.New(pool, nil) // github.com/dbcache/dbcache/migrations
//	if err := m.Up(ctx); err != nil { … }
//	cache, err := dbcache.New(ctx, pool, &dbcache.Config{KeyPrefix: "myapp"})
//
// New never closes the caller's pool; Open(ctx, dsn, cfg) makes a pool the
// cache owns. A missing table is ErrNotMigrated. Close makes every later
// operation return ErrClosed.
//
// # Operations
//
// Each of Django's methods has a Go counterpart with the same meaning:
//
//	add          Cache.Add                 get_or_set  Cache.GetOrSet, Cache.GetOrSetFunc
//	get          Cache.Get (ErrMiss)       has_key     Cache.HasKey
//	set          Cache.Set                 incr, decr  Cache.Incr, Cache.Decr
//	touch        Cache.Touch               incr_version, decr_version
//	delete       Cache.Delete                          Cache.IncrVersion, Cache.DecrVersion
//	get_many     Cache.GetMany             clear       Cache.Clear
//	set_many     Cache.SetMany             close       Cache.Close
//	delete_many  Cache.DeleteMany          make_key, validate_key
//	                                                   Cache.MakeKey, Cache.ValidateKey
//
// Values are []byte, stored as bytea byte for byte. An empty value is a hit
// (Django's stored None); a miss is the sentinel ErrMiss, tested with
// errors.Is. Django's per-call version argument is a view:
// cache.WithVersion(2).Get(ctx, key).
//
// # The Store and its capabilities
//
// Store is the core every cache implements: Get, GetMany, HasKey, Set,
// SetMany, Add, GetOrSet, Touch, Incr, Decr, Delete, DeleteMany and Clear.
// Code that takes a Store works with a *Cache, the sharded cache (package
// sharded), the near cache (package nearcache) and the in-memory Store
// (package memstore), which unit tests use instead of PostgreSQL; package
// storetest is the conformance suite every one of them passes, and a
// user's own Store can run.
//
// What only some stores can do is an optional capability, a small
// interface found by type assertion, as pgx finds a BatchTracer on a
// QueryTracer:
//
//	TTLReader      GetWithTTL, TTL: an entry's remaining lifetime
//	KeyLister      Keys, DeletePrefix: the entries of a caller key prefix
//	Versioner      IncrVersion, DecrVersion
//	KeyMaker       MakeKey, ValidateKey: the stored form of a key
//	Loader         GetOrSetFunc, GetOrRevalidate: read-through loading
//	SnapshotReader GetWithSnapshot, GetManyWithSnapshot: reads with their
//	               statement's snapshot (one server's: the near cache's)
//	CompareAndSwapper
//	               GetWithToken, CompareAndSwap, CompareAndDelete: writes
//	               that succeed only if the entry is unchanged since a read
//	io.Closer      Close
//
//	if l, ok := store.(dbcache.KeyLister); ok {
//		n, err := l.DeletePrefix(ctx, "session:")
//	}
//
// *Cache has every one. A layer over another store keeps one rule, so that
// an assertion never lies: it has a capability's methods only if it serves
// the capability whatever store it wraps, implementing it itself or
// requiring it of the store it is given (with an error at construction
// naming what is missing), never with a method that fails for want of it;
// it embeds what it does not change rather than forwarding it by hand.
//
// Making and checking keys is public for stores of other kinds: KeyFunc
// and DefaultKeyFunc make them, KeyValidator refuses and warns as a Cache
// does, and KeyWarnings lists what memcached would object to.
//
// # Timeouts
//
// A Timeout is DefaultTimeout (the zero value: Config.DefaultTimeout, 300 s
// unless configured), Forever (Django's None) or ExpiresIn(d). ExpiresIn(d)
// with d <= 0 expires at once, as Django's 0 and negative timeouts do: Set
// stores nothing a Get can see, Add returns true when it would have stored,
// Touch expires a live entry. The database's clock decides expiry, never the
// application's, so application servers with skewed clocks agree. A Timeout
// is only an expiry; the reads of a remaining lifetime, Cache.TTL and
// Cache.GetWithTTL, return one, so what they read can be written back.
// Stale-while-revalidate is a way of reading, Cache.GetOrRevalidate.
//
// # Atomicity
//
// Add, Set, Touch, Incr, Decr, IncrVersion and each bulk operation are one
// statement, correct under any interleaving: of any number of concurrent
// Adds of a key exactly one returns true (an expired entry is taken over
// atomically); concurrent Incrs never lose an update; GetOrSet returns the
// first stored value to every racing caller. An expired entry is absent for
// every operation, and Touch never revives one. Of any number of
// concurrent CompareAndSwaps of a key with one token at most one returns
// true, and a token read before an entry was deleted and written again
// does not match the new entry (see Token). No statement relies on
// catching an error, so all of them are safe inside a caller's transaction:
// see WithTx.
//
// Every statement that locks several rows (SetMany, DeleteMany,
// IncrVersion, each batch of Clear) locks them in one order, the key
// column's byte order (COLLATE "C"), whatever the database's default
// collation, so dbcache's statements never deadlock one another. Writes on
// the pool run at READ COMMITTED whatever the session's default isolation
// level: when a role or database sets default_transaction_isolation to
// repeatable read or serializable, each write is sent as BEGIN ISOLATION
// LEVEL READ COMMITTED; statement; COMMIT in one round trip, so its
// documented result holds there too.
//
// # Time limits
//
// Every round trip is bounded: by the caller's context when it has a
// deadline, otherwise by Config.OpTimeout (5 s by default), so no operation
// hangs on a server that stops answering, even with context.Background().
//
// Incr and Decr work on values that are the decimal ASCII form of an int64,
// as Redis INCR reads them. A missing key is ErrMiss; any other value is
// ErrNotInteger and an int64 overflow is ErrOverflow, and in both cases the
// value is left unchanged. The entry keeps its expiry.
//
// # Keys
//
// Keys are made by Config.KeyFunc (Django's "prefix:version:key" by
// default) and then validated. A key PostgreSQL cannot store (a NUL byte,
// invalid UTF-8, more than MaxKeyBytes bytes) is ErrInvalidKey and nothing is
// written. A key memcached could not store (over 250 characters, spaces or
// control characters) is logged as a warning through log/slog, one line
// per problem as Django warns once per memcache_key_warnings message
// (quoting the key only with Config.LogKeys); Config.KeyCheck turns that
// into an error naming every problem, or off.
//
// # Configuration
//
// Every Config of dbcache and of its packages follows one rule: a field's
// zero value is its documented default (an exported XxxDefault constant
// where the default is a fixed number, as OpTimeoutDefault), -1 turns a
// feature off or lifts a bound where that means something (CoalesceGets,
// CoalesceSets, LoadPollRate, OpTimeout), and where every value of a field
// means something an explicit field says the zero value is meant:
// VersionZero for Django's VERSION = 0, which Version's zero value (the
// default, 1) cannot say.
//
// # Concurrency and async
//
// A Cache is safe for concurrent use by any number of goroutines, and every
// call that touches the database takes a context.Context first, for
// cancellation and deadlines. That is what Django's a-prefixed async variants
// (aget, aset, …) exist to give Python; in Go, call the same methods from as
// many goroutines as you like.
//
// # Expired rows and culling
//
// Reads never write: an expired row stays in the table, invisible, until it
// is overwritten or removed. The culling worker (package
// github.com/dbcache/dbcache/culling) sweeps expired rows and enforces a
// maximum number of entries; Config.OnWrite lets it be nudged by writes
// without this package importing it.
package dbcache
