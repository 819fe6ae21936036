package integration_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/migrations"
)

// With Config.FailOpen, stopping the server under load: every operation
// returns (within its bound) and none returns an error: reads miss, writes
// are not stored, GetOrSetFunc returns its loader's value. When the server
// is back, the same cache works again with no help.
func TestFailOpenServerStopped(t *testing.T) {
	await := startServer(t)
	t.Parallel()
	srv := await(t)
	cfg := srv.poolConfig(t, srv.db)
	cfg.MaxConns = 6
	pool := dbtest.NewPool(t, cfg)
	m, err := migrations.New(pool, nil)
	require.NoError(t, err)
	require.NoError(t, m.Up(ctxT(t)))
	cache, logs := cacheOn(t, pool, &dbcache.Config{FailOpen: true, OpTimeout: 2 * time.Second})
	require.NoError(t, cache.Set(ctxT(t), "k", []byte("v"), dbcache.Forever))

	var (
		down    atomic.Bool
		stop    atomic.Bool
		errs    atomic.Int64
		opsDown atomic.Int64
		wg      sync.WaitGroup
	)
	bg := context.Background() // no deadline: Config.OpTimeout bounds each call
	for w := range 4 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				var err error
				switch (w + i) % 7 {
				case 0:
					_, err = cache.Get(bg, "k")
					if errors.Is(err, dbcache.ErrMiss) {
						err = nil
					}
				case 1:
					err = cache.Set(bg, fmt.Sprint("s", w), []byte("x"), dbcache.DefaultTimeout)
				case 2:
					_, err = cache.Add(bg, fmt.Sprint("a", w, "-", i), nil, dbcache.DefaultTimeout)
				case 3:
					_, err = cache.GetMany(bg, []string{"k", "x"})
				case 4:
					_, err = cache.SetMany(bg, map[string][]byte{fmt.Sprint("m", w): nil}, dbcache.DefaultTimeout)
				case 5:
					_, err = cache.Incr(bg, "n", 1)
					if errors.Is(err, dbcache.ErrMiss) {
						err = nil
					}
				case 6:
					var v []byte
					v, err = cache.GetOrSetFunc(bg, fmt.Sprint("g", i%3), func(context.Context) ([]byte, error) {
						return []byte("loaded"), nil
					}, dbcache.DefaultTimeout)
					if err == nil && string(v) != "loaded" {
						err = fmt.Errorf("get_or_set returned %q", v)
					}
				}
				if down.Load() {
					opsDown.Add(1)
				}
				if err != nil {
					errs.Add(1)
					t.Errorf("worker %d op %d (server down: %v): %v", w, (w+i)%7, down.Load(), err)
					return
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	down.Store(true)
	srv.shutdown(t)
	// Operations keep returning while it is down, without errors.
	for before := opsDown.Load(); opsDown.Load() < before+40; {
		time.Sleep(50 * time.Millisecond)
		if t.Failed() {
			break
		}
	}
	_, err = returnsV(t, func() ([]byte, error) { return cache.Get(bg, "k") })
	require.ErrorIs(t, err, dbcache.ErrMiss, "a read while the server is down is a miss")
	require.Positive(t, cache.Stats().FailOpen)

	srv.start(t)
	down.Store(false)
	// The same cache recovers on its own: a write is stored and read back.
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		if cache.Set(ctx, "back", []byte("1"), dbcache.Forever) != nil {
			return false
		}
		v, err := cache.Get(ctx, "back")
		return err == nil && string(v) == "1"
	}, time.Minute, 100*time.Millisecond)
	stop.Store(true)
	wg.Wait()
	require.Zero(t, errs.Load())
	require.Equal(t, "v", string(mustGetValue(t, cache, "k")), "entries written before the stop are still there")
	require.Contains(t, logs.String(), "fail-open")
}

func returnsV(t *testing.T, op func() ([]byte, error)) ([]byte, error) {
	t.Helper()
	var v []byte
	err := returns(t, func() error {
		var err error
		v, err = op()
		return err
	})
	return v, err
}

func mustGetValue(t *testing.T, c *dbcache.Cache, key string) []byte {
	t.Helper()
	v, err := c.Get(ctxT(t), key)
	require.NoError(t, err)
	return v
}
