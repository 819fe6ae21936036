package dbcache_test

// Production semantics beyond Django: stampede protection, stale while
// revalidate, fail-open, remaining lifetime, namespaces.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// processes gives n caches over one migrated schema, each on a pool of its
// own of maxConns connections: n application processes sharing a table.
func processes(t *testing.T, n int, maxConns int32, cfg *dbcache.Config) []*testBundle {
	t.Helper()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	out := make([]*testBundle, n)
	for i := range out {
		pc := s.PoolConfig(t)
		pc.MaxConns = maxConns
		// Advisory locks are per database; tell this test's sessions apart.
		pc.ConnConfig.RuntimeParams["application_name"] = appName(t)
		out[i] = setupOn(t, newPool(t, pc), cfg)
	}
	return out
}

// 4 processes (pools of 4 connections) x 50 goroutines miss one cold key at
// once: the loader runs once, and every caller returns its value. While it
// runs, each pool still serves other operations: the loader holds its
// key's lease (a row), no lock and no connection, and the waiting
// processes none either.
func TestStampedeLoaderRunsOnce(t *testing.T) {
	t.Parallel()
	procs := processes(t, 4, 4, nil)
	ctx := ctxT(t)
	var runs atomic.Int64
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	load := func(context.Context) ([]byte, error) {
		n := runs.Add(1)
		<-release
		return []byte(fmt.Sprint("value-", n)), nil
	}
	var wg sync.WaitGroup
	results := make(chan string, 200)
	start := make(chan struct{})
	for _, p := range procs {
		for range 50 {
			wg.Go(func() {
				<-start
				v, err := p.cache.GetOrSetFunc(ctx, "cold", load, dbcache.DefaultTimeout)
				if err != nil {
					t.Error(err)
					return
				}
				results <- string(v)
			})
		}
	}
	close(start)
	waitFor(t, func() bool { return runs.Load() == 1 })
	// The load is in progress: every pool still answers, none is exhausted.
	for _, p := range procs {
		opCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		require.NoError(t, p.cache.Set(opCtx, "other", []byte("x"), dbcache.DefaultTimeout))
		cancel()
	}
	var locks, inTx, leases int
	require.NoError(t, procs[0].pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = $1)`, appName(t)).Scan(&locks))
	require.Zero(t, locks, "no advisory lock is held or waited for")
	require.NoError(t, procs[0].pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE application_name = $1 AND state LIKE 'idle in transaction%'`, appName(t)).Scan(&inTx))
	require.Zero(t, inTx, "no connection sits in a transaction while the loader runs")
	require.NoError(t, procs[0].pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_leases WHERE expires > statement_timestamp()`).Scan(&leases))
	require.Equal(t, 1, leases, "the loader holds the key's lease")
	time.Sleep(100 * time.Millisecond) // let the waiters poll a few times
	once.Do(func() { close(release) })
	wg.Wait()
	close(results)
	require.EqualValues(t, 1, runs.Load(), "the loader ran more than once")
	n := 0
	for r := range results {
		require.Equal(t, "value-1", r)
		n++
	}
	require.Equal(t, 200, n)
	var waits int64
	for _, p := range procs {
		waits += p.cache.Stats().LoadWaits
	}
	require.EqualValues(t, 3, waits, "each other process waited once, not each goroutine")
}

// A loader that panics: every caller of that flight gets a
// *LoaderPanicError, the lease is released, and the next call loads again.
func TestStampedeLoaderPanics(t *testing.T) {
	t.Parallel()
	procs := processes(t, 2, 4, nil)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for _, p := range procs {
		for range 5 {
			wg.Go(func() {
				_, err := p.cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) {
					time.Sleep(50 * time.Millisecond)
					panic("boom")
				}, dbcache.DefaultTimeout)
				var pe *dbcache.LoaderPanicError
				if !errors.As(err, &pe) || pe.Value != "boom" {
					t.Errorf("want a LoaderPanicError, got %v", err)
				}
			})
		}
	}
	wg.Wait()
	v, err := procs[1].cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("ok"), nil }, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "ok", string(v))
	var leases int
	require.NoError(t, procs[0].pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_leases`).Scan(&leases))
	require.Zero(t, leases, "a lease leaked")
}

// A loader that hangs, ignoring its context: another process waits at most
// LoadWait, then loads itself; the hung process's lease ends by itself
// (its renewals stop with the flight's context) even though its loader
// never returns.
func TestStampedeLoaderHangs(t *testing.T) {
	t.Parallel()
	procs := processes(t, 2, 4, &dbcache.Config{LoadWait: 200 * time.Millisecond, LoadLease: time.Second})
	ctx := ctxT(t)
	hung := make(chan struct{})
	t.Cleanup(func() { close(hung) })
	started := make(chan struct{})
	go func() {
		hctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, _ = procs[0].cache.GetOrSetFunc(hctx, "k", func(context.Context) ([]byte, error) {
			close(started)
			<-hung
			return nil, errors.New("never")
		}, dbcache.DefaultTimeout)
	}()
	<-started
	v, err := procs[1].cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("mine"), nil }, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "mine", string(v))
	require.EqualValues(t, 1, procs[1].cache.Stats().LoadWaits)
	waitFor(t, func() bool {
		l, err := procs[1].cache.AcquireLease(ctx, "k", time.Minute)
		return err == nil && l.Acquired
	})
}

// Callers that give up leave the loader running for the others; the last
// to leave cancels it.
func TestStampedeCallerLeaves(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	entered := make(chan struct{})
	var enterOnce sync.Once
	var canceled atomic.Bool
	release := make(chan struct{})
	load := func(lctx context.Context) ([]byte, error) {
		enterOnce.Do(func() { close(entered) })
		select {
		case <-lctx.Done():
			canceled.Store(true)
			return nil, lctx.Err()
		case <-release:
			return []byte("v"), nil
		}
	}
	early, cancel := context.WithCancel(ctx)
	errs := make(chan error, 1)
	go func() { _, err := b.cache.GetOrSetFunc(early, "k", load, dbcache.DefaultTimeout); errs <- err }()
	<-entered
	type result struct {
		v   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := b.cache.GetOrSetFunc(ctx, "k", load, dbcache.DefaultTimeout)
		done <- result{v, err}
	}()
	waitFor(t, func() bool { return dbcache.FlightWaiting(b.cache, "k") == 2 })
	cancel()
	require.ErrorIs(t, <-errs, context.Canceled)
	close(release)
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, "v", string(r.v))
	require.False(t, canceled.Load(), "one caller leaving cancelled the load for the other")
	require.EqualValues(t, 1, b.cache.Stats().Loads)
}

// Stale while revalidate: fresh values are returned as they are; a stale
// one at once, with one background refresh across processes; a failed
// refresh keeps the stale value until it expires; an expired one loads.
func TestStaleWhileRevalidate(t *testing.T) {
	t.Parallel()
	logs := &dbtest.LogBuffer{}
	cfg := &dbcache.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))}
	procs := processes(t, 3, 4, cfg)
	ctx := ctxT(t)
	fresh, stale := time.Hour, time.Hour
	var runs atomic.Int64
	gen := func(context.Context) ([]byte, error) { return []byte(fmt.Sprint("v", runs.Add(1))), nil }

	v, err := procs[0].cache.GetOrRevalidate(ctx, "k", gen, fresh, stale)
	require.NoError(t, err)
	require.Equal(t, "v1", string(v))
	ttl, err := procs[0].cache.TTL(ctx, "k")
	require.NoError(t, err)
	d, _ := ttl.Duration()
	require.Greater(t, d, 119*time.Minute, "expires after fresh + stale")

	// Fresh: no load.
	v, err = procs[1].cache.GetOrRevalidate(ctx, "k", gen, fresh, stale)
	require.NoError(t, err)
	require.Equal(t, "v1", string(v))
	require.EqualValues(t, 1, runs.Load())

	// 90 minutes later it is stale: every process gets v1 at once, and one
	// refresh runs in all.
	travel(t, procs[0].pool, 90*time.Minute)
	release := make(chan struct{})
	slow := func(c context.Context) ([]byte, error) { <-release; return gen(c) }
	var wg sync.WaitGroup
	for _, p := range procs {
		for range 10 {
			wg.Go(func() {
				v, err := p.cache.GetOrRevalidate(ctx, "k", slow, fresh, stale)
				if err != nil || string(v) != "v1" {
					t.Errorf("stale read: %q, %v", v, err)
				}
			})
		}
	}
	wg.Wait() // all returned while the refresh is still blocked
	close(release)
	waitFor(t, func() bool { return mustGet(t, procs[0].cache, "k") == "v2" })
	time.Sleep(100 * time.Millisecond)
	require.EqualValues(t, 2, runs.Load(), "more than one refresh")

	// A failed refresh: the stale value is still served, the failure counted
	// and logged.
	travel(t, procs[0].pool, 90*time.Minute)
	failing := func(context.Context) ([]byte, error) { return nil, errors.New("backend down") }
	v, err = procs[2].cache.GetOrRevalidate(ctx, "k", failing, fresh, stale)
	require.NoError(t, err)
	require.Equal(t, "v2", string(v))
	waitFor(t, func() bool { return procs[2].cache.Stats().RefreshFailures == 1 })
	require.Contains(t, logs.String(), "error_code=loader")
	require.NotContains(t, logs.String(), "backend down", "the loader's error text is logged only with LogKeys")
	v, err = procs[2].cache.GetOrRevalidate(ctx, "k", failing, fresh, stale)
	require.NoError(t, err)
	require.Equal(t, "v2", string(v), "still served stale")

	// Past the stale period it is gone: the caller loads.
	travel(t, procs[0].pool, time.Hour)
	v, err = procs[0].cache.GetOrRevalidate(ctx, "k", gen, fresh, stale)
	require.NoError(t, err)
	require.Equal(t, "v3", string(v))
}

// Close ends background refreshes and waits for them.
func TestCloseEndsRefreshes(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	fresh, stale := time.Duration(0), time.Hour // every hit refreshes
	_, err := b.cache.GetOrSet(ctx, "k", []byte("v"), dbcache.ExpiresIn(fresh+stale))
	require.NoError(t, err)
	entered := make(chan struct{})
	var ended atomic.Bool
	_, err = b.cache.GetOrRevalidate(ctx, "k", func(lctx context.Context) ([]byte, error) {
		close(entered)
		<-lctx.Done()
		ended.Store(true)
		return nil, lctx.Err()
	}, fresh, stale)
	require.NoError(t, err)
	<-entered
	require.NoError(t, b.cache.Close())
	require.True(t, ended.Load(), "Close returned before the refresh ended")
}

// IsTransient is the fail-open rule: outages and conflicts are transient;
// configuration, permission and SQL errors, and cancellation, are not.
func TestIsTransient(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return fmt.Errorf("dbcache: get: %w", &pgconn.PgError{Code: code}) }
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{pg("57P01"), true}, {pg("57P02"), true}, {pg("57P03"), true}, {pg("57014"), true},
		{pg("40001"), true}, {pg("40P01"), true}, {pg("53300"), true}, {pg("08006"), true}, {pg("08001"), true},
		{context.DeadlineExceeded, true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{fmt.Errorf("x: %w", syscall.ECONNRESET), true},
		{io.ErrUnexpectedEOF, true},
		{pg("42P01"), false}, {pg("42501"), false}, {pg("28P01"), false}, {pg("3D000"), false}, {pg("22021"), false}, {pg("42601"), false},
		{context.Canceled, false}, {dbcache.ErrNotMigrated, false}, {dbcache.ErrInvalidKey, false},
		{dbcache.ErrClosed, false}, {errors.New("something else"), false}, {nil, false},
	} {
		require.Equal(t, tc.want, dbcache.IsTransient(tc.err), "%v", tc.err)
	}
}

// Fail-open: with the server unreachable under load, reads miss and writes
// are skipped within the operation bound, no error reaches the caller, and
// the cache works again when the server returns. Errors that are not
// transient still surface.
func TestFailOpen(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	host, port := serverAddr(t, s)
	proxy := dbtest.NewProxy(t, net.JoinHostPort(host, port))
	pc := s.PoolConfig(t)
	pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", proxy.Port()
	pc.MaxConns = 6
	logs := &dbtest.LogBuffer{}
	b := setupOn(t, newPool(t, pc), &dbcache.Config{FailOpen: true, OpTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))

	var stop atomic.Bool
	var errs, ops atomic.Int64
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				var err error
				switch (w + i) % 8 {
				case 0:
					_, err = b.cache.Get(ctx, "k")
					if errors.Is(err, dbcache.ErrMiss) {
						err = nil
					}
				case 1:
					err = b.cache.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout)
				case 2:
					_, err = b.cache.Add(ctx, fmt.Sprint("a", i), nil, dbcache.DefaultTimeout)
				case 3:
					_, err = b.cache.GetMany(ctx, []string{"k", "x"})
				case 4:
					_, err = b.cache.SetMany(ctx, map[string][]byte{"m": nil}, dbcache.DefaultTimeout)
				case 5:
					_, err = b.cache.Incr(ctx, "n", 1)
					if errors.Is(err, dbcache.ErrMiss) {
						err = nil
					}
				case 6:
					var v []byte
					v, err = b.cache.GetOrSetFunc(ctx, "g", func(context.Context) ([]byte, error) { return []byte("loaded"), nil }, dbcache.DefaultTimeout)
					if err == nil && string(v) != "loaded" {
						err = fmt.Errorf("get_or_set: %q", v)
					}
				case 7:
					_, err = b.cache.DeleteMany(ctx, []string{"d"})
				}
				ops.Add(1)
				if err != nil {
					errs.Add(1)
					t.Errorf("op %d: %v", (w+i)%8, err)
					return
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	proxy.Down()
	waitFor(t, func() bool { return b.cache.Stats().FailOpen > 20 })
	// While it is down: a read is a miss, a write a no-op.
	_, err := b.cache.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	failed, err := b.cache.SetMany(ctx, map[string][]byte{"x": nil, "y": nil}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"x", "y"}, failed, "a skipped SetMany reports every key as not stored")
	ok, err := b.cache.Add(ctx, "new", nil, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.False(t, ok)
	// Clear always reports: its caller must know nothing was cleared.
	require.Error(t, b.cache.Clear(ctx))

	proxy.Up(t)
	waitFor(t, func() bool {
		return b.cache.Set(ctx, "back", []byte("1"), dbcache.DefaultTimeout) == nil && mustGetOK(b.cache, "back")
	})
	stop.Store(true)
	wg.Wait()
	require.Zero(t, errs.Load())
	require.Contains(t, logs.String(), "fail-open")
	require.Less(t, strings.Count(logs.String(), "fail-open"), 10, "logged at a bounded rate")

	// Not transient: a missing table surfaces even with FailOpen.
	dbtest.Exec(t, b.pool, `DROP TABLE dbcache_entries`)
	_, err = b.cache.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
}

// appName is the application_name of one test's sessions.
func appName(t *testing.T) string {
	name := "dbct-" + t.Name()
	if len(name) > 63 {
		name = name[:63]
	}
	return name
}

func mustGetOK(c *dbcache.Cache, key string) bool {
	_, err := c.Get(context.Background(), key)
	return err == nil
}

// TTL and GetWithTTL tell "never expires" from "missing" from a remaining
// lifetime, by the database's clock.
func TestTTL(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "forever", []byte("f"), dbcache.Forever))
	require.NoError(t, b.cache.Set(ctx, "hour", []byte("h"), dbcache.ExpiresIn(time.Hour)))
	require.NoError(t, b.cache.Set(ctx, "gone", []byte("g"), dbcache.ExpiresIn(-time.Second)))

	ttl, err := b.cache.TTL(ctx, "forever")
	require.NoError(t, err)
	require.True(t, ttl.IsForever())
	ttl, err = b.cache.TTL(ctx, "hour")
	require.NoError(t, err)
	d, ok := ttl.Duration()
	require.True(t, ok)
	require.LessOrEqual(t, d, time.Hour)
	require.Greater(t, d, 59*time.Minute)
	_, err = b.cache.TTL(ctx, "gone")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = b.cache.TTL(ctx, "never-set")
	require.ErrorIs(t, err, dbcache.ErrMiss)

	v, ttl, err := b.cache.GetWithTTL(ctx, "hour")
	require.NoError(t, err)
	require.Equal(t, "h", string(v))
	d, _ = ttl.Duration()
	require.Greater(t, d, 59*time.Minute)
	v, ttl, err = b.cache.GetWithTTL(ctx, "forever")
	require.NoError(t, err)
	require.Equal(t, "f", string(v))
	require.True(t, ttl.IsForever())
	_, _, err = b.cache.GetWithTTL(ctx, "gone")
	require.ErrorIs(t, err, dbcache.ErrMiss)

	// A TTL read back can be passed to Set to keep the expiry.
	ttl, err = b.cache.TTL(ctx, "hour")
	require.NoError(t, err)
	require.NoError(t, b.cache.Set(ctx, "copy", []byte("c"), ttl))
	ttl2, err := b.cache.TTL(ctx, "copy")
	require.NoError(t, err)
	d2, _ := ttl2.Duration()
	require.InDelta(t, float64(d), float64(d2), float64(5*time.Second))
}

// DeletePrefix removes a namespace under the view's prefix and version as a
// range of the key index, in batches, counting live entries only.
func TestDeletePrefix(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{KeyPrefix: "app"})
	ctx := ctxT(t)
	other := setupOn(t, b.pool, &dbcache.Config{KeyPrefix: "other"})
	items := map[string][]byte{}
	for i := range 12_000 { // more than two batches
		items[fmt.Sprint("user:", i)] = []byte("u")
	}
	_, err := b.cache.SetMany(ctx, items, dbcache.DefaultTimeout)
	require.NoError(t, err)
	for _, k := range []string{"user", "users:1", "use", "session:1"} {
		require.NoError(t, b.cache.Set(ctx, k, nil, dbcache.DefaultTimeout))
	}
	require.NoError(t, b.cache.Set(ctx, "user:expired", nil, dbcache.ExpiresIn(-time.Second)))
	require.NoError(t, b.cache.WithVersion(2).Set(ctx, "user:1", nil, dbcache.DefaultTimeout))
	require.NoError(t, other.cache.Set(ctx, "user:1", nil, dbcache.DefaultTimeout))

	n, err := b.cache.DeletePrefix(ctx, "user:")
	require.NoError(t, err)
	require.Equal(t, 12_000, n, "live entries removed (the expired one goes uncounted)")
	for _, k := range []string{"user", "users:1", "use", "session:1"} {
		ok, err := b.cache.HasKey(ctx, k)
		require.NoError(t, err)
		require.True(t, ok, "%s is outside the namespace", k)
	}
	var left int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE key LIKE 'app:1:user:%'`).Scan(&left))
	require.Zero(t, left)
	ok, err := b.cache.WithVersion(2).HasKey(ctx, "user:1")
	require.NoError(t, err)
	require.True(t, ok, "another version is another namespace")
	ok, err = other.cache.HasKey(ctx, "user:1")
	require.NoError(t, err)
	require.True(t, ok, "another key prefix is another namespace")

	// Code points at the edges of UTF-8: DEL (0x7f) and the highest one.
	for _, k := range []string{"a\x7f", "a\x7fz", "a\u0080", "b\U0010FFFF", "b\U0010FFFFx", "c"} {
		require.NoError(t, b.cache.Set(ctx, k, nil, dbcache.DefaultTimeout))
	}
	n, err = b.cache.DeletePrefix(ctx, "a\x7f")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	n, err = b.cache.DeletePrefix(ctx, "b\U0010FFFF")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	ok, _ = b.cache.HasKey(ctx, "a\u0080")
	require.True(t, ok)
	ok, _ = b.cache.HasKey(ctx, "c")
	require.True(t, ok)

	// A KeyFunc that puts the caller's key first cannot be a range.
	odd := setupOn(t, b.pool, &dbcache.Config{KeyFunc: func(key, prefix string, version int) string {
		return key + "|" + prefix
	}})
	_, err = odd.cache.DeletePrefix(ctx, "user:")
	require.ErrorIs(t, err, dbcache.ErrPrefixUnsupported)
}

// The batch statement is a range scan of the primary key index, never a
// table scan, even when the statistics say the table is tiny.
func TestDeletePrefixUsesTheKeyIndex(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries SELECT ':1:k' || i, 'v', NULL FROM generate_series(1, 50000) i`)
	dbtest.Exec(t, b.pool, `ANALYZE dbcache_entries`)
	stmts := dbcache.Statements(b.cache)
	for _, name := range []string{"delete_prefix_batch", "keys_page"} {
		var plan strings.Builder
		args := []any{":1:k1", ":1:k2", 5000}
		if name == "keys_page" {
			args = args[:3]
		}
		rows, err := b.pool.Query(ctx, "EXPLAIN "+stmts[name], args...)
		require.NoError(t, err)
		for rows.Next() {
			var line string
			require.NoError(t, rows.Scan(&line))
			plan.WriteString(line + "\n")
		}
		require.NoError(t, rows.Err())
		require.Contains(t, plan.String(), "dbcache_entries_pkey", "%s:\n%s", name, plan.String())
		require.Regexp(t, `Index Cond: \(\(key >= .*\) AND \(key < .*\)\)`, plan.String(), name)
		require.NotContains(t, plan.String(), "Seq Scan", name)
	}
}

// Keys walks a namespace page by page, in byte order, live entries only,
// and stops when the caller does.
func TestKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{KeyPrefix: "app"})
	ctx := ctxT(t)
	items := map[string][]byte{}
	for i := range 2500 {
		items[fmt.Sprintf("item:%05d", i)] = nil
	}
	_, err := b.cache.SetMany(ctx, items, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.NoError(t, b.cache.Set(ctx, "item:expired", nil, dbcache.ExpiresIn(-time.Second)))
	require.NoError(t, b.cache.Set(ctx, "other", nil, dbcache.DefaultTimeout))
	var got []string
	for k, err := range b.cache.Keys(ctx, "item:") {
		require.NoError(t, err)
		got = append(got, k)
	}
	require.Len(t, got, 2500)
	for i, k := range got {
		require.Equal(t, fmt.Sprintf("item:%05d", i), k)
	}
	n := 0
	for range b.cache.Keys(ctx, "") {
		n++
		if n == 10 {
			break
		}
	}
	require.Equal(t, 10, n)
	all := 0
	for _, err := range b.cache.Keys(ctx, "") {
		require.NoError(t, err)
		all++
	}
	require.Equal(t, 2501, all)
}
