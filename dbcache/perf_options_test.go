package dbcache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// exercise runs every operation once and checks its result: enough to show a
// statement variant (fast commit, a query mode) parses, binds and behaves.
func exercise(t *testing.T, c *dbcache.Cache) {
	t.Helper()
	ctx := ctxT(t)
	require.NoError(t, c.Clear(ctx))
	require.NoError(t, c.Set(ctx, "a", []byte("1"), dbcache.DefaultTimeout))
	require.NoError(t, c.Set(ctx, "forever", []byte{0, 1, 2, 255}, dbcache.Forever))
	require.Equal(t, "1", mustGet(t, c, "a"))
	require.Equal(t, string([]byte{0, 1, 2, 255}), mustGet(t, c, "forever"))
	requireMiss(t, c, "nope")
	ok, err := c.HasKey(ctx, "a")
	require.NoError(t, err)
	require.True(t, ok)

	ok, err = c.Add(ctx, "a", []byte("x"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.False(t, ok)
	ok, err = c.Add(ctx, "b", []byte(""), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "", mustGet(t, c, "b"))

	n, err := c.Incr(ctx, "a", 41)
	require.NoError(t, err)
	require.Equal(t, int64(42), n)
	_, err = c.Incr(ctx, "b", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	_, err = c.Incr(ctx, "nope", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)

	ok, err = c.Touch(ctx, "a", dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = c.Touch(ctx, "nope", dbcache.Forever)
	require.NoError(t, err)
	require.False(t, ok)

	v, err := c.GetOrSet(ctx, "gos", []byte("first"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "first", string(v))
	v, err = c.GetOrSet(ctx, "gos", []byte("second"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "first", string(v))

	to, err := c.IncrVersion(ctx, "gos", 1)
	require.NoError(t, err)
	require.Equal(t, 2, to)
	requireMiss(t, c, "gos")
	require.Equal(t, "first", mustGet(t, c.WithVersion(2), "gos"))

	failed, err := c.SetMany(ctx, map[string][]byte{"m1": []byte("v1"), "m2": {0, 255}}, dbcache.ExpiresIn(300e9))
	require.NoError(t, err)
	require.Empty(t, failed)
	got, err := c.GetMany(ctx, []string{"m1", "m2", "nope"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"m1": []byte("v1"), "m2": {0, 255}}, got)

	deleted, err := c.DeleteMany(ctx, []string{"m1", "m2", "nope"})
	require.NoError(t, err)
	require.Equal(t, 2, deleted)
	ok, err = c.Delete(ctx, "a")
	require.NoError(t, err)
	require.True(t, ok)
	requireMiss(t, c, "a")

	require.NoError(t, c.Clear(ctx))
	requireMiss(t, c, "forever")
}

// Every statement works in every pgx query mode, including the ones that
// work behind PgBouncer in transaction pooling (Exec, SimpleProtocol), with
// and without FastCommit.
func TestQueryExecModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
	} {
		for _, fast := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/fast=%v", mode, fast), func(t *testing.T) {
				t.Parallel()
				s := dbtest.NewSchema(t)
				s.Migrate(t)
				cfg := s.PoolConfig(t)
				cfg.ConnConfig.DefaultQueryExecMode = mode
				b := setupOn(t, newPool(t, cfg), &dbcache.Config{FastCommit: fast, KeyCheck: dbcache.KeyCheckOff})
				exercise(t, b.cache)
			})
		}
	}
}

// FastCommit really runs each write statement with synchronous_commit off:
// run each one inside a transaction and read the setting back. A planner that
// skipped the set_config would show "on".
func TestFastCommitSetsSynchronousCommit(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, &dbcache.Config{FastCommit: true})
	plain := setupOn(t, b.pool, nil)
	stmts := dbcache.Statements(b.cache)
	plainStmts := dbcache.Statements(plain.cache)
	us := int64(300e6)
	args := map[string][]any{
		"set":         {":1:k", []byte("1"), us},
		"add":         {":1:new", []byte("1"), us},
		"get_or_set":  {":1:k", []byte("1"), us},
		"touch":       {":1:k", us},
		"incr":        {":1:k", "1", int64(8)},
		"move":        {":1:k", ":2:k"},
		"delete":      {":1:k"},
		"set_many":    {[]string{":1:m"}, [][]byte{[]byte("v")}, us},
		"delete_many": {[]string{":1:m"}},
		"clear_batch": {"", 5000},
		// The fenced writes store under the lease the transaction adds.
		"get_or_set_leased": {":1:k", []byte("1"), us, "tok"},
		"set_leased":        {":1:k", []byte("1"), us, "tok"},
		// The rows below are inserted with token 7.
		"compare_and_swap":   {":1:k", int64(7), []byte("2"), us, int64(9)},
		"compare_and_delete": {":1:k", int64(7)},
		// The coalesced writes.
		"set_batch":  {[]string{":1:m"}, [][]byte{[]byte("v")}, []*int64{&us}},
		"incr_batch": {[]string{":1:k"}, []int64{1}, []int64{8}},
	}
	for op, a := range args {
		require.NotEqual(t, plainStmts[op], stmts[op], "%s has no fast-commit form", op)
		for _, fast := range []bool{true, false} {
			tx, err := b.pool.Begin(ctx)
			require.NoError(t, err)
			// A failed require ends the test with tx open, and the pool's
			// Close would wait for it forever: roll it back first (cleanups
			// run last-registered first, before the pool's Close). After
			// the Rollback below this one is a no-op.
			t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
			_, err = tx.Exec(ctx, `INSERT INTO dbcache_entries (key, value, expires, token) VALUES (':1:k', '1', NULL, 7), (':1:m', '1', NULL, 7)`)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `INSERT INTO dbcache_leases (key, token, expires) VALUES (':1:k', 'tok', statement_timestamp() + interval '1 hour')`)
			require.NoError(t, err)
			sql := plainStmts[op]
			if fast {
				sql = stmts[op]
			}
			tag, err := tx.Exec(ctx, sql, a...)
			require.NoError(t, err, op)
			require.Positive(t, tag.RowsAffected(), "%s wrote nothing", op)
			var setting string
			require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&setting))
			want := "on"
			if fast {
				want = "off"
			}
			require.Equal(t, want, setting, "%s fast=%v", op, fast)
			require.NoError(t, tx.Rollback(ctx))
		}
	}
	for _, op := range []string{"get", "has_key", "get_many", "incr_check", "get_with_token"} {
		require.Equal(t, plainStmts[op], stmts[op], "reads are never rewritten")
	}
	for _, op := range []string{"lease_acquire", "lease_extend", "lease_release"} {
		require.Equal(t, plainStmts[op], stmts[op], "the lease statements write an UNLOGGED table only: no WAL, nothing to flush")
	}
}

// A WithTx view must not change how the caller's transaction commits.
func TestFastCommitLeavesCallerTxAlone(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, &dbcache.Config{FastCommit: true})
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	c := b.cache.WithTx(tx)
	require.NoError(t, c.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	_, err = c.SetMany(ctx, map[string][]byte{"a": []byte("1")}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	_, err = c.Incr(ctx, "a", 1)
	require.NoError(t, err)
	var setting string
	require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&setting))
	require.Equal(t, "on", setting)
}

func TestCoalesceGetsValidate(t *testing.T) {
	t.Parallel()
	_, err := dbcache.New(ctxT(t), dbtest.Pool(t), &dbcache.Config{CoalesceGets: -2})
	require.ErrorContains(t, err, "CoalesceGets")
}

// Many concurrent Gets through few slots: every caller gets its own answer
// (hits, misses, empty values, one key asked by many), and some queries
// answered several Gets at once.
func TestCoalesceGetsConcurrent(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, &dbcache.Config{CoalesceGets: 1})
	const keys = 50
	items := map[string][]byte{"empty": {}}
	for i := range keys {
		items[fmt.Sprint("k", i)] = []byte(fmt.Sprint("v", i))
	}
	_, err := b.cache.SetMany(ctx, items, dbcache.DefaultTimeout)
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := range 100 {
				key := fmt.Sprint("k", (w*7+i)%(keys+10)) // some past the last key: misses
				if i%10 == 0 {
					key = "k0" // one key many callers ask for at once
				}
				if i%13 == 0 {
					key = "empty"
				}
				v, err := b.cache.Get(ctx, key)
				want, ok := items[key]
				switch {
				case !ok && !errors.Is(err, dbcache.ErrMiss):
					errs <- fmt.Errorf("%s: want a miss, got %q, %v", key, v, err)
					return
				case ok && (err != nil || string(v) != string(want) || v == nil):
					errs <- fmt.Errorf("%s: want %q, got %q, %v", key, want, v, err)
					return
				}
				if ok {
					v = append(v[:0], 'X') // callers own their slice
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Positive(t, dbcache.CoalescedBatches(b.cache), "16 goroutines through 1 slot never shared a query")
}

// A Get in a transaction view sees the transaction's own writes, so it must
// never be answered by a coalesced query on another connection.
func TestCoalesceGetsNotInTx(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	b := setup(t, &dbcache.Config{CoalesceGets: 1})
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	require.NoError(t, b.cache.WithTx(tx).Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	require.Equal(t, "v", mustGet(t, b.cache.WithTx(tx), "k"))
	requireMiss(t, b.cache, "k")
}

// A caller whose context ends stops waiting; the others are still answered.
func TestCoalesceGetsCanceled(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{CoalesceGets: 1})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := b.cache.Get(canceled, "k")
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, "v", mustGet(t, b.cache, "k"))
}
