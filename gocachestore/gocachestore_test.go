package gocachestore_test

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eko/gocache/lib/v4/cache"
	"github.com/eko/gocache/lib/v4/marshaler"
	lib_store "github.com/eko/gocache/lib/v4/store"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/gocachestore"
	"github.com/dbcache/dbcache/internal/dbtest"
	"github.com/dbcache/dbcache/memstore"
	"github.com/dbcache/dbcache/tags"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

type testBundle struct {
	dbc  *dbcache.Cache
	pool *pgxpool.Pool
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	pool := dbtest.Pool(t)
	dbc, err := dbcache.New(ctxT(t), pool, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = dbc.Close() })
	return &testBundle{dbc: dbc, pool: pool}
}

func newStore(t *testing.T, s dbcache.Store, options ...lib_store.Option) *gocachestore.Store {
	t.Helper()
	st, err := gocachestore.New(s, options...)
	require.NoError(t, err)
	return st
}

func isNotFound(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	require.True(t, errors.Is(err, lib_store.NotFound{}), "gocache's NotFound: %v", err)
	require.ErrorIs(t, err, dbcache.ErrMiss)
}

// The expectations gocache's own store tests hold every store to (its
// Redis, memcache, go-cache and bigcache stores' tests): Get returns the
// value and a missing key is store.NotFound with a nil value; GetWithTTL
// returns the TTL the entry was set with; Set without options takes the
// store's default expiration and a Set's own options override it; a Set
// with tags and an Invalidate with those tags leaves the key not found;
// Delete and Clear; GetType names the store.
func TestGocacheExpectations(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	s := newStore(t, b.dbc, lib_store.WithExpiration(6*time.Second))
	require.Equal(t, "dbcache", s.GetType())

	v, err := s.Get(ctx, "non-existent-key")
	isNotFound(t, err)
	require.Nil(t, v)
	v, ttl, err := s.GetWithTTL(ctx, "non-existent-key")
	isNotFound(t, err)
	require.Nil(t, v)
	require.Zero(t, ttl)

	require.NoError(t, s.Set(ctx, "my-key", "my-cache-value"))
	v, err = s.Get(ctx, "my-key")
	require.NoError(t, err)
	require.Equal(t, "my-cache-value", v)
	v, ttl, err = s.GetWithTTL(ctx, "my-key")
	require.NoError(t, err)
	require.Equal(t, "my-cache-value", v)
	require.True(t, ttl > 0 && ttl <= 6*time.Second, "the store's default expiration: %s", ttl)

	require.NoError(t, s.Set(ctx, "my-key", []byte("bytes"), lib_store.WithExpiration(time.Hour)))
	v, ttl, err = s.GetWithTTL(ctx, "my-key")
	require.NoError(t, err)
	require.Equal(t, []byte("bytes"), v)
	require.True(t, ttl > 6*time.Second && ttl <= time.Hour, "a Set's own expiration: %s", ttl)

	// Other stores' options change nothing: the default expiration
	// holds, and the tags' versions never expire.
	require.NoError(t, s.Set(ctx, "other-options", "o", lib_store.WithCost(9), lib_store.WithSynchronousSet(),
		lib_store.WithClientSideCaching(time.Second), lib_store.WithTagsTTL(time.Second), lib_store.WithTags([]string{"ttl-tag"})))
	_, ttl, err = s.GetWithTTL(ctx, "other-options")
	require.NoError(t, err)
	require.True(t, ttl > 0 && ttl <= 6*time.Second, "the store's default expiration: %s", ttl)
	var expiring int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM dbcache_entries WHERE strpos(key, $1) > 0 AND expires IS NOT NULL`, tags.PrefixDefault).Scan(&expiring))
	require.Zero(t, expiring, "the tags' versions never expire, whatever WithTagsTTL says")

	forever := newStore(t, b.dbc)
	require.NoError(t, forever.Set(ctx, "forever", "f"))
	_, ttl, err = forever.GetWithTTL(ctx, "forever")
	require.NoError(t, err)
	require.Zero(t, ttl, "no expiration: never expires")

	// Tags: gocache's WithTags and WithInvalidateTags.
	require.NoError(t, s.Set(ctx, "tagged-1", "a", lib_store.WithTags([]string{"tag1"})))
	require.NoError(t, s.Set(ctx, "tagged-2", "b", lib_store.WithTags([]string{"tag1", "tag2"})))
	require.NoError(t, s.Set(ctx, "tagged-3", "c", lib_store.WithTags([]string{"tag2"})))
	require.NoError(t, s.Invalidate(ctx, lib_store.WithInvalidateTags([]string{"tag1"})))
	_, err = s.Get(ctx, "tagged-1")
	isNotFound(t, err)
	_, err = s.Get(ctx, "tagged-2")
	isNotFound(t, err)
	v, err = s.Get(ctx, "tagged-3")
	require.NoError(t, err)
	require.Equal(t, "c", v)
	require.NoError(t, s.Invalidate(ctx), "no tag: nothing to do")

	require.NoError(t, s.Delete(ctx, "tagged-3"))
	_, err = s.Get(ctx, "tagged-3")
	isNotFound(t, err)
	require.NoError(t, s.Delete(ctx, "tagged-3"), "deleting a missing key")

	require.NoError(t, s.Clear(ctx))
	_, err = s.Get(ctx, "my-key")
	isNotFound(t, err)
	_, err = forever.Get(ctx, "forever")
	isNotFound(t, err)
}

// Expired entries are not found; the expiry is the database's.
func TestExpiration(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	s := newStore(t, b.dbc)
	require.NoError(t, s.Set(ctx, "k", "v", lib_store.WithExpiration(time.Hour)))
	dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET expires = now() - interval '1 second' WHERE key = $1`, b.dbc.MakeKey("k"))
	_, err := s.Get(ctx, "k")
	isNotFound(t, err)
}

// gocache's cache.Cache, typed as string and as []byte, and its marshaler
// over the store: what a user switching stores keeps.
func TestThroughGocache(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	s := newStore(t, b.dbc, lib_store.WithExpiration(time.Minute))

	sc := cache.New[string](s)
	require.NoError(t, sc.Set(ctx, "s", "string value", lib_store.WithTags([]string{"t"})))
	got, err := sc.Get(ctx, "s")
	require.NoError(t, err)
	require.Equal(t, "string value", got)
	require.NoError(t, sc.Invalidate(ctx, lib_store.WithInvalidateTags([]string{"t"})))
	_, err = sc.Get(ctx, "s")
	require.True(t, errors.Is(err, lib_store.NotFound{}))

	bc := cache.New[[]byte](s)
	require.NoError(t, bc.Set(ctx, struct{ ID int }{42}, []byte{0, 1, 2})) // gocache makes a key of any key
	gotB, err := bc.Get(ctx, struct{ ID int }{42})
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1, 2}, gotB)

	type user struct{ Name string }
	m := marshaler.New(cache.New[any](s))
	require.NoError(t, m.Set(ctx, "user:1", user{"Ada"}))
	obj, err := m.Get(ctx, "user:1", new(user))
	require.NoError(t, err)
	require.Equal(t, &user{"Ada"}, obj)
}

// Bad input is an error and nothing is written.
func TestBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	s := newStore(t, b.dbc)
	require.NoError(t, s.Set(ctx, "k", "before"))
	rows := dbtest.Count(t, b.pool)
	require.ErrorIs(t, s.Set(ctx, 42, "v"), gocachestore.ErrKeyType)
	require.ErrorIs(t, s.Set(ctx, "k", 42), gocachestore.ErrValueType)
	require.ErrorIs(t, s.Set(ctx, "k", struct{}{}), gocachestore.ErrValueType)
	require.Error(t, s.Set(ctx, "k", "v", lib_store.WithExpiration(-time.Second)))
	require.ErrorIs(t, s.Set(ctx, "k", "v", lib_store.WithTags([]string{""})), tags.ErrInvalidTag)
	many := make([]string, tags.MaxTags+1)
	for i := range many {
		many[i] = strings.Repeat("t", i+1)
	}
	require.ErrorIs(t, s.Set(ctx, "k", "v", lib_store.WithTags(many)), tags.ErrTooManyTags)
	require.ErrorIs(t, s.Invalidate(ctx, lib_store.WithInvalidateTags([]string{"a b"})), tags.ErrInvalidTag)
	_, err := s.Get(ctx, 42)
	require.ErrorIs(t, err, gocachestore.ErrKeyType)
	_, _, err = s.GetWithTTL(ctx, 42)
	require.ErrorIs(t, err, gocachestore.ErrKeyType)
	require.ErrorIs(t, s.Delete(ctx, 42), gocachestore.ErrKeyType)
	v, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "before", v)
	require.Equal(t, rows, dbtest.Count(t, b.pool), "nothing written")

	ms, err := memstore.New(nil)
	require.NoError(t, err)
	_, err = gocachestore.New(struct{ dbcache.Store }{ms})
	require.ErrorContains(t, err, "dbcache.TTLReader")
	_, err = gocachestore.FromTags(nil)
	require.Error(t, err)
}

// FromTags: a store over a tagged cache of the caller's, its Prefix kept.
func TestFromTags(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	ms, err := memstore.New(nil)
	require.NoError(t, err)
	tc, err := tags.New(ms, &tags.Config{Prefix: "my-tags:"})
	require.NoError(t, err)
	s, err := gocachestore.FromTags(tc, lib_store.WithExpiration(time.Minute))
	require.NoError(t, err)
	require.NoError(t, s.Set(ctx, "k", "v", lib_store.WithTags([]string{"t"})))
	_, ttl, err := s.GetWithTTL(ctx, "k")
	require.NoError(t, err)
	require.True(t, ttl > 0 && ttl <= time.Minute)
	ok, err := ms.HasKey(ctx, "my-tags:t")
	require.NoError(t, err)
	require.True(t, ok, "the version under the caller's prefix")
	require.NoError(t, s.Invalidate(ctx, lib_store.WithInvalidateTags([]string{"t"})))
	_, err = s.Get(ctx, "k")
	isNotFound(t, err)
}

// A stored value whose type byte is missing or unknown is an error, never
// a value.
func TestCraftedBytes(t *testing.T) {
	t.Parallel()
	ms, err := memstore.New(nil)
	require.NoError(t, err)
	tc, err := tags.New(ms, nil)
	require.NoError(t, err)
	s := newStore(t, ms)
	ctx := ctxT(t)
	for _, raw := range [][]byte{{}, []byte("xvalue"), {0xff}} {
		require.NoError(t, tc.Set(ctx, "k", raw, dbcache.Forever))
		v, err := s.Get(ctx, "k")
		require.ErrorIs(t, err, tags.ErrCorrupt)
		require.Nil(t, v)
		_, _, err = s.GetWithTTL(ctx, "k")
		require.ErrorIs(t, err, tags.ErrCorrupt)
	}
	require.NoError(t, ms.Set(ctx, "plain", []byte("not written by the store"), dbcache.Forever))
	_, err = s.Get(ctx, "plain")
	require.ErrorIs(t, err, tags.ErrCorrupt)
}

// The package brings gocache's store package and what it needs
// (golang.org/x/exp) beside pgx, and no other gocache package.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", "github.com/dbcache/dbcache/gocachestore").Output()
	require.NoError(t, err)
	var mods []string
	for _, m := range strings.Fields(string(out)) {
		if !strings.HasPrefix(m, "github.com/dbcache/dbcache") && !slices.Contains(mods, m) {
			mods = append(mods, m)
		}
	}
	slices.Sort(mods)
	require.Equal(t, []string{
		"github.com/eko/gocache/lib/v4", "github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile", "github.com/jackc/pgx/v5",
		"github.com/jackc/puddle/v2", "golang.org/x/exp", "golang.org/x/sync", "golang.org/x/text",
	}, mods)
	pkgs, err := exec.Command("go", "list", "-deps", "github.com/dbcache/dbcache/gocachestore").Output()
	require.NoError(t, err)
	for _, p := range strings.Fields(string(pkgs)) {
		if strings.HasPrefix(p, "github.com/eko/gocache/") {
			require.Equal(t, "github.com/eko/gocache/lib/v4/store", p)
		}
	}
}
