package nearcache_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
)

// BenchmarkGet: a get of a hot key through the near cache (a hit) beside
// the same get through the dbcache.Cache behind it (a round trip), in
// alternating blocks; x-dbcache is how many times faster the near cache
// is. Reproduce: go test -run '^$' -bench Get ./nearcache/
func BenchmarkGet(b *testing.B) {
	e := newEnv(b, nil)
	p := e.proc(b, nil)
	ctx := context.Background()
	const keys = 100
	for i := range keys {
		if err := p.near.Set(ctx, "k"+strconv.Itoa(i), make([]byte, 100), dbcache.ExpiresIn(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
	// Every key held and the feed coherent before timing starts.
	for p.near.Stats().Entries < keys || p.near.Stats().Hits < keys {
		for i := range keys {
			if _, err := p.near.Get(ctx, "k"+strconv.Itoa(i)); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, g := range []int{1, 16} {
		b.Run("g="+strconv.Itoa(g), func(b *testing.B) {
			hits := p.near.Stats().Hits
			r := benchpair.Run(b, g,
				func(ctx context.Context, i int) error {
					_, err := p.near.Get(ctx, "k"+strconv.Itoa(i%keys))
					return err
				},
				func(ctx context.Context, i int) error {
					_, err := p.cache.Get(ctx, "k"+strconv.Itoa(i%keys))
					return err
				})
			r.Report(b, "dbcache")
			b.ReportMetric(float64(p.near.Stats().Hits-hits)/float64(b.N+2*g), "hit-ratio")
		})
	}
}
