package lock_test

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/internal/migrations"
	"github.com/dbcache/dbcache/internal/pgserver"
	"github.com/dbcache/dbcache/lock"
)

// A crash never issues a fence twice, attacked on a server of the test's
// own killed at once (every process, as a power cut stops them) while
// goroutines take and release two locks as fast as they can, in sessions
// whose synchronous_commit is off (as a FastCommit cache's, or a role's
// setting, would make it) and with the WAL writer slowed to once a second:
// every fence a caller was told is still the name's latest or below it
// after the restart, and the next grant's fence is greater than all of
// them. The crash also empties the UNLOGGED leases: both names are free.
func TestCrashNeverIssuesAFenceTwice(t *testing.T) {
	t.Parallel()
	cfg, err := pgserver.ConfigFromEnv(os.Getenv)
	require.NoError(t, err)
	cfg.Database = "lock_crash"
	cfg.Settings = map[string]string{"wal_writer_delay": "1000ms"}
	startCtx, cancel := context.WithTimeout(context.Background(), 2*pgserver.DefaultStartTimeout+time.Minute)
	defer cancel()
	srv, err := pgserver.Start(startCtx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = srv.Remove(ctx)
	})
	cc, err := pgx.ParseConfig(srv.URL(cfg.Database))
	require.NoError(t, err)
	m, err := migrations.NewFromConnConfig(cc, nil)
	require.NoError(t, err)
	require.NoError(t, m.Up(startCtx))

	pc, err := pgxpool.ParseConfig(srv.URL(cfg.Database))
	require.NoError(t, err)
	pc.MaxConns = 4
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	pc.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	pc.BeforeConnect = func(_ context.Context, c *pgx.ConnConfig) error {
		c.Host, c.Port = srv.Addr()
		return nil
	}
	pool, err := pgxpool.NewWithConfig(startCtx, pc)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	locks, err := lock.New(startCtx, pool, citusTestConfig(&lock.Config{OpTimeout: 2 * time.Second}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = locks.Close() })

	names := []string{"a", "b"}
	var (
		mu     sync.Mutex
		told   = map[string]int64{} // the greatest fence a caller was told, per name
		grants atomic.Int64
		wg     sync.WaitGroup
	)
	hctx, stop := context.WithCancel(context.Background())
	enough := make(chan struct{})
	var once sync.Once
	for g := range 4 {
		wg.Go(func() {
			name := names[g%2]
			for hctx.Err() == nil {
				l, err := locks.TryAcquire(hctx, name, time.Minute)
				if err != nil {
					continue // held by the other goroutine, or the crash
				}
				mu.Lock()
				told[name] = max(told[name], l.Fence())
				mu.Unlock()
				if grants.Add(1) == 400 {
					once.Do(func() { close(enough) })
				}
				_ = l.Release(hctx)
			}
		})
	}
	select {
	case <-enough:
	case <-time.After(2 * time.Minute): // a watchdog, not a measurement
		stop()
		wg.Wait()
		t.Fatal("the goroutines never reached 400 grants")
	}
	crashCtx, cancelCrash := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancelCrash()
	require.NoError(t, srv.Crash(crashCtx))
	stop()
	wg.Wait()
	require.NoError(t, srv.Restart(crashCtx))
	pool.Reset()

	for _, name := range names {
		latest, err := locks.LatestFence(crashCtx, name)
		require.NoError(t, err)
		require.GreaterOrEqual(t, latest, told[name], "%s: a fence a caller was told was lost in the crash", name)
		l, err := locks.TryAcquire(crashCtx, name, time.Minute)
		require.NoError(t, err, "%s: the crash emptied the leases, so the name is free", name)
		require.Greater(t, l.Fence(), told[name], "%s: a fence issued again after the crash", name)
		require.NoError(t, l.Release(crashCtx))
	}
	t.Logf("%d grants before the crash; greatest fences told: %v", grants.Load(), told)
}
