package integration_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// Every input a caller can get wrong, through every operation: each gets its
// documented result or a clear error, and a scan of the table afterwards shows
// that nothing unexpected was written.

// madePrefix is what DefaultKeyFunc adds at version 1 with no prefix.
const madePrefix = ":1:"

type keyCase struct {
	name string
	key  string
	// valid: PostgreSQL can store the made key (no NUL, valid UTF-8, at most
	// MaxKeyBytes bytes).
	valid bool
	// warns: memcached could not store the made key (over 250 characters,
	// or a space or control character), so KeyCheckWarn logs and
	// KeyCheckError refuses.
	warns bool
}

func keyCases() []keyCase {
	room := dbcache.MaxKeyBytes - len(madePrefix)
	return []keyCase{
		{"empty", "", true, false},
		{"plain", "user:42:profile", true, false},
		{"nul", "a\x00b", false, false},
		{"only nul", "\x00", false, false},
		{"invalid utf8", "bad\xff\xfe", false, false},
		{"lone continuation byte", "\x80", false, false},
		{"utf16 surrogate as utf8", "\xed\xa0\x80", false, false},
		{"truncated rune", "é"[:1], false, false},
		{"247 bytes: made key 250", strings.Repeat("k", 247), true, false},
		{"248 bytes: made key 251", strings.Repeat("k", 248), true, true},
		{"250 bytes", strings.Repeat("k", 250), true, true},
		{"251 bytes", strings.Repeat("k", 251), true, true},
		{"2000 bytes", strings.Repeat("k", 2000), true, true},
		{"made key MaxKeyBytes", strings.Repeat("k", room), true, true},
		{"made key MaxKeyBytes+1", strings.Repeat("k", room+1), false, true},
		{"10000 bytes", strings.Repeat("k", 10000), false, true},
		{"1 MiB", strings.Repeat("k", 1<<20), false, true},
		{"1000 two-byte runes", strings.Repeat("é", 1000), true, true},
		{"made key over MaxKeyBytes in runes", strings.Repeat("é", (room+2)/2), false, true},
		{"247 two-byte runes", strings.Repeat("é", 247), true, false},
		{"space", "a b", true, true},
		{"tab", "a\tb", true, true},
		{"newline", "a\nb", true, true},
		{"del", "a\x7fb", true, true},
		{"emoji", "🎉🎉🎉", true, false},
		{"nul at end of long key", strings.Repeat("k", 100) + "\x00", false, true},
	}
}

// For every key, every operation: valid keys work (and warn or not, as
// documented); invalid ones get ErrInvalidKey from every operation, batches
// included, and write nothing.
func TestBadInputKeys(t *testing.T) {
	t.Parallel()
	sc := sharedSchema(t)
	pool := sc.Pool(t)
	c, logs := cacheOn(t, pool, nil)
	strict, _ := cacheOn(t, pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckError})
	ctx := ctxT(t)
	want := map[string]string{} // made key -> value

	for _, tc := range keyCases() {
		logs.Reset()
		made := madePrefix + tc.key
		require.Equal(t, made, c.MakeKey(tc.key), tc.name)
		verr := c.ValidateKey(ctx, made)
		if !tc.valid {
			require.ErrorIs(t, verr, dbcache.ErrInvalidKey, tc.name)
			requireInvalidEverywhere(t, c, tc.key, tc.name)
			require.ErrorIs(t, strict.ValidateKey(ctx, made), dbcache.ErrInvalidKey, tc.name)
			require.Less(t, len(verr.Error()), 400, "%s: the error quotes a bounded part of the key", tc.name)
			continue
		}
		require.NoError(t, verr, tc.name)
		if tc.warns {
			require.Equal(t, 1, logs.Count("level=WARN"), "%s: one warning for one validation", tc.name)
			require.ErrorIs(t, strict.Set(ctx, tc.key, []byte("x"), dbcache.Forever), dbcache.ErrInvalidKey, tc.name)
			_, err := strict.Get(ctx, tc.key)
			require.ErrorIs(t, err, dbcache.ErrInvalidKey, tc.name)
		} else {
			require.Zero(t, logs.Count("level=WARN"), "%s: no warning", tc.name)
			require.NoError(t, strict.ValidateKey(ctx, made), tc.name)
		}
		requireWorks(t, c, tc.key, tc.name)
		want[made] = "final " + tc.name
		require.NoError(t, c.Set(ctx, tc.key, []byte(want[made]), dbcache.Forever), tc.name)
	}

	// A batch with one bad key among good ones is refused whole.
	good := map[string][]byte{"good-1": []byte("1"), "good-2": []byte("2")}
	for _, tc := range keyCases() {
		if tc.valid {
			continue
		}
		items := map[string][]byte{tc.key: []byte("bad")}
		for k, v := range good {
			items[k] = v
		}
		failed, err := c.SetMany(ctx, items, dbcache.Forever)
		require.ErrorIs(t, err, dbcache.ErrInvalidKey, tc.name)
		require.Len(t, failed, len(items), "%s: every key reported failed", tc.name)
		_, err = c.GetMany(ctx, []string{"good-1", tc.key})
		require.ErrorIs(t, err, dbcache.ErrInvalidKey, tc.name)
		_, err = c.DeleteMany(ctx, []string{"empty", tc.key})
		require.ErrorIs(t, err, dbcache.ErrInvalidKey, tc.name)
	}

	rows := scan(t, pool)
	require.Len(t, rows, len(want), "only the valid keys were written")
	for k, v := range want {
		require.Equal(t, v, string(rows[k].value))
		require.Nil(t, rows[k].expires)
	}
}

// requireWorks puts a valid key through every operation.
func requireWorks(t *testing.T, c *dbcache.Cache, key, name string) {
	t.Helper()
	ctx := ctxT(t)
	require.NoError(t, c.Set(ctx, key, []byte("v"), dbcache.Forever), name)
	v, err := c.Get(ctx, key)
	require.NoError(t, err, name)
	require.Equal(t, "v", string(v), name)
	ok, err := c.HasKey(ctx, key)
	require.NoError(t, err, name)
	require.True(t, ok, name)
	ok, err = c.Add(ctx, key, []byte("w"), dbcache.Forever)
	require.NoError(t, err, name)
	require.False(t, ok, name)
	v, err = c.GetOrSet(ctx, key, []byte("w"), dbcache.Forever)
	require.NoError(t, err, name)
	require.Equal(t, "v", string(v), name)
	ok, err = c.Touch(ctx, key, dbcache.ExpiresIn(time.Hour))
	require.NoError(t, err, name)
	require.True(t, ok, name)
	got, err := c.GetMany(ctx, []string{key, "other"})
	require.NoError(t, err, name)
	require.Equal(t, map[string][]byte{key: []byte("v")}, got, "%s: get_many under the caller's key", name)
	require.NoError(t, c.Set(ctx, key, []byte("41"), dbcache.Forever), name)
	n, err := c.Incr(ctx, key, 1)
	require.NoError(t, err, name)
	require.EqualValues(t, 42, n, name)
	to, err := c.IncrVersion(ctx, key, 1)
	require.NoError(t, err, name)
	require.Equal(t, 2, to, name)
	_, err = c.Get(ctx, key)
	require.ErrorIs(t, err, dbcache.ErrMiss, name)
	_, err = c.WithVersion(2).DecrVersion(ctx, key, 1)
	require.NoError(t, err, name)
	failed, err := c.SetMany(ctx, map[string][]byte{key: []byte("m")}, dbcache.Forever)
	require.NoError(t, err, name)
	require.Empty(t, failed, name)
	ok, err = c.Delete(ctx, key)
	require.NoError(t, err, name)
	require.True(t, ok, name)
	n2, err := c.DeleteMany(ctx, []string{key})
	require.NoError(t, err, name)
	require.Zero(t, n2, name)
}

// requireInvalidEverywhere checks that every operation refuses key with
// ErrInvalidKey (and runs no loader).
func requireInvalidEverywhere(t *testing.T, c *dbcache.Cache, key, name string) {
	t.Helper()
	ctx := ctxT(t)
	ops := map[string]func() error{
		"set":     func() error { return c.Set(ctx, key, []byte("v"), dbcache.Forever) },
		"get":     func() error { _, err := c.Get(ctx, key); return err },
		"has_key": func() error { _, err := c.HasKey(ctx, key); return err },
		"add":     func() error { _, err := c.Add(ctx, key, []byte("v"), dbcache.Forever); return err },
		"get_or_set": func() error {
			_, err := c.GetOrSet(ctx, key, []byte("v"), dbcache.Forever)
			return err
		},
		"get_or_set_func": func() error {
			_, err := c.GetOrSetFunc(ctx, key, func(context.Context) ([]byte, error) {
				t.Errorf("%s: loader ran for an invalid key", name)
				return []byte("v"), nil
			}, dbcache.Forever)
			return err
		},
		"touch":        func() error { _, err := c.Touch(ctx, key, dbcache.Forever); return err },
		"delete":       func() error { _, err := c.Delete(ctx, key); return err },
		"incr":         func() error { _, err := c.Incr(ctx, key, 1); return err },
		"decr":         func() error { _, err := c.Decr(ctx, key, 1); return err },
		"incr_version": func() error { _, err := c.IncrVersion(ctx, key, 1); return err },
		"decr_version": func() error { _, err := c.DecrVersion(ctx, key, 1); return err },
		"set_many": func() error {
			_, err := c.SetMany(ctx, map[string][]byte{key: []byte("v")}, dbcache.Forever)
			return err
		},
		"get_many":    func() error { _, err := c.GetMany(ctx, []string{key}); return err },
		"delete_many": func() error { _, err := c.DeleteMany(ctx, []string{key}); return err },
	}
	for op, f := range ops {
		require.ErrorIs(t, f(), dbcache.ErrInvalidKey, "%s: %s", name, op)
	}
}

// Values: empty (nil or not), binary, and 100 MB, one at a time.
func TestBadInputValues(t *testing.T) {
	t.Parallel()
	sc := sharedSchema(t)
	pool := sc.Pool(t)
	c, _ := cacheOn(t, pool, nil)
	ctx := ctxT(t)

	for name, v := range map[string][]byte{
		"nil": nil, "empty": {}, "nul": {0}, "invalid utf8": {0xff, 0xc3}, "all bytes": allBytes(),
		"bytea hex text": []byte(`\x00ff`), "bytea escape text": []byte(`\000`),
	} {
		require.NoError(t, c.Set(ctx, name, v, dbcache.Forever), name)
		got, err := c.Get(ctx, name)
		require.NoError(t, err, name)
		require.NotNil(t, got, "%s: a hit is never nil", name)
		require.Equal(t, nonNil(v), got, name)
		ok, err := c.Add(ctx, name+" added", v, dbcache.Forever)
		require.NoError(t, err)
		require.True(t, ok)
		got, err = c.GetOrSet(ctx, name+" got_or_set", v, dbcache.Forever)
		require.NoError(t, err)
		require.Equal(t, nonNil(v), got, name)
	}
	failed, err := c.SetMany(ctx, map[string][]byte{"m-nil": nil, "m-empty": {}}, dbcache.Forever)
	require.NoError(t, err)
	require.Empty(t, failed)
	got, err := c.GetMany(ctx, []string{"m-nil", "m-empty"})
	require.NoError(t, err)
	require.Equal(t, map[string][]byte{"m-nil": {}, "m-empty": {}}, got, "empty values are hits, never nil")
	require.Len(t, scan(t, pool), 7*3+2)
}

// A 100 MB value round-trips byte for byte, and goes as cleanly as it came.
func TestBadInputHugeValue(t *testing.T) {
	t.Parallel()
	sc := sharedSchema(t)
	pool := sc.Pool(t)
	c, _ := cacheOn(t, pool, nil)
	ctx := ctxT(t)

	const size = 100 << 20
	big := hugeValue(size)
	sum := sha256.Sum256(big)

	require.NoError(t, c.Set(ctx, "big", big, dbcache.Forever))
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT length(value) FROM dbcache_entries WHERE key = $1`, c.MakeKey("big")).Scan(&n))
	require.Equal(t, size, n, "stored length")
	got, err := c.Get(ctx, "big")
	require.NoError(t, err)
	require.Equal(t, size, len(got))
	require.Equal(t, sum, sha256.Sum256(got), "byte for byte")
	got = nil
	big = nil

	ok, err := c.Delete(ctx, "big")
	require.NoError(t, err)
	require.True(t, ok)
	require.Empty(t, scanKeys(t, pool))
}

// hugeValue makes size bytes PostgreSQL cannot compress: one random MiB
// repeated (pglz and lz4 only look a few KiB back), each copy stamped with its
// index so a misplaced chunk shows.
func hugeValue(size int) []byte { // size: a multiple of 1 MiB
	const block = 1 << 20
	rnd := make([]byte, block)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(rnd)
	out := make([]byte, size)
	for i := 0; i < size; i += block {
		copy(out[i:], rnd)
		binary.LittleEndian.PutUint64(out[i:], uint64(i/block))
	}
	return out
}

// Incr and Decr with deltas that overflow and values that are not integers:
// the documented sentinel, and the value unchanged.
func TestBadInputIncr(t *testing.T) {
	t.Parallel()
	sc := sharedSchema(t)
	pool := sc.Pool(t)
	c, _ := cacheOn(t, pool, nil)
	ctx := ctxT(t)

	for _, tc := range []struct {
		stored string
		op     func(key string) (int64, error)
		err    error
	}{
		{"1", func(k string) (int64, error) { return c.Incr(ctx, k, math.MaxInt64) }, dbcache.ErrOverflow},
		{"9223372036854775807", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrOverflow},
		{"-1", func(k string) (int64, error) { return c.Incr(ctx, k, math.MinInt64) }, dbcache.ErrOverflow},
		{"0", func(k string) (int64, error) { return c.Decr(ctx, k, math.MinInt64) }, dbcache.ErrOverflow},
		{"-9223372036854775808", func(k string) (int64, error) { return c.Decr(ctx, k, 1) }, dbcache.ErrOverflow},
		{"-2", func(k string) (int64, error) { return c.Decr(ctx, k, math.MaxInt64) }, dbcache.ErrOverflow},
		{"abc", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"1.0", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"1e3", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"0x10", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"NaN", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"Infinity", func(k string) (int64, error) { return c.Decr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"99999999999999999999", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"１２", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger}, // full-width digits
		{"12\x00", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
		{"'; SELECT 1; --", func(k string) (int64, error) { return c.Incr(ctx, k, 1) }, dbcache.ErrNotInteger},
	} {
		key := "n-" + strconv.Quote(tc.stored)
		require.NoError(t, c.Set(ctx, key, []byte(tc.stored), dbcache.Forever))
		_, err := tc.op(key)
		require.ErrorIs(t, err, tc.err, "stored %q", tc.stored)
		v, gerr := c.Get(ctx, key)
		require.NoError(t, gerr)
		require.Equal(t, tc.stored, string(v), "%q unchanged", tc.stored)
	}
	// A large binary value is not an integer either, and stays intact.
	blob := bytes.Repeat([]byte{'9'}, 1<<20)
	require.NoError(t, c.Set(ctx, "blob", blob, dbcache.Forever))
	_, err := c.Incr(ctx, "blob", 1)
	require.ErrorIs(t, err, dbcache.ErrNotInteger)

	// A miss creates nothing.
	_, err = c.Incr(ctx, "absent", 1)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	_, err = c.Decr(ctx, "absent", math.MinInt64)
	require.ErrorIs(t, err, dbcache.ErrMiss)

	// Versions that overflow an int.
	require.NoError(t, c.Set(ctx, "ver", []byte("x"), dbcache.Forever))
	_, err = c.IncrVersion(ctx, "ver", math.MaxInt)
	require.ErrorIs(t, err, dbcache.ErrOverflow)
	_, err = c.WithVersion(math.MaxInt).IncrVersion(ctx, "ver", 1)
	require.ErrorIs(t, err, dbcache.ErrOverflow)
	_, err = c.DecrVersion(ctx, "ver", math.MinInt)
	require.ErrorIs(t, err, dbcache.ErrOverflow)
	_, err = c.WithVersion(math.MinInt).DecrVersion(ctx, "ver", 1)
	require.ErrorIs(t, err, dbcache.ErrOverflow)

	rows := scan(t, pool)
	require.Len(t, rows, 17+2)
	require.Contains(t, rows, ":1:ver", "the entry did not move")
	require.NotContains(t, rows, ":1:absent")
	require.NotContains(t, rows, ":2:ver")
}

// Timeouts at the extremes, for every operation that takes one, and as the
// cache's default.
func TestBadInputTimeouts(t *testing.T) {
	t.Parallel()
	sc := sharedSchema(t)
	pool := sc.Pool(t)
	c, _ := cacheOn(t, pool, nil)
	ctx := ctxT(t)

	type expiry int
	const (
		never   expiry = iota // NULL expiry
		far                   // about 292 years away
		expired               // nothing a read can see
	)
	cases := []struct {
		name string
		to   dbcache.Timeout
		want expiry
	}{
		{"forever", dbcache.Forever, never},
		{"max", dbcache.ExpiresIn(math.MaxInt64), far},
		{"1ns", dbcache.ExpiresIn(1), expired}, // rounds up to 1µs, long gone by the next statement
		{"0", dbcache.ExpiresIn(0), expired},
		{"-1ns", dbcache.ExpiresIn(-1), expired},
		{"min", dbcache.ExpiresIn(math.MinInt64), expired},
	}
	requireExpiry := func(key string, want expiry, name string) {
		t.Helper()
		ok, err := c.HasKey(ctx, key)
		require.NoError(t, err)
		require.Equal(t, want != expired, ok, "%s: %s live", name, key)
		rows := scan(t, pool)
		r, stored := rows[c.MakeKey(key)]
		switch want {
		case never:
			require.True(t, stored, name)
			require.Nil(t, r.expires, name)
		case far:
			require.True(t, stored, name)
			require.NotNil(t, r.expires, name)
			require.WithinRange(t, *r.expires, time.Now().AddDate(291, 0, 0), time.Now().AddDate(293, 0, 0), name)
		case expired:
			// A row may stay behind for the culler, but never a live one.
			if stored && r.expires != nil {
				require.False(t, r.expires.After(time.Now().Add(time.Second)), name)
			}
			require.False(t, stored && r.expires == nil, "%s: not a never-expiring row", name)
		}
	}
	for _, tc := range cases {
		require.NoError(t, c.Set(ctx, "set "+tc.name, []byte("v"), tc.to), tc.name)
		requireExpiry("set "+tc.name, tc.want, tc.name)

		ok, err := c.Add(ctx, "add "+tc.name, []byte("v"), tc.to)
		require.NoError(t, err, tc.name)
		require.True(t, ok, "%s: add reports true when no live entry exists", tc.name)
		requireExpiry("add "+tc.name, tc.want, tc.name)

		v, err := c.GetOrSet(ctx, "gos "+tc.name, []byte("v"), tc.to)
		require.NoError(t, err, tc.name)
		require.Equal(t, "v", string(v), "%s: get_or_set returns the value", tc.name)
		requireExpiry("gos "+tc.name, tc.want, tc.name)

		failed, err := c.SetMany(ctx, map[string][]byte{"many " + tc.name: []byte("v")}, tc.to)
		require.NoError(t, err, tc.name)
		require.Empty(t, failed)
		requireExpiry("many "+tc.name, tc.want, tc.name)

		require.NoError(t, c.Set(ctx, "touch "+tc.name, []byte("v"), dbcache.ExpiresIn(time.Hour)))
		ok, err = c.Touch(ctx, "touch "+tc.name, tc.to)
		require.NoError(t, err, tc.name)
		require.True(t, ok, "%s: touch of a live entry", tc.name)
		requireExpiry("touch "+tc.name, tc.want, tc.name)
	}

	// The same extremes as the cache's default timeout.
	for _, tc := range cases {
		d, _ := cacheOn(t, pool, &dbcache.Config{DefaultTimeout: tc.to, KeyPrefix: "d"})
		require.NoError(t, d.Set(ctx, tc.name, []byte("v"), dbcache.DefaultTimeout), tc.name)
		ok, err := d.HasKey(ctx, tc.name)
		require.NoError(t, err)
		require.Equal(t, tc.want != expired, ok, "default %s", tc.name)
	}

	// Nothing but the keys above was written, and no hidden row is live.
	for k, r := range scan(t, pool) {
		require.True(t, strings.HasPrefix(k, ":1:") || strings.HasPrefix(k, "d:1:"), "unexpected row %q", k)
		require.Equal(t, "v", string(r.value), k)
	}
}
