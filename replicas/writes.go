package replicas

import (
	"context"
	"time"

	"github.com/dbcache/dbcache/dbcache"
)

// Every write, and every read that may write (GetOrSet, the loaders),
// runs on the primary and then records its end (wrote), so that this
// process's later reads see it: a standby serves them only once it has
// replayed a primary position sampled after that end. A write that fails
// is recorded too, since it may have committed.

// Set stores value under key on the primary.
func (c *Cache) Set(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) error {
	defer c.wrote()
	return c.primary.Set(ctx, key, value, timeout)
}

// SetMany stores every item on the primary, all or nothing.
func (c *Cache) SetMany(ctx context.Context, items map[string][]byte, timeout dbcache.Timeout) ([]string, error) {
	defer c.wrote()
	return c.primary.SetMany(ctx, items, timeout)
}

// Add stores value on the primary only if key has no live entry there.
func (c *Cache) Add(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) (bool, error) {
	defer c.wrote()
	return c.primary.Add(ctx, key, value, timeout)
}

// GetOrSet runs on the primary: its read decides its write.
func (c *Cache) GetOrSet(ctx context.Context, key string, value []byte, timeout dbcache.Timeout) ([]byte, error) {
	defer c.wrote()
	return c.primary.GetOrSet(ctx, key, value, timeout)
}

// Touch gives a live entry a new expiry, on the primary.
func (c *Cache) Touch(ctx context.Context, key string, timeout dbcache.Timeout) (bool, error) {
	defer c.wrote()
	return c.primary.Touch(ctx, key, timeout)
}

// Incr adds delta to the integer under key, on the primary.
func (c *Cache) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	defer c.wrote()
	return c.primary.Incr(ctx, key, delta)
}

// Decr subtracts delta from the integer under key, on the primary.
func (c *Cache) Decr(ctx context.Context, key string, delta int64) (int64, error) {
	defer c.wrote()
	return c.primary.Decr(ctx, key, delta)
}

// Delete removes key on the primary.
func (c *Cache) Delete(ctx context.Context, key string) (bool, error) {
	defer c.wrote()
	return c.primary.Delete(ctx, key)
}

// DeleteMany removes keys on the primary.
func (c *Cache) DeleteMany(ctx context.Context, keys []string) (int, error) {
	defer c.wrote()
	return c.primary.DeleteMany(ctx, keys)
}

// Clear removes every entry, on the primary.
func (c *Cache) Clear(ctx context.Context) error {
	defer c.wrote()
	return c.primary.Clear(ctx)
}

// DeletePrefix removes the entries of a caller key prefix, on the primary.
func (c *Cache) DeletePrefix(ctx context.Context, prefix string) (int, error) {
	defer c.wrote()
	return c.primary.DeletePrefix(ctx, prefix)
}

// IncrVersion moves key's entry to version + delta, on the primary.
func (c *Cache) IncrVersion(ctx context.Context, key string, delta int) (int, error) {
	defer c.wrote()
	return c.primary.IncrVersion(ctx, key, delta)
}

// DecrVersion moves key's entry to version - delta, on the primary.
func (c *Cache) DecrVersion(ctx context.Context, key string, delta int) (int, error) {
	defer c.wrote()
	return c.primary.DecrVersion(ctx, key, delta)
}

// GetOrSetFunc is the primary's read-through load (dbcache.Cache's
// GetOrSetFunc, with its stampede protection, which needs the primary's
// locks).
func (c *Cache) GetOrSetFunc(ctx context.Context, key string, load dbcache.LoadFunc, timeout dbcache.Timeout) ([]byte, error) {
	defer c.wrote()
	return c.primary.GetOrSetFunc(ctx, key, load, timeout)
}

// GetOrRevalidate is the primary's GetOrRevalidate.
func (c *Cache) GetOrRevalidate(ctx context.Context, key string, load dbcache.LoadFunc, fresh, stale time.Duration) ([]byte, error) {
	defer c.wrote()
	return c.primary.GetOrRevalidate(ctx, key, load, fresh, stale)
}

// MakeKey returns the stored key of key, as the primary's cache makes it.
func (c *Cache) MakeKey(key string) string { return c.primary.MakeKey(key) }

// ValidateKey checks a made key as every operation does.
func (c *Cache) ValidateKey(ctx context.Context, madeKey string) error {
	return c.primary.ValidateKey(ctx, madeKey)
}

var (
	_ dbcache.Store     = (*Cache)(nil)
	_ dbcache.TTLReader = (*Cache)(nil)
	_ dbcache.KeyLister = (*Cache)(nil)
	_ dbcache.Versioner = (*Cache)(nil)
	_ dbcache.KeyMaker  = (*Cache)(nil)
	_ dbcache.Loader    = (*Cache)(nil)
)
