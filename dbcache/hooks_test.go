package dbcache_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// panickyTracer counts TraceOpStart and TraceOpEnd calls, and panics in
// the hooks its flags say.
type panickyTracer struct {
	starts, ends, loads atomic.Int64
	panicLoad, panicEnd atomic.Bool
	mu                  sync.Mutex
	ended               []dbcache.OpEnd
}

func (c *panickyTracer) TraceOpStart(ctx context.Context, _ dbcache.OpStart) context.Context {
	c.starts.Add(1)
	return ctx
}

func (c *panickyTracer) TraceOpEnd(_ context.Context, e dbcache.OpEnd) {
	c.ends.Add(1)
	c.mu.Lock()
	c.ended = append(c.ended, e)
	c.mu.Unlock()
	if c.panicEnd.Load() {
		panic("trace end: user:carol@example.com")
	}
}

func (c *panickyTracer) TraceLoad(context.Context, dbcache.LoadEnd) {
	c.loads.Add(1)
	if c.panicLoad.Load() {
		panic("trace load: user:carol@example.com")
	}
}

// TraceOpStart runs after key validation, as tracer.go and
// docs/observability.md say: an operation refused for an invalid key (or
// prefix) makes no span, on every operation that takes keys.
func TestTraceAfterKeyValidation(t *testing.T) {
	t.Parallel()
	tr := &panickyTracer{}
	b := setup(t, &dbcache.Config{Tracer: tr})
	ctx := ctxT(t)
	bad := "bad\x00key"
	load := func(context.Context) ([]byte, error) { return []byte("v"), nil }
	errs := map[string]error{}
	_, errs["get"] = b.cache.Get(ctx, bad)
	_, _, errs["get_with_ttl"] = b.cache.GetWithTTL(ctx, bad)
	errs["set"] = b.cache.Set(ctx, bad, nil, dbcache.DefaultTimeout)
	_, errs["add"] = b.cache.Add(ctx, bad, nil, dbcache.DefaultTimeout)
	_, errs["touch"] = b.cache.Touch(ctx, bad, dbcache.DefaultTimeout)
	_, errs["delete"] = b.cache.Delete(ctx, bad)
	_, errs["has_key"] = b.cache.HasKey(ctx, bad)
	_, errs["get_or_set"] = b.cache.GetOrSet(ctx, bad, nil, dbcache.DefaultTimeout)
	_, errs["get_or_set_func"] = b.cache.GetOrSetFunc(ctx, bad, load, dbcache.DefaultTimeout)
	_, errs["incr"] = b.cache.Incr(ctx, bad, 1)
	_, errs["decr"] = b.cache.Decr(ctx, bad, 1)
	_, errs["incr_version"] = b.cache.IncrVersion(ctx, bad, 1)
	_, errs["decr_version"] = b.cache.DecrVersion(ctx, bad, 1)
	_, errs["ttl"] = b.cache.TTL(ctx, bad)
	_, errs["get_many"] = b.cache.GetMany(ctx, []string{"ok", bad})
	_, errs["set_many"] = b.cache.SetMany(ctx, map[string][]byte{"ok": nil, bad: nil}, dbcache.DefaultTimeout)
	_, errs["delete_many"] = b.cache.DeleteMany(ctx, []string{"ok", bad})
	_, errs["delete_prefix"] = b.cache.DeletePrefix(ctx, bad)
	for _, err := range b.cache.Keys(ctx, bad) {
		errs["keys"] = err
	}
	for op, err := range errs {
		require.ErrorIs(t, err, dbcache.ErrInvalidKey, op)
	}
	require.Zero(t, tr.starts.Load(), "spans were made for refused keys")
	require.Zero(t, tr.ends.Load())

	// A valid key is traced, start and end, once each.
	_, err := b.cache.Get(ctx, "ok")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.EqualValues(t, 1, tr.starts.Load())
	require.EqualValues(t, 1, tr.ends.Load())
}

// heldResources is what the test's pool and server say is still held: pool
// connections in use, and advisory locks of this test's sessions.
func heldResources(t *testing.T, b *testBundle) (conns int32, locks int) {
	t.Helper()
	ctx := ctxT(t)
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
AND pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = $1)`, appName(t)).Scan(&locks))
	return b.pool.Stat().AcquiredConns(), locks
}

// A panic in a hook that runs on the cache's own goroutine (TraceLoad and
// OnWrite in GetOrSetFunc's shared load) does not end the process: each
// waiting caller gets a *HookPanicError, it is counted and logged once, the
// flight's lock and connection are released, and the next call loads.
func TestHookPanicsOnCacheGoroutine(t *testing.T) {
	t.Parallel()
	for _, hook := range []string{"TraceLoad", "OnWrite"} {
		t.Run(hook, func(t *testing.T) {
			t.Parallel()
			tr := &panickyTracer{}
			var panicWrite atomic.Bool
			cfg := &dbcache.Config{Tracer: tr, OnWrite: func(int) {
				if panicWrite.Load() {
					panic("on write: user:carol@example.com")
				}
			}}
			b := processes(t, 1, 4, cfg)[0]
			ctx := ctxT(t)
			if hook == "TraceLoad" {
				tr.panicLoad.Store(true)
			} else {
				panicWrite.Store(true)
			}
			release := make(chan struct{})
			var started sync.Once
			loading := make(chan struct{})
			load := func(context.Context) ([]byte, error) {
				started.Do(func() { close(loading) })
				<-release
				return []byte("v"), nil
			}
			var wg sync.WaitGroup
			errs := make([]error, 5)
			for i := range errs {
				wg.Go(func() { _, errs[i] = b.cache.GetOrSetFunc(ctx, "k", load, dbcache.DefaultTimeout) })
			}
			<-loading
			waitFor(t, func() bool { return dbcache.FlightWaiting(b.cache, "k") == len(errs) })
			close(release)
			wg.Wait()
			for _, err := range errs {
				var hp *dbcache.HookPanicError
				require.ErrorAs(t, err, &hp)
				require.Equal(t, "hook_panic", dbcache.ErrorCode(err))
				require.NotEmpty(t, hp.Stack)
			}
			require.EqualValues(t, 1, b.cache.Stats().Panics)
			require.Equal(t, 1, b.logs.Count("recovered a panic"), b.logs.String())
			require.NotContains(t, b.logs.String(), "carol", "the panic's value is not logged by default")
			conns, locks := heldResources(t, b)
			require.Zero(t, conns, "a connection leaked")
			require.Zero(t, locks, "a lock leaked")
			// Every caller's operation span ended, with the error.
			require.Equal(t, tr.starts.Load(), tr.ends.Load())

			tr.panicLoad.Store(false)
			panicWrite.Store(false)
			v, err := b.cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) { return []byte("ok"), nil }, dbcache.DefaultTimeout)
			require.NoError(t, err)
			if hook == "OnWrite" {
				require.Equal(t, "v", string(v), "OnWrite runs after the write: the value was stored")
			} else {
				require.Equal(t, "ok", string(v), "TraceLoad runs before the write: nothing was stored")
			}
		})
	}
}

// A panicking TraceLoad in a background refresh (a goroutine no caller
// waits on) is recovered: counted as a failed refresh and a panic, and the
// stale value keeps being served.
func TestHookPanicsInRefresh(t *testing.T) {
	t.Parallel()
	tr := &panickyTracer{}
	b := setup(t, &dbcache.Config{Tracer: tr})
	ctx := ctxT(t)
	fresh, stale := time.Duration(0), time.Hour // every hit refreshes
	_, err := b.cache.GetOrSet(ctx, "k", []byte("stale"), dbcache.ExpiresIn(fresh+stale))
	require.NoError(t, err)
	tr.panicLoad.Store(true)
	v, err := b.cache.GetOrRevalidate(ctx, "k", func(context.Context) ([]byte, error) { return []byte("fresh"), nil }, fresh, stale)
	require.NoError(t, err)
	require.Equal(t, "stale", string(v))
	waitFor(t, func() bool { return b.cache.Stats().RefreshFailures == 1 })
	require.EqualValues(t, 1, b.cache.Stats().Panics)
	require.Equal(t, "stale", mustGet(t, b.cache, "k"))
	require.Contains(t, b.logs.String(), "error_code=hook_panic")
}

// A hook that panics on the caller's own goroutine propagates, as
// documented, and leaves nothing behind: no pool connection in use, and
// the operation's TraceOpEnd was called.
func TestHookPanicsOnCallerGoroutine(t *testing.T) {
	t.Parallel()
	tr := &panickyTracer{}
	var panicWrite atomic.Bool
	b := setup(t, &dbcache.Config{Tracer: tr, OnWrite: func(int) {
		if panicWrite.Load() {
			panic("on write")
		}
	}})
	ctx := ctxT(t)
	panics := func(f func()) (r any) {
		defer func() { r = recover() }()
		f()
		return nil
	}
	panicWrite.Store(true)
	require.NotNil(t, panics(func() { _ = b.cache.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout) }))
	panicWrite.Store(false)
	require.Equal(t, tr.starts.Load(), tr.ends.Load(), "the Set's span ended")
	tr.panicEnd.Store(true)
	require.NotNil(t, panics(func() { _, _ = b.cache.Get(ctx, "k") }))
	tr.panicEnd.Store(false)
	require.Zero(t, b.pool.Stat().AcquiredConns(), "a connection leaked")
	require.Equal(t, "v", mustGet(t, b.cache, "k"))
}

// By default no log line of the cache holds a key, or a loader's error
// text, or a panic's value: the key warning, a failed refresh and a
// recovered panic are logged without them, errors by their code. With
// LogKeys they are there, as Django's warning quotes the key.
func TestLogsCarryNoKeys(t *testing.T) {
	t.Parallel()
	const secret = "alice smith@example.com"
	for _, logKeys := range []bool{false, true} {
		logs := &dbtest.LogBuffer{}
		tr := &panickyTracer{}
		b := setup(t, &dbcache.Config{LogKeys: logKeys, Tracer: tr, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		ctx := ctxT(t)
		// The memcached key warning (a space).
		require.NoError(t, b.cache.Set(ctx, "user:"+secret, []byte("v"), dbcache.DefaultTimeout))
		require.Equal(t, 1, logs.Count("will cause errors if used with memcached"))
		// A failed refresh, whose loader's error names the key.
		fresh, stale := time.Duration(0), time.Hour
		_, err := b.cache.GetOrSet(ctx, "r", []byte("stale"), dbcache.ExpiresIn(fresh+stale))
		require.NoError(t, err)
		_, err = b.cache.GetOrRevalidate(ctx, "r", func(context.Context) ([]byte, error) {
			return nil, errors.New("no row for user:" + secret)
		}, fresh, stale)
		require.NoError(t, err)
		waitFor(t, func() bool { return b.cache.Stats().RefreshFailures == 1 })
		waitFor(t, func() bool { return logs.Count("refresh failed") == 1 })
		require.Contains(t, logs.String(), "error_code=loader")
		// A recovered panic whose value holds the key.
		tr.panicLoad.Store(true)
		_, err = b.cache.GetOrSetFunc(ctx, "p", func(context.Context) ([]byte, error) { return []byte("v"), nil }, dbcache.DefaultTimeout)
		require.Error(t, err)
		require.Equal(t, 1, logs.Count("recovered a panic"))
		if logKeys {
			require.Equal(t, 3, strings.Count(logs.String(), secret), logs.String())
		} else {
			require.NotContains(t, logs.String(), secret)
			require.NotContains(t, logs.String(), "carol")
		}
	}
}

// ErrorCode gives each error a stable code, including errors of the
// layers above that name their own.
func TestErrorCode(t *testing.T) {
	t.Parallel()
	for err, want := range map[error]string{
		nil:                                  "",
		context.Canceled:                     "canceled",
		&dbcache.InvalidKeyError{Key: "k"}:   "invalid_key",
		dbcache.ErrNotInteger:                "not_integer",
		dbcache.ErrOverflow:                  "overflow",
		dbcache.ErrClosed:                    "closed",
		dbcache.ErrNotMigrated:               "not_migrated",
		dbcache.ErrPrefixUnsupported:         "prefix_unsupported",
		&dbcache.LoaderPanicError{Value: 1}:  "loader_panic",
		&dbcache.HookPanicError{Value: 1}:    "hook_panic",
		&dbcache.LoaderError{Err: coded{}}:   "loader",
		wrapped{coded{}}:                     "mine",
		context.DeadlineExceeded:             "timeout",
		&pgconn.PgError{Code: "57P01"}:       "transient",
		&pgconn.PgError{Code: "42501"}:       "database",
		errors.New("user:carol@example.com"): "other",
	} {
		require.Equal(t, want, dbcache.ErrorCode(err), "%v", err)
	}
}

type coded struct{}

func (coded) Error() string     { return "coded" }
func (coded) ErrorCode() string { return "mine" }

type wrapped struct{ error }

func (w wrapped) Unwrap() error { return w.error }
