package storetest_test

import (
	"sync"
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/memstore"
	"github.com/dbcache/dbcache/storetest"
)

// The suite's expiry tests poll the store, never sleep a fixed time: a
// store whose clock runs at a third of the machine's speed (as a store on
// a slow or loaded machine seems to) still passes, only more slowly.
func TestSlowClock(t *testing.T) {
	t.Parallel()
	start := time.Now()
	slow := func() time.Time { return start.Add(time.Since(start) / 3) }
	storetest.Run(t, storetest.Config{New: func(t *testing.T) dbcache.Store {
		s, err := memstore.New(&memstore.Config{Now: slow})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}})
}

// coreOnly is a store with the core's methods and nothing more.
type coreOnly struct{ dbcache.Store }

// The capabilities are found by type assertion: a store that has none of
// them passes the core's subtests, and the capabilities' are not run on it
// (a failing assertion would show as a failed subtest). What it is asked
// is what a dbcache.Store has.
func TestCoreOnlyStore(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []dbcache.Store
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) dbcache.Store {
			s, err := memstore.New(nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			c := coreOnly{s}
			mu.Lock()
			seen = append(seen, c)
			mu.Unlock()
			return c
		},
		Age: func(_ *testing.T, s dbcache.Store, d time.Duration) {
			s.(coreOnly).Store.(*memstore.Store).FastForward(d)
		},
	})
	for _, s := range seen {
		for name, ok := range map[string]bool{
			"TTLReader": is[dbcache.TTLReader](s), "KeyLister": is[dbcache.KeyLister](s),
			"Versioner": is[dbcache.Versioner](s), "KeyMaker": is[dbcache.KeyMaker](s), "Loader": is[dbcache.Loader](s),
		} {
			if ok {
				t.Fatalf("the core-only store is a %s", name)
			}
		}
	}
}

func is[C any](s dbcache.Store) bool {
	_, ok := s.(C)
	return ok
}
