package nearcache

import (
	"context"
	"fmt"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// capabilities are what the layer needs of its store beyond the core
// Store. The layer has these methods itself (a read from a copy, a write
// that drops one), so by dbcache's rule for layers it requires each of
// the store at New rather than have a method that would fail for want of
// it. A *dbcache.Cache has them all.
type capabilities struct {
	ttl      dbcache.TTLReader
	lister   dbcache.KeyLister
	versions dbcache.Versioner
	loader   dbcache.Loader
	leaser   dbcache.Leaser
	cas      dbcache.CompareAndSwapper
}

var (
	_ dbcache.Store     = (*Cache)(nil)
	_ dbcache.TTLReader = (*Cache)(nil)
	_ dbcache.KeyLister = (*Cache)(nil)
	_ dbcache.Versioner = (*Cache)(nil)
	_ dbcache.Loader    = (*Cache)(nil)
	_ dbcache.Leaser    = (*Cache)(nil)

	_ dbcache.CompareAndSwapper = (*Cache)(nil)
)

// capabilitiesOf returns store's capabilities, or an error naming the
// first it lacks.
func capabilitiesOf(store dbcache.Store) (capabilities, error) {
	var c capabilities
	var ok [6]bool
	c.ttl, ok[0] = store.(dbcache.TTLReader)
	c.lister, ok[1] = store.(dbcache.KeyLister)
	c.versions, ok[2] = store.(dbcache.Versioner)
	c.loader, ok[3] = store.(dbcache.Loader)
	c.leaser, ok[4] = store.(dbcache.Leaser)
	c.cas, ok[5] = store.(dbcache.CompareAndSwapper)
	for i, name := range []string{"dbcache.TTLReader", "dbcache.KeyLister", "dbcache.Versioner", "dbcache.Loader", "dbcache.Leaser", "dbcache.CompareAndSwapper"} {
		if !ok[i] {
			return capabilities{}, fmt.Errorf("nearcache: the store (%T) is not a %s, which the near cache serves through it; put the near cache in front of a *dbcache.Cache", store, name)
		}
	}
	return c, nil
}

// AcquireLease is the store's: leases are never kept in memory, and no
// feed carries them (the publication covers the cache table alone).
func (c *Cache) AcquireLease(ctx context.Context, key string, ttl time.Duration) (dbcache.Lease, error) {
	return c.caps.leaser.AcquireLease(ctx, key, ttl)
}

// ExtendLease is the store's.
func (c *Cache) ExtendLease(ctx context.Context, key string, token dbcache.LeaseToken, ttl time.Duration) (bool, error) {
	return c.caps.leaser.ExtendLease(ctx, key, token, ttl)
}

// ReleaseLease is the store's.
func (c *Cache) ReleaseLease(ctx context.Context, key string, token dbcache.LeaseToken) (bool, error) {
	return c.caps.leaser.ReleaseLease(ctx, key, token)
}
