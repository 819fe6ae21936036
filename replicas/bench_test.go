package replicas_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/benchpair"
	"github.com/dbcache/dbcache/replicas"
)

// What routing costs a read, on one 2-core machine that runs the primary,
// the standby and the client together: a standby here adds no capacity,
// so the figures are overhead, not scale. Each pair runs in one run,
// alternating (internal/benchpair): a Get through the router served by the
// standby, and one served by the primary (MaxLag -1), against a Get on
// the primary's dbcache.Cache alone and a raw pgx SELECT. The load
// average is printed beside them.
func BenchmarkReads(b *testing.B) {
	primary, standby := shared(b)
	schema := newSchema(b, primary)
	pp, sp := poolOnN(b, primary.URL(""), schema, 4), poolOnN(b, standby.URL(""), schema, 4)
	ctx := context.Background()
	direct, err := dbcache.New(ctx, pp, nil)
	require.NoError(b, err)
	for i := range 100 {
		require.NoError(b, direct.Set(ctx, "k"+strconv.Itoa(i), []byte("value"), dbcache.Forever))
	}
	caughtUp(b, ctx, pp, sp)
	viaStandby, err := replicas.New(ctx, pp, []*pgxpool.Pool{sp}, nil)
	require.NoError(b, err)
	b.Cleanup(func() { _ = viaStandby.Close() })
	viaPrimary, err := replicas.New(ctx, pp, []*pgxpool.Pool{sp}, &replicas.Config{MaxLag: -1})
	require.NoError(b, err)
	b.Cleanup(func() { _ = viaPrimary.Close() })
	time.Sleep(100 * time.Millisecond)
	get := func(s dbcache.Store) benchpair.Op {
		return func(ctx context.Context, i int) error {
			_, err := s.Get(ctx, "k"+strconv.Itoa(i%100))
			return err
		}
	}
	raw := func(ctx context.Context, i int) error {
		var v []byte
		return pp.QueryRow(ctx, `SELECT value FROM dbcache_entries WHERE key = $1`, ":1:k"+strconv.Itoa(i%100)).Scan(&v)
	}
	load := func(b *testing.B) {
		if la, ok := benchpair.LoadAverage(); ok {
			b.Logf("load average %.2f (a loaded machine: five engineers share its 2 cores)", la)
		}
	}
	b.Run("router-standby_vs_primary-cache", func(b *testing.B) {
		benchpair.Run(b, 4, get(viaStandby), get(direct)).Report(b, "primary-cache")
		b.Logf("%+v", viaStandby.Stats())
		load(b)
	})
	b.Run("router-primary_vs_primary-cache", func(b *testing.B) {
		benchpair.Run(b, 4, get(viaPrimary), get(direct)).Report(b, "primary-cache")
	})
	b.Run("primary-cache_vs_raw-pgx", func(b *testing.B) {
		benchpair.Run(b, 4, get(direct), raw).Report(b, "raw-pgx")
	})
	b.Run("decisions", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				viaStandby.Pick()
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		load(b)
	})
}
