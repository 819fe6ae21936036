package nearcache_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/memstore"
	"github.com/dbcache/dbcache/nearcache"
	"github.com/dbcache/dbcache/storetest"
)

// The near cache passes the conformance suite, each subtest on a table of
// its own with a feed of its own. Its copies expire by the local clock
// from the database's remaining lifetime, so the suite cannot age entries
// in the table for it: its expiry subtests run on short real timeouts,
// which the copies and the table pass alike. It is not parallel with the
// package's other tests: its subtests start a feed each, and the load of
// dozens of slot creations beside the tests that measure the staleness
// bound would measure the machine rather than the layer.
func TestConformance(t *testing.T) {
	var mu sync.Mutex
	envs := map[dbcache.Store]*env{}
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) dbcache.Store {
			e := newEnv(t, nil)
			near := e.proc(t, nil).near
			mu.Lock()
			envs[near] = e
			mu.Unlock()
			return near
		},
		Sharing: func(t *testing.T, s dbcache.Store) dbcache.Store {
			mu.Lock()
			e := envs[s]
			mu.Unlock()
			return e.proc(t, nil).near
		},
	})
}

// By dbcache's rule for layers, the near cache requires of its store
// every capability it has itself, and says which one a store lacks,
// rather than have a method that would fail for want of it.
func TestNewRequiresCapabilities(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, nil)
	pool := e.pool(t)
	mem, err := memstore.New(nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = mem.Close() })
	_, err = nearcache.New(ctx, coreOnly{mem}, pool, nil)
	require.ErrorContains(t, err, "dbcache.KeyMaker")
	_, err = nearcache.New(ctx, coreOnly{mem}, pool, &nearcache.Config{MakeKey: mem.MakeKey})
	require.ErrorContains(t, err, "dbcache.SnapshotReader")
	p := e.proc(t, nil)
	_, err = nearcache.New(ctx, snapshotsOnly{p.cache, p.cache}, pool, &nearcache.Config{MakeKey: p.cache.MakeKey})
	require.ErrorContains(t, err, "is not a dbcache.TTLReader")
	var s dbcache.Store = p.near
	for name, ok := range map[string]bool{
		"TTLReader": is[dbcache.TTLReader](s), "KeyLister": is[dbcache.KeyLister](s),
		"Versioner": is[dbcache.Versioner](s), "Loader": is[dbcache.Loader](s),
		"CompareAndSwapper": is[dbcache.CompareAndSwapper](s),
	} {
		require.True(t, ok, name)
	}
	require.False(t, is[dbcache.KeyMaker](s), "the layer makes keys as its store does, but does not validate them: not a KeyMaker")
}

// coreOnly is a store with the core's methods and nothing more.
type coreOnly struct{ dbcache.Store }

// snapshotsOnly is a store with the core's methods and the
// snapshot-carrying read, and no other capability.
type snapshotsOnly struct {
	dbcache.Store
	dbcache.SnapshotReader
}

func is[C any](s dbcache.Store) bool {
	_, ok := s.(C)
	return ok
}
