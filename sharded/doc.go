// Package sharded spreads one dbcache cache over several PostgreSQL
// servers, as memcached clients and Rails' Solid Cache spread theirs: each
// key lives on one server, picked by a consistent hash of the servers'
// names, and each server is an ordinary dbcache table with its own culler.
// So every statement and guarantee of one server still holds per key.
//
// # Setup
//
// Migrate each server as for a single cache, then name the servers:
//
//	cache, err := sharded.New(ctx, []sharded.Shard{
//		{Name: "a", Pool: poolA},
//		{Name: "b", Pool: poolB},
//		{Name: "c", DSN: "postgres://cache-c.internal/app"},
//	}, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: "myapp", FailOpen: true}})
//
// A shard is a pool (the cache is built over it with Config.Cache), a DSN
// (a pool the sharded cache owns) or a *dbcache.Cache the application
// built (for a culler's OnWrite or a Tracer of its own per shard). Every
// process must list the same names: the names, not the addresses or the
// order, place the keys, so a server can move to another host without
// moving a key, and adding or removing one moves only the keys it wins or
// held (1/(N+1) or 1/N of them). The figures behind the choice of
// rendezvous hashing are in docs/scale-out.md. New refuses one cache table
// under two names (the same host, port, database and schema, or the same
// table as the server reports it once a shard opens), naming both shards:
// each key would have two homes. Shards given as a *dbcache.Cache are not
// compared.
//
// # The API
//
// *Cache implements dbcache.Store, the API of a single cache, and every
// optional capability of a single cache that several servers can give
// (dbcache.TTLReader, KeyLister, Versioner, KeyMaker, Loader, Leaser and
// CompareAndSwapper, each served by the key's shard or, for Keys and
// DeletePrefix, by every shard), so the typed layer, metrics and the CLI work over it unchanged
// and storetest's suite passes on it; not the snapshot-carrying read,
// since a snapshot belongs to one server. WithVersion is Django's version
// argument as on a single cache. The shard is picked from
// the key prefix and the caller's key, never the version, so both versions
// of IncrVersion are on one server and it stays one statement; two caches
// with different key prefixes over the same servers spread independently.
// What only one server can do (WithTx, a culler, table statistics) is done
// on Shard(ctx, name), the shard's own *dbcache.Cache; ShardOf(key) names
// the shard of a key.
//
// # Operations over several shards
//
// GetMany, SetMany and DeleteMany split their keys by shard and run each
// shard's part as one statement, all parts at once, and merge the results.
// SetMany is all or nothing per shard: a failed shard's keys (only those)
// come back as failed, with its *ShardError, while the other shards' parts
// are stored. DeletePrefix and Clear run on every shard at once; a shard
// that fails is reported in the joined error and the others go on. Keys
// merges the shards' sorted, paged streams. A key refused as invalid fails
// the call before any shard is written.
//
// # A shard down
//
// A shard whose server is stopped or unreachable fails its keys' operations
// within its OpTimeout (connection refused fails at once), or, with
// FailOpen, turns them into misses and skipped writes, while the other
// shards serve as before: the shards share no pool, lock or goroutine. Its
// keys are never placed on another server meanwhile, so a server that comes
// back never serves a value that was overwritten elsewhere while it was
// away. A shard whose server is down at New does not fail New (unless the
// failure is not transient, such as a missing table or a wrong password):
// it is opened on first use after it answers, tried at most every
// Config.RetryEvery.
//
// # Errors
//
// A failure of a shard's server is a *ShardError naming the shard and
// wrapping the shard cache's error, so errors.Is and dbcache.IsTransient
// see through it; several shards' failures are joined with errors.Join.
// Results that are not failures (dbcache.ErrMiss, ErrNotInteger,
// ErrOverflow, ErrInvalidKey, a loader's error) come back as a single
// cache returns them.
package sharded
