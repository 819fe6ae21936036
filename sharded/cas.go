package sharded

import (
	"context"

	"github.com/dbcache/dbcache/dbcache"
)

// Compare-and-swap on the key's shard: a token is its shard's, and every
// one of these operations runs there, one statement as on a single cache,
// so its guarantees hold per key.

var _ dbcache.CompareAndSwapper = (*Cache)(nil)

// GetWithToken is Get that also returns the entry's token, from the key's
// shard.
func (c *Cache) GetWithToken(ctx context.Context, key string) ([]byte, dbcache.Token, error) {
	type entry struct {
		v   []byte
		tok dbcache.Token
	}
	e, err := onShard(ctx, c, key, dbcache.OpGetWithToken, missed[entry], func(sc *dbcache.Cache) (entry, error) {
		v, tok, err := sc.GetWithToken(ctx, key)
		return entry{v, tok}, err
	})
	return e.v, e.tok, err
}

// CompareAndSwap stores value under key on its shard only if the entry
// there still has token (see dbcache.Cache.CompareAndSwap).
func (c *Cache) CompareAndSwap(ctx context.Context, key string, token dbcache.Token, value []byte, timeout dbcache.Timeout) (bool, error) {
	return onShard(ctx, c, key, dbcache.OpCompareAndSwap, absent[bool], func(sc *dbcache.Cache) (bool, error) {
		return sc.CompareAndSwap(ctx, key, token, value, timeout)
	})
}

// CompareAndDelete removes key's entry on its shard only if it still has
// token (see dbcache.Cache.CompareAndDelete).
func (c *Cache) CompareAndDelete(ctx context.Context, key string, token dbcache.Token) (bool, error) {
	return onShard(ctx, c, key, dbcache.OpCompareAndDelete, absent[bool], func(sc *dbcache.Cache) (bool, error) {
		return sc.CompareAndDelete(ctx, key, token)
	})
}
