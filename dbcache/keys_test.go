package dbcache_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

// everyOp runs each of Django's ten key-taking operations on key.
func everyOp(ctx context.Context, c *dbcache.Cache, key string) map[string]error {
	errs := map[string]error{}
	_, errs["add"] = c.Add(ctx, key, []byte("1"), dbcache.DefaultTimeout)
	_, errs["get"] = c.Get(ctx, key)
	errs["set"] = c.Set(ctx, key, []byte("1"), dbcache.DefaultTimeout)
	_, errs["incr"] = c.Incr(ctx, key, 1)
	_, errs["decr"] = c.Decr(ctx, key, 1)
	_, errs["touch"] = c.Touch(ctx, key, dbcache.DefaultTimeout)
	_, errs["delete"] = c.Delete(ctx, key)
	_, errs["get_many"] = c.GetMany(ctx, []string{key, "other"})
	_, errs["set_many"] = c.SetMany(ctx, map[string][]byte{key: []byte("1"), "other": []byte("2")}, dbcache.DefaultTimeout)
	_, errs["delete_many"] = c.DeleteMany(ctx, []string{key, "other"})
	return errs
}

// test_invalid_key_characters and test_invalid_key_length: memcached
// portability problems are warnings, logged once per operation, and the key
// still works.
func TestKeyWarnings(t *testing.T) {
	t.Parallel()
	identity := func(key, _ string, _ int) string { return key }
	for _, tc := range []struct {
		name, key, want string
	}{
		{"characters", "key with spaces and 清", "Cache key contains characters that will cause errors if used with memcached"},
		{"length", strings.Repeat("a", 250) + "清", "Cache key will cause errors if used with memcached"},
		{"control", "tab\tkey", "Cache key contains characters"},
		{"del", "del\x7fkey", "Cache key contains characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, &dbcache.Config{KeyFunc: identity})
			ctx := ctxT(t)
			for op, err := range everyOp(ctx, b.cache, tc.key) {
				if op == "incr" || op == "decr" {
					require.NotErrorIs(t, err, dbcache.ErrInvalidKey, op)
					continue
				}
				require.NoError(t, err, op)
			}
			require.Equal(t, 10, b.logs.Count(tc.want), b.logs.String())
			require.Equal(t, 10, b.logs.Count("level=WARN"))
		})
	}
}

// Django's memcache_key_warnings yields every problem of a key, and
// validate_key warns once per problem: a key both too long and with a
// space gets both warnings on every operation, and under KeyCheckError the
// error names both.
func TestKeyWarningsEveryProblem(t *testing.T) {
	t.Parallel()
	key := strings.Repeat("a b", 100) // 300 characters, with spaces
	require.Equal(t, []dbcache.KeyWarning{dbcache.KeyTooLong, dbcache.KeyHasControlChars}, dbcache.KeyWarnings(key))
	require.Equal(t, []dbcache.KeyWarning{dbcache.KeyHasControlChars}, dbcache.KeyWarnings("a\x00b\tc"))
	require.Empty(t, dbcache.KeyWarnings(strings.Repeat("é", 250)), "250 characters are fine, whatever their bytes")
	require.Equal(t, []dbcache.KeyWarning{dbcache.KeyTooLong}, dbcache.KeyWarnings(strings.Repeat("é", 251)))

	b := setup(t, nil)
	ctx := ctxT(t)
	for op, err := range everyOp(ctx, b.cache, key) {
		require.NoError(t, err, op)
	}
	require.Equal(t, 10, b.logs.Count("will cause errors if used with memcached (longer than 250)"), b.logs.String())
	require.Equal(t, 10, b.logs.Count("Cache key contains characters that will cause errors"), b.logs.String())
	require.Equal(t, 20, b.logs.Count("level=WARN"))

	strict := setupOn(t, b.pool, &dbcache.Config{KeyCheck: dbcache.KeyCheckError}).cache
	err := strict.Set(ctx, key, []byte("v"), dbcache.DefaultTimeout)
	require.ErrorIs(t, err, dbcache.ErrInvalidKey)
	var ik *dbcache.InvalidKeyError
	require.ErrorAs(t, err, &ik)
	require.Contains(t, ik.Reason, "(longer than 250)")
	require.Contains(t, ik.Reason, "contains characters")

	// The validator a Store of another kind uses says the same.
	logs := &dbtest.LogBuffer{}
	v := dbcache.KeyValidator{Logger: slog.New(slog.NewTextHandler(logs, nil))}
	require.NoError(t, v.Validate(ctx, key))
	require.Equal(t, 2, logs.Count("level=WARN"))
	require.NotContains(t, logs.String(), "a b", "no key without LogKeys")
	require.ErrorIs(t, v.Validate(ctx, "nul\x00"), dbcache.ErrInvalidKey)
	require.ErrorIs(t, (dbcache.KeyValidator{Check: dbcache.KeyCheckError}).Validate(ctx, key), dbcache.ErrInvalidKey)
	require.NoError(t, (dbcache.KeyValidator{Check: dbcache.KeyCheckOff}).Validate(ctx, key))
}

// test_invalid_with_version_key_length: the warning quotes the made key
// (with LogKeys: by default no log line holds a key).
func TestKeyWarningQuotesMadeKey(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{LogKeys: true})
	key := strings.Repeat("a", 248)
	_, err := b.cache.Get(ctxT(t), key)
	require.ErrorIs(t, err, dbcache.ErrMiss)
	require.Contains(t, b.logs.String(), ":1:"+key)
	require.Contains(t, b.logs.String(), "(longer than 250)")
}

func TestKeyCheckError(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{KeyCheck: dbcache.KeyCheckError})
	ctx := ctxT(t)
	for op, err := range everyOp(ctx, b.cache, "key with spaces") {
		require.ErrorIs(t, err, dbcache.ErrInvalidKey, op)
		require.Contains(t, err.Error(), `":1:key with spaces"`, op)
	}
	require.Zero(t, rowCount(t, b), "nothing is written")
	require.Empty(t, b.logs.String())
}

// CustomCacheKeyValidationTests: with the check off, a 300-character key with
// spaces is fine.
func TestKeyCheckOff(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff})
	ctx := ctxT(t)
	key := strings.Repeat("some key with spaces", 15)
	require.NoError(t, b.cache.Set(ctx, key, []byte("value"), dbcache.DefaultTimeout))
	require.Equal(t, "value", mustGet(t, b.cache, key))
	require.Empty(t, b.logs.String())
}

// Keys PostgreSQL cannot store are errors on every operation, whatever
// KeyCheck says, and nothing is written.
func TestInvalidKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, key, why string
	}{
		{"nul", "a\x00b", "NUL"},
		{"invalid utf8", "a\xffb", "UTF-8"},
		{"too long", strings.Repeat("k", dbcache.MaxKeyBytes), "byte limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff})
			ctx := ctxT(t)
			for op, err := range everyOp(ctx, b.cache, tc.key) {
				require.ErrorIs(t, err, dbcache.ErrInvalidKey, op)
				require.Contains(t, err.Error(), tc.why, op)
				// The error carries the caller's key and the made one.
				var ik *dbcache.InvalidKeyError
				require.ErrorAs(t, err, &ik, op)
				require.Equal(t, tc.key, ik.Key, op)
				require.Equal(t, b.cache.MakeKey(tc.key), ik.MadeKey, op)
			}
			_, err := b.cache.HasKey(ctx, tc.key)
			require.ErrorIs(t, err, dbcache.ErrInvalidKey)
			_, err = b.cache.GetOrSet(ctx, tc.key, []byte("x"), dbcache.DefaultTimeout)
			require.ErrorIs(t, err, dbcache.ErrInvalidKey)
			_, err = b.cache.IncrVersion(ctx, tc.key, 1)
			require.ErrorIs(t, err, dbcache.ErrInvalidKey)
			require.Zero(t, rowCount(t, b), "nothing is written")
		})
	}
}

// The longest storable key works, bytes counted after the prefix is added.
func TestLongestKey(t *testing.T) {
	t.Parallel()
	b := setup(t, &dbcache.Config{KeyCheck: dbcache.KeyCheckOff})
	ctx := ctxT(t)
	key := strings.Repeat("é", (dbcache.MaxKeyBytes-3)/2) // ":1:" + 2-byte runes
	require.LessOrEqual(t, len(b.cache.MakeKey(key)), dbcache.MaxKeyBytes)
	require.NoError(t, b.cache.Set(ctx, key, []byte("v"), dbcache.DefaultTimeout))
	require.Equal(t, "v", mustGet(t, b.cache, key))
	// Incompressible too: random-looking text is stored as is.
	var sb strings.Builder
	for i := 0; sb.Len() < dbcache.MaxKeyBytes-10; i++ {
		sb.WriteString(strings.ToUpper(string(rune('a' + (i*7919)%26))))
		sb.WriteByte(byte('0' + (i*31)%10))
	}
	require.NoError(t, b.cache.Set(ctx, sb.String(), []byte("v"), dbcache.DefaultTimeout))
}

// GetOrSet makes, validates and warns about its key once, though it reads
// and then writes.
func TestGetOrSetWarnsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	_, err := b.cache.GetOrSet(ctxT(t), "key with spaces", []byte("v"), dbcache.DefaultTimeout)
	require.NoError(t, err)
	require.Equal(t, 1, b.logs.Count("level=WARN"), b.logs.String())
}
