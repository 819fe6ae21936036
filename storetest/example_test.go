package storetest_test

import (
	"testing"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/memstore"
	"github.com/dbcache/dbcache/storetest"
)

// A Store's conformance test: Run takes the test's *testing.T, so this
// example is compiled but not run (memstore's own tests run it). A store
// with a clock of its own lets the suite age entries (Config.Age) instead
// of waiting for real time to pass.
func ExampleRun() {
	_ = func(t *testing.T) {
		storetest.Run(t, storetest.Config{
			New: func(t *testing.T) dbcache.Store {
				s, err := memstore.New(nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = s.Close() })
				return s
			},
		})
	}
}
