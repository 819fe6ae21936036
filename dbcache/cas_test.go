package dbcache_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dbcache/dbcache/dbcache"
	"github.com/dbcache/dbcache/internal/dbtest"
)

func TestCompareAndSwap(t *testing.T) {
	t.Parallel()
	for _, fast := range []bool{false, true} {
		t.Run("fast="+strconv.FormatBool(fast), func(t *testing.T) {
			t.Parallel()
			b := setup(t, &dbcache.Config{FastCommit: fast})
			ctx := ctxT(t)
			c := b.cache

			_, _, err := c.GetWithToken(ctx, "k")
			require.ErrorIs(t, err, dbcache.ErrMiss)
			ok, err := c.CompareAndSwap(ctx, "k", 0, []byte("v"), dbcache.Forever)
			require.NoError(t, err)
			require.False(t, ok, "a swap never creates an entry")
			requireMiss(t, c, "k")

			require.NoError(t, c.Set(ctx, "k", []byte("v1"), dbcache.Forever))
			v, tok, err := c.GetWithToken(ctx, "k")
			require.NoError(t, err)
			require.Equal(t, "v1", string(v))
			require.NotZero(t, tok)

			ok, err = c.CompareAndSwap(ctx, "k", tok, []byte("v2"), dbcache.ExpiresIn(3600e9))
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, "v2", mustGet(t, c, "k"))
			ttl, err := c.TTL(ctx, "k")
			require.NoError(t, err)
			require.NotEqual(t, dbcache.Forever, ttl, "the swap sets the expiry it is given")

			ok, err = c.CompareAndSwap(ctx, "k", tok, []byte("v3"), dbcache.Forever)
			require.NoError(t, err)
			require.False(t, ok, "the token of the write before is spent")
			require.Equal(t, "v2", mustGet(t, c, "k"))
			ok, err = c.CompareAndDelete(ctx, "k", tok)
			require.NoError(t, err)
			require.False(t, ok)
			require.Equal(t, "v2", mustGet(t, c, "k"))

			_, tok2, err := c.GetWithToken(ctx, "k")
			require.NoError(t, err)
			require.NotEqual(t, tok, tok2)
			ok, err = c.CompareAndDelete(ctx, "k", tok2)
			require.NoError(t, err)
			require.True(t, ok)
			requireMiss(t, c, "k")

			// An empty value is a value; an expired entry has no token
			// to match.
			require.NoError(t, c.Set(ctx, "e", nil, dbcache.Forever))
			v, tok, err = c.GetWithToken(ctx, "e")
			require.NoError(t, err)
			require.NotNil(t, v)
			require.Empty(t, v)
			require.NoError(t, c.Set(ctx, "x", []byte("1"), dbcache.ExpiresIn(3600e9)))
			_, tokX, err := c.GetWithToken(ctx, "x")
			require.NoError(t, err)
			travel(t, b.pool, 2*3600e9)
			ok, err = c.CompareAndSwap(ctx, "x", tokX, []byte("2"), dbcache.Forever)
			require.NoError(t, err)
			require.False(t, ok, "an expired entry is absent")
			ok, err = c.CompareAndDelete(ctx, "x", tokX)
			require.NoError(t, err)
			require.False(t, ok)
			ok, err = c.CompareAndSwap(ctx, "e", tok, nil, dbcache.ExpiresIn(0))
			require.NoError(t, err)
			require.True(t, ok)
			requireMiss(t, c, "e")
		})
	}
}

// Which writes give an entry a new token: every one that stores a value.
// Touch keeps it (it changes only the expiry), as does a GetOrSet or an Add
// that finds a live entry (they store nothing).
func TestTokenChangesOnEveryWrite(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	coalesced := setupOn(t, b.pool, &dbcache.Config{CoalesceSets: 4})
	ctx := ctxT(t)
	c := b.cache
	token := func(key string) dbcache.Token {
		t.Helper()
		_, tok, err := c.GetWithToken(ctx, key)
		require.NoError(t, err, key)
		return tok
	}
	require.NoError(t, c.Set(ctx, "k", []byte("1"), dbcache.ExpiresIn(3600e9)))
	seen := map[dbcache.Token]string{token("k"): "set"}
	changed := func(op string) {
		t.Helper()
		tok := token("k")
		prev, dup := seen[tok]
		require.False(t, dup, "%s kept the token of %s", op, prev)
		seen[tok] = op
	}
	kept := func(op string, want dbcache.Token) {
		t.Helper()
		require.Equal(t, want, token("k"), "%s changed the token", op)
	}

	require.NoError(t, c.Set(ctx, "k", []byte("1"), dbcache.ExpiresIn(3600e9)))
	changed("set of the same value")
	require.NoError(t, coalesced.cache.Set(ctx, "k", []byte("1"), dbcache.ExpiresIn(3600e9)))
	changed("coalesced set")
	_, err := c.SetMany(ctx, map[string][]byte{"k": []byte("1")}, dbcache.ExpiresIn(3600e9))
	require.NoError(t, err)
	changed("set_many")
	_, err = c.Incr(ctx, "k", 1)
	require.NoError(t, err)
	changed("incr")
	_, err = c.Decr(ctx, "k", 1)
	require.NoError(t, err)
	changed("decr")

	tok := token("k")
	ok, err := c.Touch(ctx, "k", dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok)
	kept("touch", tok)
	ok, err = c.Add(ctx, "k", []byte("2"), dbcache.Forever)
	require.NoError(t, err)
	require.False(t, ok)
	kept("add over a live entry", tok)
	_, err = c.GetOrSet(ctx, "k", []byte("2"), dbcache.Forever)
	require.NoError(t, err)
	kept("get_or_set over a live entry", tok)
	_, err = c.Incr(ctx, "k", 1<<62)
	require.NoError(t, err)
	changed("incr")
	tok = token("k")
	_, err = c.Incr(ctx, "k", 1<<62)
	require.ErrorIs(t, err, dbcache.ErrOverflow)
	kept("an overflowing incr", tok)

	// An expired entry taken over by Add and GetOrSet.
	expire := func() {
		t.Helper()
		dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET expires = statement_timestamp() - interval '1 second' WHERE key = $1`, c.MakeKey("k"))
	}
	expire()
	ok, err = c.Add(ctx, "k", []byte("3"), dbcache.ExpiresIn(3600e9))
	require.NoError(t, err)
	require.True(t, ok)
	changed("add over an expired entry")
	expire()
	_, err = c.GetOrSet(ctx, "k", []byte("4"), dbcache.ExpiresIn(3600e9))
	require.NoError(t, err)
	changed("get_or_set over an expired entry")

	// A loader's fenced writes: its refresh (stored over the live entry)
	// and its GetOrSetFunc write over an expired one are new entries; its
	// GetOrSetFunc write over a live entry stores nothing.
	l, err := c.AcquireLease(ctx, "k", 60e9)
	require.NoError(t, err)
	require.True(t, l.Acquired)
	stored, err := dbcache.SetLeased(ctx, c, "k", l.Token, []byte("5"))
	require.NoError(t, err)
	require.True(t, stored)
	changed("a loader's refresh")
	tok = token("k")
	_, stored, err = dbcache.GetOrSetLeased(ctx, c, "k", l.Token, []byte("6"), dbcache.ExpiresIn(3600e9))
	require.NoError(t, err)
	require.True(t, stored)
	kept("a loader's write over a live entry", tok)
	expire()
	_, stored, err = dbcache.GetOrSetLeased(ctx, c, "k", l.Token, []byte("7"), dbcache.ExpiresIn(3600e9))
	require.NoError(t, err)
	require.True(t, stored)
	changed("a loader's write over an expired entry")
	_, err = c.ReleaseLease(ctx, "k", l.Token)
	require.NoError(t, err)

	// IncrVersion: the entry at the version it moves to is new.
	v2 := c.WithVersion(2)
	require.NoError(t, v2.Set(ctx, "k", []byte("old"), dbcache.Forever))
	_, old2, err := v2.GetWithToken(ctx, "k")
	require.NoError(t, err)
	_, err = c.IncrVersion(ctx, "k", 1)
	require.NoError(t, err)
	_, moved, err := v2.GetWithToken(ctx, "k")
	require.NoError(t, err)
	require.NotEqual(t, old2, moved, "incr_version kept the token of the entry it replaced")
	require.NotContains(t, seen, moved)
}

// No ABA: a token read before an entry is deleted (or expires) and written
// again, with the same value, never matches the new entry.
func TestTokenNoABAAfterDeleteAndRecreate(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c := b.cache
	require.NoError(t, c.Set(ctx, "k", []byte("same"), dbcache.Forever))
	_, first, err := c.GetWithToken(ctx, "k")
	require.NoError(t, err)
	seen := map[dbcache.Token]bool{first: true}
	for i := range 200 {
		switch i % 3 {
		case 0:
			_, err = c.Delete(ctx, "k")
			require.NoError(t, err)
			require.NoError(t, c.Set(ctx, "k", []byte("same"), dbcache.Forever))
		case 1:
			_, err = c.Delete(ctx, "k")
			require.NoError(t, err)
			_, err = c.Add(ctx, "k", []byte("same"), dbcache.Forever)
			require.NoError(t, err)
		case 2:
			dbtest.Exec(t, b.pool, `UPDATE dbcache_entries SET expires = statement_timestamp() - interval '1 second'`)
			_, err = c.GetOrSet(ctx, "k", []byte("same"), dbcache.Forever)
			require.NoError(t, err)
		}
		ok, err := c.CompareAndSwap(ctx, "k", first, []byte("clobbered"), dbcache.Forever)
		require.NoError(t, err)
		require.False(t, ok, "round %d: a token from before the delete matched the new entry", i)
		_, tok, err := c.GetWithToken(ctx, "k")
		require.NoError(t, err)
		require.False(t, seen[tok], "round %d: a recreated entry got a token seen before", i)
		seen[tok] = true
	}
	require.Equal(t, "same", mustGet(t, c, "k"))
}

// Rows written before migration 9 have no token: they read as token 0, a
// swap with 0 replaces them, and the entry then has a token of its own.
func TestTokenOfRowsBeforeTheMigration(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c := b.cache
	dbtest.Exec(t, b.pool, `INSERT INTO dbcache_entries (key, value, expires, token) VALUES ($1, 'old', NULL, NULL)`, c.MakeKey("k"))
	v, tok, err := c.GetWithToken(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "old", string(v))
	require.Zero(t, tok)
	ok, err := c.CompareAndSwap(ctx, "k", 0, []byte("new"), dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok)
	_, tok, err = c.GetWithToken(ctx, "k")
	require.NoError(t, err)
	require.NotZero(t, tok)
	ok, err = c.CompareAndSwap(ctx, "k", 0, []byte("again"), dbcache.Forever)
	require.NoError(t, err)
	require.False(t, ok)
}

// Bad input: a clear error and nothing changed.
func TestCompareAndSwapBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	c := b.cache
	require.NoError(t, c.Set(ctx, "k", []byte("v"), dbcache.Forever))
	_, tok, err := c.GetWithToken(ctx, "k")
	require.NoError(t, err)
	for _, bad := range []string{"nul\x00key", "\xff\xfe", strings.Repeat("k", dbcache.MaxKeyBytes+1)} {
		_, _, err := c.GetWithToken(ctx, bad)
		require.ErrorIs(t, err, dbcache.ErrInvalidKey)
		ok, err := c.CompareAndSwap(ctx, bad, tok, []byte("x"), dbcache.Forever)
		require.ErrorIs(t, err, dbcache.ErrInvalidKey)
		require.False(t, ok)
		ok, err = c.CompareAndDelete(ctx, bad, tok)
		require.ErrorIs(t, err, dbcache.ErrInvalidKey)
		require.False(t, ok)
	}
	// Any token value is only a token: the largest, and ones no write drew.
	for _, other := range []dbcache.Token{0, 1, ^dbcache.Token(0), tok + 1} {
		ok, err := c.CompareAndSwap(ctx, "k", other, []byte("x"), dbcache.Forever)
		require.NoError(t, err)
		require.False(t, ok)
	}
	require.Equal(t, "v", mustGet(t, c, "k"))
	_, tok2, err := c.GetWithToken(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, tok, tok2, "refused swaps changed the entry")

	closed := setupOn(t, b.pool, nil).cache
	require.NoError(t, closed.Close())
	_, _, err = closed.GetWithToken(ctx, "k")
	require.ErrorIs(t, err, dbcache.ErrClosed)
	_, err = closed.CompareAndSwap(ctx, "k", tok, []byte("x"), dbcache.Forever)
	require.ErrorIs(t, err, dbcache.ErrClosed)
	_, err = closed.CompareAndDelete(ctx, "k", tok)
	require.ErrorIs(t, err, dbcache.ErrClosed)
	require.Equal(t, "v", mustGet(t, c, "k"))
}

// In a caller's transaction the swap commits or rolls back with it.
func TestCompareAndSwapWithTx(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := ctxT(t)
	require.NoError(t, b.cache.Set(ctx, "k", []byte("v"), dbcache.Forever))
	_, tok, err := b.cache.GetWithToken(ctx, "k")
	require.NoError(t, err)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	ok, err := b.cache.WithTx(tx).CompareAndSwap(ctx, "k", tok, []byte("w"), dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, tx.Rollback(ctx))
	ok, err = b.cache.CompareAndSwap(ctx, "k", tok, []byte("x"), dbcache.Forever)
	require.NoError(t, err)
	require.True(t, ok, "the rolled-back swap spent the token")
	require.Equal(t, "x", mustGet(t, b.cache, "k"))
}

// Racing read-modify-writes of one counter from 4 real processes x 8
// goroutines: never two swaps succeed on one token, and the counter ends
// at the number of successes (a swap that overwrote another's success
// would leave it short). On a C and an ICU database, and one whose default
// isolation is repeatable read (where a plain UPDATE racing another would
// fail with 40001 instead of re-checking its WHERE).
func TestProcessesCompareAndSwapOneWinnerPerToken(t *testing.T) {
	t.Parallel()
	for name, p := range map[string]dbtest.Profile{
		"c":               {Collation: dbtest.CollationC},
		"icu":             {Collation: dbtest.CollationLinguistic},
		"repeatable-read": {Collation: dbtest.CollationC, Isolation: "repeatable read"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.SchemaWith(t, p)
			s.Migrate(t)
			b := setupOn(t, s.Pool(t), nil)
			ctx := context.Background()
			require.NoError(t, b.cache.Set(ctx, "cas", []byte("0"), dbcache.Forever))
			lines := raceProcesses(t, b.pool, racerJob{DSN: s.DSN(t), Op: "cas", Goroutines: 8, Rounds: 40}, 4)
			tokens := map[string]bool{}
			values := map[string]bool{}
			for _, l := range lines {
				f := strings.Fields(l)
				require.Len(t, f, 3, l)
				require.False(t, tokens[f[1]], "two swaps succeeded on token %s", f[1])
				require.False(t, values[f[2]], "two swaps stored %s", f[2])
				tokens[f[1]], values[f[2]] = true, true
			}
			require.NotEmpty(t, lines)
			require.Equal(t, strconv.Itoa(len(lines)), mustGet(t, b.cache, "cas"))
		})
	}
}
