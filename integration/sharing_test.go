package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// Two application instances share a cache: two pools (separate connections,
// as two processes would have) and two Caches over one table. Whatever one
// does, the other sees, and racing operations across them keep the
// single-statement guarantees.

// sharingBundle is two app instances on one cache table.
type sharingBundle struct {
	caches [2]*dbcache.Cache
	pools  [2]*pgxpool.Pool
}

func setupSharing(t *testing.T, cfg *dbcache.Config) *sharingBundle {
	t.Helper()
	sc := sharedSchema(t)
	b := &sharingBundle{}
	for i := range b.caches {
		b.pools[i] = sc.Pool(t)
		b.caches[i], _ = cacheOn(t, b.pools[i], cfg)
	}
	return b
}

// race runs f(instance, worker) on workers goroutines per instance, all let go
// at once, and waits for them.
func race(workers int, f func(inst, worker int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for inst := range 2 {
		for w := range workers {
			wg.Go(func() {
				<-start
				f(inst, w)
			})
		}
	}
	close(start)
	wg.Wait()
}

func TestSharingAddRace(t *testing.T) {
	t.Parallel()
	b := setupSharing(t, nil)
	ctx := ctxT(t)
	const keys, workers = 40, 4

	// Half the keys start with an expired entry, which an Add takes over.
	for k := 0; k < keys; k += 2 {
		require.NoError(t, b.caches[k%2].Set(ctx, "add-"+strconv.Itoa(k), []byte("stale"), dbcache.ExpiresIn(-time.Second)))
	}
	var (
		mu      sync.Mutex
		winners = map[string][]string{}
		errs    atomic.Int64
	)
	race(workers, func(inst, w int) {
		me := fmt.Sprintf("inst%d-w%d", inst, w)
		for k := range keys {
			key := "add-" + strconv.Itoa(k)
			ok, err := b.caches[inst].Add(ctx, key, []byte(me), dbcache.Forever)
			if err != nil {
				errs.Add(1)
				t.Errorf("add %s by %s: %v", key, me, err)
				continue
			}
			if ok {
				mu.Lock()
				winners[key] = append(winners[key], me)
				mu.Unlock()
			}
		}
	})
	require.Zero(t, errs.Load())
	require.Len(t, winners, keys)
	for k := range keys {
		key := "add-" + strconv.Itoa(k)
		require.Len(t, winners[key], 1, "exactly one Add of %s wins across both instances", key)
		for _, c := range b.caches {
			v, err := c.Get(ctx, key)
			require.NoError(t, err)
			require.Equal(t, winners[key][0], string(v), "both instances read the winner's value")
		}
	}
}

func TestSharingIncrTotals(t *testing.T) {
	t.Parallel()
	b := setupSharing(t, nil)
	ctx := ctxT(t)
	const workers, rounds = 4, 150
	require.NoError(t, b.caches[0].Set(ctx, "counter", []byte("0"), dbcache.Forever))
	require.NoError(t, b.caches[1].Set(ctx, "gauge", []byte("1000000"), dbcache.Forever))

	var want atomic.Int64
	race(workers, func(inst, w int) {
		c := b.caches[inst]
		for i := range rounds {
			delta := int64(1 + (inst*workers+w+i)%7)
			if _, err := c.Incr(ctx, "counter", delta); err != nil {
				t.Errorf("incr: %v", err)
				return
			}
			want.Add(delta)
			if _, err := c.Decr(ctx, "gauge", 1); err != nil {
				t.Errorf("decr: %v", err)
				return
			}
		}
	})
	for _, c := range b.caches {
		v, err := c.Get(ctx, "counter")
		require.NoError(t, err)
		require.Equal(t, strconv.FormatInt(want.Load(), 10), string(v), "no increment lost across instances")
		v, err = c.Get(ctx, "gauge")
		require.NoError(t, err)
		require.Equal(t, strconv.Itoa(1000000-2*workers*rounds), string(v), "no decrement lost across instances")
	}
}

func TestSharingGetOrSetConvergence(t *testing.T) {
	t.Parallel()
	b := setupSharing(t, nil)
	ctx := ctxT(t)
	const keys, workers = 25, 4

	// Some keys start with an expired entry: never returned, taken over.
	for k := 0; k < keys; k += 3 {
		require.NoError(t, b.caches[0].Set(ctx, "gos-"+strconv.Itoa(k), []byte("stale"), dbcache.ExpiresIn(-time.Second)))
	}
	var (
		mu    sync.Mutex
		got   = map[string]map[string]bool{} // key -> values returned
		loads atomic.Int64
	)
	race(workers, func(inst, w int) {
		me := fmt.Sprintf("inst%d-w%d", inst, w)
		for k := range keys {
			key := "gos-" + strconv.Itoa(k)
			var v []byte
			var err error
			if w%2 == 0 {
				v, err = b.caches[inst].GetOrSet(ctx, key, []byte(me), dbcache.Forever)
			} else {
				v, err = b.caches[inst].GetOrSetFunc(ctx, key, func(context.Context) ([]byte, error) {
					loads.Add(1)
					return []byte(me), nil
				}, dbcache.Forever)
			}
			if err != nil {
				t.Errorf("get_or_set %s: %v", key, err)
				continue
			}
			mu.Lock()
			if got[key] == nil {
				got[key] = map[string]bool{}
			}
			got[key][string(v)] = true
			mu.Unlock()
		}
	})
	require.Len(t, got, keys)
	for key, vals := range got {
		require.Len(t, vals, 1, "every caller of %s, in both instances, returns the same value: %v", key, vals)
		require.NotContains(t, vals, "stale", "an expired value is never returned")
		for v := range vals {
			for _, c := range b.caches {
				stored, err := c.Get(ctx, key)
				require.NoError(t, err)
				require.Equal(t, v, string(stored), "what callers returned is what is stored")
			}
		}
	}
	require.LessOrEqual(t, loads.Load(), int64(keys*workers), "loaders run only on misses")
}

// Overlapping batches from both instances, in every order, never deadlock
// and never leave a row that no batch wrote.
func TestSharingBatchesNoDeadlock(t *testing.T) {
	t.Parallel()
	b := setupSharing(t, nil)
	ctx := ctxT(t)
	const keys, workers, rounds = 60, 3, 12

	race(workers, func(inst, w int) {
		rng := rand.New(rand.NewPCG(uint64(inst), uint64(w)))
		c := b.caches[inst]
		for r := range rounds {
			perm := rng.Perm(keys)[:20+rng.IntN(30)]
			if r%3 == 2 {
				del := make([]string, len(perm))
				for i, k := range perm {
					del[i] = "b-" + strconv.Itoa(k)
				}
				if _, err := c.DeleteMany(ctx, del); err != nil {
					t.Errorf("delete_many: %v", err)
					return
				}
				continue
			}
			items := map[string][]byte{}
			for _, k := range perm {
				key := "b-" + strconv.Itoa(k)
				items[key] = []byte(key + "=" + strconv.Itoa(inst))
			}
			failed, err := c.SetMany(ctx, items, dbcache.Forever)
			if err != nil {
				t.Errorf("set_many: %v (failed %d keys)", err, len(failed))
				return
			}
			if len(failed) != 0 {
				t.Errorf("set_many reported failed keys without an error: %v", failed)
			}
		}
	})
	for k, r := range scan(t, b.pools[0]) {
		key := k[len(":1:"):]
		require.Contains(t, []string{key + "=0", key + "=1"}, string(r.value), "row %s holds a value some batch wrote", k)
	}
}

// Prefixes keep two caches on one table apart; versions are shared; Clear
// empties the whole table, for every prefix (as Django's clear does).
func TestSharingPrefixesVersionsAndClear(t *testing.T) {
	t.Parallel()
	sc := sharedSchema(t)
	pa, pb := sc.Pool(t), sc.Pool(t)
	a, _ := cacheOn(t, pa, &dbcache.Config{KeyPrefix: "a"})
	a2, _ := cacheOn(t, pb, &dbcache.Config{KeyPrefix: "a"})
	z, _ := cacheOn(t, pb, &dbcache.Config{KeyPrefix: "z"})
	ctx := ctxT(t)

	require.NoError(t, a.Set(ctx, "k", []byte("from a"), dbcache.Forever))
	require.NoError(t, z.Set(ctx, "k", []byte("from z"), dbcache.Forever))
	v, err := a2.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "from a", string(v), "same prefix on another instance: same entry")
	v, err = z.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "from z", string(v), "another prefix: another entry")

	to, err := a.IncrVersion(ctx, "k", 1)
	require.NoError(t, err)
	require.Equal(t, 2, to)
	_, err = a2.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrMiss, "the other instance sees the move")
	v, err = a2.WithVersion(2).Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "from a", string(v))

	require.NoError(t, a2.Clear(ctx))
	require.Empty(t, scanKeys(t, pa), "clear empties the table for every prefix")
	_, err = z.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrMiss)
}
