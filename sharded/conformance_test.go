package sharded_test

import (
	"sync"
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/sharded"
	"github.com/dbcache/dbcache/storetest"
)

// The sharded cache passes the conformance suite over three shards, each
// subtest on three schemas of its own, its entries aged in every shard's
// table; its bulk operations then span shards, and every key of a test
// lives on the shard the ring picks.
func TestConformance(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	envs := map[dbcache.Store]*env{}
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) dbcache.Store {
			e := abc(t)
			c := e.open(t, nil)
			mu.Lock()
			envs[c] = e
			mu.Unlock()
			return c
		},
		Age: func(t *testing.T, s dbcache.Store, d time.Duration) {
			mu.Lock()
			e := envs[s]
			mu.Unlock()
			for _, pool := range e.pools {
				dbtest.Exec(t, pool, `UPDATE dbcache_entries SET expires = expires - $1::bigint * interval '1 microsecond' WHERE expires IS NOT NULL`, d.Microseconds())
			}
		},
		WithVersion: func(s dbcache.Store, v int) dbcache.Store { return s.(*sharded.Cache).WithVersion(v) },
		Sharing: func(t *testing.T, s dbcache.Store) dbcache.Store {
			mu.Lock()
			e := envs[s]
			mu.Unlock()
			return e.open(t, nil)
		},
	})
}
