package sharded_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/sharded"
)

// A type assertion on the sharded cache never lies: it has every
// capability of a single cache that several servers can give, and with a
// shard's server stopped each still does its work on the other shards and
// fails the stopped shard's keys with that shard's error (a miss under
// FailOpen), never with errors.ErrUnsupported.
func TestCapabilitiesOnADownShard(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t, "b")
	c := e.open(t, nil)
	open := e.open(t, &sharded.Config{Cache: &dbcache.Config{FailOpen: true}})
	var s dbcache.Store = c
	ttlr, ok1 := s.(dbcache.TTLReader)
	lister, ok2 := s.(dbcache.KeyLister)
	vr, ok3 := s.(dbcache.Versioner)
	maker, ok4 := s.(dbcache.KeyMaker)
	loader, ok5 := s.(dbcache.Loader)
	cas, ok6 := s.(dbcache.CompareAndSwapper)
	require.True(t, ok1 && ok2 && ok3 && ok4 && ok5 && ok6, "a sharded cache has every capability several servers can give")

	keys := someKeys("k", 60)
	for _, k := range keys {
		require.NoError(t, c.Set(ctx, k, []byte("v"), ttl))
	}
	onB, onA := keysOn(c, "b", keys), keysOn(c, "a", keys)
	require.NotEmpty(t, onB)
	require.NotEmpty(t, onA)
	// A token is its key's shard's: read there, swapped there.
	_, tokB, err := cas.GetWithToken(ctx, onB[0])
	require.NoError(t, err)
	shardB, err := c.Shard(ctx, "b")
	require.NoError(t, err)
	_, direct, err := shardB.GetWithToken(ctx, onB[0])
	require.NoError(t, err)
	require.Equal(t, direct, tokB)
	e.proxies["b"].Down()

	notUnsupported := func(err error, what string) {
		t.Helper()
		require.Error(t, err, what)
		require.NotErrorIs(t, err, errors.ErrUnsupported, what)
		require.True(t, dbcache.IsTransient(err), "%s: %v", what, err)
		mustShardError(t, err, "b")
	}
	load := func(context.Context) ([]byte, error) { return []byte("loaded"), nil }
	_, _, err = cas.GetWithToken(ctx, onB[0])
	notUnsupported(err, "get_with_token")
	_, err = cas.CompareAndSwap(ctx, onB[0], tokB, []byte("w"), ttl)
	notUnsupported(err, "compare_and_swap")
	_, err = cas.CompareAndDelete(ctx, onB[0], tokB)
	notUnsupported(err, "compare_and_delete")
	_, err = ttlr.TTL(ctx, onB[0])
	notUnsupported(err, "ttl")
	_, _, err = ttlr.GetWithTTL(ctx, onB[0])
	notUnsupported(err, "get_with_ttl")
	_, err = vr.IncrVersion(ctx, onB[0], 1)
	notUnsupported(err, "incr_version")
	_, err = loader.GetOrSetFunc(ctx, onB[0], load, ttl)
	notUnsupported(err, "get_or_set_func")
	_, err = loader.GetOrRevalidate(ctx, onB[0], load, time.Minute, time.Hour)
	notUnsupported(err, "get_or_revalidate")
	require.NoError(t, maker.ValidateKey(ctx, maker.MakeKey(onB[0])), "key making needs no server")

	// The other shards serve every capability meanwhile.
	got, err := ttlr.TTL(ctx, onA[0])
	require.NoError(t, err)
	_, isTTL := got.Duration()
	require.True(t, isTTL)
	_, tokA, err := cas.GetWithToken(ctx, onA[1])
	require.NoError(t, err)
	swapped, err := cas.CompareAndSwap(ctx, onA[1], tokA, []byte("w"), ttl)
	require.NoError(t, err)
	require.True(t, swapped)
	to, err := vr.IncrVersion(ctx, onA[0], 1)
	require.NoError(t, err)
	require.Equal(t, 2, to)
	v, err := loader.GetOrSetFunc(ctx, keyOn(c, "a", "fresh-"), load, ttl)
	require.NoError(t, err)
	require.Equal(t, "loaded", string(v))

	// Fail-open: the stopped shard's keys miss, and its loader's value is
	// returned unstored.
	_, err = open.TTL(ctx, onB[0])
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, _, err = open.GetWithToken(ctx, onB[0])
	require.ErrorIs(t, err, dbcache.ErrMiss)
	swapped, err = open.CompareAndSwap(ctx, onB[0], tokB, []byte("w"), ttl)
	require.NoError(t, err)
	require.False(t, swapped)
	v, err = open.GetOrRevalidate(ctx, onB[1], load, time.Minute, time.Hour)
	require.NoError(t, err)
	require.Equal(t, "loaded", string(v))

	// Keys and DeletePrefix run on every shard: the others' part is done,
	// the stopped one's is its error.
	var keysErr error
	for _, err := range lister.Keys(ctx, "k") {
		if err != nil {
			keysErr = err
		}
	}
	notUnsupported(keysErr, "keys")
	_, err = lister.DeletePrefix(ctx, "k")
	notUnsupported(err, "delete_prefix")
	_, err = c.Get(ctx, onA[1])
	require.ErrorIs(t, err, dbcache.ErrMiss, "shard a's part of the prefix is deleted")
}

// The sharded cache refuses a made key a shard would refuse, whichever
// shard would hold it: a key PostgreSQL cannot store always, a key
// memcached could not store when a shard's KeyCheck is KeyCheckError.
func TestValidateKey(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	c := e.open(t, nil)
	require.NoError(t, c.ValidateKey(ctx, c.MakeKey("fine")))
	require.NoError(t, c.ValidateKey(ctx, c.MakeKey("with space")), "KeyCheckWarn: a warning")
	require.ErrorIs(t, c.ValidateKey(ctx, c.MakeKey("nul\x00")), dbcache.ErrInvalidKey)
	shards := e.shards()
	shards[2].Config = &dbcache.Config{KeyCheck: dbcache.KeyCheckError}
	strict, err := sharded.New(ctx, shards, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = strict.Close() })
	require.ErrorIs(t, strict.ValidateKey(ctx, strict.MakeKey("with space")), dbcache.ErrInvalidKey)
	require.NoError(t, strict.ValidateKey(ctx, strict.MakeKey("fine")))
}

// Django's VERSION = 0 over shards: shards configured with VersionZero
// agree with each other on version 0 and refuse a shard at version 1.
func TestVersionZeroShards(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	e := abc(t)
	zero := e.open(t, &sharded.Config{Cache: &dbcache.Config{VersionZero: true}})
	require.Equal(t, 0, zero.Version())
	require.Equal(t, ":0:k", zero.MakeKey("k"))
	require.NoError(t, zero.Set(ctx, "k", []byte("v"), ttl))
	one := e.open(t, nil)
	_, err := one.Get(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrMiss)
	v, err := one.WithVersion(0).Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	shards := e.shards()
	shards[1].Config = &dbcache.Config{}
	_, err = sharded.New(ctx, shards, &sharded.Config{Cache: &dbcache.Config{VersionZero: true}})
	require.ErrorContains(t, err, "default version 1 where the others have 0")
}
