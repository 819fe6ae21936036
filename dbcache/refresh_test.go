package dbcache_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// A refresh loader that keeps failing, hammered by stale hits from three
// processes (pools of 4, 20 goroutines each, 50 hits each): it runs once in
// all, since a failed refresh holds the key's lease for RefreshRetry (an
// hour here, longer than the test) and its process remembers the key;
// every hit gets the stale value, and the skipped refreshes are counted.
func TestRefreshBacksOffAcrossProcesses(t *testing.T) {
	t.Parallel()
	procs := processes(t, 3, 4, &dbcache.Config{RefreshRetry: time.Hour})
	ctx := ctxT(t)
	_, err := procs[0].cache.GetOrRevalidate(ctx, "k", func(context.Context) ([]byte, error) { return []byte("stale"), nil }, 0, time.Hour)
	require.NoError(t, err)
	var attempts atomic.Int64
	failing := func(context.Context) ([]byte, error) {
		attempts.Add(1)
		return nil, errors.New("backend down")
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		for range 20 {
			wg.Go(func() {
				for range 50 {
					v, err := p.cache.GetOrRevalidate(ctx, "k", failing, 0, time.Hour)
					if err != nil || string(v) != "stale" {
						t.Errorf("a stale hit: %q, %v", v, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	waitFor(t, func() bool {
		var f int64
		for _, p := range procs {
			f += p.cache.Stats().RefreshFailures
		}
		return f == 1
	})
	require.EqualValues(t, 1, attempts.Load(), "a failing refresh ran more than once per RefreshRetry")
	var backoffs int64
	for _, p := range procs {
		backoffs += p.cache.Stats().RefreshBackoffs
	}
	require.Positive(t, backoffs)
	require.Equal(t, "stale", mustGet(t, procs[1].cache, "k"), "the stale value is served meanwhile")
}

// With FailOpen on a server gone silent, GetOrSetFunc and GetOrRevalidate
// try one statement (their read), which OpTimeout bounds, and then run the
// loader unprotected: its value comes back, stored nowhere, and nothing
// else is asked of the server. Each statement that fails open counts once
// in Stats.FailOpen, so one count per call is one OpTimeout per call (a
// lease or a write tried after the read would be a second).
func TestFailOpenGetOrSetFuncOneStatement(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	host, port := serverAddr(t, s)
	proxy := dbtest.NewProxy(t, host+":"+port)
	pc := s.PoolConfig(t)
	pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", proxy.Port()
	pc.MaxConns = 4
	b := setupOn(t, newPool(t, pc), &dbcache.Config{FailOpen: true, OpTimeout: 300 * time.Millisecond})
	require.NoError(t, b.cache.Set(context.Background(), "warm", []byte("v"), dbcache.Forever))
	proxy.Freeze()
	for _, revalidate := range []bool{false, true} {
		var v []byte
		var err error
		load := func(context.Context) ([]byte, error) { return []byte("loaded"), nil }
		if revalidate {
			v, err = b.cache.GetOrRevalidate(context.Background(), "k", load, time.Minute, time.Minute)
		} else {
			v, err = b.cache.GetOrSetFunc(context.Background(), "k", load, dbcache.Forever)
		}
		require.NoError(t, err)
		require.Equal(t, "loaded", string(v))
	}
	require.EqualValues(t, 2, b.cache.Stats().FailOpen, "one statement failed open per call")
	proxy.Thaw()
	require.EqualValues(t, 2, b.cache.Stats().Loads)
}

// Bad loader settings are refused at New, naming the field.
func TestLoaderConfigRefused(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]dbcache.Config{
		"LoadLease":    {LoadLease: time.Microsecond},
		"LoadPollRate": {LoadPollRate: -2},
		"RefreshRetry": {RefreshRetry: dbcache.LeaseTTLMax + time.Hour},
	} {
		_, err := dbcache.New(ctxT(t), dbtest.Pool(t), &cfg)
		require.ErrorContains(t, err, "Config."+name, name)
	}
}

// With FailOpen, New succeeds while the database is down: operations fail
// open meanwhile, work once it is back, and the table is checked then; a
// schema with no table is then ErrNotMigrated on every operation. Without
// FailOpen, New still fails.
func TestFailOpenNewWithDatabaseDown(t *testing.T) {
	t.Parallel()
	for _, migrated := range []bool{true, false} {
		s := dbtest.NewSchema(t)
		if migrated {
			s.Migrate(t)
		}
		host, port := serverAddr(t, s)
		proxy := dbtest.NewProxy(t, host+":"+port)
		pc := s.PoolConfig(t)
		pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", proxy.Port()
		pc.MaxConns = 4
		proxy.Down()
		pool := newPool(t, pc)
		_, err := dbcache.New(ctxT(t), pool, &dbcache.Config{OpTimeout: 300 * time.Millisecond})
		require.Error(t, err, "without FailOpen New reports the database down")
		c, err := dbcache.New(ctxT(t), pool, &dbcache.Config{FailOpen: true, OpTimeout: 300 * time.Millisecond})
		require.NoError(t, err, "with FailOpen New starts with the database down")
		t.Cleanup(func() { _ = c.Close() })
		ctx := context.Background()
		_, err = c.Get(ctx, "k")
		require.ErrorIs(t, err, dbcache.ErrMiss, "a read fails open")
		v, err := c.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("loaded"), nil }, dbcache.Forever)
		require.NoError(t, err)
		require.Equal(t, "loaded", string(v))
		proxy.Up(t)
		if migrated {
			waitFor(t, func() bool { return c.Set(ctx, "k", []byte("v"), dbcache.Forever) == nil && mustGetOK(c, "k") })
			continue
		}
		waitFor(t, func() bool {
			_, err := c.Get(ctx, "k")
			return errors.Is(err, dbcache.ErrNotMigrated)
		})
		require.ErrorIs(t, c.Set(ctx, "k", nil, dbcache.Forever), dbcache.ErrNotMigrated, "every operation says so, fail-open or not")
	}
}

// panickyEvents is a Tracer whose TraceLoadEvent panics.
type panickyEvents struct{}

func (panickyEvents) TraceOpStart(ctx context.Context, _ dbcache.OpStart) context.Context { return ctx }
func (panickyEvents) TraceOpEnd(context.Context, dbcache.OpEnd)                           {}
func (panickyEvents) TraceLoadEvent(_ context.Context, e dbcache.LoadEvent) {
	if e == dbcache.LoadRefreshFailed || e == dbcache.LoadLeaseWait {
		panic("boom " + string(e))
	}
}

// A LoadEventTracer that panics on the cache's own goroutines (a failed
// background refresh, a load waiting on another process's lease): the
// process survives, the panic is counted, and the waiting callers get a
// *HookPanicError rather than a lost goroutine.
func TestLoadEventTracerPanics(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{Tracer: panickyEvents{}, RefreshRetry: time.Hour})
	other := setupOn(t, b.pool, nil)
	ctx := ctxT(t)
	_, err := b.cache.GetOrRevalidate(ctx, "r", func(context.Context) ([]byte, error) { return []byte("v"), nil }, 0, time.Hour)
	require.NoError(t, err)
	_, err = b.cache.GetOrRevalidate(ctx, "r", func(context.Context) ([]byte, error) { return nil, errors.New("down") }, 0, time.Hour)
	require.NoError(t, err)
	waitFor(t, func() bool { return b.cache.Stats().Panics == 1 })

	lease, err := other.cache.AcquireLease(ctx, "k", time.Minute)
	require.NoError(t, err)
	_, err = b.cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("v"), nil }, dbcache.Forever)
	var hp *dbcache.HookPanicError
	require.ErrorAs(t, err, &hp)
	require.EqualValues(t, 2, b.cache.Stats().Panics)
	_, err = other.cache.ReleaseLease(ctx, "k", lease.Token)
	require.NoError(t, err)
}

// A miss of a key whose refresh failed waits for the failed refresh's
// lease like any held lease, then loads (RefreshRetry 1 s here, LoadWait a
// minute): the back-off delays the miss, it never fails it.
func TestMissDuringRefreshBackoffLoads(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{RefreshRetry: time.Second, LoadWait: time.Minute})
	ctx := ctxT(t)
	_, err := b.cache.GetOrRevalidate(ctx, "k", func(context.Context) ([]byte, error) { return []byte("old"), nil }, 0, time.Hour)
	require.NoError(t, err)
	_, err = b.cache.GetOrRevalidate(ctx, "k", func(context.Context) ([]byte, error) { return nil, errors.New("down") }, 0, time.Hour)
	require.NoError(t, err)
	waitFor(t, func() bool { return b.cache.Stats().RefreshFailures == 1 })
	_, err = b.cache.Delete(ctx, "k")
	require.NoError(t, err)
	v, err := b.cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("new"), nil }, dbcache.Forever)
	require.NoError(t, err)
	require.Equal(t, "new", string(v))
	st := b.cache.Stats()
	require.EqualValues(t, 1, st.LoadWaits, "the miss waited on the back-off's lease")
	require.EqualValues(t, 3, st.Loads)
}
