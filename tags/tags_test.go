package tags_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/memstore"
	"github.com/dbcache/dbcache/sharded"
	"github.com/dbcache/dbcache/tags"
)

func requireValue(t *testing.T, tc *tags.Cache, key, want string) {
	t.Helper()
	v, err := tc.Get(ctxT(t), key)
	require.NoError(t, err, key)
	require.Equal(t, want, string(v), key)
}

func requireMiss(t *testing.T, tc *tags.Cache, key string) {
	t.Helper()
	_, err := tc.Get(ctxT(t), key)
	require.ErrorIs(t, err, dbcache.ErrMiss, key)
}

// Invalidating a tag makes every entry carrying it a miss, and no other;
// an entry written with the tag afterwards is a hit again.
func TestInvalidate(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"dbcache", "memstore"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var tc *tags.Cache
			if name == "dbcache" {
				tc = setup(t).tc
			} else {
				tc = memTags(t)
			}
			ctx := ctxT(t)
			require.NoError(t, tc.Set(ctx, "a", []byte("A"), dbcache.Forever, "x"))
			require.NoError(t, tc.Set(ctx, "b", []byte("B"), dbcache.ExpiresIn(time.Hour), "x", "y", "x"))
			require.NoError(t, tc.Set(ctx, "c", []byte("C"), dbcache.Forever, "y"))
			require.NoError(t, tc.Set(ctx, "d", []byte(""), dbcache.Forever))
			for k, v := range map[string]string{"a": "A", "b": "B", "c": "C", "d": ""} {
				requireValue(t, tc, k, v)
			}
			require.NoError(t, tc.Invalidate(ctx, "x"))
			requireMiss(t, tc, "a")
			requireMiss(t, tc, "b")
			requireValue(t, tc, "c", "C")
			requireValue(t, tc, "d", "")
			got, err := tc.GetMany(ctx, []string{"a", "b", "c", "d", "missing"})
			require.NoError(t, err)
			require.Equal(t, map[string][]byte{"c": []byte("C"), "d": {}}, got)
			_, _, err = tc.GetWithTTL(ctx, "b")
			require.ErrorIs(t, err, dbcache.ErrMiss)
			v, ttl, err := tc.GetWithTTL(ctx, "c")
			require.NoError(t, err)
			require.Equal(t, "C", string(v))
			require.True(t, ttl.IsForever())

			// Written again after the invalidation: a hit.
			require.NoError(t, tc.Set(ctx, "a", []byte("A2"), dbcache.ExpiresIn(time.Hour), "x"))
			requireValue(t, tc, "a", "A2")
			_, ttl, err = tc.GetWithTTL(ctx, "a")
			require.NoError(t, err)
			d, ok := ttl.Duration()
			require.True(t, ok && d > 0 && d <= time.Hour)

			// Several tags in one call; a tag nothing carries.
			require.NoError(t, tc.Invalidate(ctx, "y", "x", "never-used"))
			requireMiss(t, tc, "a")
			requireMiss(t, tc, "c")
			requireValue(t, tc, "d", "")
			require.NoError(t, tc.Invalidate(ctx))

			require.NoError(t, tc.Delete(ctx, "d"))
			requireMiss(t, tc, "d")
			require.NoError(t, tc.Set(ctx, "e", []byte("E"), dbcache.Forever, "z"))
			require.NoError(t, tc.Clear(ctx))
			requireMiss(t, tc, "e")
		})
	}
}

// A Cache's memo of each key's tags (one GetMany for the entry and its
// versions) only guides the read: another Cache rewriting the key with
// other tags, or invalidating them, is seen as the header says.
func TestMemoFollowsTheHeader(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	other, err := tags.New(b.cache, nil)
	require.NoError(t, err)
	require.NoError(t, b.tc.Set(ctx, "k", []byte("v1"), dbcache.Forever, "x"))
	requireValue(t, other, "k", "v1") // other remembers k's tags: x
	require.NoError(t, b.tc.Set(ctx, "k", []byte("v2"), dbcache.Forever, "y"))
	requireValue(t, other, "k", "v2")
	require.NoError(t, b.tc.Invalidate(ctx, "x"))
	requireValue(t, other, "k", "v2")
	got, err := other.GetMany(ctx, []string{"k", "k"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"k": []byte("v2")}, got)
	require.NoError(t, b.tc.Set(ctx, "k", []byte("v3"), dbcache.Forever, "y", "z"))
	require.NoError(t, b.tc.Invalidate(ctx, "z"))
	requireMiss(t, other, "k")
	got, err = other.GetMany(ctx, []string{"k"})
	require.NoError(t, err)
	require.Empty(t, got)
	require.NoError(t, b.tc.Set(ctx, "k", []byte("v4"), dbcache.Forever))
	requireValue(t, other, "k", "v4")
	require.NoError(t, b.tc.Set(ctx, "k", []byte("v5"), dbcache.Forever, "y"))
	require.NoError(t, b.tc.Invalidate(ctx, "y"))
	requireMiss(t, other, "k")
	_, err = other.Get(ctx, "absent")
	require.ErrorIs(t, err, dbcache.ErrMiss)
}

// The memo of keys' tags stays within its bounds however many keys are
// written, and an entry rewritten without tags leaves it.
func TestMemoBounded(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	tc := memTags(t)
	long := make([]string, tags.MaxTags)
	for i := range long {
		long[i] = fmt.Sprintf("%03d", i) + strings.Repeat("t", tags.MaxTagBytes-3)
	}
	for i := range 12_000 {
		ts := []string{"a"}
		if i%10 == 0 {
			ts = long
		}
		require.NoError(t, tc.Set(ctx, fmt.Sprintf("k%d", i), []byte("v"), dbcache.Forever, ts...))
		keys, bytes := tc.MemoLen()
		require.LessOrEqual(t, keys, 10_000)
		require.LessOrEqual(t, bytes, 4<<20)
	}
	keys, _ := tc.MemoLen()
	require.Positive(t, keys)
	require.NoError(t, tc.Set(ctx, "k11999", []byte("v"), dbcache.Forever))
	after, _ := tc.MemoLen()
	require.Equal(t, keys-1, after, "no tags, nothing to remember")
	requireValue(t, tc, "k11999", "v")
	requireValue(t, tc, "k11990", "v")
}

// staleVersions is a store that serves the tags' versions as they were
// when frozen, and entries as they are: what a near cache can serve within
// its bound after a version changed.
type staleVersions struct {
	*memstore.Store
	frozen map[string][]byte
}

func (s *staleVersions) GetMany(ctx context.Context, keys []string) (map[string][]byte, error) {
	out, err := s.Store.GetMany(ctx, keys)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if strings.HasPrefix(k, tags.PrefixDefault) {
			delete(out, k)
			if v, ok := s.frozen[k]; ok {
				out[k] = v
			}
		}
	}
	return out, nil
}

// With Config.Origin, an entry newer than the near cache's copy of its
// tag's version is confirmed from Origin, and is a hit; without it, a
// miss. An invalidation is a miss either way.
func TestOriginConfirmsAMismatch(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	ms, err := memstore.New(nil)
	require.NoError(t, err)
	direct, err := tags.New(ms, nil)
	require.NoError(t, err)
	require.NoError(t, direct.Set(ctx, "k", []byte("old"), dbcache.ExpiresIn(time.Hour), "t"))
	frozen, err := ms.GetMany(ctx, []string{tags.PrefixDefault + "t"})
	require.NoError(t, err)
	near := &staleVersions{Store: ms, frozen: frozen}
	require.NoError(t, direct.Invalidate(ctx, "t"))
	require.NoError(t, direct.Set(ctx, "k", []byte("new"), dbcache.ExpiresIn(time.Hour), "t"))

	plain, err := tags.New(near, nil)
	require.NoError(t, err)
	requireMiss(t, plain, "k")
	confirmed, err := tags.New(near, &tags.Config{Origin: ms})
	require.NoError(t, err)
	requireValue(t, confirmed, "k", "new")
	v, ttl, err := confirmed.GetWithTTL(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "new", string(v))
	d, ok := ttl.Duration()
	require.True(t, ok && d > 0 && d <= time.Hour)
	got, err := confirmed.GetMany(ctx, []string{"k", "missing"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"k": []byte("new")}, got)

	require.NoError(t, direct.Invalidate(ctx, "t"))
	requireMiss(t, confirmed, "k")
	_, _, err = confirmed.GetWithTTL(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	got, err = confirmed.GetMany(ctx, []string{"k"})
	require.NoError(t, err)
	require.Empty(t, got)

	_, err = tags.New(near, &tags.Config{Origin: coreOnly{ms}})
	require.ErrorContains(t, err, "dbcache.TTLReader")
}

// Over a sharded cache (two schemas as two servers), entries and their
// tags' versions land on different shards, and invalidation still makes
// every entry carrying the tag a miss.
func TestOverSharded(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	sc, err := sharded.New(ctx, []sharded.Shard{{Name: "a", Pool: dbtest.Pool(t)}, {Name: "b", Pool: dbtest.Pool(t)}}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sc.Close() })
	tc, err := tags.New(sc, nil)
	require.NoError(t, err)
	for i := range 40 {
		require.NoError(t, tc.Set(ctx, fmt.Sprintf("k%d", i), []byte("v"), dbcache.Forever, fmt.Sprintf("t%d", i%4), "all"))
	}
	require.NoError(t, tc.Invalidate(ctx, "t1"))
	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	got, err := tc.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, 30)
	for i := range 40 {
		if i%4 == 1 {
			requireMiss(t, tc, keys[i])
		} else {
			requireValue(t, tc, keys[i], "v")
		}
	}
	require.NoError(t, tc.Invalidate(ctx, "all"))
	got, err = tc.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Empty(t, got)
}

// Bad input is a clear error, and nothing is written or invalidated.
func TestBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	require.NoError(t, b.tc.Set(ctx, "k", []byte("before"), dbcache.Forever, "t"))
	rows := dbtest.Count(t, b.pool)

	many := make([]string, tags.MaxTags+1)
	for i := range many {
		many[i] = fmt.Sprintf("t%d", i)
	}
	for name, c := range map[string]struct {
		tags []string
		want error
	}{
		"empty":         {[]string{"ok", ""}, tags.ErrInvalidTag},
		"too long":      {[]string{strings.Repeat("t", tags.MaxTagBytes+1)}, tags.ErrInvalidTag},
		"space":         {[]string{"a b"}, tags.ErrInvalidTag},
		"control":       {[]string{"a\x01"}, tags.ErrInvalidTag},
		"nul":           {[]string{"a\x00"}, tags.ErrInvalidTag},
		"not utf-8":     {[]string{"a\xff"}, tags.ErrInvalidTag},
		"too many tags": {many, tags.ErrTooManyTags},
	} {
		err := b.tc.Set(ctx, "k", []byte("after"), dbcache.Forever, c.tags...)
		require.ErrorIs(t, err, c.want, name)
		if !errors.Is(c.want, tags.ErrTooManyTags) {
			require.ErrorIs(t, b.tc.Invalidate(ctx, append([]string{"t"}, c.tags...)...), c.want, name)
		}
	}
	requireValue(t, b.tc, "k", "before")
	require.Equal(t, rows, dbtest.Count(t, b.pool), "nothing written")

	// At the limits: MaxTags distinct tags (duplicates count once), each
	// MaxTagBytes long.
	full := make([]string, 0, 2*tags.MaxTags)
	for i := range tags.MaxTags {
		tg := fmt.Sprintf("%03d", i) + strings.Repeat("é", (tags.MaxTagBytes-3)/2)
		full = append(full, tg, tg)
	}
	require.NoError(t, b.tc.Set(ctx, "full", []byte("v"), dbcache.Forever, full...))
	requireValue(t, b.tc, "full", "v")
	require.NoError(t, b.tc.Invalidate(ctx, many...), "invalidating more than MaxTags tags at once")
	require.NoError(t, b.tc.Invalidate(ctx, full[len(full)-1]))
	requireMiss(t, b.tc, "full")

	// The tags' own key space is not the cache's.
	for _, err := range []error{
		b.tc.Set(ctx, tags.PrefixDefault+"t", []byte("v"), dbcache.Forever),
		b.tc.Delete(ctx, tags.PrefixDefault+"t"),
		func() error { _, err := b.tc.Get(ctx, tags.PrefixDefault+"t"); return err }(),
		func() error { _, err := b.tc.GetMany(ctx, []string{"k", tags.PrefixDefault + "t"}); return err }(),
	} {
		require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	}
	requireValue(t, b.tc, "k", "before")

	// A key the cache refuses is its error.
	require.ErrorIs(t, b.tc.Set(ctx, "nul\x00key", []byte("v"), dbcache.Forever, "t"), dbcache.ErrInvalidKey)

	_, err := tags.New(nil, nil)
	require.Error(t, err)
	ms, err := memstore.New(nil)
	require.NoError(t, err)
	_, err = tags.New(coreOnly{ms}, nil)
	require.ErrorContains(t, err, "dbcache.TTLReader")
}

func memTags(t *testing.T) *tags.Cache {
	t.Helper()
	ms, err := memstore.New(nil)
	require.NoError(t, err)
	tc, err := tags.New(ms, nil)
	require.NoError(t, err)
	return tc
}

// coreOnly is a Store with no capability.
type coreOnly struct{ dbcache.Store }

// A stored value whose header is damaged, byte by byte, or that was not
// written by a tagged cache, is ErrCorrupt or a miss, never a value; a
// tag's version damaged in the table is a miss, and the next write with
// the tag replaces it.
func TestCraftedBytes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	require.NoError(t, b.tc.Set(ctx, "k", []byte("value"), dbcache.Forever, "alpha", "beta"))
	made := b.cache.MakeKey("k")
	var stored []byte
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT value FROM dbcache_entries WHERE key = $1`, made).Scan(&stored))
	header := len(stored) - len("value")
	put := func(v []byte) {
		dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET value = $2 WHERE key = $1`, made, v)
	}
	check := func(what string) {
		t.Helper()
		v, err := b.tc.Get(ctx, "k")
		if err == nil {
			t.Fatalf("%s: read a value %q", what, v)
		}
		if !errors.Is(err, tags.ErrCorrupt) && !errors.Is(err, dbcache.ErrMiss) {
			t.Fatalf("%s: %v", what, err)
		}
		got, err := b.tc.GetMany(ctx, []string{"k"})
		if err == nil && len(got) > 0 {
			t.Fatalf("%s: GetMany read a value %q", what, got["k"])
		}
	}
	for i := range header {
		for _, bit := range []byte{0x01, 0x80} {
			d := []byte(string(stored))
			d[i] ^= bit
			put(d)
			check(fmt.Sprintf("byte %d ^ %#x", i, bit))
		}
	}
	for n := range header {
		put(stored[:n])
		check(fmt.Sprintf("truncated to %d bytes", n))
	}
	// A section length that would read past the value, huge counts.
	for _, d := range [][]byte{
		append([]byte{0xDB, 0x74, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}, make([]byte, 64)...),
		[]byte("plain value written by another writer"),
	} {
		put(d)
		check(fmt.Sprintf("%q", d))
	}
	put(stored)
	requireValue(t, b.tc, "k", "value")

	// A tag's version damaged or replaced in the table: a miss.
	tagKey := b.cache.MakeKey(tags.PrefixDefault + "beta")
	for _, v := range [][]byte{{}, []byte("short"), []byte("12345678"), []byte("123456789")} {
		dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET value = $2 WHERE key = $1`, tagKey, v)
		requireMiss(t, b.tc, "k")
	}
	dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET value = 'short' WHERE key = $1`, tagKey)
	require.NoError(t, b.tc.Set(ctx, "k2", []byte("v2"), dbcache.Forever, "beta"))
	requireValue(t, b.tc, "k2", "v2")
	requireMiss(t, b.tc, "k")
}

// FuzzDecode: no stored value makes a read panic or allocate by what it
// says, and every value read is one a write stored.
func FuzzDecode(f *testing.F) {
	store, err := memstore.New(nil)
	if err != nil {
		f.Fatal(err)
	}
	tc, err := tags.New(store, nil)
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	if err := tc.Set(ctx, "seed", []byte("v"), dbcache.Forever, "a", "b"); err != nil {
		f.Fatal(err)
	}
	seed, err := store.Get(ctx, "seed")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte{0xDB, 0x74, 0x01, 0, 0, 0, 1, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, raw []byte) {
		if err := store.Set(ctx, "k", raw, dbcache.Forever); err != nil {
			t.Fatal(err)
		}
		v, err := tc.Get(ctx, "k")
		if err == nil && string(raw) == string(seed) && string(v) != "v" {
			t.Fatalf("read %q", v)
		}
		if err == nil && string(raw) != string(seed) && !strings.HasSuffix(string(raw), string(v)) {
			t.Fatalf("read %q, not a suffix of what was stored", v)
		}
	})
}
