package replicas_test

import (
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/replicas"
	"github.com/dbcache/dbcache/storetest"
)

// The router passes the conformance suite over the shared primary and
// standby, each subtest in a schema of its own; ageing entries updates
// the primary's table and waits until the standby has replayed it.
func TestConformance(t *testing.T) {
	t.Parallel()
	primary, standby := shared(t)
	type pools struct{ p, s *pgxpool.Pool }
	var mu sync.Mutex
	of := map[dbcache.Store]pools{}
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) dbcache.Store {
			schema := newSchema(t, primary)
			pp := pools{p: poolOn(t, primary.URL(""), schema), s: poolOn(t, standby.URL(""), schema)}
			// The standby's Cache checks its table at New: wait for the
			// schema to be replayed there first.
			caughtUp(t, ctxT(t), pp.p, pp.s)
			c, err := replicas.New(ctxT(t), pp.p, []*pgxpool.Pool{pp.s}, &replicas.Config{RefreshInterval: 10 * time.Millisecond})
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			mu.Lock()
			of[c] = pp
			mu.Unlock()
			return c
		},
		Age: func(t *testing.T, s dbcache.Store, d time.Duration) {
			mu.Lock()
			pp := of[s]
			mu.Unlock()
			dbtest.Exec(t, pp.p, `UPDATE dbcache_entries SET expires = expires - $1::bigint * interval '1 microsecond' WHERE expires IS NOT NULL`, d.Microseconds())
			caughtUp(t, ctxT(t), pp.p, pp.s)
		},
		WithVersion: func(s dbcache.Store, v int) dbcache.Store {
			view := s.(*replicas.Cache).WithVersion(v)
			mu.Lock()
			of[view] = of[s]
			mu.Unlock()
			return view
		},
	})
}
