package ratelimit_test

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/culling"
	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/ratelimit"
)

// argTracer records every argument of every statement the pool runs.
type argTracer struct {
	mu   sync.Mutex
	args []any
}

func (a *argTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	a.mu.Lock()
	a.args = append(a.args, d.Args...)
	a.mu.Unlock()
	return ctx
}

func (a *argTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// The database's clock decides: no statement the limiter runs carries a
// time of the application's. Every argument of every statement (checks,
// peeks, Reset, Sweep, FastCommit or not) is recorded by a pgx tracer: the
// key, a count of nanoseconds derived from the Limit, a batch size, never
// a time, nor a number near the application's clock in nanoseconds.
func TestNoStatementCarriesTheApplicationClock(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	tr := &argTracer{}
	cfg := s.PoolConfig(t)
	cfg.MaxConns = 2
	cfg.ConnConfig.Tracer = tr
	pool := dbtest.NewPool(t, cfg)
	ctx := ctxT(t)
	for _, fast := range []bool{false, true} {
		lim := setupOn(t, pool, &ratelimit.Config{FastCommit: fast}).lim
		for _, l := range []ratelimit.Limit{ratelimit.PerSecond(3), ratelimit.PerHour(1), {Rate: 1, Period: 10 * 365 * 24 * time.Hour}} {
			for n := range 3 {
				_, err := lim.AllowN(ctx, "k", l, n%2)
				require.NoError(t, err)
			}
		}
		require.NoError(t, lim.Reset(ctx, "k"))
		_, err := lim.Sweep(ctx, 0)
		require.NoError(t, err)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	require.NotEmpty(t, tr.args)
	now := time.Now().UnixNano()
	for _, a := range tr.args {
		switch v := a.(type) {
		case time.Time:
			t.Errorf("a statement carries an application time: %v", v)
		case int64:
			// The application's clock in nanoseconds (or microseconds) would
			// be within a few years of now; a Limit's spans are far from it.
			for _, scale := range []float64{1, 1000} {
				if d := math.Abs(float64(v)*scale - float64(now)); d < float64(5*365*24*time.Hour) {
					t.Errorf("a statement carries a number near the application's clock: %d", v)
				}
			}
		}
	}
}

// A limit's state is not the cache's: a culler at the tightest limits it
// accepts, and the cache's Clear, run over the cache table beside it, and
// every key keeps its state (a culled state would hand the key its burst
// again).
func TestNeverCulled(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, nil)
	limit := ratelimit.Limit{Rate: 1, Period: time.Hour}
	for _, k := range []string{"a", "b", "c"} {
		res, err := b.lim.Allow(ctx, k, limit)
		require.NoError(t, err)
		require.True(t, res.Allowed)
	}
	// Rows of the limit's table made to look as old and as stale as the
	// culler could want, but still ahead of the clock.
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires, written_at)
		SELECT 'e' || g, '\x00', CASE WHEN g % 2 = 0 THEN now() - interval '1 s' END, now() - interval '2 hours'
		FROM generate_series(1, 500) AS g`)
	c, err := culling.New(b.pool, &culling.Config{
		MaxEntries: 1, MaxBytes: 1, MaxAge: culling.MaxAgeMin, CullFrequency: culling.CullAll, BatchSize: 7,
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	cache, err := dbcache.New(ctx, b.pool, nil)
	require.NoError(t, err)
	defer cache.Close()
	var removed int64
	for range 5 {
		res, err := c.RunOnce(ctx)
		require.NoError(t, err)
		removed += res.ExpiredRemoved + res.Culled + res.AgedOut
	}
	require.NoError(t, cache.Clear(ctx))
	require.EqualValues(t, 500, removed, "the culler culled the cache table")
	require.Zero(t, dbtest.Count(t, b.pool))
	require.Equal(t, 3, rows(t, b.pool))
	for _, k := range []string{"a", "b", "c"} {
		res, err := b.lim.Allow(ctx, k, limit)
		require.NoError(t, err)
		require.False(t, res.Allowed, "%s kept its state", k)
	}
}
