package certcache_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// cullingPasses is how many passes that culled the cache table
// runTightCuller waits for.
const cullingPasses = 20

// runTightCuller starts a culler over pool's cache table at the tightest
// limits it accepts (MaxEntries 1, MaxBytes 1, MaxAge MaxAgeMin, CullAll,
// a nudge on every write, a pass every 10 ms), calls round(i) for i = 0, 1,
// … until cullingPasses passes have removed rows, also clearing the cache
// through dbcache every tenth round, and returns the rows the passes
// removed. Passes are counted from the culler's own reports, not timed.
func runTightCuller(t *testing.T, pool *pgxpool.Pool, round func(i int)) int64 {
	t.Helper()
	var removed atomic.Int64
	var passes atomic.Int32
	enough := make(chan struct{})
	c, err := culling.New(pool, &culling.Config{
		MaxEntries: 1, MaxBytes: 1, MaxAge: culling.MaxAgeMin, CullFrequency: culling.CullAll,
		Interval: 10 * time.Millisecond, NudgeEvery: 1, BatchSize: 7,
		Logger: slog.New(slog.DiscardHandler),
		OnProgress: func(p culling.Progress) {
			if p.Phase != culling.PhaseDone {
				return
			}
			n := p.ExpiredRemoved + p.Culled + p.AgedOut
			removed.Add(n)
			if n > 0 && passes.Add(1) == cullingPasses {
				close(enough)
			}
		},
	})
	require.NoError(t, err)
	cache, err := dbcache.New(context.Background(), pool, &dbcache.Config{OnWrite: c.NoteWrites})
	require.NoError(t, err)
	defer cache.Close()
	require.NoError(t, c.Start(context.Background()))
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
	}
	watchdog := time.After(2 * time.Minute) // fails a stuck run; measures nothing
	for i := 0; ; i++ {
		select {
		case <-enough:
			stop()
			// A few passes more, after the last round's writes.
			for range 5 {
				res, err := c.RunOnce(context.Background())
				require.NoError(t, err)
				removed.Add(res.ExpiredRemoved + res.Culled + res.AgedOut)
				if dbtest.Count(t, pool) == 0 {
					break
				}
			}
			return removed.Load()
		case <-watchdog:
			stop()
			t.Fatalf("only %d culling passes removed rows", passes.Load())
		default:
		}
		round(i)
		require.NoError(t, cache.Set(context.Background(), "entry", []byte("v"), dbcache.DefaultTimeout))
		if i%10 == 9 {
			require.NoError(t, cache.Clear(context.Background()))
		}
	}
}
