package dbcache_test

import (
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/storetest"
)

// The PostgreSQL cache passes the conformance suite, each subtest on a
// schema of its own, its entries aged in the table (the database's clock
// still decides what expired). The suite's other path, short real
// timeouts polled, runs on memstore's real clock and on the near cache,
// which cannot be aged; here it would add half a minute to every run of
// this package (three per CI run) for what TestSubSecondTimeoutOnRealClock
// already shows of the database's clock.
func TestConformance(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	pools := map[dbcache.Store]*pgxpool.Pool{}
	newStore := func(t *testing.T) dbcache.Store {
		b := setup(t, nil)
		mu.Lock()
		pools[b.cache] = b.pool
		mu.Unlock()
		return b.cache
	}
	storetest.Run(t, storetest.Config{
		New: newStore,
		Age: func(t *testing.T, s dbcache.Store, d time.Duration) {
			mu.Lock()
			pool := pools[s]
			mu.Unlock()
			travel(t, pool, d)
		},
		WithVersion: func(s dbcache.Store, v int) dbcache.Store { return s.(*dbcache.Cache).WithVersion(v) },
		Sharing: func(t *testing.T, s dbcache.Store) dbcache.Store {
			mu.Lock()
			pool := pools[s]
			mu.Unlock()
			return setupOn(t, pool, nil).cache
		},
	})
}
