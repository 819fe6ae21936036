package sharded_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/sharded"
)

// A stopped shard (connections refused) fails its own keys, at once, and
// only them; with FailOpen its keys miss and its writes are skipped; the
// bulk operations report exactly its part. When it is back, its pool
// reconnects and it serves again.
func TestShardDown(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t, "b")
	c := e.open(t, nil)
	open := e.open(t, &sharded.Config{Cache: &dbcache.Config{FailOpen: true}})
	keys := someKeys("k", 150)
	items := map[string][]byte{}
	for _, k := range keys {
		items[k] = []byte("old")
	}
	_, err := c.SetMany(ctx, items, ttl)
	require.NoError(t, err)
	onB := keysOn(c, "b", keys)
	var notB []string
	for _, k := range keys {
		if c.ShardOf(k) != "b" {
			notB = append(notB, k)
		}
	}
	require.NotEmpty(t, onB)

	e.proxies["b"].Down()

	// Single keys: b's fail, transiently and naming b; the others work.
	_, err = c.Get(ctx, onB[0])
	require.True(t, dbcache.IsTransient(err), "%v", err)
	mustShardError(t, err, "b")
	require.ErrorContains(t, err, "shard b:")
	require.Error(t, c.Set(ctx, onB[0], []byte("new"), ttl))
	for _, k := range notB[:20] {
		require.NoError(t, c.Set(ctx, k, []byte("new"), ttl))
		v, err := c.Get(ctx, k)
		require.NoError(t, err)
		require.Equal(t, "new", string(v))
	}
	// Fail-open: a miss and a skipped write.
	_, err = open.Get(ctx, onB[0])
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.NoError(t, open.Set(ctx, onB[0], []byte("new"), ttl))
	require.Positive(t, open.Stats().FailOpen)

	// SetMany: all or nothing per shard. b's keys, and only those, come
	// back as failed, with b's error; the others are stored.
	for k := range items {
		items[k] = []byte("newer")
	}
	failed, err := c.SetMany(ctx, items, ttl)
	require.Equal(t, onB, failed)
	se := mustShardError(t, err, "b")
	require.Equal(t, onB, se.Keys)
	require.True(t, dbcache.IsTransient(err))
	got, err := c.GetMany(ctx, notB)
	require.NoError(t, err)
	require.Len(t, got, len(notB))
	for _, v := range got {
		require.Equal(t, "newer", string(v))
	}
	failed, err = open.SetMany(ctx, items, ttl)
	require.NoError(t, err, "fail-open: skipped, not an error")
	require.Equal(t, onB, failed)

	// GetMany: the others' hits, and b's keys in its error.
	got, err = c.GetMany(ctx, keys)
	se = mustShardError(t, err, "b")
	require.Equal(t, onB, se.Keys)
	require.Len(t, got, len(notB))
	got, err = open.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, len(notB))

	// DeleteMany, DeletePrefix, Clear, Keys: the others' part is done and
	// b's is the error.
	n, err := c.DeleteMany(ctx, append(slices.Clone(notB[:10]), onB[:3]...))
	mustShardError(t, err, "b")
	require.Equal(t, 10, n)
	n, err = c.DeletePrefix(ctx, "k00") // keys[:100], less the 10 deleted above
	mustShardError(t, err, "b")
	require.Equal(t, len(keysOn(c, "a", keys[:100]))+len(keysOn(c, "c", keys[:100]))-10, n)
	for _, err := range c.Keys(ctx, "") {
		mustShardError(t, err, "b")
	}
	err = c.Clear(ctx)
	mustShardError(t, err, "b")
	require.Empty(t, e.rows(t, "a"))
	require.Empty(t, e.rows(t, "c"))
	// Clear never fails open: with FailOpen too, b's failure is an error.
	err = open.Clear(ctx)
	mustShardError(t, err, "b")

	// Nothing of b's went anywhere else meanwhile; back, b serves what it
	// held, which nothing overwrote elsewhere.
	e.proxies["b"].Up(t)
	v, err := c.Get(ctx, onB[0])
	require.NoError(t, err)
	require.Equal(t, "old", string(v))
	got, err = c.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, len(onB))
}

// A silent shard (a server that stopped answering: no reset, no refusal)
// holds up only its own keys' operations: the other shards' keys, single
// and bulk, are served meanwhile, from many goroutines, while an operation
// on the silent shard is still waiting. No lock, pool or goroutine is
// shared between shards. Nothing here measures time: the operations on the
// healthy shards must all finish before the stuck one does, and the stuck
// one's bound (two minutes) is far longer than they could need.
func TestSilentShardBlocksNoOtherShard(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t, "b")
	shards := e.shards()
	shards[1].Config = &dbcache.Config{OpTimeout: 2 * time.Minute}
	c, err := sharded.New(ctx, shards, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	keys := someKeys("k", 120)
	items := map[string][]byte{}
	for _, k := range keys {
		items[k] = []byte("v")
	}
	_, err = c.SetMany(ctx, items, ttl)
	require.NoError(t, err)
	bKey := keysOn(c, "b", keys)[0]
	var healthy []string
	for _, k := range keys {
		if c.ShardOf(k) != "b" {
			healthy = append(healthy, k)
		}
	}

	e.proxies["b"].Freeze()
	stuck := make(chan error, 2)
	go func() {
		_, err := c.Get(ctx, bKey)
		stuck <- err
	}()
	go func() {
		_, err := c.GetMany(ctx, keys)
		stuck <- err
	}()

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				k := healthy[(g*20+i)%len(healthy)]
				if _, err := c.Get(ctx, k); err != nil {
					errs <- err
					return
				}
				if err := c.Set(ctx, k, []byte("w"), ttl); err != nil {
					errs <- err
					return
				}
			}
			batch := healthy[g : g+10]
			if got, err := c.GetMany(ctx, batch); err != nil || len(got) != len(batch) {
				errs <- errors.Join(err, errors.New("get_many of healthy keys"))
				return
			}
			sub := map[string][]byte{}
			for _, k := range batch {
				sub[k] = []byte("x")
			}
			if _, err := c.SetMany(ctx, sub, ttl); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	select {
	case err := <-stuck:
		t.Fatalf("an operation on the silent shard returned before it answered again: %v", err)
	default:
	}

	e.proxies["b"].Thaw()
	for range 2 {
		require.NoError(t, <-stuck)
	}
}

// A silent shard fails its keys within its OpTimeout, with a transient
// error naming it, or misses under FailOpen.
func TestSilentShardFailsWithinOpTimeout(t *testing.T) {
	t.Parallel()
	// No deadline of its own, so each shard's OpTimeout bounds it.
	ctx := context.Background()
	e := abc(t, "c")
	c := e.open(t, &sharded.Config{Cache: &dbcache.Config{OpTimeout: 300 * time.Millisecond}})
	open := e.open(t, &sharded.Config{Cache: &dbcache.Config{OpTimeout: 300 * time.Millisecond, FailOpen: true}})
	k := keyOn(c, "c", "k")
	require.NoError(t, c.Set(ctx, k, []byte("v"), ttl))
	e.proxies["c"].Freeze()
	t.Cleanup(e.proxies["c"].Thaw)
	_, err := c.Get(ctx, k)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.True(t, dbcache.IsTransient(err))
	mustShardError(t, err, "c")
	_, err = open.Get(ctx, k)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	ok, err := open.Add(ctx, k, []byte("w"), ttl)
	require.NoError(t, err)
	require.False(t, ok)
	v, err := c.Get(ctx, keyOn(c, "a", "k"))
	require.ErrorIs(t, err, dbcache.ErrMiss, "shard a answers: a plain miss (%s)", v)
}

// A shard whose server is down at New does not fail New: its keys fail
// (or miss) until it answers, and then it opens by itself.
func TestNewWithShardDown(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t, "a")
	e.proxies["a"].Down()
	c := e.open(t, &sharded.Config{RetryEvery: 10 * time.Millisecond})
	open := e.open(t, &sharded.Config{Cache: &dbcache.Config{FailOpen: true}, RetryEvery: 10 * time.Millisecond})
	k := keyOn(c, "a", "k")
	other := keyOn(c, "b", "k")

	require.NoError(t, c.Set(ctx, other, []byte("v"), ttl))
	err := c.Set(ctx, k, []byte("v"), ttl)
	require.True(t, dbcache.IsTransient(err), "%v", err)
	mustShardError(t, err, "a")
	_, err = c.Shard(ctx, "a")
	mustShardError(t, err, "a")

	require.NoError(t, open.Set(ctx, k, []byte("v"), ttl))
	_, err = open.Get(ctx, k)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	v, err := open.GetOrSetFunc(ctx, k, func(context.Context) ([]byte, error) { return []byte("loaded"), nil }, ttl)
	require.NoError(t, err)
	require.Equal(t, "loaded", string(v))
	require.Positive(t, open.Stats().FailOpen)
	failed, err := open.SetMany(ctx, map[string][]byte{k: nil, other: nil}, ttl)
	require.NoError(t, err)
	require.Equal(t, []string{k}, failed)

	e.proxies["a"].Up(t)
	// Opens at the next try after RetryEvery; poll, with the test's hang
	// guard as the only bound.
	for {
		err = c.Set(ctx, k, []byte("back"), ttl)
		if err == nil {
			break
		}
		require.True(t, dbcache.IsTransient(err), "%v", err)
		select {
		case <-ctx.Done():
			t.Fatal("shard a never opened")
		case <-time.After(20 * time.Millisecond):
		}
	}
	got, err := c.Get(ctx, k)
	require.NoError(t, err)
	require.Equal(t, "back", string(got))
	sc, err := c.Shard(ctx, "a")
	require.NoError(t, err)
	got, err = sc.Get(ctx, k)
	require.NoError(t, err)
	require.Equal(t, "back", string(got))
}

// A shard that cannot be opened for a reason that will not go away by
// itself (no table, a wrong role) fails New, which closes what it opened.
func TestNewFailsOnPermanentErrors(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := newEnv(t, []string{"a", "b"})
	bare := newEnv(t, []string{"x"}) // migrated: drop the table
	_, err := bare.pools["x"].Exec(ctx, `DROP TABLE dbcache_entries`)
	require.NoError(t, err)
	shards := append(e.shards(), sharded.Shard{Name: "x", Pool: bare.pools["x"]})
	_, err = sharded.New(ctx, shards, nil)
	require.ErrorIs(t, err, dbcache.ErrNotMigrated)
	mustShardError(t, err, "x")
	_, err = sharded.New(ctx, []sharded.Shard{{Name: "bad", DSN: "postgres://%zz"}}, nil)
	require.Error(t, err)
}

func TestNewRefusesBadInput(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := newEnv(t, []string{"a", "b"})
	pa, pb := e.pools["a"], e.pools["b"]
	cacheWith := func(cfg *dbcache.Config) *dbcache.Cache {
		c, err := dbcache.New(ctx, pa, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	for name, tc := range map[string]struct {
		shards []sharded.Shard
		cfg    *sharded.Config
		want   string
	}{
		"none":           {nil, nil, "no shards"},
		"empty name":     {[]sharded.Shard{{Pool: pa}}, nil, "name"},
		"bad name":       {[]sharded.Shard{{Name: "a=b", Pool: pa}}, nil, "name"},
		"long name":      {[]sharded.Shard{{Name: string(make([]byte, 64)), Pool: pa}}, nil, "name"},
		"duplicate":      {[]sharded.Shard{{Name: "a", Pool: pa}, {Name: "a", Pool: pb}}, nil, "two shards"},
		"nothing":        {[]sharded.Shard{{Name: "a"}}, nil, "exactly one"},
		"two":            {[]sharded.Shard{{Name: "a", Pool: pa, DSN: "x"}}, nil, "exactly one"},
		"config+cache":   {[]sharded.Shard{{Name: "a", Cache: cacheWith(nil), Config: &dbcache.Config{}}}, nil, "Config applies"},
		"retry":          {[]sharded.Shard{{Name: "a", Pool: pa}}, &sharded.Config{RetryEvery: -1}, "RetryEvery"},
		"prefixes":       {[]sharded.Shard{{Name: "a", Cache: cacheWith(&dbcache.Config{KeyPrefix: "x"})}, {Name: "b", Pool: pb}}, nil, "KeyPrefix"},
		"versions":       {[]sharded.Shard{{Name: "a", Pool: pa}, {Name: "b", Pool: pb, Config: &dbcache.Config{Version: 2}}}, nil, "version"},
		"cache versions": {[]sharded.Shard{{Name: "a", Cache: cacheWith(nil)}, {Name: "b", Cache: cacheWith(&dbcache.Config{Version: 3})}}, nil, "version"},
	} {
		_, err := sharded.New(ctx, tc.shards, tc.cfg)
		require.ErrorContains(t, err, tc.want, name)
	}
}

// Close makes every view return ErrClosed, closes what the sharded cache
// built and nothing the caller gave.
func TestClose(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	given, err := dbcache.New(ctx, e.pools["a"], nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = given.Close() })
	c, err := sharded.New(ctx, []sharded.Shard{
		{Name: "a", Cache: given},
		{Name: "b", Pool: e.pools["b"]},
		{Name: "c", DSN: e.schemas["c"].DSN(t)},
	}, nil)
	require.NoError(t, err)
	require.NoError(t, c.Set(ctx, "k", []byte("v"), ttl))
	view := c.WithVersion(3)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	_, err = c.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrClosed)
	_, err = view.GetMany(ctx, []string{"k"})
	require.ErrorIs(t, err, dbcache.ErrClosed)
	failed, err := view.SetMany(ctx, map[string][]byte{"k": nil}, ttl)
	require.ErrorIs(t, err, dbcache.ErrClosed)
	require.Equal(t, []string{"k"}, failed)
	for _, err := range c.Keys(ctx, "") {
		require.ErrorIs(t, err, dbcache.ErrClosed)
	}
	// The caller's cache and pool still work.
	require.NoError(t, given.Set(ctx, "k", []byte("v"), ttl))
	require.NoError(t, e.pools["b"].Ping(ctx))
}

// Close while a shard that was down at New is being opened again: Close
// waits for the attempt, and every later call is ErrClosed.
func TestCloseWhileOpening(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t, "a")
	e.proxies["a"].Down()
	c, err := sharded.New(ctx, e.shards(), &sharded.Config{RetryEvery: time.Millisecond})
	require.NoError(t, err)
	k := keyOn(c, "a", "k")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				_, err := c.Get(ctx, k)
				if errors.Is(err, dbcache.ErrClosed) {
					return
				}
				require.True(t, dbcache.IsTransient(err), "%v", err)
			}
		})
	}
	e.proxies["a"].Up(t)
	require.NoError(t, c.Close())
	wg.Wait()
	_, err = c.Get(ctx, k)
	require.ErrorIs(t, err, dbcache.ErrClosed)
	_, err = c.Shard(ctx, "a")
	require.ErrorIs(t, err, dbcache.ErrClosed)
}
