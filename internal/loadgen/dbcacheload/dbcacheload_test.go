package dbcacheload_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/internal/loadgen"
	"github.com/dbcache/dbcache/internal/loadgen/dbcacheload"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func TestPrefillAndOps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := dbtest.Pool(t)
	cache, err := dbcache.New(ctx, pool, nil)
	require.NoError(t, err)

	cfg := &loadgen.Config{KeySpace: 1200, ValueSize: 7, KeyPrefix: "lg:"}
	var calls []int
	require.NoError(t, dbcacheload.Prefill(ctx, cache, cfg, dbcache.DefaultTimeout, func(done int) { calls = append(calls, done) }))
	require.Equal(t, []int{500, 1000, 1200}, calls)
	require.Equal(t, 2400, dbtest.Count(t, pool), "a value and a counter per key")
	v, err := cache.Get(ctx, "lg:1199")
	require.NoError(t, err)
	require.Len(t, v, 7)

	ops := dbcacheload.Ops(cache, dbcache.DefaultTimeout)
	require.ElementsMatch(t, []string{"add", "decr", "delete", "get", "get_many", "get_or_set", "has", "incr", "set", "set_many", "touch"},
		loadgen.OpNames(ops))
	req := &loadgen.Request{Key: "lg:1", Keys: []string{"lg:1", "lg:2"}, Value: []byte("new")}
	do := func(name string) error { return ops[name].Run(ctx, req) }

	require.NoError(t, do("get"))
	require.NoError(t, do("has"))
	require.NoError(t, do("get_many"))
	require.ErrorIs(t, do("add"), loadgen.ErrMiss, "the key exists")
	require.NoError(t, do("touch"))
	require.NoError(t, do("incr"))
	require.NoError(t, do("decr"))
	n, err := cache.Get(ctx, "lg:1"+dbcacheload.CounterSuffix)
	require.NoError(t, err)
	require.Equal(t, "0", string(n))
	require.NoError(t, do("set"))
	require.NoError(t, do("set_many"))
	require.NoError(t, do("get_or_set"))
	require.NoError(t, do("delete"))

	// After the delete, lookups miss and add stores.
	require.ErrorIs(t, do("get"), loadgen.ErrMiss)
	require.ErrorIs(t, do("has"), loadgen.ErrMiss)
	require.ErrorIs(t, do("touch"), loadgen.ErrMiss)
	require.ErrorIs(t, do("get_many"), loadgen.ErrMiss, "one of two keys is missing")
	require.ErrorIs(t, do("delete"), loadgen.ErrMiss)
	require.NoError(t, do("add"))

	// A missing counter is created, and the first incr counts as a miss.
	req.Key = "fresh"
	require.ErrorIs(t, do("incr"), loadgen.ErrMiss)
	require.NoError(t, do("incr"))
	n, err = cache.Get(ctx, "fresh"+dbcacheload.CounterSuffix)
	require.NoError(t, err)
	require.Equal(t, "2", string(n))
}
