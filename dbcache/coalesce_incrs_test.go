package dbcache_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// Many goroutines Incr and Decr a few counters through one slot, on a C and
// an ICU database and one whose default isolation is repeatable read:
// every counter ends at its exact total, each Incr of a counter returned a
// value no other returned, and some statements applied several.
func TestCoalesceIncrsConcurrent(t *testing.T) {
	t.Parallel()
	for name, p := range map[string]dbtest.Profile{
		"c":               {Collation: dbtest.CollationC},
		"icu":             {Collation: dbtest.CollationLinguistic},
		"repeatable-read": {Collation: dbtest.CollationC, Isolation: "repeatable read"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.SchemaWith(t, p)
			s.Migrate(t)
			b := setupOn(t, s.Pool(t), &dbcache.Config{CoalesceIncrs: 1, FastCommit: true})
			ctx := ctxT(t)
			keys := []string{"a", "B", "aa", "Ab"} // ICU and "C" order them differently
			for _, k := range keys {
				require.NoError(t, b.cache.Set(ctx, k, []byte("0"), dbcache.Forever))
			}
			const workers, rounds = 16, 40
			var mu sync.Mutex
			seen := map[string]map[int64]bool{}
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range rounds {
						k := keys[(w+i)%len(keys)]
						var n int64
						var err error
						if k == "B" {
							n, err = b.cache.Decr(ctx, k, 1) // B counts down
						} else {
							n, err = b.cache.Incr(ctx, k, 1)
						}
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						if seen[k] == nil {
							seen[k] = map[int64]bool{}
						}
						if seen[k][n] {
							t.Errorf("two Incrs of %s returned %d", k, n)
						}
						seen[k][n] = true
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			each := workers * rounds / len(keys)
			for _, k := range keys {
				want := fmt.Sprint(each)
				if k == "B" {
					want = fmt.Sprint(-each)
				}
				require.Equal(t, want, mustGet(t, b.cache, k), k)
				require.Len(t, seen[k], each, k)
			}
			require.Positive(t, dbcache.CoalescedIncrBatches(b.cache), "16 goroutines through 1 slot never shared a statement")
		})
	}
}

// holdIncrSlot occupies the only Incr slot with an Incr that waits on a row
// lock until release is called.
func holdIncrSlot(t *testing.T, b *testBundle) (release func()) {
	t.Helper()
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "busy", []byte("0"), dbcache.Forever))
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM dbcache_entries WHERE key = ':1:busy' FOR UPDATE`)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := b.cache.Incr(ctx, "busy", 1); done <- err }()
	waitFor(t, func() bool { return dbcache.IncrsInflight(b.cache) == 1 })
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

// One batch of queued Incrs and Decrs: each caller gets exactly what its
// own statement would have given, in the order they queued: several
// Incrs of one key each add; a miss, a value that is no integer, an
// overflow (alone and only in sum), deltas of both signs on one key and
// Decr(MinInt64) each get their own answer, and change nothing where the
// single statement changes nothing; a caller that left before the batch
// changed nothing.
func TestCoalesceIncrsOwnAnswers(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{CoalesceIncrs: 1})
	ctx := ctxT(t)
	for k, v := range map[string]string{"n": "10", "text": "ten", "max": fmt.Sprint(int64(math.MaxInt64 - 5)),
		"sum": fmt.Sprint(int64(math.MaxInt64 - 5)), "mixed": "0", "min": "0", "left": "0"} {
		require.NoError(t, b.cache.Set(ctx, k, []byte(v), dbcache.Forever))
	}
	release := holdIncrSlot(t, b)
	type call struct {
		key   string
		delta int64 // Decr when negative
	}
	calls := []call{
		{"n", 2}, {"missing", 1}, {"n", 3}, {"text", 1}, {"max", 6}, {"sum", 3}, {"sum", 3},
		{"mixed", 5}, {"mixed", -2}, {"min", math.MinInt64}, {"n", 0},
	}
	type res struct {
		n   int64
		err error
	}
	results := make([]chan res, len(calls))
	queued := 0
	for i, c := range calls {
		results[i] = make(chan res, 1)
		go func() {
			var n int64
			var err error
			switch {
			case c.delta == math.MinInt64:
				n, err = b.cache.Decr(ctx, c.key, math.MinInt64)
			case c.delta < 0:
				n, err = b.cache.Decr(ctx, c.key, -c.delta)
			default:
				n, err = b.cache.Incr(ctx, c.key, c.delta)
			}
			results[i] <- res{n, err}
		}()
		if c.delta != math.MinInt64 { // Decr(MinInt64) never queues
			queued++
			waitFor(t, func() bool { return dbcache.IncrsPending(b.cache) == queued })
		} else {
			r := <-results[i]
			require.ErrorIs(t, r.err, dbcache.ErrOverflow)
			results[i] <- r
		}
	}
	gone, cancel := context.WithCancel(ctx)
	leftErr := make(chan error, 1)
	go func() { _, err := b.cache.Incr(gone, "left", 1); leftErr <- err }()
	waitFor(t, func() bool { return dbcache.IncrsPending(b.cache) == queued+1 })
	cancel()
	require.ErrorIs(t, <-leftErr, context.Canceled)
	release()
	got := make([]res, len(calls))
	for i := range calls {
		got[i] = <-results[i]
	}
	require.Equal(t, res{12, nil}, got[0])
	require.ErrorIs(t, got[1].err, dbcache.ErrMiss)
	require.Equal(t, res{15, nil}, got[2])
	require.ErrorIs(t, got[3].err, dbcache.ErrNotInteger)
	require.ErrorIs(t, got[4].err, dbcache.ErrOverflow)
	// Of two Incrs of sum whose total overflows, the first fits: alone,
	// in either order, one succeeds and one overflows.
	require.True(t, (got[5].err == nil) != (got[6].err == nil), "sum: %v, %v", got[5], got[6])
	for _, r := range got[5:7] {
		if r.err == nil {
			require.EqualValues(t, math.MaxInt64-2, r.n)
		} else {
			require.ErrorIs(t, r.err, dbcache.ErrOverflow)
		}
	}
	require.NoError(t, got[7].err)
	require.NoError(t, got[8].err)
	// Mixed signs on one key: each alone, in either order.
	require.True(t, (got[7].n == 5 && got[8].n == 3) || (got[8].n == -2 && got[7].n == 3), "mixed: %v, %v", got[7], got[8])
	require.Equal(t, res{15, nil}, got[10])
	require.Equal(t, "15", mustGet(t, b.cache, "n"))
	requireMiss(t, b.cache, "missing")
	require.Equal(t, "ten", mustGet(t, b.cache, "text"))
	require.Equal(t, fmt.Sprint(int64(math.MaxInt64-5)), mustGet(t, b.cache, "max"))
	require.Equal(t, fmt.Sprint(int64(math.MaxInt64-2)), mustGet(t, b.cache, "sum"))
	require.Equal(t, "3", mustGet(t, b.cache, "mixed"))
	require.Equal(t, "0", mustGet(t, b.cache, "min"))
	require.Equal(t, "0", mustGet(t, b.cache, "left"))
	require.EqualValues(t, 1, dbcache.CoalescedIncrBatches(b.cache))
}

// Incrs in a transaction are never coalesced: they commit with it.
func TestCoalesceIncrsNotInTx(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{CoalesceIncrs: 1})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "n", []byte("1"), dbcache.Forever))
	release := holdIncrSlot(t, b)
	defer release()
	require.NoError(t, pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		n, err := b.cache.WithTx(tx).Incr(ctx, "n", 1)
		require.Equal(t, int64(2), n)
		return err
	}))
	require.Zero(t, dbcache.IncrsPending(b.cache))
}

// Coalesced Incrs have no Citus form: a cache in the Citus forms runs every
// Incr as its own statement, whatever CoalesceIncrs says.
func TestCoalesceIncrsOffUnderCitus(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{CoalesceIncrs: 1, Citus: dbcache.CitusOn})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "n", []byte("0"), dbcache.Forever))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 20 {
				if _, err := b.cache.Incr(ctx, "n", 1); err != nil {
					t.Error(err)
					return
				}
				if n := dbcache.IncrsInflight(b.cache); n != 0 {
					t.Errorf("%d Incrs in the coalescer's slots", n)
					return
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, "320", mustGet(t, b.cache, "n"))
	require.Zero(t, dbcache.CoalescedIncrBatches(b.cache))
}

// Write coalescing is on by default with FastCommit, at
// CoalesceWritesFastDefault slots, and off without; -1 turns it off and a
// positive value is the slot count, for Sets and Incrs apart. A lone
// writer under the default never waits for a batch: 100 Sets and 100
// Incrs one after another are each their own statement.
func TestCoalesceWritesDefault(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	d := dbcache.CoalesceWritesFastDefault
	for _, tc := range []struct {
		cfg         dbcache.Config
		sets, incrs int
	}{
		{dbcache.Config{}, 0, 0},
		{dbcache.Config{FastCommit: true}, d, d},
		{dbcache.Config{FastCommit: true, CoalesceSets: -1}, 0, d},
		{dbcache.Config{FastCommit: true, CoalesceIncrs: -1, CoalesceSets: 5}, 5, 0},
		{dbcache.Config{CoalesceIncrs: 3}, 0, 3},
	} {
		c, err := dbcache.New(ctx, b.pool, &tc.cfg)
		require.NoError(t, err)
		sets, incrs := dbcache.WriteCoalescers(c)
		require.Equal(t, [2]int{tc.sets, tc.incrs}, [2]int{sets, incrs}, "%+v", tc.cfg)
		require.NoError(t, c.Close())
	}
	c, err := dbcache.New(ctx, b.pool, &dbcache.Config{FastCommit: true})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Set(ctx, "n", []byte("0"), dbcache.Forever))
	for i := range 100 {
		require.NoError(t, c.Set(ctx, fmt.Sprint("k", i), []byte("v"), dbcache.DefaultTimeout))
		n, err := c.Incr(ctx, "n", 1)
		require.NoError(t, err)
		require.EqualValues(t, i+1, n)
	}
	require.Zero(t, dbcache.CoalescedSetBatches(c))
	require.Zero(t, dbcache.CoalescedIncrBatches(c))
}
