package dbcache_test

// Ports of Django's cache test suite (tests/cache/tests.py, BaseCacheTests
// and DBCacheTests), named after the Django test they port. Where dbcache
// deliberately differs from Django's DB backend the test says so.

import (
	"bytes"
	"compress/zlib"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

func TestSimple(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "key", []byte("value"), dbcache.DefaultTimeout))
	require.Equal(t, "value", mustGet(t, b.cache, "key"))
}

// test_default_used_when_none_is_set: a stored empty value is a hit, not a
// miss.
func TestStoredEmptyIsAHit(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "key_default_none", nil, dbcache.DefaultTimeout))
	v, err := b.cache.Get(ctx, "key_default_none")
	require.NoError(t, err)
	require.NotNil(t, v)
	require.Empty(t, v)
	ok, err := b.cache.HasKey(ctx, "key_default_none")
	require.NoError(t, err)
	require.True(t, ok)
}

func TestAdd(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	ok, err := b.cache.Add(ctx, "addkey1", []byte("value"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = b.cache.Add(ctx, "addkey1", []byte("newvalue"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.False(t, ok)
	require.Equal(t, "value", mustGet(t, b.cache, "addkey1"))
}

func TestPrefix(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	prefixed := setupOn(t, b.pool, &dbcache.Config{KeyPrefix: "cacheprefix"}).cache
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "somekey", []byte("value"), dbcache.DefaultTimeout))
	ok, err := prefixed.HasKey(ctx, "somekey")
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, prefixed.Set(ctx, "somekey", []byte("value2"), dbcache.DefaultTimeout))
	require.Equal(t, "value", mustGet(t, b.cache, "somekey"))
	require.Equal(t, "value2", mustGet(t, prefixed, "somekey"))
}

func TestNonExistent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	requireMiss(t, b.cache, "does_not_exist")
}

func TestGetMany(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		require.NoError(t, b.cache.Set(ctx, k, []byte(k), dbcache.DefaultTimeout))
	}
	require.NoError(t, b.cache.Set(ctx, "none", nil, dbcache.DefaultTimeout))
	got, err := b.cache.GetMany(ctx, []string{"a", "c", "d", "missing", "none"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"a": []byte("a"), "c": []byte("c"), "d": []byte("d"), "none": {}}, got)
	got, err = b.cache.GetMany(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestDelete(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "key1", []byte("spam"), dbcache.DefaultTimeout))
	require.NoError(t, b.cache.Set(ctx, "key2", []byte("eggs"), dbcache.DefaultTimeout))
	ok, err := b.cache.Delete(ctx, "key1")
	require.NoError(t, err)
	require.True(t, ok)
	requireMiss(t, b.cache, "key1")
	require.Equal(t, "eggs", mustGet(t, b.cache, "key2"))
}

func TestDeleteNonexistent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ok, err := b.cache.Delete(ctxT(t), "nonexistent_key")
	require.NoError(t, err)
	require.False(t, ok)
}

// Difference from Django's DB backend: deleting an expired row reports
// false (the entry was already absent), though the row is removed.
func TestDeleteExpiredReportsAbsent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.ExpiresIn(time.Second)))
	travel(t, b.pool, time.Hour)
	ok, err := b.cache.Delete(ctx, "k")
	require.NoError(t, err)
	require.False(t, ok)
	require.Zero(t, rowCount(t, b))
}

// test_has_key and test_in.
func TestHasKey(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "hello1", []byte("goodbye1"), dbcache.DefaultTimeout))
	require.NoError(t, b.cache.Set(ctx, "no_expiry", []byte("here"), dbcache.Forever))
	require.NoError(t, b.cache.Set(ctx, "null", nil, dbcache.DefaultTimeout))
	for key, want := range map[string]bool{"hello1": true, "goodbye1": false, "no_expiry": true, "null": true} {
		ok, err := b.cache.HasKey(ctx, key)
		require.NoError(t, err)
		require.Equal(t, want, ok, key)
	}
}

func TestIncr(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "answer", []byte("41"), dbcache.DefaultTimeout))
	for _, step := range []struct {
		delta int64
		want  int64
	}{{1, 42}, {10, 52}, {-10, 42}} {
		n, err := b.cache.Incr(ctx, "answer", step.delta)
		require.NoError(t, err)
		require.Equal(t, step.want, n)
	}
	require.Equal(t, "42", mustGet(t, b.cache, "answer"))
	_, err := b.cache.Incr(ctx, "does_not_exist", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = b.cache.Incr(ctx, "does_not_exist", -1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.NoError(t, b.cache.Set(ctx, "null", nil, dbcache.DefaultTimeout))
	_, err = b.cache.Incr(ctx, "null", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
}

func TestDecr(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "answer", []byte("43"), dbcache.DefaultTimeout))
	for _, step := range []struct {
		delta int64
		want  int64
	}{{1, 42}, {10, 32}, {-10, 42}} {
		n, err := b.cache.Decr(ctx, "answer", step.delta)
		require.NoError(t, err)
		require.Equal(t, step.want, n)
	}
	_, err := b.cache.Decr(ctx, "does_not_exist", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.NoError(t, b.cache.Set(ctx, "null", nil, dbcache.DefaultTimeout))
	_, err = b.cache.Decr(ctx, "null", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)
}

func TestClose(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	require.NoError(t, b.cache.Close())
	require.NoError(t, b.cache.Close(), "closing twice is fine")
}

// test_data_types / test_binary_string: byte payloads round-trip exactly,
// NUL bytes and invalid UTF-8 included.
func TestBinaryValuesRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	_, _ = zw.Write([]byte(strings.Repeat("value to be compressed ", 20)))
	require.NoError(t, zw.Close())
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	values := map[string][]byte{
		"zlib":    z.Bytes(),
		"empty":   {},
		"nul":     {0, 0, 0},
		"bad8":    {0xff, 0xfe, 0x00, 'a', 0xc3},
		"all256":  all,
		"bigtext": bytes.Repeat([]byte("ü€𝄞"), 10000),
	}
	for k, v := range values {
		require.NoError(t, b.cache.Set(ctx, "set_"+k, v, dbcache.DefaultTimeout))
		ok, err := b.cache.Add(ctx, "add_"+k, v, dbcache.DefaultTimeout)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, v, []byte(mustGet(t, b.cache, "set_"+k)))
		require.Equal(t, v, []byte(mustGet(t, b.cache, "add_"+k)))
	}
	many := map[string][]byte{}
	for k, v := range values {
		many["many_"+k] = v
	}
	failed, err := b.cache.SetMany(ctx, many, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Empty(t, failed)
	keys := make([]string, 0, len(many))
	for k := range many {
		keys = append(keys, k)
	}
	got, err := b.cache.GetMany(ctx, keys)
	require.NoError(t, err)
	require.Equal(t, many, got)
}

// test_expiration: after the timeout, get misses, add succeeds over the
// expired entry and has_key is false. The entries are aged in the database
// rather than waited for.
func TestExpiration(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "expire1", []byte("very quickly"), dbcache.ExpiresIn(time.Second)))
	require.NoError(t, b.cache.Set(ctx, "expire2", []byte("very quickly"), dbcache.ExpiresIn(time.Second)))
	require.NoError(t, b.cache.Set(ctx, "expire3", []byte("very quickly"), dbcache.ExpiresIn(time.Second)))
	travel(t, b.pool, 2*time.Second)
	requireMiss(t, b.cache, "expire1")
	ok, err := b.cache.Add(ctx, "expire2", []byte("newvalue"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "newvalue", mustGet(t, b.cache, "expire2"))
	ok, err = b.cache.HasKey(ctx, "expire3")
	require.NoError(t, err)
	require.False(t, ok)
}

// A real wait on the database clock, with a sub-second timeout: the entry is
// live at first and gone once the clock passes it. Polls instead of sleeping
// a fixed time, so a slow machine cannot fail it.
func TestSubSecondTimeoutOnRealClock(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.ExpiresIn(200*time.Millisecond)))
	var expires time.Time
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT expires FROM dbcache_entries`).Scan(&expires))
	for {
		_, err := b.cache.Get(ctx, "k")
		if errors.Is(err, dbcache.ErrMiss) {
			break
		}
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
	}
	var passed bool
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT statement_timestamp() >= $1`, expires).Scan(&passed))
	require.True(t, passed, "missed before the database clock reached the expiry")
}

// test_touch, with the entries aged in the database instead of sleeping.
func TestTouch(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "expire1", []byte("very quickly"), dbcache.ExpiresIn(time.Second)))
	ok, err := b.cache.Touch(ctx, "expire1", dbcache.ExpiresIn(4*time.Second))
	require.NoError(t, err)
	require.True(t, ok)
	travel(t, b.pool, 2*time.Second)
	ok, _ = b.cache.HasKey(ctx, "expire1")
	require.True(t, ok)
	travel(t, b.pool, 3*time.Second)
	ok, _ = b.cache.HasKey(ctx, "expire1")
	require.False(t, ok)

	require.NoError(t, b.cache.Set(ctx, "expire2", []byte("very quickly"), dbcache.ExpiresIn(time.Second)))
	ok, err = b.cache.Touch(ctx, "expire2", dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.True(t, ok)
	travel(t, b.pool, 2*time.Second)
	ok, _ = b.cache.HasKey(ctx, "expire2")
	require.True(t, ok, "touch with the default timeout gives 300 s")

	ok, err = b.cache.Touch(ctx, "nonexistent", dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.False(t, ok)
}

// Difference from Django's DB backend: touch on an expired row returns false
// and does not bring the stale value back.
func TestTouchExpiredDoesNotRevive(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("stale"), dbcache.ExpiresIn(time.Second)))
	travel(t, b.pool, time.Hour)
	ok, err := b.cache.Touch(ctx, "k", dbcache.Forever)
	require.NoError(t, err)
	require.False(t, ok)
	requireMiss(t, b.cache, "k")
}

func TestUnicode(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	stuff := map[string]string{
		"ascii":                "ascii_value",
		"unicode_ascii":        "Iñtërnâtiônàlizætiøn1",
		"Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
		"ascii2":               "{'x' : 1 }",
	}
	for k, v := range stuff {
		require.NoError(t, b.cache.Set(ctx, k, []byte(v), dbcache.DefaultTimeout))
		require.Equal(t, v, mustGet(t, b.cache, k))
		ok, err := b.cache.Delete(ctx, k)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = b.cache.Add(ctx, k, []byte(v), dbcache.DefaultTimeout)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, v, mustGet(t, b.cache, k))
		_, err = b.cache.Delete(ctx, k)
		require.NoError(t, err)
	}
	items := map[string][]byte{}
	for k, v := range stuff {
		items[k] = []byte(v)
	}
	failed, err := b.cache.SetMany(ctx, items, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Empty(t, failed)
	for k, v := range stuff {
		require.Equal(t, v, mustGet(t, b.cache, k))
	}
}

// test_set_many, test_set_many_returns_empty_list_on_success,
// test_set_many_empty_data.
func TestSetMany(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	failed, err := b.cache.SetMany(ctx, map[string][]byte{"key1": []byte("spam"), "key2": []byte("eggs")}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Empty(t, failed)
	require.Equal(t, "spam", mustGet(t, b.cache, "key1"))
	require.Equal(t, "eggs", mustGet(t, b.cache, "key2"))
	failed, err = b.cache.SetMany(ctx, map[string][]byte{}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Empty(t, failed)
}

func TestSetManyExpiration(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	_, err := b.cache.SetMany(ctx, map[string][]byte{"key1": []byte("spam"), "key2": []byte("eggs")}, dbcache.ExpiresIn(time.Second))
	require.NoError(t, err)
	travel(t, b.pool, 2*time.Second)
	requireMiss(t, b.cache, "key1")
	requireMiss(t, b.cache, "key2")
}

// A batch with one key PostgreSQL cannot store writes nothing, and reports
// every key as failed.
func TestSetManyIsAllOrNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	failed, err := b.cache.SetMany(ctx, map[string][]byte{"good": []byte("1"), "bad\x00": []byte("2")}, dbcache.DefaultTimeout)
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	require.ElementsMatch(t, []string{"good", "bad\x00"}, failed)
	require.Zero(t, rowCount(t, b))
}

// test_delete_many and test_delete_many_no_keys.
func TestDeleteMany(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	_, err := b.cache.SetMany(ctx, map[string][]byte{"key1": []byte("spam"), "key2": []byte("eggs"), "key3": []byte("ham")}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	n, err := b.cache.DeleteMany(ctx, []string{"key1", "key2", "nope"})
	require.NoError(t, err)
	require.Equal(t, 2, n)
	requireMiss(t, b.cache, "key1")
	requireMiss(t, b.cache, "key2")
	require.Equal(t, "ham", mustGet(t, b.cache, "key3"))
	n, err = b.cache.DeleteMany(ctx, nil)
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestClear(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	other := setupOn(t, b.pool, &dbcache.Config{KeyPrefix: "other", Version: 7}).cache
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "key1", []byte("spam"), dbcache.DefaultTimeout))
	require.NoError(t, other.Set(ctx, "key2", []byte("eggs"), dbcache.DefaultTimeout))
	require.NoError(t, b.cache.Clear(ctx))
	requireMiss(t, b.cache, "key1")
	requireMiss(t, other, "key2")
}

// test_long_timeout: 30 days + 1 s is still relative.
func TestLongTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	long := dbcache.ExpiresIn(30*24*time.Hour + time.Second)
	require.NoError(t, b.cache.Set(ctx, "key1", []byte("eggs"), long))
	require.Equal(t, "eggs", mustGet(t, b.cache, "key1"))
	ok, err := b.cache.Add(ctx, "key2", []byte("ham"), long)
	require.NoError(t, err)
	require.True(t, ok)
	_, err = b.cache.SetMany(ctx, map[string][]byte{"key3": []byte("sausage"), "key4": []byte("lobster bisque")}, long)
	require.NoError(t, err)
	require.Equal(t, "lobster bisque", mustGet(t, b.cache, "key4"))
	var days float64
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT extract(epoch FROM max(expires) - now()) / 86400 FROM dbcache_entries`).Scan(&days))
	require.InDelta(t, 30, days, 0.1)
}

func TestForeverTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "key1", []byte("eggs"), dbcache.Forever))
	ok, err := b.cache.Add(ctx, "key1", []byte("newvalue"), dbcache.Forever)
	require.NoError(t, err)
	require.False(t, ok)
	_, err = b.cache.SetMany(ctx, map[string][]byte{"key3": []byte("sausage")}, dbcache.Forever)
	require.NoError(t, err)
	travel(t, b.pool, 100*365*24*time.Hour)
	require.Equal(t, "eggs", mustGet(t, b.cache, "key1"))
	require.Equal(t, "sausage", mustGet(t, b.cache, "key3"))

	require.NoError(t, b.cache.Set(ctx, "key5", []byte("belgian fries"), dbcache.ExpiresIn(time.Second)))
	ok, err = b.cache.Touch(ctx, "key5", dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok)
	travel(t, b.pool, time.Hour)
	require.Equal(t, "belgian fries", mustGet(t, b.cache, "key5"))
}

// A default of Forever (Django's TIMEOUT=None, DefaultNonExpiringCacheKeyTests).
func TestConfigDefaultForever(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{DefaultTimeout: dbcache.Forever})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	var isNull bool
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT expires IS NULL FROM dbcache_entries`).Scan(&isNull))
	require.True(t, isNull)
}

// test_zero_timeout (and negative): nothing visible is stored, add still
// returns true, touch(0) expires a live key.
func TestZeroAndNegativeTimeout(t *testing.T) {
	t.Parallel()
	for _, d := range []time.Duration{0, -time.Second, -time.Hour} {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			ctx := ctxT(t)
			require.NoError(t, b.cache.Set(ctx, "key1", []byte("eggs"), dbcache.ExpiresIn(d)))
			requireMiss(t, b.cache, "key1")
			ok, err := b.cache.Add(ctx, "key2", []byte("ham"), dbcache.ExpiresIn(d))
			require.NoError(t, err)
			require.True(t, ok)
			requireMiss(t, b.cache, "key2")
			_, err = b.cache.SetMany(ctx, map[string][]byte{"key3": []byte("sausage"), "key4": []byte("lobster")}, dbcache.ExpiresIn(d))
			require.NoError(t, err)
			requireMiss(t, b.cache, "key3")
			requireMiss(t, b.cache, "key4")

			require.NoError(t, b.cache.Set(ctx, "key5", []byte("belgian fries"), dbcache.DefaultTimeout))
			ok, err = b.cache.Touch(ctx, "key5", dbcache.ExpiresIn(d))
			require.NoError(t, err)
			require.True(t, ok)
			requireMiss(t, b.cache, "key5")

			// A live key: add with a zero timeout returns false and changes nothing.
			require.NoError(t, b.cache.Set(ctx, "live", []byte("x"), dbcache.DefaultTimeout))
			ok, err = b.cache.Add(ctx, "live", []byte("y"), dbcache.ExpiresIn(d))
			require.NoError(t, err)
			require.False(t, ok)
			require.Equal(t, "x", mustGet(t, b.cache, "live"))
		})
	}
}

// Config.DefaultTimeout ExpiresIn(0): Django's TIMEOUT=0 caches nothing.
func TestConfigDefaultZero(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{DefaultTimeout: dbcache.ExpiresIn(0)})
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
	requireMiss(t, b.cache, "k")
}

func TestFloatTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "key1", []byte("spam"), dbcache.ExpiresIn(100200*time.Millisecond)))
	require.Equal(t, "spam", mustGet(t, b.cache, "key1"))
	var secs float64
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT extract(epoch FROM expires - now()) FROM dbcache_entries`).Scan(&secs))
	require.InDelta(t, 100.2, secs, 5)
}

// Django's DBCacheWithTimeZoneTests: nothing depends on the session's or the
// process's time zone, since expiries are timestamptz from the database clock.
func TestNonUTCSessionTimeZone(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	cfg := b.pool.Config()
	cfg.ConnConfig.RuntimeParams["timezone"] = "Pacific/Chatham"
	other := setupOn(t, newPool(t, cfg), nil).cache
	require.NoError(t, other.Set(ctx, "k", []byte("v"), dbcache.ExpiresIn(time.Hour)))
	require.Equal(t, "v", mustGet(t, b.cache, "k"))
	travel(t, b.pool, 59*time.Minute)
	require.Equal(t, "v", mustGet(t, other, "k"))
	travel(t, b.pool, 2*time.Minute)
	requireMiss(t, other, "k")
	requireMiss(t, b.cache, "k")
}

func TestCacheVersioningGetSet(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	v2 := setupOn(t, b.pool, &dbcache.Config{Version: 2}).cache
	ctx := ctxT(t)
	c := b.cache

	// set, using default version = 1
	require.NoError(t, c.Set(ctx, "answer1", []byte("42"), dbcache.DefaultTimeout))
	require.Equal(t, "42", mustGet(t, c, "answer1"))
	require.Equal(t, "42", mustGet(t, c.WithVersion(1), "answer1"))
	requireMiss(t, c.WithVersion(2), "answer1")
	requireMiss(t, v2, "answer1")
	require.Equal(t, "42", mustGet(t, v2.WithVersion(1), "answer1"))
	requireMiss(t, v2.WithVersion(2), "answer1")

	// set, default version = 1, but manually override version = 2
	require.NoError(t, c.WithVersion(2).Set(ctx, "answer2", []byte("42"), dbcache.DefaultTimeout))
	requireMiss(t, c, "answer2")
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer2"))
	require.Equal(t, "42", mustGet(t, v2, "answer2"))
	requireMiss(t, v2.WithVersion(1), "answer2")

	// v2 set, using default version = 2
	require.NoError(t, v2.Set(ctx, "answer3", []byte("42"), dbcache.DefaultTimeout))
	requireMiss(t, c, "answer3")
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer3"))
	require.Equal(t, "42", mustGet(t, v2, "answer3"))

	// v2 set, default version = 2, but manually override version = 1
	require.NoError(t, v2.WithVersion(1).Set(ctx, "answer4", []byte("42"), dbcache.DefaultTimeout))
	require.Equal(t, "42", mustGet(t, c, "answer4"))
	requireMiss(t, v2, "answer4")
	require.Equal(t, "42", mustGet(t, v2.WithVersion(1), "answer4"))
}

func TestCacheVersioningAdd(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c := b.cache
	add := func(cc *dbcache.Cache, v string) bool {
		ok, err := cc.Add(ctx, "answer1", []byte(v), dbcache.DefaultTimeout)
		require.NoError(t, err)
		return ok
	}
	require.True(t, add(c.WithVersion(2), "42"))
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer1"))
	require.False(t, add(c.WithVersion(2), "37"))
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer1"))
	require.True(t, add(c.WithVersion(1), "37"))
	require.Equal(t, "37", mustGet(t, c.WithVersion(1), "answer1"))
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer1"))
}

func TestCacheVersioningHasKey(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	v2 := setupOn(t, b.pool, &dbcache.Config{Version: 2}).cache
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "answer1", []byte("42"), dbcache.DefaultTimeout))
	for _, tc := range []struct {
		c    *dbcache.Cache
		want bool
	}{{b.cache, true}, {b.cache.WithVersion(1), true}, {b.cache.WithVersion(2), false}, {v2, false}, {v2.WithVersion(1), true}} {
		ok, err := tc.c.HasKey(ctx, "answer1")
		require.NoError(t, err)
		require.Equal(t, tc.want, ok)
	}
}

func TestCacheVersioningDelete(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c := b.cache
	require.NoError(t, c.WithVersion(1).Set(ctx, "answer1", []byte("37"), dbcache.DefaultTimeout))
	require.NoError(t, c.WithVersion(2).Set(ctx, "answer1", []byte("42"), dbcache.DefaultTimeout))
	ok, err := c.Delete(ctx, "answer1")
	require.NoError(t, err)
	require.True(t, ok)
	requireMiss(t, c.WithVersion(1), "answer1")
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer1"))

	require.NoError(t, c.WithVersion(1).Set(ctx, "answer2", []byte("37"), dbcache.DefaultTimeout))
	require.NoError(t, c.WithVersion(2).Set(ctx, "answer2", []byte("42"), dbcache.DefaultTimeout))
	ok, err = c.WithVersion(2).Delete(ctx, "answer2")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "37", mustGet(t, c.WithVersion(1), "answer2"))
	requireMiss(t, c.WithVersion(2), "answer2")
}

func TestCacheVersioningIncrDecr(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c := b.cache
	require.NoError(t, c.WithVersion(1).Set(ctx, "answer1", []byte("37"), dbcache.DefaultTimeout))
	require.NoError(t, c.WithVersion(2).Set(ctx, "answer1", []byte("42"), dbcache.DefaultTimeout))
	_, err := c.Incr(ctx, "answer1", 1)
	require.NoError(t, err)
	require.Equal(t, "38", mustGet(t, c.WithVersion(1), "answer1"))
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer1"))
	_, err = c.Decr(ctx, "answer1", 1)
	require.NoError(t, err)
	require.Equal(t, "37", mustGet(t, c.WithVersion(1), "answer1"))

	_, err = c.WithVersion(2).Incr(ctx, "answer1", 1)
	require.NoError(t, err)
	require.Equal(t, "37", mustGet(t, c.WithVersion(1), "answer1"))
	require.Equal(t, "43", mustGet(t, c.WithVersion(2), "answer1"))
	_, err = c.WithVersion(2).Decr(ctx, "answer1", 1)
	require.NoError(t, err)
	require.Equal(t, "42", mustGet(t, c.WithVersion(2), "answer1"))
}

func TestCacheVersioningGetSetMany(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	v2 := setupOn(t, b.pool, &dbcache.Config{Version: 2}).cache
	ctx := ctxT(t)
	c := b.cache
	items := map[string][]byte{"ford1": []byte("37"), "arthur1": []byte("42")}
	keys := []string{"ford1", "arthur1"}
	getMany := func(cc *dbcache.Cache) map[string][]byte {
		got, err := cc.GetMany(ctx, keys)
		require.NoError(t, err)
		return got
	}
	_, err := c.SetMany(ctx, items, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, items, getMany(c))
	require.Equal(t, items, getMany(c.WithVersion(1)))
	require.Empty(t, getMany(c.WithVersion(2)))
	require.Empty(t, getMany(v2))
	require.Equal(t, items, getMany(v2.WithVersion(1)))

	keys = []string{"ford2", "arthur2"}
	_, err = c.WithVersion(2).SetMany(ctx, map[string][]byte{"ford2": []byte("37"), "arthur2": []byte("42")}, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Empty(t, getMany(c))
	require.Len(t, getMany(c.WithVersion(2)), 2)
	require.Len(t, getMany(v2), 2)
	require.Empty(t, getMany(v2.WithVersion(1)))
}

func TestIncrVersion(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c2 := b.cache.WithVersion(2)
	require.NoError(t, c2.Set(ctx, "answer", []byte("42"), dbcache.ExpiresIn(time.Hour)))
	v, err := c2.IncrVersion(ctx, "answer", 1)
	require.NoError(t, err)
	require.Equal(t, 3, v)
	requireMiss(t, c2, "answer")
	require.Equal(t, "42", mustGet(t, b.cache.WithVersion(3), "answer"))

	// Difference from Django: the expiry moves with the value.
	var secs float64
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT extract(epoch FROM expires - now()) FROM dbcache_entries`).Scan(&secs))
	require.InDelta(t, 3600, secs, 60)

	_, err = b.cache.IncrVersion(ctx, "does_not_exist", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)

	require.NoError(t, c2.Set(ctx, "null", nil, dbcache.DefaultTimeout))
	v, err = c2.IncrVersion(ctx, "null", 5)
	require.NoError(t, err)
	require.Equal(t, 7, v)
	got, err := b.cache.WithVersion(7).Get(ctx, "null")
	require.NoError(t, err)
	require.Empty(t, got)

	v, err = b.cache.WithVersion(7).IncrVersion(ctx, "null", 0)
	require.NoError(t, err)
	require.Equal(t, 7, v)

	// An expired entry is absent: nothing to move.
	require.NoError(t, c2.Set(ctx, "old", []byte("x"), dbcache.ExpiresIn(time.Second)))
	travel(t, b.pool, time.Hour)
	_, err = c2.IncrVersion(ctx, "old", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
}

func TestDecrVersion(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c2 := b.cache.WithVersion(2)
	require.NoError(t, c2.Set(ctx, "answer", []byte("42"), dbcache.DefaultTimeout))
	v, err := c2.DecrVersion(ctx, "answer", 1)
	require.NoError(t, err)
	require.Equal(t, 1, v)
	requireMiss(t, c2, "answer")
	require.Equal(t, "42", mustGet(t, b.cache, "answer"))
	_, err = c2.DecrVersion(ctx, "does_not_exist", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
}

func TestCustomKeyFunc(t *testing.T) {
	t.Parallel()
	custom := func(key, prefix string, version int) string {
		return "CUSTOM-" + prefix + "-" + string(rune('0'+version%10)) + "-" + key
	}
	b := setup(t, nil)
	ck1 := setupOn(t, b.pool, &dbcache.Config{KeyFunc: custom}).cache
	ck2 := setupOn(t, b.pool, &dbcache.Config{KeyFunc: custom}).cache
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "answer1", []byte("42"), dbcache.DefaultTimeout))
	require.Equal(t, "42", mustGet(t, b.cache, "answer1"))
	requireMiss(t, ck1, "answer1")
	requireMiss(t, ck2, "answer1")
	require.NoError(t, ck1.Set(ctx, "answer2", []byte("42"), dbcache.DefaultTimeout))
	requireMiss(t, b.cache, "answer2")
	require.Equal(t, "42", mustGet(t, ck1, "answer2"))
	require.Equal(t, "42", mustGet(t, ck2, "answer2"))
	require.Equal(t, "CUSTOM--1-answer2", ck1.MakeKey("answer2"))
}

func TestMakeKeyDefault(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	require.Equal(t, ":1:foo", b.cache.MakeKey("foo"))
	require.Equal(t, ":2:foo", b.cache.WithVersion(2).MakeKey("foo"))
	p := setupOn(t, b.pool, &dbcache.Config{KeyPrefix: "p", Version: 3}).cache
	require.Equal(t, "p:3:foo", p.MakeKey("foo"))
}

// Django's VERSION = 0: Config.VersionZero configures it (Version's zero
// value is the default, 1), its entries are apart from version 1's, and it
// is refused beside another Version.
func TestConfigVersionZero(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	zero := setupOn(t, b.pool, &dbcache.Config{VersionZero: true}).cache
	require.Equal(t, ":0:foo", zero.MakeKey("foo"))
	require.Equal(t, 0, zero.Version())
	require.Equal(t, ":1:foo", b.cache.MakeKey("foo"), "Version 0 is the default, 1")
	require.NoError(t, zero.Set(ctx, "k", []byte("zero"), dbcache.DefaultTimeout))
	requireMiss(t, b.cache, "k")
	require.Equal(t, "zero", mustGet(t, b.cache.WithVersion(0), "k"))
	v, err := zero.IncrVersion(ctx, "k", 1)
	require.NoError(t, err)
	require.Equal(t, 1, v)
	require.Equal(t, "zero", mustGet(t, b.cache, "k"))

	_, err = dbcache.New(ctx, b.pool, &dbcache.Config{VersionZero: true, Version: 2})
	require.ErrorContains(t, err, "VersionZero")
}

// One rule for Config's numbers: 0 is the documented default, -1 is off,
// below that is refused with the field's name.
func TestConfigZeroAndOff(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	for _, cfg := range []dbcache.Config{{CoalesceGets: -1}, {CoalesceSets: -1}, {CoalesceIncrs: -1}, {LoadLocks: -1}, {OpTimeout: -1}} {
		c, err := dbcache.New(ctx, b.pool, &cfg)
		require.NoError(t, err, "%+v", cfg)
		require.NoError(t, c.Set(ctx, "k", []byte("v"), dbcache.DefaultTimeout))
		require.Equal(t, "v", mustGet(t, c, "k"))
		require.NoError(t, c.Close())
	}
	for field, cfg := range map[string]dbcache.Config{
		"CoalesceGets": {CoalesceGets: -2}, "CoalesceSets": {CoalesceSets: -2}, "CoalesceIncrs": {CoalesceIncrs: -2},
		"LoadLocks": {LoadLocks: -2}, "OpTimeout": {OpTimeout: -2}, "LoadWait": {LoadWait: -1},
	} {
		_, err := dbcache.New(ctx, b.pool, &cfg)
		require.ErrorContains(t, err, "Config."+field)
	}
}

func TestGetOrSet(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	requireMiss(t, b.cache, "projector")
	v, err := b.cache.GetOrSet(ctx, "projector", []byte("42"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "42", string(v))
	require.Equal(t, "42", mustGet(t, b.cache, "projector"))
	v, err = b.cache.GetOrSet(ctx, "null", nil, dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Empty(t, v)
	got, err := b.cache.Get(ctx, "null")
	require.NoError(t, err, "an empty default is stored")
	require.Empty(t, got)
}

func TestGetOrSetCallable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	calls := 0
	load := func(context.Context) ([]byte, error) { calls++; return []byte("value"), nil }
	for range 3 {
		v, err := b.cache.GetOrSetFunc(ctx, "mykey", load, dbcache.DefaultTimeout)
		require.NoError(t, err)
		require.Equal(t, "value", string(v))
	}
	require.Equal(t, 1, calls, "the loader runs only on a miss")

	boom := errors.New("boom")
	_, err := b.cache.GetOrSetFunc(ctx, "failing", func(context.Context) ([]byte, error) { return nil, boom }, dbcache.DefaultTimeout)
	require.ErrorIs(t, err, boom)
	requireMiss(t, b.cache, "failing")
}

func TestGetOrSetVersion(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	v, err := b.cache.WithVersion(1).GetOrSet(ctx, "brian", []byte("42"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "42", string(v))
	v, err = b.cache.WithVersion(2).GetOrSet(ctx, "brian", []byte("43"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "43", string(v))
	require.Equal(t, "42", mustGet(t, b.cache.WithVersion(1), "brian"))
}

// test_get_or_set_racing: another writer stores between get_or_set's read
// and its write; get_or_set returns the stored value, not its own.
func TestGetOrSetRacing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	dbcache.SetTestBeforeGetOrSetWrite(b.cache, func() {
		require.NoError(t, b.cache.Set(ctx, "key", []byte("winner"), dbcache.DefaultTimeout))
	})
	v, err := b.cache.GetOrSet(ctx, "key", []byte("loser"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "winner", string(v))
	require.Equal(t, "winner", mustGet(t, b.cache, "key"))
}

func TestGetOrSetZeroTimeoutReturnsValueStoresNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	v, err := b.cache.GetOrSet(ctx, "k", []byte("v"), dbcache.ExpiresIn(0))
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
	requireMiss(t, b.cache, "k")
}

// An expired row is absent for every operation.
func TestExpiredRowIsAbsentEverywhere(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "n", []byte("5"), dbcache.ExpiresIn(time.Second)))
	travel(t, b.pool, time.Hour)

	requireMiss(t, b.cache, "n")
	got, err := b.cache.GetMany(ctx, []string{"n"})
	require.NoError(t, err)
	require.Empty(t, got)
	ok, err := b.cache.HasKey(ctx, "n")
	require.NoError(t, err)
	require.False(t, ok)
	ok, err = b.cache.Touch(ctx, "n", dbcache.Forever)
	require.NoError(t, err)
	require.False(t, ok)
	_, err = b.cache.Incr(ctx, "n", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = b.cache.IncrVersion(ctx, "n", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	v, err := b.cache.GetOrSet(ctx, "n", []byte("fresh"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, "fresh", string(v))
}

func rowCount(t *testing.T, b *testBundle) int {
	t.Helper()
	var n int
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT count(*) FROM dbcache_entries`).Scan(&n))
	return n
}
