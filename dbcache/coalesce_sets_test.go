package dbcache_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// Many goroutines Set through one slot: every Set is stored, with its own
// expiry, and some statements wrote several.
func TestCoalesceSetsConcurrent(t *testing.T) {
	t.Parallel()
	for _, fast := range []bool{false, true} {
		b := setup(t, &dbcache.Config{CoalesceSets: 1, FastCommit: fast, KeyPrefix: fmt.Sprint(fast)})
		ctx := ctxT(t)
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Go(func() {
				for i := range 40 {
					timeout := dbcache.DefaultTimeout
					if i%3 == 0 {
						timeout = dbcache.Forever
					}
					if err := b.cache.Set(ctx, fmt.Sprintf("w%d-%d", w, i), []byte(fmt.Sprint(w, i)), timeout); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		for w := range 16 {
			for i := range 40 {
				require.Equal(t, fmt.Sprint(w, i), mustGet(t, b.cache, fmt.Sprintf("w%d-%d", w, i)))
				ttl, err := b.cache.TTL(ctx, fmt.Sprintf("w%d-%d", w, i))
				require.NoError(t, err)
				require.Equal(t, i%3 == 0, ttl.IsForever())
			}
		}
		require.Positive(t, dbcache.CoalescedSetBatches(b.cache), "16 goroutines through 1 slot never shared a statement")
	}
}

// holdSlot occupies the only Set slot with a Set that waits on a row lock
// until release is called.
func holdSlot(t *testing.T, b *testBundle) (release func()) {
	t.Helper()
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "busy", nil, dbcache.DefaultTimeout))
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = ':1:busy' FOR UPDATE`)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- b.cache.Set(ctx, "busy", []byte("x"), dbcache.DefaultTimeout) }()
	waitFor(t, func() bool { return dbcache.SetsInflight(b.cache) == 1 })
	var once sync.Once
	release = func() {
		once.Do(func() {
			require.NoError(t, tx.Rollback(ctx))
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(func() {
		once.Do(func() { _ = tx.Rollback(context.Background()) })
	})
	return release
}

// Two Sets of one key in one batch keep their order; a caller that leaves
// before its batch writes nothing; everyone else gets nil.
func TestCoalesceSetsOrderAndCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{CoalesceSets: 1})
	ctx := ctxT(t)
	release := holdSlot(t, b)
	errs := make(chan error, 3)
	go func() { errs <- b.cache.Set(ctx, "k", []byte("first"), dbcache.DefaultTimeout) }()
	waitFor(t, func() bool { return dbcache.SetsPending(b.cache) == 1 })
	go func() { errs <- b.cache.Set(ctx, "k", []byte("second"), dbcache.DefaultTimeout) }()
	waitFor(t, func() bool { return dbcache.SetsPending(b.cache) == 2 })
	gone, cancel := context.WithCancel(ctx)
	leftErr := make(chan error, 1)
	go func() { leftErr <- b.cache.Set(gone, "left", []byte("x"), dbcache.DefaultTimeout) }()
	waitFor(t, func() bool { return dbcache.SetsPending(b.cache) == 3 })
	cancel()
	require.ErrorIs(t, <-leftErr, context.Canceled)
	release()
	require.NoError(t, <-errs)
	require.NoError(t, <-errs)
	require.Equal(t, "second", mustGet(t, b.cache, "k"))
	requireMiss(t, b.cache, "left")
	require.EqualValues(t, 1, dbcache.CoalescedSetBatches(b.cache))
}

// A batch the server refuses for one row's sake: each caller gets what its
// own statement would have given, so the others are stored.
func TestCoalesceSetsOwnErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{CoalesceSets: 1})
	ctx := ctxT(t)
	_, err := b.pool.Exec(ctx, `ALTER TABLE dbcache_entries ADD CONSTRAINT small CHECK (length(value) < 10) NOT VALID`)
	require.NoError(t, err)
	release := holdSlot(t, b)
	type res struct {
		key string
		err error
	}
	results := make(chan res, 3)
	for i, v := range []string{"ok", "far too long a value", "fine"} {
		key := fmt.Sprint("k", i)
		go func() { results <- res{key, b.cache.Set(ctx, key, []byte(v), dbcache.DefaultTimeout)} }()
		waitFor(t, func() bool { return dbcache.SetsPending(b.cache) == i+1 })
	}
	release()
	got := map[string]error{}
	for range 3 {
		r := <-results
		got[r.key] = r.err
	}
	require.NoError(t, got["k0"])
	require.Error(t, got["k1"])
	require.NoError(t, got["k2"])
	require.Equal(t, "ok", mustGet(t, b.cache, "k0"))
	requireMiss(t, b.cache, "k1")
	require.Equal(t, "fine", mustGet(t, b.cache, "k2"))
}

// Sets in a transaction are never coalesced: they commit with it.
func TestCoalesceSetsNotInTx(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{CoalesceSets: 1})
	ctx := ctxT(t)
	require.NoError(t, pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		return b.cache.WithTx(tx).Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout)
	}))
	require.Equal(t, "v", mustGet(t, b.cache, "k"))
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, b.cache.WithTx(tx).Set(ctx, "r", []byte("v"), dbcache.DefaultTimeout))
	require.NoError(t, tx.Rollback(ctx))
	requireMiss(t, b.cache, "r")
}
