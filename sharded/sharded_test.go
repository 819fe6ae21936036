package sharded_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/sharded"
	"github.com/dbcache/dbcache/typed"
)

// Every single-key operation runs on the key's shard, and its row is on
// that shard and no other.
func TestSingleKeyOperations(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	c := e.open(t, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: "app"}})
	keys := someKeys("k", 60)
	for _, k := range keys {
		require.NoError(t, c.Set(ctx, k, []byte("v:"+k), ttl))
	}
	for _, name := range e.names {
		on := keysOn(c, name, keys)
		require.NotEmpty(t, on, "shard %s got no key of 60", name)
		require.Equal(t, made(c, on), e.rows(t, name), "shard %s", name)
	}
	for _, k := range keys {
		v, err := c.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, "v:"+k, string(v))
	}

	_, err := c.Get(ctx, "missing")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.Equal(t, dbcache.ErrMiss, err, "a miss is the bare sentinel, as on one server")

	ok, err := c.Add(ctx, "k0000", []byte("x"), ttl)
	require.NoError(t, err)
	require.False(t, ok)
	ok, err = c.Add(ctx, "fresh", []byte("x"), ttl)
	require.NoError(t, err)
	require.True(t, ok)

	ok, err = c.Touch(ctx, "k0001", dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok)
	tt, err := c.TTL(ctx, "k0001")
	require.NoError(t, err)
	require.True(t, tt.IsForever())
	v, tt, err := c.GetWithTTL(ctx, "k0002")
	require.NoError(t, err)
	require.Equal(t, "v:k0002", string(v))
	d, _ := tt.Duration()
	require.Greater(t, d, 59*time.Minute)

	has, err := c.HasKey(ctx, "k0003")
	require.NoError(t, err)
	require.True(t, has)
	ok, err = c.Delete(ctx, "k0003")
	require.NoError(t, err)
	require.True(t, ok)
	has, err = c.HasKey(ctx, "k0003")
	require.NoError(t, err)
	require.False(t, has)

	require.NoError(t, c.Set(ctx, "n", []byte("41"), ttl))
	n, err := c.Incr(ctx, "n", 1)
	require.NoError(t, err)
	require.EqualValues(t, 42, n)
	n, err = c.Decr(ctx, "n", 2)
	require.NoError(t, err)
	require.EqualValues(t, 40, n)
	_, err = c.Incr(ctx, "k0004", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
	var se *sharded.ShardError
	require.False(t, errors.As(err, &se), "not an integer is a result, not a shard's failure")

	got, err := c.GetOrSet(ctx, "gos", []byte("first"), ttl)
	require.NoError(t, err)
	require.Equal(t, "first", string(got))
	got, err = c.GetOrSet(ctx, "gos", []byte("second"), ttl)
	require.NoError(t, err)
	require.Equal(t, "first", string(got))
	var loads atomic.Int64
	loader := func(context.Context) ([]byte, error) { loads.Add(1); return []byte("loaded"), nil }
	for range 3 {
		got, err = c.GetOrSetFunc(ctx, "gosf", loader, ttl)
		require.NoError(t, err)
		require.Equal(t, "loaded", string(got))
	}
	require.EqualValues(t, 1, loads.Load())
	_, err = c.GetOrSetFunc(ctx, "gosf-err", func(context.Context) ([]byte, error) { return nil, errors.New("boom") }, ttl)
	var le *dbcache.LoaderError
	require.ErrorAs(t, err, &le)

	_, err = c.Get(ctx, "nul\x00key")
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)

	// Every row is on the shard ShardOf names.
	for _, name := range e.names {
		for _, mk := range e.rows(t, name) {
			var k string
			for _, cand := range append(keys, "fresh", "n", "gos", "gosf") {
				if c.MakeKey(cand) == mk {
					k = cand
				}
			}
			require.NotEmpty(t, k, "unexpected row %q", mk)
			require.Equal(t, name, c.ShardOf(k), "row %q", mk)
		}
	}
}

// The shard is picked without the version, so IncrVersion moves an entry
// within its shard, in one statement, and every version of a key is on
// one server.
func TestVersionsStayOnOneShard(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	c := e.open(t, nil)
	keys := someKeys("v", 40)
	for _, k := range keys {
		require.NoError(t, c.Set(ctx, k, []byte(k), ttl))
		to, err := c.IncrVersion(ctx, k, 1)
		require.NoError(t, err)
		require.Equal(t, 2, to)
	}
	v2 := c.WithVersion(2)
	require.Equal(t, 2, v2.Version())
	require.Equal(t, 1, c.Version())
	for _, name := range e.names {
		require.Equal(t, made(v2, keysOn(c, name, keys)), e.rows(t, name))
	}
	for _, k := range keys {
		_, err := c.Get(ctx, k)
		require.ErrorIs(t, err, dbcache.ErrMiss)
		v, err := v2.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, k, string(v))
		require.Equal(t, c.ShardOf(k), v2.ShardOf(k))
	}
	to, err := v2.DecrVersion(ctx, "v0000", 1)
	require.NoError(t, err)
	require.Equal(t, 1, to)
	_, err = c.IncrVersion(ctx, "absent", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
}

// Two caches with different key prefixes over the same servers spread
// their keys independently; the same prefix and names in any order place
// every key alike.
func TestPlacement(t *testing.T) {
	t.Parallel()
	e := abc(t)
	one := e.open(t, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: "one"}})
	two := e.open(t, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: "two"}})
	shuffled := []sharded.Shard{{Name: "c", Pool: e.pools["c"]}, {Name: "a", Pool: e.pools["a"]}, {Name: "b", Pool: e.pools["b"]}}
	again, err := sharded.New(ctxT(t), shuffled, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: "one"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = again.Close() })
	require.Equal(t, []string{"c", "a", "b"}, again.Shards())

	differ := 0
	for _, k := range someKeys("p", 300) {
		require.Equal(t, one.ShardOf(k), again.ShardOf(k))
		if one.ShardOf(k) != two.ShardOf(k) {
			differ++
		}
	}
	// Independent placements agree on a third of the keys.
	require.Greater(t, differ, 150)
	require.Less(t, differ, 250)
}

// GetMany, SetMany and DeleteMany split by shard and merge.
func TestBulk(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	c := e.open(t, nil)
	keys := someKeys("bulk", 300)
	items := map[string][]byte{}
	for _, k := range keys {
		items[k] = []byte(k)
	}
	failed, err := c.SetMany(ctx, items, ttl)
	require.NoError(t, err)
	require.Empty(t, failed)
	for _, name := range e.names {
		require.Equal(t, made(c, keysOn(c, name, keys)), e.rows(t, name))
	}

	asked := append(slices.Clone(keys), "nope1", "nope2", keys[0])
	got, err := c.GetMany(ctx, asked)
	require.NoError(t, err)
	require.Len(t, got, len(keys))
	for _, k := range keys {
		require.Equal(t, k, string(got[k]))
	}

	n, err := c.DeleteMany(ctx, append(keys[:100:100], "nope"))
	require.NoError(t, err)
	require.Equal(t, 100, n)
	got, err = c.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, 200)

	// Empty calls touch nothing.
	got, err = c.GetMany(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)
	failed, err = c.SetMany(ctx, nil, ttl)
	require.NoError(t, err)
	require.Empty(t, failed)
	n, err = c.DeleteMany(ctx, nil)
	require.NoError(t, err)
	require.Zero(t, n)

	// A bulk call whose keys are all on one shard makes one call.
	one := keysOn(c, "b", keys[100:])
	got, err = c.GetMany(ctx, one)
	require.NoError(t, err)
	require.Len(t, got, len(one))
}

// A key no shard could store fails a bulk call before any shard is
// written: bad input changes nothing, across shards as on one server.
func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	c := e.open(t, nil)
	keys := someKeys("ok", 30)
	items := map[string][]byte{"bad\x00key": []byte("x")}
	for _, k := range keys {
		items[k] = []byte(k)
	}
	failed, err := c.SetMany(ctx, items, ttl)
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	var ik *dbcache.InvalidKeyError
	require.ErrorAs(t, err, &ik)
	require.Equal(t, "bad\x00key", ik.Key)
	require.Len(t, failed, len(items))
	for _, name := range e.names {
		require.Empty(t, e.rows(t, name))
	}
	items = map[string][]byte{}
	for _, k := range keys {
		items[k] = []byte(k)
	}
	_, err = c.SetMany(ctx, items, ttl)
	require.NoError(t, err)
	n, err := c.DeleteMany(ctx, append(slices.Clone(keys), string([]byte{0xff})))
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	require.Zero(t, n)
	got, err := c.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, len(keys))
	_, err = c.GetMany(ctx, []string{"a", "long" + string(make([]byte, dbcache.MaxKeyBytes))})
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)

	// KeyCheckError refuses memcached-unsafe keys on every shard.
	strict := e.open(t, &sharded.Config{Cache: &dbcache.Config{KeyCheck: dbcache.KeyCheckError, KeyPrefix: "strict"}})
	_, err = strict.SetMany(ctx, map[string][]byte{"has space": nil, "fine": nil, "also-fine": nil, "x": nil}, ttl)
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	has, err := strict.HasKey(ctx, "fine")
	require.NoError(t, err)
	require.False(t, has)
}

// Keys merges the shards' sorted streams: every key once, in byte order,
// across pages; a caller may stop at any point.
func TestKeysMerge(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	c := e.open(t, &sharded.Config{Cache: &dbcache.Config{KeyPrefix: "app"}})
	keys := someKeys("user:", 3500) // over a page (1,000) on every shard
	items := map[string][]byte{}
	for _, k := range keys {
		items[k] = nil
	}
	_, err := c.SetMany(ctx, items, ttl)
	require.NoError(t, err)
	_, err = c.SetMany(ctx, map[string][]byte{"other:1": nil, "other:2": nil}, ttl)
	require.NoError(t, err)
	for _, name := range e.names {
		require.Greater(t, len(keysOn(c, name, keys)), 1000)
	}

	var listed []string
	for k, err := range c.Keys(ctx, "user:") {
		require.NoError(t, err)
		listed = append(listed, k)
	}
	require.Equal(t, keys, listed) // someKeys is sorted

	n := 0
	for _, err := range c.Keys(ctx, "") {
		require.NoError(t, err)
		n++
	}
	require.Equal(t, len(keys)+2, n)

	var first []string
	for k, err := range c.Keys(ctx, "user:") {
		require.NoError(t, err)
		first = append(first, k)
		if len(first) == 5 {
			break
		}
	}
	require.Equal(t, keys[:5], first)

	// A row left on a shard that no longer holds its key (after a change
	// of the ring) is listed once.
	k := "user:0007"
	other := "a"
	if c.ShardOf(k) == "a" {
		other = "b"
	}
	dbtest.Exec(t, e.pools[other], `INSERT INTO dbcache_entries (key, value) VALUES ($1, '')`, c.MakeKey(k))
	listed = listed[:0]
	for k, err := range c.Keys(ctx, "user:000") {
		require.NoError(t, err)
		listed = append(listed, k)
	}
	require.Equal(t, keys[:10], listed)

	// Views list their own version.
	for _, err := range c.WithVersion(9).Keys(ctx, "") {
		require.NoError(t, err)
		t.Fatal("version 9 has no keys")
	}
}

// DeletePrefix and Clear reach every shard.
func TestDeletePrefixAndClear(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	c := e.open(t, nil)
	items := map[string][]byte{}
	for _, k := range someKeys("gone:", 200) {
		items[k] = nil
	}
	for _, k := range someKeys("kept:", 100) {
		items[k] = nil
	}
	_, err := c.SetMany(ctx, items, ttl)
	require.NoError(t, err)
	n, err := c.DeletePrefix(ctx, "gone:")
	require.NoError(t, err)
	require.Equal(t, 200, n)
	got, err := c.GetMany(ctx, someKeys("kept:", 100))
	require.NoError(t, err)
	require.Len(t, got, 100)

	_, err = c.DeletePrefix(ctx, "bad\x00")
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	require.Len(t, strings.Split(err.Error(), "\n"), 1, "the same refusal is reported once, not per shard")

	require.NoError(t, c.Clear(ctx))
	for _, name := range e.names {
		require.Empty(t, e.rows(t, name))
	}
}

// The typed layer works over a sharded cache as over one server.
func TestTyped(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	c := abc(t).open(t, nil)
	type user struct{ Name string }
	users, err := typed.New[user](c, nil)
	require.NoError(t, err)
	for _, k := range someKeys("u", 20) {
		require.NoError(t, users.Set(ctx, k, user{Name: k}, ttl))
	}
	got, err := users.GetMany(ctx, someKeys("u", 20))
	require.NoError(t, err)
	require.Len(t, got, 20)
	require.Equal(t, "u0007", got["u0007"].Name)
}
