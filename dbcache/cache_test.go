package dbcache_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestIncrIntegerForms(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	for _, tc := range []struct {
		stored string
		delta  int64
		want   int64
		err    error
	}{
		{"0", 1, 1, nil},
		{"-5", 3, -2, nil},
		{"9223372036854775806", 1, math.MaxInt64, nil},
		{"-9223372036854775807", -1, math.MinInt64, nil},
		{"9223372036854775807", 1, 0, dbcache.ErrOverflow},
		{"-9223372036854775808", -1, 0, dbcache.ErrOverflow},
		{"1", math.MaxInt64, 0, dbcache.ErrOverflow},
		{"9223372036854775808", 1, 0, dbcache.ErrNotInteger}, // not an int64
		{"+1", 1, 0, dbcache.ErrNotInteger},
		{"01", 1, 0, dbcache.ErrNotInteger},
		{"-0", 1, 0, dbcache.ErrNotInteger},
		{" 1", 1, 0, dbcache.ErrNotInteger},
		{"1 ", 1, 0, dbcache.ErrNotInteger},
		{"1.5", 1, 0, dbcache.ErrNotInteger},
		{"abc", 1, 0, dbcache.ErrNotInteger},
		{"", 1, 0, dbcache.ErrNotInteger},
		{"1\x00", 1, 0, dbcache.ErrNotInteger},
		{"\xff1", 1, 0, dbcache.ErrNotInteger},
		{"\\061", 1, 0, dbcache.ErrNotInteger}, // looks like an escape of "1"
	} {
		key := "k" + strconv.Quote(tc.stored)
		require.NoError(t, b.cache.Set(ctx, key, []byte(tc.stored), dbcache.DefaultTimeout))
		n, err := b.cache.Incr(ctx, key, tc.delta)
		if tc.err != nil {
			require.ErrorIs(t, err, tc.err, "stored %q", tc.stored)
			require.Equal(t, tc.stored, mustGet(t, b.cache, key), "value unchanged")
			continue
		}
		require.NoError(t, err, "stored %q", tc.stored)
		require.Equal(t, tc.want, n)
		require.Equal(t, strconv.FormatInt(tc.want, 10), mustGet(t, b.cache, key))
	}
	// Decr by MinInt64 is +2^63: overflow for anything >= 0, fine below.
	require.NoError(t, b.cache.Set(ctx, "d", []byte("0"), dbcache.DefaultTimeout))
	_, err := b.cache.Decr(ctx, "d", math.MinInt64)
	require.ErrorIs(t, err, dbcache.ErrOverflow)
	require.NoError(t, b.cache.Set(ctx, "d", []byte("-1"), dbcache.DefaultTimeout))
	n, err := b.cache.Decr(ctx, "d", math.MinInt64)
	require.NoError(t, err)
	require.Equal(t, int64(math.MaxInt64), n)
}

// Difference from Django: incr keeps the entry's expiry (Django resets it to
// the default timeout, ticket #26619), including "never".
func TestIncrKeepsExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "forever", []byte("1"), dbcache.Forever))
	require.NoError(t, b.cache.Set(ctx, "hour", []byte("1"), dbcache.ExpiresIn(time.Hour)))
	var before time.Time
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT expires FROM dbcache_entries WHERE key = ':1:hour'`).Scan(&before))
	_, err := b.cache.Incr(ctx, "forever", 1)
	require.NoError(t, err)
	_, err = b.cache.Incr(ctx, "hour", 1)
	require.NoError(t, err)
	var forever *time.Time
	var after time.Time
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT expires FROM dbcache_entries WHERE key = ':1:forever'`).Scan(&forever))
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT expires FROM dbcache_entries WHERE key = ':1:hour'`).Scan(&after))
	require.Nil(t, forever)
	require.True(t, before.Equal(after))
}

func TestVersionOverflow(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	top := b.cache.WithVersion(math.MaxInt)
	require.NoError(t, top.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	_, err := top.IncrVersion(ctx, "k", 1)
	require.ErrorIs(t, err, dbcache.ErrOverflow)
	require.Equal(t, "v", mustGet(t, top, "k"))
	_, err = b.cache.DecrVersion(ctx, "k", math.MinInt)
	require.ErrorIs(t, err, dbcache.ErrOverflow)
}

// 50 goroutines add one key: exactly one wins. Also over an expired row,
// which must be taken over by exactly one of them.
func TestConcurrentAddExactlyOneWins(t *testing.T) {
	t.Parallel()
	for _, expiredFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("expired=%v", expiredFirst), func(t *testing.T) {
			t.Parallel()
			b := setupConns(t, 16) // 50 goroutines still race: 16 statements in flight at once
			pool := b.pool
			ctx := ctxT(t)
			if expiredFirst {
				require.NoError(t, b.cache.Set(ctx, "lock", []byte("stale"), dbcache.ExpiresIn(time.Second)))
				travel(t, pool, time.Hour)
			}
			var wins atomic.Int32
			var winner atomic.Value
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					ok, err := b.cache.Add(ctx, "lock", []byte(strconv.Itoa(i)), dbcache.DefaultTimeout)
					if err != nil {
						t.Error(err)
						return
					}
					if ok {
						wins.Add(1)
						winner.Store(strconv.Itoa(i))
					}
				}()
			}
			close(start)
			wg.Wait()
			require.EqualValues(t, 1, wins.Load())
			require.Equal(t, winner.Load(), mustGet(t, b.cache, "lock"))
		})
	}
}

// 50 goroutines x 200 incrs of one key: the exact total.
func TestConcurrentIncrExactTotal(t *testing.T) {
	t.Parallel()
	b := setupConns(t, 12)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "counter", []byte("0"), dbcache.Forever))
	const workers, each = 50, 200
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := b.cache.Incr(ctx, "counter", 1); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.Equal(t, strconv.Itoa(workers*each), mustGet(t, b.cache, "counter"))
}

// Concurrent SetMany calls over overlapping keys, in opposite orders, and
// DeleteMany calls over the same keys, never deadlock.
func TestConcurrentSetManyNoDeadlock(t *testing.T) {
	t.Parallel()
	b := setupConns(t, 12)
	ctx := ctxT(t)
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%03d", i)
	}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 20 {
				items := map[string][]byte{}
				for i := range keys {
					idx := i
					if (w+round)%2 == 1 {
						idx = len(keys) - 1 - i
					}
					if (idx+w)%3 != 0 {
						items[keys[idx]] = []byte(strconv.Itoa(w))
					}
				}
				if _, err := b.cache.SetMany(ctx, items, dbcache.DefaultTimeout); err != nil {
					t.Error(err)
					return
				}
				if w%4 == 0 {
					if _, err := b.cache.DeleteMany(ctx, keys[w:w+50]); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait() // a deadlock would have failed a batch with SQLSTATE 40P01 above
}

// Every racing GetOrSet returns the same, first stored value.
func TestConcurrentGetOrSetConverges(t *testing.T) {
	t.Parallel()
	b := setupConns(t, 12)
	ctx := ctxT(t)
	results := make([]string, 40)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v, err := b.cache.GetOrSetFunc(ctx, "k", func(context.Context) ([]byte, error) {
				return []byte(strconv.Itoa(i)), nil
			}, dbcache.DefaultTimeout)
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = string(v)
		}()
	}
	close(start)
	wg.Wait()
	stored := mustGet(t, b.cache, "k")
	for _, r := range results {
		require.Equal(t, stored, r)
	}
}

func TestClosedCache(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	view := b.cache.WithVersion(2)
	require.NoError(t, b.cache.Close())
	for op, err := range everyOp(ctx, view, "k") {
		require.ErrorIs(t, err, dbcache.ErrClosed, op)
	}
	_, err := b.cache.HasKey(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrClosed)
	_, err = b.cache.GetOrSet(ctx, "k", nil, dbcache.DefaultTimeout)
	require.ErrorIs(t, err, dbcache.ErrClosed)
	_, err = b.cache.IncrVersion(ctx, "k", 1)
	require.ErrorIs(t, err, dbcache.ErrClosed)
	require.ErrorIs(t, b.cache.Clear(ctx), dbcache.ErrClosed)
	// The caller's pool stays open.
	require.NoError(t, b.pool.Ping(ctx))
}

func TestOpenOwnsItsPool(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	ctx := ctxT(t)
	c, err := dbcache.Open(ctx, s.URL, &dbcache.Config{Schema: s.Name})
	require.NoError(t, err)
	require.NoError(t, c.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	require.Equal(t, "v", mustGet(t, c, "k"))
	require.NoError(t, c.Close())
	_, err = c.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrClosed)
}

func TestNotMigrated(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t) // no migrations
	ctx := ctxT(t)
	_, err := dbcache.New(ctx, s.Pool(t), nil)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	require.Contains(t, err.Error(), "migrate up")

	// A table dropped under a running cache gives the same error.
	b := setup(t, nil)
	dbtest.Exec(t, b.pool, "DROP TABLE dbcache_entries")
	_, err = b.cache.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "the PostgreSQL error is still reachable")
}

// A role that may use the table but not its schema is told so, not sent to
// run migrations.
func TestNoSchemaUsageIsNotNotMigrated(t *testing.T) {
	t.Parallel()
	s := dbtest.NewSchema(t)
	s.Migrate(t)
	admin := s.Pool(t)
	role := "dbct_role_" + s.Name[len("dbct_"):]
	dbtest.Exec(t, admin, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN")
	t.Cleanup(func() {
		dbtest.Exec(t, admin, "DROP OWNED BY "+pgx.Identifier{role}.Sanitize())
		dbtest.Exec(t, admin, "DROP ROLE "+pgx.Identifier{role}.Sanitize())
	})
	dbtest.Exec(t, admin, "GRANT SELECT, INSERT, UPDATE, DELETE ON "+pgx.Identifier{s.Name, "dbcache_entries"}.Sanitize()+" TO "+pgx.Identifier{role}.Sanitize())
	cfg := s.PoolConfig(t)
	cfg.ConnConfig.User = role
	cfg.ConnConfig.Password = ""
	_, err := dbcache.New(ctxT(t), newPool(t, cfg), nil)
	require.Error(t, err)
	require.NotErrorIs(t, err, dbcache.ErrNotMigrated)
	require.Contains(t, err.Error(), "lacks USAGE")
}

func TestInvalidConfig(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	_, err := dbcache.New(ctx, b.pool, &dbcache.Config{Schema: `a"; drop table x; --`})
	require.ErrorContains(t, err, "Config.Schema")
	_, err = dbcache.New(ctx, b.pool, &dbcache.Config{KeyCheck: 9})
	require.ErrorContains(t, err, "Config.KeyCheck")
	_, err = dbcache.New(ctx, nil, nil)
	require.Error(t, err)
}

// Two caches in one database are two schemas; Config.Schema picks one
// regardless of search_path.
func TestTwoSchemasAreTwoCaches(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	s1, s2 := dbtest.NewSchema(t), dbtest.NewSchema(t)
	s1.Migrate(t)
	s2.Migrate(t)
	pool := s1.Pool(t) // search_path = s1
	c1 := setupOn(t, pool, nil).cache
	c2 := setupOn(t, pool, &dbcache.Config{Schema: s2.Name}).cache
	require.NoError(t, c1.Set(ctx, "k", []byte("one"), dbcache.DefaultTimeout))
	require.NoError(t, c2.Set(ctx, "k", []byte("two"), dbcache.DefaultTimeout))
	require.Equal(t, "one", mustGet(t, c1, "k"))
	require.Equal(t, "two", mustGet(t, c2, "k"))
	require.NoError(t, c2.Clear(ctx))
	require.Equal(t, "one", mustGet(t, c1, "k"))
}

// WithTx: cache writes commit or roll back with the caller's transaction,
// and an add that loses inside a transaction does not abort it.
func TestWithTx(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "taken", []byte("x"), dbcache.DefaultTimeout))

	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	tc := b.cache.WithTx(tx)
	require.NoError(t, tc.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	ok, err := tc.Add(ctx, "taken", []byte("y"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.False(t, ok)
	_, err = tc.Incr(ctx, "taken", 1) // not an integer: an error, not an aborted transaction
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	require.Equal(t, "v", mustGet(t, tc, "k"), "visible inside the transaction")
	requireMiss(t, b.cache, "k") // not outside it yet
	require.NoError(t, tx.Rollback(ctx))
	requireMiss(t, b.cache, "k")

	require.NoError(t, pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		return b.cache.WithTx(tx).Set(ctx, "k", []byte("committed"), dbcache.DefaultTimeout)
	}))
	require.Equal(t, "committed", mustGet(t, b.cache, "k"))
}

// Bulk operations and has_key are one round trip each (Django's
// test_get_many_num_queries, test_delete_many_num_queries,
// test_has_key_query_columns_quoted), whatever the session's default
// isolation: at repeatable read a write runs wrapped in a READ COMMITTED
// transaction, sent as one pipeline, which is one round trip too. (The
// count used to miss pipelines, so on a repeatable-read database the
// wrapped writes counted 0.)
func TestOneRoundTripEach(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"", "repeatable read"} {
		t.Run(cmp.Or(level, "database default"), func(t *testing.T) {
			t.Parallel()
			s := dbtest.NewSchema(t)
			s.Migrate(t)
			cfg := s.PoolConfig(t)
			if level != "" {
				cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = level
			}
			tracer := &countingTracer{}
			cfg.ConnConfig.Tracer = tracer
			b := setupOn(t, newPool(t, cfg), nil)
			ctx := ctxT(t)
			items := map[string][]byte{}
			keys := []string{}
			for i := range 100 {
				k := "k" + strconv.Itoa(i)
				items[k] = []byte(k)
				keys = append(keys, k)
			}
			count := func(f func()) int64 {
				before := tracer.n.Load()
				f()
				return tracer.n.Load() - before
			}
			require.EqualValues(t, 1, count(func() { _, _ = b.cache.SetMany(ctx, items, dbcache.DefaultTimeout) }))
			require.NoError(t, b.cache.Set(ctx, "k0", []byte("x"), dbcache.ExpiresIn(-time.Second))) // one expired among them
			require.EqualValues(t, 1, count(func() {
				got, err := b.cache.GetMany(ctx, keys)
				require.NoError(t, err)
				require.Len(t, got, 99)
			}))
			require.EqualValues(t, 1, count(func() { _, _ = b.cache.HasKey(ctx, "k1") }))
			require.NoError(t, b.cache.Set(ctx, "n", []byte("5"), dbcache.DefaultTimeout))
			require.EqualValues(t, 1, count(func() {
				n, err := b.cache.Incr(ctx, "n", 1)
				require.NoError(t, err)
				require.EqualValues(t, 6, n)
			}))
			require.EqualValues(t, 2, count(func() { _, _ = b.cache.Incr(ctx, "nope", 1) }), "a failed incr reads once more to say why")
			require.EqualValues(t, 1, count(func() { _, _ = b.cache.DeleteMany(ctx, keys[:3]) }))
			require.EqualValues(t, 1, count(func() { _ = b.cache.Set(ctx, "a", nil, dbcache.DefaultTimeout) }))
		})
	}
}

// countingTracer counts round trips: each query, and each pipeline (a pgx
// batch) as one.
type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *countingTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.n.Add(1)
	return ctx
}
func (c *countingTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *countingTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// A dead server: operations fail promptly within the context, and never
// panic.
func TestUnreachableServer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	cfg := b.pool.Config()
	cfg.ConnConfig.Host = "127.0.0.1"
	cfg.ConnConfig.Port = 1 // nothing listens there
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	dead, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err) // pgxpool connects lazily
	t.Cleanup(dead.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = dbcache.New(ctx, dead, nil)
	require.Error(t, err)
	require.NotErrorIs(t, err, dbcache.ErrNotMigrated)
}

func TestOnWriteHook(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	b := setup(t, &dbcache.Config{OnWrite: func(rows int) { n.Add(int64(rows)) }})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "a", nil, dbcache.DefaultTimeout))
	_, _ = b.cache.Add(ctx, "a", nil, dbcache.DefaultTimeout) // not stored: no write
	_, _ = b.cache.Add(ctx, "b", nil, dbcache.DefaultTimeout)
	_, _ = b.cache.SetMany(ctx, map[string][]byte{"c": nil, "d": nil, "e": nil}, dbcache.DefaultTimeout)
	require.EqualValues(t, 5, n.Load())
}
