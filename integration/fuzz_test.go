package integration_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
)

// FuzzKeyRoundTrip checks key validation against an independent statement of
// the documented rules, and that every key that validates round-trips
// through the database byte for byte. Plain `go test` runs the seed corpus
// (below, plus testdata/fuzz/FuzzKeyRoundTrip if present); `go test -fuzz`
// explores further (see README.md).
//
// Invariants:
//   - MakeKey is DefaultKeyFunc: ":1:" + key.
//   - ValidateKey never panics and returns nil or an error wrapping
//     ErrInvalidKey, in every KeyCheck mode.
//   - KeyCheckOff and KeyCheckWarn accept exactly the keys PostgreSQL can
//     store: valid UTF-8, no NUL, at most MaxKeyBytes bytes made.
//   - KeyCheckError accepts those of them memcached could store too: at most
//     250 characters, none below 33 nor 127.
//   - A valid key round-trips: Set then Get returns the value, GetMany returns
//     it under the caller's key, the table holds exactly the made key, and
//     Delete removes it.
//   - An invalid key writes nothing, through Set or SetMany.
func FuzzKeyRoundTrip(f *testing.F) {
	for _, tc := range keyCases() {
		if len(tc.key) <= 16<<10 {
			f.Add(tc.key, []byte("v"))
		}
	}
	for i, s := range metaStrings {
		f.Add(s, []byte(metaStrings[(i+1)%len(metaStrings)]))
	}
	f.Add("k", []byte(nil))
	f.Add("k", []byte{0, 0xff})

	sc := sharedSchema(f)
	pool := sc.Pool(f)
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	mk := func(check dbcache.KeyCheck) *dbcache.Cache {
		c, err := dbcache.New(ctx, pool, &dbcache.Config{KeyCheck: check, Logger: slog.New(slog.DiscardHandler)})
		require.NoError(f, err)
		f.Cleanup(func() { _ = c.Close() })
		return c
	}
	off, warn, strict := mk(dbcache.KeyCheckOff), mk(dbcache.KeyCheckWarn), mk(dbcache.KeyCheckError)

	f.Fuzz(func(t *testing.T, key string, value []byte) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		made := off.MakeKey(key)
		require.Equal(t, ":1:"+key, made)

		pgOK := utf8.ValidString(made) && !strings.Contains(made, "\x00") && len(made) <= dbcache.MaxKeyBytes
		memOK := pgOK && utf8.RuneCountInString(made) <= dbcache.MemcachedMaxKeyLength &&
			!strings.ContainsFunc(made, func(r rune) bool { return r < 33 || r == 127 })
		for _, tc := range []struct {
			name string
			c    *dbcache.Cache
			ok   bool
		}{{"off", off, pgOK}, {"warn", warn, pgOK}, {"error", strict, memOK}} {
			err := tc.c.ValidateKey(ctx, made)
			if tc.ok {
				require.NoError(t, err, "KeyCheck %s", tc.name)
			} else {
				require.ErrorIs(t, err, dbcache.ErrInvalidKey, "KeyCheck %s", tc.name)
			}
		}

		if !pgOK {
			require.ErrorIs(t, off.Set(ctx, key, value, dbcache.Forever), dbcache.ErrInvalidKey)
			failed, err := off.SetMany(ctx, map[string][]byte{key: value, "fine": value}, dbcache.Forever)
			require.ErrorIs(t, err, dbcache.ErrInvalidKey)
			require.Len(t, failed, 2)
			require.Empty(t, scanKeys(t, pool), "an invalid key wrote nothing")
			return
		}
		want := value
		if want == nil {
			want = []byte{}
		}
		require.NoError(t, off.Set(ctx, key, value, dbcache.Forever))
		got, err := off.Get(ctx, key)
		require.NoError(t, err)
		require.Equal(t, want, got)
		many, err := off.GetMany(ctx, []string{key})
		require.NoError(t, err)
		require.Equal(t, map[string][]byte{key: want}, many)
		require.Equal(t, []string{made}, scanKeys(t, pool), "the table holds the made key, byte for byte")
		ok, err := off.Delete(ctx, key)
		require.NoError(t, err)
		require.True(t, ok)
		require.Empty(t, scanKeys(t, pool))
	})
}
