package sharded

import (
	"context"

	"github.com/dbcache/dbcache/dbcache"
)

// The single-key operations: each runs on the key's shard alone, as that
// shard's cache runs it (one statement, its OpTimeout, its FailOpen, its
// Tracer). On a shard that could not be opened they fail at once with the
// reason, or, with the shard's FailOpen and a transient reason, return
// what its cache returns when it fails open.

// Get returns the value stored under key, or dbcache.ErrMiss.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpGet, err) {
			return nil, dbcache.ErrMiss
		}
		return nil, c.fail(x, err, nil)
	}
	v, err := sc.Get(ctx, key)
	return v, c.fail(x, err, nil)
}

// GetWithTTL is Get that also returns the entry's remaining lifetime.
func (c *Cache) GetWithTTL(ctx context.Context, key string) ([]byte, dbcache.Timeout, error) {
	if err := c.checkOpen(); err != nil {
		return nil, dbcache.Timeout{}, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpGet, err) {
			return nil, dbcache.Timeout{}, dbcache.ErrMiss
		}
		return nil, dbcache.Timeout{}, c.fail(x, err, nil)
	}
	v, t, err := sc.GetWithTTL(ctx, key)
	return v, t, c.fail(x, err, nil)
}

// TTL returns the remaining lifetime of key's live entry, or
// dbcache.ErrMiss.
func (c *Cache) TTL(ctx context.Context, key string) (dbcache.Timeout, error) {
	if err := c.checkOpen(); err != nil {
		return dbcache.Timeout{}, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpTTL, err) {
			return dbcache.Timeout{}, dbcache.ErrMiss
		}
		return dbcache.Timeout{}, c.fail(x, err, nil)
	}
	t, err := sc.TTL(ctx, key)
	return t, c.fail(x, err, nil)
}

// HasKey reports whether key has a live entry.
func (c *Cache) HasKey(ctx context.Context, key string) (bool, error) {
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpHasKey, err) {
			return false, nil
		}
		return false, c.fail(x, err, nil)
	}
	ok, err := sc.HasKey(ctx, key)
	return ok, c.fail(x, err, nil)
}

// Set stores value under key on its shard.
func (c *Cache) Set(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpSet, err) {
			return nil
		}
		return c.fail(x, err, nil)
	}
	return c.fail(x, sc.Set(ctx, key, value, timeout), nil)
}

// Add stores value under key only if the key has no live entry; exactly
// one of any number of concurrent Adds of a key returns true.
func (c *Cache) Add(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) (bool, error) {
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpAdd, err) {
			return false, nil
		}
		return false, c.fail(x, err, nil)
	}
	ok, err := sc.Add(ctx, key, value, timeout)
	return ok, c.fail(x, err, nil)
}

// Touch gives key's live entry a new expiry and reports whether there was
// one.
func (c *Cache) Touch(ctx context.Context, key string, timeout dbcache.Timeout) (bool, error) {
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpTouch, err) {
			return false, nil
		}
		return false, c.fail(x, err, nil)
	}
	ok, err := sc.Touch(ctx, key, timeout)
	return ok, c.fail(x, err, nil)
}

// GetOrSet returns the value stored under key, storing value first on a
// miss; every racing caller returns the first stored value.
func (c *Cache) GetOrSet(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) ([]byte, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpGetOrSet, err) {
			return value, nil
		}
		return nil, c.fail(x, err, nil)
	}
	v, err := sc.GetOrSet(ctx, key, value, timeout)
	return v, c.fail(x, err, nil)
}

// GetOrSetFunc is GetOrSet with a loader, with the shard cache's stampede
// protection: the loader of a missing key runs once across the goroutines
// of this process and, through an advisory lock on the key's server, once
// across processes.
func (c *Cache) GetOrSetFunc(ctx context.Context, key string, f func(context.Context) ([]byte, error), timeout dbcache.Timeout) ([]byte, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpGetOrSet, err) {
			return load(ctx, f)
		}
		return nil, c.fail(x, err, nil)
	}
	v, err := sc.GetOrSetFunc(ctx, key, f, timeout)
	return v, c.fail(x, err, nil)
}

// Incr adds delta to the integer stored under key, atomically.
func (c *Cache) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpIncr, err) {
			return 0, dbcache.ErrMiss
		}
		return 0, c.fail(x, err, nil)
	}
	n, err := sc.Incr(ctx, key, delta)
	return n, c.fail(x, err, nil)
}

// Decr subtracts delta from the integer stored under key, atomically.
func (c *Cache) Decr(ctx context.Context, key string, delta int64) (int64, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpDecr, err) {
			return 0, dbcache.ErrMiss
		}
		return 0, c.fail(x, err, nil)
	}
	n, err := sc.Decr(ctx, key, delta)
	return n, c.fail(x, err, nil)
}

// IncrVersion moves key's entry from the view's version to version + delta
// in one statement: both versions of a key are on one shard, since the
// shard is picked without the version.
func (c *Cache) IncrVersion(ctx context.Context, key string, delta int) (int, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpIncrVersion, err) {
			return 0, dbcache.ErrMiss
		}
		return 0, c.fail(x, err, nil)
	}
	v, err := sc.IncrVersion(ctx, key, delta)
	return v, c.fail(x, err, nil)
}

// DecrVersion moves key's entry to version - delta; see IncrVersion.
func (c *Cache) DecrVersion(ctx context.Context, key string, delta int) (int, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpDecrVersion, err) {
			return 0, dbcache.ErrMiss
		}
		return 0, c.fail(x, err, nil)
	}
	v, err := sc.DecrVersion(ctx, key, delta)
	return v, c.fail(x, err, nil)
}

// Delete removes key and reports whether a live entry was removed.
func (c *Cache) Delete(ctx context.Context, key string) (bool, error) {
	if err := c.checkOpen(); err != nil {
		return false, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		if c.degrade(ctx, x, dbcache.OpDelete, err) {
			return false, nil
		}
		return false, c.fail(x, err, nil)
	}
	ok, err := sc.Delete(ctx, key)
	return ok, c.fail(x, err, nil)
}
