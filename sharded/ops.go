package sharded

import (
	"context"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// The single-key operations: each runs on the key's shard alone, as that
// shard's cache runs it (one statement, its OpTimeout, its FailOpen, its
// Tracer). On a shard that could not be opened they fail at once with the
// reason, or, with the shard's FailOpen and a transient reason, return
// what its cache returns when it fails open.

// onShard runs one single-key operation on key's shard: run on the
// shard's cache, its error marked with the shard's name. When the shard's
// cache cannot be had, a transient reason under the shard's FailOpen gives
// failedOpen's answer (what the shard's cache gives when it fails open);
// any other reason is the error.
func onShard[T any](ctx context.Context, c *Cache, key, op string, failedOpen func() (T, error), run func(*dbcache.Cache) (T, error)) (T, error) {
	var zero T
	if err := c.checkOpen(); err != nil {
		return zero, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, op, err) {
			return failedOpen()
		}
		return zero, c.fail(x, err, nil)
	}
	v, err := run(sc)
	return v, c.fail(x, err, nil)
}

// What a failed-open operation gives: missed for one that returns a
// value (dbcache.ErrMiss), absent for one that reports whether an entry
// was there or was stored (false, and no error).
func missed[T any]() (T, error) {
	var zero T
	return zero, dbcache.ErrMiss
}

func absent[T any]() (T, error) {
	var zero T
	return zero, nil
}

// Get returns the value stored under key, or dbcache.ErrMiss.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	return onShard(ctx, c, key, dbcache.OpGet, missed[[]byte], func(sc *dbcache.Cache) ([]byte, error) {
		return sc.Get(ctx, key)
	})
}

// GetWithTTL is Get that also returns the entry's remaining lifetime.
func (c *Cache) GetWithTTL(ctx context.Context, key string) ([]byte, dbcache.Timeout, error) {
	type entry struct {
		v []byte
		t dbcache.Timeout
	}
	e, err := onShard(ctx, c, key, dbcache.OpGet, missed[entry], func(sc *dbcache.Cache) (entry, error) {
		v, t, err := sc.GetWithTTL(ctx, key)
		return entry{v, t}, err
	})
	return e.v, e.t, err
}

// TTL returns the remaining lifetime of key's live entry, or
// dbcache.ErrMiss.
func (c *Cache) TTL(ctx context.Context, key string) (dbcache.Timeout, error) {
	return onShard(ctx, c, key, dbcache.OpTTL, missed[dbcache.Timeout], func(sc *dbcache.Cache) (dbcache.Timeout, error) {
		return sc.TTL(ctx, key)
	})
}

// HasKey reports whether key has a live entry.
func (c *Cache) HasKey(ctx context.Context, key string) (bool, error) {
	return onShard(ctx, c, key, dbcache.OpHasKey, absent[bool], func(sc *dbcache.Cache) (bool, error) {
		return sc.HasKey(ctx, key)
	})
}

// Set stores value under key on its shard.
func (c *Cache) Set(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) error {
	_, err := onShard(ctx, c, key, dbcache.OpSet, absent[struct{}], func(sc *dbcache.Cache) (struct{}, error) {
		return struct{}{}, sc.Set(ctx, key, value, timeout)
	})
	return err
}

// Add stores value under key only if the key has no live entry; exactly
// one of any number of concurrent Adds of a key returns true.
func (c *Cache) Add(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) (bool, error) {
	return onShard(ctx, c, key, dbcache.OpAdd, absent[bool], func(sc *dbcache.Cache) (bool, error) {
		return sc.Add(ctx, key, value, timeout)
	})
}

// Touch gives key's live entry a new expiry and reports whether there was
// one.
func (c *Cache) Touch(ctx context.Context, key string, timeout dbcache.Timeout) (bool, error) {
	return onShard(ctx, c, key, dbcache.OpTouch, absent[bool], func(sc *dbcache.Cache) (bool, error) {
		return sc.Touch(ctx, key, timeout)
	})
}

// GetOrSet returns the value stored under key, storing value first on a
// miss; every racing caller returns the first stored value.
func (c *Cache) GetOrSet(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) ([]byte, error) {
	failedOpen := func() ([]byte, error) { return value, nil }
	return onShard(ctx, c, key, dbcache.OpGetOrSet, failedOpen, func(sc *dbcache.Cache) ([]byte, error) {
		return sc.GetOrSet(ctx, key, value, timeout)
	})
}

// GetOrSetFunc is GetOrSet with a loader, with the shard cache's stampede
// protection: the loader of a missing key runs once across the goroutines
// of this process and, through the key's lease on its shard, once across
// processes (see dbcache.Cache.GetOrSetFunc).
func (c *Cache) GetOrSetFunc(ctx context.Context, key string, f dbcache.LoadFunc, timeout dbcache.Timeout) ([]byte, error) {
	// Under FailOpen on a shard that could not be opened, the loader's
	// value is returned and nothing stored; its error or panic reads as
	// the shard cache's would.
	failedOpen := func() ([]byte, error) { return dbcache.RunLoader(ctx, f) }
	return onShard(ctx, c, key, dbcache.OpGetOrSet, failedOpen, func(sc *dbcache.Cache) ([]byte, error) {
		return sc.GetOrSetFunc(ctx, key, f, timeout)
	})
}

// GetOrRevalidate is GetOrSetFunc with stale-while-revalidate, as the
// shard's cache runs it (see dbcache.Cache.GetOrRevalidate): one
// background refresh of a stale entry across processes, on the key's
// server.
func (c *Cache) GetOrRevalidate(ctx context.Context, key string, f dbcache.LoadFunc, fresh, stale time.Duration) ([]byte, error) {
	failedOpen := func() ([]byte, error) { return dbcache.RunLoader(ctx, f) }
	return onShard(ctx, c, key, dbcache.OpGetOrSet, failedOpen, func(sc *dbcache.Cache) ([]byte, error) {
		return sc.GetOrRevalidate(ctx, key, f, fresh, stale)
	})
}

// Incr adds delta to the integer stored under key, atomically.
func (c *Cache) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	return onShard(ctx, c, key, dbcache.OpIncr, missed[int64], func(sc *dbcache.Cache) (int64, error) {
		return sc.Incr(ctx, key, delta)
	})
}

// Decr subtracts delta from the integer stored under key, atomically.
func (c *Cache) Decr(ctx context.Context, key string, delta int64) (int64, error) {
	return onShard(ctx, c, key, dbcache.OpDecr, missed[int64], func(sc *dbcache.Cache) (int64, error) {
		return sc.Decr(ctx, key, delta)
	})
}

// IncrVersion moves key's entry from the view's version to version + delta
// in one statement: both versions of a key are on one shard, since the
// shard is picked without the version.
func (c *Cache) IncrVersion(ctx context.Context, key string, delta int) (int, error) {
	return onShard(ctx, c, key, dbcache.OpIncrVersion, missed[int], func(sc *dbcache.Cache) (int, error) {
		return sc.IncrVersion(ctx, key, delta)
	})
}

// DecrVersion moves key's entry to version - delta; see IncrVersion.
func (c *Cache) DecrVersion(ctx context.Context, key string, delta int) (int, error) {
	return onShard(ctx, c, key, dbcache.OpDecrVersion, missed[int], func(sc *dbcache.Cache) (int, error) {
		return sc.DecrVersion(ctx, key, delta)
	})
}

// Delete removes key and reports whether a live entry was removed.
func (c *Cache) Delete(ctx context.Context, key string) (bool, error) {
	return onShard(ctx, c, key, dbcache.OpDelete, absent[bool], func(sc *dbcache.Cache) (bool, error) {
		return sc.Delete(ctx, key)
	})
}
