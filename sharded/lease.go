package sharded

import (
	"context"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// Leases are on the key's shard, as its entry is: one single-key
// statement on that shard's server (see dbcache.Leaser). They never fail
// open, on a shard that could not be opened either: a lease the caller
// did not get must not read as one it got.

// onShardStrict runs one operation on key's shard with no fail-open: a
// shard that cannot be had is the error.
func onShardStrict[T any](ctx context.Context, c *Cache, key string, run func(*dbcache.Cache) (T, error)) (T, error) {
	var zero T
	if err := c.checkOpen(); err != nil {
		return zero, err
	}
	x := c.shardFor(key)
	sc, err := c.cache(ctx, x)
	if err != nil {
		return zero, c.fail(x, err, nil)
	}
	v, err := run(sc)
	return v, c.fail(x, err, nil)
}

// AcquireLease takes key's lease on its shard for ttl unless a live lease
// holds it.
func (c *Cache) AcquireLease(ctx context.Context, key string, ttl time.Duration) (dbcache.Lease, error) {
	return onShardStrict(ctx, c, key, func(sc *dbcache.Cache) (dbcache.Lease, error) {
		return sc.AcquireLease(ctx, key, ttl)
	})
}

// ExtendLease gives the live lease held with token a new ttl from now.
func (c *Cache) ExtendLease(ctx context.Context, key string, token dbcache.LeaseToken, ttl time.Duration) (bool, error) {
	return onShardStrict(ctx, c, key, func(sc *dbcache.Cache) (bool, error) {
		return sc.ExtendLease(ctx, key, token, ttl)
	})
}

// ReleaseLease ends the lease held with token and reports whether it was
// still live.
func (c *Cache) ReleaseLease(ctx context.Context, key string, token dbcache.LeaseToken) (bool, error) {
	return onShardStrict(ctx, c, key, func(sc *dbcache.Cache) (bool, error) {
		return sc.ReleaseLease(ctx, key, token)
	})
}
